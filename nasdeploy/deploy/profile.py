"""profile(): ONNX Runtime latency of an exported model, per batch size and per operator.

Reads only the .onnx file. For each batch size it times the model through
``nasdeploy.latency.measure`` (the same loop the latency table uses), and,
when given the PyTorch module, the eager model on the same input in the same
run. A separate profiling session at the smallest batch gives per-operator
times from ORT's trace (never the timed session: the profiler slows every
node). Writes ``profile/latency.json``, ``profile/latency.md`` and
``profile/ort_trace.json`` under the run directory.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..artifacts import RunDir, atomic_write, ensure_dir, write_json
from ..config import ProfileConfig
from ..errors import ProfileError
from ..latency.measure import OPT_LEVELS, LatencyStats, load_avg, machine_fingerprint, make_session, measure
from ..onnxio import file_sha256, graph_inputs, graph_outputs, load_onnx, random_feeds

REPORT_FORMAT = "nasdeploy.latency/1"


@dataclass
class BatchLatency:
    """ORT (and optionally eager PyTorch) latency at one batch size."""

    batch_size: int
    ort: LatencyStats
    eager: LatencyStats | None = None
    ort_over_eager_p50: float | None = None  # < 1: ORT is faster

    def to_dict(self) -> dict:
        return {
            "batch_size": self.batch_size,
            "ort": self.ort.to_dict(),
            "eager": self.eager.to_dict() if self.eager else None,
            "ort_over_eager_p50": self.ort_over_eager_p50,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> BatchLatency:
        return cls(
            batch_size=d["batch_size"],
            ort=LatencyStats.from_dict(d["ort"]),
            eager=LatencyStats.from_dict(d["eager"]) if d.get("eager") else None,
            ort_over_eager_p50=d.get("ort_over_eager_p50"),
        )


@dataclass
class OpTime:
    """One operator type's share of the profiled runs."""

    op_type: str
    total_ms: float  # summed over all profiled runs
    count: int  # kernel calls over all profiled runs
    ms_per_run: float
    share_pct: float  # of the summed node time


@dataclass
class OpBreakdown:
    """Per-operator times from ORT's profiler trace."""

    batch_size: int
    runs: int
    node_ms_per_run: float  # sum of kernel times per run
    run_ms_per_run: float  # ORT's model_run time per run (kernels + executor overhead), profiler on
    table: list[OpTime] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> OpBreakdown:
        return cls(**{**d, "table": [OpTime(**r) for r in d["table"]]})


@dataclass
class LatencyReport:
    """What ``profile`` measured; ``to_dict`` is the latency.json schema."""

    model_path: str
    model_sha256: str
    inputs: list[dict]
    outputs: list[dict]
    fingerprint: dict
    config: ProfileConfig
    batches: list[BatchLatency]
    ops: OpBreakdown
    # 1/5/15-min load averages before timing: not part of the fingerprint, but
    # other processes on the cores are the main source of run-to-run drift.
    load_avg: list[float] | None = None
    files: dict[str, str] = field(default_factory=dict)

    def stats(self, batch_size: int) -> LatencyStats:
        """ORT stats at ``batch_size``."""
        for b in self.batches:
            if b.batch_size == batch_size:
                return b.ort
        raise ProfileError(
            f"batch size {batch_size} was not profiled", f"use one of {[b.batch_size for b in self.batches]}"
        )

    def to_dict(self) -> dict:
        c = self.config
        return {
            "format": REPORT_FORMAT,
            "model": {
                "path": self.model_path,
                "sha256": self.model_sha256,
                "inputs": self.inputs,
                "outputs": self.outputs,
            },
            "fingerprint": self.fingerprint,
            "provider": c.provider,
            "threads": c.threads,
            "opt_level": c.opt_level,
            "warmup": c.warmup,
            "repeats": c.repeats,
            "config": {**asdict(c), "batch_sizes": list(c.batch_sizes)},
            "batches": [b.to_dict() for b in self.batches],
            "ops": self.ops.to_dict(),
            "load_avg": self.load_avg,
            "files": self.files,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LatencyReport:
        if d.get("format") != REPORT_FORMAT:
            raise ProfileError(
                f"not a {REPORT_FORMAT} report (format {d.get('format')!r})", "re-run `nasdeploy profile`"
            )
        cfg = dict(d["config"])
        cfg["batch_sizes"] = tuple(cfg["batch_sizes"])
        return cls(
            model_path=d["model"]["path"],
            model_sha256=d["model"]["sha256"],
            inputs=d["model"]["inputs"],
            outputs=d["model"]["outputs"],
            fingerprint=d["fingerprint"],
            config=ProfileConfig(**cfg),
            batches=[BatchLatency.from_dict(b) for b in d["batches"]],
            ops=OpBreakdown.from_dict(d["ops"]),
            load_avg=d.get("load_avg"),
            files=d.get("files", {}),
        )


def _check_config(cfg: ProfileConfig) -> None:
    """Reject impossible settings before any model is loaded."""
    sizes = cfg.batch_sizes
    if not sizes:
        raise ProfileError("no batch sizes given", "pass at least one, e.g. batch_sizes=(1, 8, 32)")
    for b in sizes:
        if isinstance(b, bool) or not isinstance(b, int) or b < 1:
            raise ProfileError(f"batch size must be an integer ≥ 1, got {b!r}", "use batch sizes such as 1, 8, 32")
    for name in ("threads", "repeats", "top_ops", "trace_runs"):
        v = getattr(cfg, name)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ProfileError(f"{name} must be an integer ≥ 1, got {v!r}", f"pass {name}=1 or more")
    if isinstance(cfg.warmup, bool) or not isinstance(cfg.warmup, int) or cfg.warmup < 0:
        raise ProfileError(f"warmup must be an integer ≥ 0, got {cfg.warmup!r}", "pass warmup=0 or more")
    if cfg.opt_level not in OPT_LEVELS:
        raise ProfileError(f"unknown ORT optimization level {cfg.opt_level!r}", f"use one of {', '.join(OPT_LEVELS)}")


def op_breakdown(events: list[dict], runs: int, top: int, batch_size: int) -> OpBreakdown:
    """Aggregate ORT trace node events of the last ``runs`` model runs by operator type.

    ORT's trace is a Chrome-trace list: ``cat == "Session"`` events named
    ``model_run`` span each ``run()``, ``cat == "Node"`` events named
    ``<node>_kernel_time`` carry ``dur`` (µs) and ``args.op_name``. Earlier runs
    are warm-up and are dropped by keeping only node events inside the last
    ``runs`` model_run windows. Shares are of the summed kernel time, so the
    table (top ``top`` types plus one "(other)" row) sums to 100%.
    """
    model_runs = sorted(
        (e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"), key=lambda e: e["ts"]
    )[-runs:]
    if not model_runs:
        raise ProfileError("ORT's profiler trace has no model_run events", "check the onnxruntime installation")
    windows = [(e["ts"], e["ts"] + e["dur"]) for e in model_runs]
    total_us: dict[str, float] = defaultdict(float)
    count: dict[str, int] = defaultdict(int)
    for e in events:
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time"):
            continue  # fence events (older ORT) and session events are not kernel time
        ts = e["ts"]
        if not any(lo <= ts <= hi for lo, hi in windows):
            continue
        op = e.get("args", {}).get("op_name", "?")
        total_us[op] += e["dur"]
        count[op] += 1
    n = len(model_runs)
    node_us = sum(total_us.values())
    ranked = sorted(total_us, key=lambda k: -total_us[k])

    def row(name: str, us: float, calls: int) -> OpTime:
        return OpTime(
            op_type=name,
            total_ms=us / 1e3,
            count=calls,
            ms_per_run=us / 1e3 / n,
            share_pct=100.0 * us / node_us if node_us > 0 else 0.0,
        )

    table = [row(k, total_us[k], count[k]) for k in ranked[:top]]
    rest = ranked[top:]
    if rest:
        table.append(row(f"(other: {len(rest)} types)", sum(total_us[k] for k in rest), sum(count[k] for k in rest)))
    return OpBreakdown(
        batch_size=batch_size,
        runs=n,
        node_ms_per_run=node_us / 1e3 / n,
        run_ms_per_run=sum(e["dur"] for e in model_runs) / 1e3 / n,
        table=table,
    )


def _trace_ops(model_path: Path, cfg: ProfileConfig, feeds: dict, batch_size: int, trace_dest: Path | None):
    """Run a profiling session; return the op breakdown and leave the raw trace at ``trace_dest``."""
    with contextlib.ExitStack() as stack:
        if trace_dest is None:
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="nasdeploy-trace-")))
        else:
            folder = ensure_dir(trace_dest.parent)
        # ORT names the file <prefix>_<date>.json itself; a hidden prefix in the
        # destination folder lets one rename (atomic, same filesystem) finish it.
        sess = make_session(
            model_path, cfg.provider, cfg.threads, cfg.opt_level, profiling=True, profile_prefix=folder / ".ort_trace"
        )
        raw = None
        try:
            for _ in range(3 + cfg.trace_runs):  # 3 warm-up runs, dropped by op_breakdown
                sess.run(None, feeds)
            raw = Path(sess.end_profiling())
            events = json.loads(raw.read_text())
            if trace_dest is not None:
                os.replace(raw, trace_dest)
                raw = None
        finally:
            if raw is not None:
                with contextlib.suppress(OSError):
                    raw.unlink()
    return op_breakdown(events, cfg.trace_runs, cfg.top_ops, batch_size)


def _eager_timer(torch_model: Callable, feeds: dict) -> Callable[[], Any]:
    """A zero-argument closure running the PyTorch model on the same input, inference mode."""
    import torch

    args = [torch.from_numpy(a) for a in feeds.values()]

    def run():
        with torch.inference_mode():
            return torch_model(*args)

    return run


def _fmt(x: float | None) -> str:
    # Four significant digits: readable for 0.01 ms kernels and 1000 ms batches alike.
    return "–" if x is None else f"{x:.4g}"


def render_markdown(report: LatencyReport) -> str:
    """latency.md: one row per batch size, then the operator table."""
    c, fp = report.config, report.fingerprint
    lines = [
        f"# Latency of `{Path(report.model_path).name}`",
        "",
        f"- model: `{report.model_path}` (sha256 `{report.model_sha256[:16]}…`)",
        f"- machine: {fp['cpu']}, {fp['logical_cores']} logical cores, onnxruntime {fp['onnxruntime']} "
        f"(fingerprint `{fp['id']}`)",
        f"- {c.provider}, {c.threads} intra-op thread(s), optimization level `{c.opt_level}`, "
        f"{c.warmup} warm-up runs, ≥{c.repeats} timed runs per batch size",
        f"- load average before timing (1/5/15 min): {report.load_avg or 'n/a'} "
        f"on {fp['logical_cores']} cores (a busy machine makes figures drift)",
        "",
        "| batch | mean ms | std ms | p50 ms | p90 ms | p99 ms | samples/s | eager p50 ms | ORT/eager |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for b in report.batches:
        s = b.ort
        lines.append(
            f"| {b.batch_size} | {_fmt(s.mean_ms)} | {_fmt(s.std_ms)} | {_fmt(s.p50_ms)} | {_fmt(s.p90_ms)} "
            f"| {_fmt(s.p99_ms)} | {s.throughput_per_s:.1f} | {_fmt(b.eager.p50_ms if b.eager else None)} "
            f"| {_fmt(b.ort_over_eager_p50)} |"
        )
    o = report.ops
    lines += [
        "",
        f"## Operators (batch {o.batch_size}, mean of {o.runs} profiled runs)",
        "",
        f"Kernels {_fmt(o.node_ms_per_run)} ms of {_fmt(o.run_ms_per_run)} ms per run with the profiler on. "
        "Names are ORT's after graph optimization"
        + (
            " (fused `com.microsoft` kernels appear at levels extended/all)."
            if c.opt_level in ("all", "extended")
            else "."
        ),
        "",
        "| op type | ms/run | calls/run | share % |",
        "|---|---:|---:|---:|",
    ]
    for r in o.table:
        lines.append(f"| {r.op_type} | {_fmt(r.ms_per_run)} | {r.count / o.runs:g} | {r.share_pct:.1f} |")
    return "\n".join(lines) + "\n"


def profile(
    onnx_path: str | os.PathLike,
    cfg: ProfileConfig | None = None,
    out: str | os.PathLike | None = None,
    torch_model: Callable | None = None,
) -> LatencyReport:
    """Measure an ONNX model's latency with ONNX Runtime over a batch sweep.

    Args:
        onnx_path: the exported model; only this file is read. Its input
            names, shapes and dtypes come from the graph; the (dynamic) batch
            axis takes each batch size in turn.
        cfg: settings; defaults to ``ProfileConfig()``.
        out: the run directory; writes ``out/profile/latency.json``,
            ``latency.md`` and ``ort_trace.json``. None writes nothing.
        torch_model: optional PyTorch module (or any callable taking the input
            tensors) timed on the same input, same thread count, in the same
            run, for the ORT/eager ratio. Pass it in eval mode.

    Returns:
        LatencyReport with per-batch ORT (and eager) stats and the per-operator
        breakdown at the smallest batch size.

    Raises:
        ProfileError: missing or non-ONNX file, batch size < 1, unknown
            provider or optimization level, threads < 1, a fixed batch axis
            that does not match the requested batch sizes.

    Example:
        >>> cfg = ProfileConfig(batch_sizes=(1, 8))
        >>> report = profile("runs/x/export/model.onnx", cfg, out="runs/x")  # doctest: +SKIP
        >>> report.stats(1).p50_ms  # doctest: +SKIP
    """
    cfg = cfg or ProfileConfig()
    _check_config(cfg)
    path = Path(onnx_path)
    model = load_onnx(path, ProfileError)
    inputs, outputs = graph_inputs(model), graph_outputs(model)
    del model  # only the specs are needed; ORT loads the file itself
    # Shape problems (fixed batch axis, dynamic spatial dims) surface before any timing.
    feeds_by_batch = {b: random_feeds(inputs, b) for b in cfg.batch_sizes}
    fingerprint = machine_fingerprint(cfg.threads, cfg.opt_level, cfg.provider)
    sess = make_session(path, cfg.provider, cfg.threads, cfg.opt_level)
    load_before = load_avg()  # before timing

    torch_threads = None
    if torch_model is not None:
        import torch

        if getattr(torch_model, "training", False):
            # Training-mode BatchNorm/dropout time a different model and would
            # update the caller's running statistics.
            raise ProfileError(
                "the PyTorch model for the eager comparison is in training mode", "call model.eval() first"
            )

        # Same thread count as ORT, or the ratio compares thread counts, not runtimes.
        torch_threads = torch.get_num_threads()
        torch.set_num_threads(cfg.threads)
    batches = []
    try:
        for b, feeds in feeds_by_batch.items():
            kw = dict(warmup=cfg.warmup, repeats=cfg.repeats, min_time_s=cfg.min_time_s, max_time_s=cfg.max_time_s)
            ort_stats = measure(sess, feeds, **kw)
            eager = ratio = None
            if torch_model is not None:
                eager = measure(_eager_timer(torch_model, feeds), batch_size=b, **kw)
                ratio = ort_stats.p50_ms / eager.p50_ms
            batches.append(BatchLatency(b, ort_stats, eager, ratio))
    finally:
        if torch_threads is not None:
            torch.set_num_threads(torch_threads)
    del sess

    run = RunDir(out) if out is not None else None
    trace_batch = min(cfg.batch_sizes)
    ops = _trace_ops(
        path, cfg, feeds_by_batch[trace_batch], trace_batch, run.profile / "ort_trace.json" if run else None
    )

    report = LatencyReport(
        model_path=str(path.resolve()),
        model_sha256=file_sha256(path),
        inputs=[s.to_dict() for s in inputs],
        outputs=[s.to_dict() for s in outputs],
        fingerprint=fingerprint,
        config=cfg,
        batches=batches,
        ops=ops,
        load_avg=load_before,
    )
    if run is not None:
        report.files = {
            "latency_json": str(run.latency_json),
            "latency_md": str(run.latency_md),
            "ort_trace": str(run.profile / "ort_trace.json"),
        }
        atomic_write(run.latency_md, render_markdown(report))
        write_json(run.latency_json, report.to_dict())  # last: its presence marks the stage done
    return report
