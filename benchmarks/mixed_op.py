"""Fused vs reference mixed op: one op, then a whole DARTS search step.

Timing: both kernels in this process, interleaved (so load drifts hit both),
median of repeats; CPU time (time.process_time, all threads) is the ratio
reported, wall time is printed beside it.
Memory: peak RSS (ru_maxrss) of one fresh subprocess per kernel running the
same steps, so neither kernel's allocations colour the other's figure.

    python benchmarks/mixed_op.py            # C=16, 8 layers, batch 32, 32x32, 2 threads (~5-10 min)
    python benchmarks/mixed_op.py --full     # more repeats (9 op, 7 step, 2 memory steps)
    python benchmarks/mixed_op.py --quick    # batch 8, fewest repeats
    python benchmarks/mixed_op.py --conv-path kernel    # conv candidates on nasdeploy::sep_conv
    python benchmarks/mixed_op.py --batch 32 64         # several batch sizes in one run
    python benchmarks/mixed_op.py --partial-channels 4  # PC-DARTS K=4 (fused) beside full DARTS (fused)
    python benchmarks/mixed_op.py --device cuda         # CUDA: time, peak memory, kernel launches per step
    python benchmarks/mixed_op.py --save benchmarks/results/mixed_op.json   # also append each RESULT there

A RESULT line per batch size is the summary: step time and peak memory of the fused kernel as
fractions of the reference's (targets: time <= 0.50, memory <= 0.40), with the load average.
With --partial-channels K the baseline is the full (K=1) fused search and the candidate K.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import resource
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

from nasdeploy.ops import kernel_status
from nasdeploy.space.mixed_op import MixedOp
from nasdeploy.space.primitives import PRIMITIVES
from nasdeploy.space.search_network import SearchNetwork


# The two sides of a comparison: (kernel, partial channels K). Without --partial-channels the
# reference MixedOp against the fused kernel; with it full DARTS against PC-DARTS, both fused.
def sides(args) -> dict[str, tuple[str, int]]:
    if args.partial_channels > 1:
        return {"reference": ("fused", 1), "fused": ("fused", args.partial_channels)}
    return {"reference": ("reference", 1), "fused": ("fused", 1)}


def build(side: str, args) -> tuple:
    kernel, K = sides(args)[side]
    torch.manual_seed(0)
    net = SearchNetwork(args.channels, 10, args.layers, kernel=kernel, conv_path=args.conv_path,
                        partial_channels=K).to(args.device)
    opt = torch.optim.SGD(net.weight_parameters(), lr=0.025, momentum=0.9, weight_decay=3e-4)
    x = torch.randn(args.batch, 3, args.size, args.size, device=args.device)
    y = torch.randint(0, 10, (args.batch,), device=args.device)
    return net, opt, x, y


def search_step(net, opt, x, y) -> None:
    """Forward, backward (weights and alphas get gradients), SGD step on the weights."""
    opt.zero_grad(set_to_none=True)
    for a in net.arch_parameters():
        a.grad = None
    F.cross_entropy(net(x), y).backward()
    opt.step()
    if x.is_cuda:
        torch.cuda.synchronize(x.device)  # time the work, not its enqueueing


def loadavg() -> str:
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "n/a"


def launches_per_step(setup) -> int:
    """CUDA kernel launches of one search step, counted by torch.profiler."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        search_step(*setup)
    return sum(e.name in ("cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel", "cuLaunchKernelEx")
               for e in prof.events())


def timed(fn) -> tuple[float, float]:
    """(CPU seconds of this process, wall seconds) of one call."""
    cpu, wall = time.process_time(), time.perf_counter()
    fn()
    return time.process_time() - cpu, time.perf_counter() - wall


def interleaved(fns: dict, repeats: int, warmup: int = 1) -> dict:
    """Median CPU seconds per callable (and ``<name>_wall``), the kernels alternating so load drifts hit both."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            times[k].append(timed(fn))
    out = {k: statistics.median(c for c, _ in v) for k, v in times.items()}
    out.update({k + "_wall": statistics.median(w for _, w in v) for k, v in times.items()})
    return out


def bench_one_op(args) -> dict:
    torch.manual_seed(0)
    ref = MixedOp(args.channels, 1, PRIMITIVES, "reference")
    fused = copy.deepcopy(ref)
    fused.kernel = "fused"
    x = torch.randn(args.batch, args.channels, args.size, args.size, requires_grad=True)
    w = torch.softmax(torch.randn(len(PRIMITIVES)), 0).requires_grad_()
    g = torch.randn_like(x)
    fns = {k: (lambda m=m: m(x, w).backward(g)) for k, m in (("reference", ref), ("fused", fused))}
    return interleaved(fns, args.op_repeats)


def bench_step(args) -> dict:
    setups = {k: build(k, args) for k in ("reference", "fused")}
    fns = {k: (lambda s=s: search_step(*s)) for k, s in setups.items()}
    out = interleaved(fns, args.step_repeats)
    if args.device.startswith("cuda"):
        out.update({k + "_launches": launches_per_step(s) for k, s in setups.items()})
    return out


def _proc_status_mib(field: str) -> float | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def peak_rss_child(kernel: str, args) -> None:
    """Subprocess body: build, run the steps, print setup RSS and peak RSS in MiB.

    Linux: VmHWM of /proc/self/status (ru_maxrss survives exec and would report the
    parent's peak). Elsewhere: ru_maxrss.
    """
    torch.set_num_threads(args.threads)
    setup = build(kernel, args)
    if args.device.startswith("cuda"):  # device memory: the allocator's peak
        torch.cuda.reset_peak_memory_stats(args.device)
        base = torch.cuda.memory_allocated(args.device) / 2**20
        for _ in range(args.mem_steps):
            search_step(*setup)
        print(json.dumps({"baseline_mib": base, "peak_mib": torch.cuda.max_memory_allocated(args.device) / 2**20}))
        return
    base = _proc_status_mib("VmRSS")
    for _ in range(args.mem_steps):
        search_step(*setup)
    peak = _proc_status_mib("VmHWM")
    if base is None or peak is None:
        base = 0.0
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024 if sys.platform != "darwin" else 1024**2)
    print(json.dumps({"baseline_mib": base, "peak_mib": peak}))


def peak_rss(kernel: str, argv: list[str]) -> dict:
    cmd = [sys.executable, __file__, *argv, "--memory-child", kernel]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--channels", type=int, default=16)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--batch", type=int, nargs="+", default=[32])
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--conv-path", choices=("native", "kernel"), default="native")
    p.add_argument("--partial-channels", type=int, default=1, help="PC-DARTS K, compared with full DARTS (fused)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--skip-op", action="store_true", help="only the search step (skip the one-op timing)")
    p.add_argument("--op-repeats", type=int, default=5)
    p.add_argument("--step-repeats", type=int, default=3)
    p.add_argument("--mem-steps", type=int, default=1)
    p.add_argument("--full", action="store_true", help="9 op repeats, 7 step repeats, 2 memory steps")
    p.add_argument("--quick", action="store_true", help="batch 8, 3 repeats")
    p.add_argument("--save", metavar="JSON", help="append one record per batch size to this JSON list")
    p.add_argument("--memory-child", choices=("reference", "fused"), help=argparse.SUPPRESS)
    argv = sys.argv[1:] if argv is None else argv
    args = p.parse_args(argv)
    if args.full:
        args.op_repeats, args.step_repeats, args.mem_steps = 9, 7, 2
    if args.quick:
        args.batch, args.op_repeats, args.step_repeats, args.mem_steps = [8], 3, 3, 1
    if args.memory_child:
        args.batch = args.batch[0]
        return peak_rss_child(args.memory_child, args)
    torch.set_num_threads(args.threads)
    status = kernel_status()
    backend = "cuda" if args.device.startswith("cuda") else "cpu"
    if not status[backend]["available"]:
        sys.exit(f"the fused {backend} kernel is not built: {status[backend]['reason']}")
    if backend == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no GPU visible to torch")
    names = ("full DARTS (fused)", f"PC-DARTS K={args.partial_channels} (fused)") if args.partial_channels > 1 \
        else ("reference", "fused")
    batches_ = list(args.batch)
    for batch in batches_:
        args.batch = batch
        load_before = loadavg()
        print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, {args.device}, "
              f"{args.threads} threads, C={args.channels}, layers={args.layers}, batch={batch}, "
              f"{args.size}x{args.size}, conv path {args.conv_path}; load average before: {load_before}")  # fmt: skip
        if not args.skip_op and args.partial_channels == 1 and backend == "cpu":
            op = bench_one_op(args)
            print(f"one mixed op fwd+bwd (C={args.channels}, stride 1): reference {op['reference'] * 1e3:.1f} ms, "
                  f"fused {op['fused'] * 1e3:.1f} ms CPU, ratio {op['fused'] / op['reference']:.2f} (wall "
                  f"{op['fused_wall'] / op['reference_wall']:.2f})")  # fmt: skip
        step = bench_step(args)
        clock = "wall" if backend == "cuda" else "CPU"
        t_ref, t_new = (step["reference_wall"], step["fused_wall"]) if backend == "cuda" else (step["reference"],
                                                                                             step["fused"])
        print(f"search step: {names[0]} {t_ref * 1e3:.0f} ms, {names[1]} {t_new * 1e3:.0f} ms {clock} time "
              f"(wall {step['reference_wall'] * 1e3:.0f} / {step['fused_wall'] * 1e3:.0f} ms; median of "
              f"{args.step_repeats})")  # fmt: skip
        if backend == "cuda":
            print(f"kernel launches per step: {names[0]} {step['reference_launches']}, "
                  f"{names[1]} {step['fused_launches']}")
        child_argv = [a for i, a in enumerate(argv) if a not in ("--quick", "--full", "--save")
                      and (i == 0 or argv[i - 1] != "--save")] + ["--mem-steps", str(args.mem_steps)]
        child_argv += ["--batch", str(batch)]
        mem = {k: peak_rss(k, child_argv) for k in ("reference", "fused")}
        for k, name in zip(("reference", "fused"), names):
            print(f"peak {'device memory' if backend == 'cuda' else 'RSS'} {name}: {mem[k]['peak_mib']:.0f} MiB "
                  f"(after setup {mem[k]['baseline_mib']:.0f} MiB)")
        time_ratio = t_new / t_ref
        mem_ratio = mem["fused"]["peak_mib"] / mem["reference"]["peak_mib"]
        growth = (mem["fused"]["peak_mib"] - mem["fused"]["baseline_mib"]) / (
            mem["reference"]["peak_mib"] - mem["reference"]["baseline_mib"]
        )
        load_after = loadavg()
        print(f"RESULT batch {batch}: {names[1]} step time {time_ratio:.2f}x and peak memory {mem_ratio:.2f}x of "
              f"{names[0]} (median {clock} time; peak of separate processes, {growth:.2f}x counting only growth "
              f"above setup); load average after: {load_after}")  # fmt: skip
        sys.stdout.flush()
        if args.save:
            save(args.save, {
                "date": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": platform.processor() or platform.machine(),
                "torch": torch.__version__, "device": args.device, "threads": args.threads,
                "channels": args.channels, "layers": args.layers, "batch": batch, "size": args.size,
                "conv_path": args.conv_path, "partial_channels": args.partial_channels, "sides": list(names),
                "load_before": load_before, "load_after": load_after,
                "step_s": {"reference": t_ref, "fused": t_new}, "clock": clock, "step_repeats": args.step_repeats,
                "peak_mib": {k: mem[k]["peak_mib"] for k in mem}, "setup_mib": {k: mem[k]["baseline_mib"] for k in mem},
                "time_ratio": time_ratio, "memory_ratio": mem_ratio, "memory_growth_ratio": growth,
            })  # fmt: skip


def save(path: str, record: dict) -> None:
    """Append ``record`` to the JSON list at ``path`` (written to a temporary file, then renamed)."""
    from pathlib import Path

    from nasdeploy.artifacts import read_json, write_json

    records = read_json(Path(path), "benchmark results") if Path(path).exists() else []
    write_json(Path(path), [*records, record])


if __name__ == "__main__":
    main()
