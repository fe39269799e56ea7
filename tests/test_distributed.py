"""torch.distributed: 2 gloo CPU processes vs 1 process with the same global batch.

Each worker is a fresh ``python`` process with torchrun's environment (RANK,
WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT), exactly what ``torchrun`` gives it.

Tolerance: with several ranks every BatchNorm normalizes with the statistics of the
global batch (``distributed.sync_batchnorm``: a differentiable all-reduce of the
moments on gloo), and gradients are averaged weighted by sample counts, so the
two runs compute the same quantities — but in another summation order (sums of
shards, E[x^2] - mean^2 instead of torch's Welford): float rounding, ~1e-7
here, hence tolerances of 1e-5 rather than bit equality.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest
import torch

from nasdeploy.artifacts import RunDir, load_checkpoint, read_jsonl
from nasdeploy.data import batches, shard

WORKER = textwrap.dedent(
    """
    import json, sys, torch
    from nasdeploy.config import SearchConfig, TrainConfig
    from nasdeploy.data import Dataset, DataSpec
    from nasdeploy.strategies.darts import search
    from nasdeploy.space.genotype import GENOTYPES
    from nasdeploy.training import train

    torch.set_num_threads(1)
    kind, out = sys.argv[1], sys.argv[2]
    g = torch.Generator().manual_seed(0)
    n, classes = 224, 4   # 128 train (64 weight + 64 arch = 2 global batches of 32 each), 48 val, 48 test
    y = torch.arange(n) % classes
    x = torch.randn(n, 1, 8, 8, generator=g) * 0.5
    for c in range(classes):
        x[y == c, :, 2 * c : 2 * c + 2, :] += 1.5
    spec = DataSpec("synthetic", (1, 8, 8), classes, tuple(map(str, range(classes))), (0.0,), (1.0,))
    data = Dataset(spec, x[:128], y[:128], x[128:176], y[128:176], x[176:], y[176:])
    if kind == "search":
        cfg = SearchConfig(epochs=3, batch_size=32, C=4, layers=3, steps=2, multiplier=2, w_lr=0.05, a_lr=0.03,
                           primitives=("none", "skip_connect", "max_pool_3x3", "sep_conv_3x3"),
                           kernel="reference", seed=1)
        res = search(cfg, data, out, progress=False)
        result = {"genotype": res.genotype.to_dict(), "train_loss": [m["train_loss"] for m in res.metrics]}
    else:
        cfg = TrainConfig(epochs=2, batch_size=32, C=4, layers=2, auxiliary=False, drop_path_prob=0.0,
                          cutout=True, seed=1)
        res = train(GENOTYPES["DARTS_V2"], cfg, data, out, progress=False)
        result = {"best_val_acc": res.best_val_acc}
    print("RESULT " + json.dumps(result))
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(script, kind, out, world: int, timeout=240):
    """Start ``world`` workers with torchrun's environment and wait for all of them."""
    port = _free_port()
    procs = []
    for rank in range(world):
        env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
        if world > 1:
            env.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                       MASTER_PORT=str(port), LOCAL_WORLD_SIZE=str(world))
        procs.append(subprocess.Popen([sys.executable, str(script), kind, str(out)], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outs = []
    try:
        for p in procs:
            stdout, stderr = p.communicate(timeout=timeout)
            assert p.returncode == 0, stderr[-3000:]
            outs.append(json.loads(stdout.split("RESULT ", 1)[1]))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    return outs


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    path = tmp_path_factory.mktemp("worker") / "worker.py"
    path.write_text(WORKER)
    return path


def test_shards_of_a_global_batch_are_the_global_batch():
    x = torch.arange(70.0)[:, None]
    y = torch.arange(70)
    for world in (1, 2, 3):
        whole = [yb for _, yb in batches(x, y, 12, generator=torch.Generator().manual_seed(5))]
        parts = [[yb for _, yb in batches(x, y, 12 // world, generator=torch.Generator().manual_seed(5),
                                          rank=r, world_size=world)] for r in range(world)]
        assert all(len(p) == len(whole) for p in parts)
        for i, w in enumerate(whole):
            assert torch.equal(torch.cat([p[i] for p in parts]), w)
    assert [shard(5, r, 2) for r in range(2)] == [slice(0, 2), slice(2, 5)]


GRAD_WORKER = textwrap.dedent(
    """
    import json, sys, torch
    from nasdeploy.distributed import average_gradients, init_from_env
    from nasdeploy.data import batches
    ctx = init_from_env()
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(13, 5, generator=g), torch.randint(0, 3, (13,), generator=g)
    torch.manual_seed(0)
    model = torch.nn.Linear(5, 3)
    xb, yb = next(batches(x, y, 13 // ctx.world_size + 1, rank=ctx.rank, world_size=ctx.world_size))
    torch.nn.functional.cross_entropy(model(xb), yb).backward()
    average_gradients(model.parameters(), ctx, weight=len(yb))
    print("RESULT " + json.dumps([p.grad.tolist() for p in model.parameters()]))
    """
)


def test_gradient_average_is_the_global_batch_gradient(tmp_path):
    script = tmp_path / "grad.py"
    script.write_text(GRAD_WORKER)
    # 13 samples: ranks get 7 and 6 of one global batch of 14 -> a weighted average is needed to be exact
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(13, 5, generator=g), torch.randint(0, 3, (13,), generator=g)
    torch.manual_seed(0)
    model = torch.nn.Linear(5, 3)
    torch.nn.functional.cross_entropy(model(x), y).backward()
    want = [p.grad for p in model.parameters()]
    outs = _launch(script, "-", tmp_path, world=2, timeout=120)
    for out in outs:  # both ranks hold the same, global, gradient
        for got, w in zip(out, want):
            torch.testing.assert_close(torch.tensor(got), w, rtol=1e-6, atol=1e-7)


def test_two_process_search_matches_one_process(worker, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    (r1,) = _launch(worker, "search", one, world=1)
    r2 = _launch(worker, "search", two, world=2)
    assert r2[0] == r2[1]  # the ranks agree exactly with each other (genotype, loss curve)
    m1, m2 = read_jsonl(RunDir(one).search_metrics), read_jsonl(RunDir(two).search_metrics)
    assert len(m1) == len(m2) == 3
    for a, b in zip(m1, m2):
        for key in ("train_loss", "arch_loss", "val_loss", "train_acc", "val_acc"):
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6), key
    a1, a2 = read_jsonl(RunDir(one).alphas)[-1], read_jsonl(RunDir(two).alphas)[-1]
    for key in ("alphas_normal", "alphas_reduce"):  # |alphas| reach ~0.2 after 6 Adam steps of 0.03
        torch.testing.assert_close(torch.tensor(a2[key]), torch.tensor(a1[key]), rtol=0, atol=1e-5)
    assert r2[0]["genotype"] == r1["genotype"]


def test_two_process_train_matches_one_process(worker, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    (r1,) = _launch(worker, "train", one, world=1)
    r2 = _launch(worker, "train", two, world=2)
    assert r2[0] == r2[1]
    m1, m2 = read_jsonl(RunDir(one).train_metrics), read_jsonl(RunDir(two).train_metrics)
    for a, b in zip(m1, m2, strict=True):
        for key in ("train_loss", "val_loss", "val_acc"):
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6), key
    s1 = load_checkpoint(RunDir(one).model, "model")["state_dict"]
    s2 = load_checkpoint(RunDir(two).model, "model")["state_dict"]
    for k in s1:
        if s1[k].is_floating_point():
            torch.testing.assert_close(s2[k], s1[k], rtol=1e-4, atol=1e-5, msg=k)
        else:
            assert torch.equal(s2[k], s1[k]), k


def _launch_cli(args, world: int, timeout=400):
    """``python -m nasdeploy.cli ARGS`` in ``world`` processes with torchrun's environment: (rc, stderr) each."""
    port = _free_port()
    procs = []
    for rank in range(world):
        env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
        env.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=str(port), LOCAL_WORLD_SIZE=str(world), OMP_NUM_THREADS="1")
        procs.append(subprocess.Popen([sys.executable, "-m", "nasdeploy.cli", *map(str, args)], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    try:
        return [(p.returncode, err) for p in procs for _, err in [p.communicate(timeout=timeout)]]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()


def test_two_process_pipeline_writes_one_run_from_rank_0(tmp_path):
    out = tmp_path / "run"
    res = _launch_cli(["pipeline", "--preset", "tiny", "--search-epochs", 1, "--train-epochs", 1, "--kernel",
                       "reference", "--threads", 1, "--out", out, "--quiet"], world=2)
    assert all(rc == 0 for rc, _ in res), res[0][1][-3000:] + res[1][1][-3000:]
    run = RunDir(out)
    for f in (run.genotype, run.model, run.onnx, run.latency_json, out / "summary.json"):
        assert f.is_file(), f
    summary = json.loads((out / "summary.json").read_text())
    assert 0 <= summary["train"]["test_acc"] <= 1 and summary["latency"]["p50_ms"]["fp32"]["1"] > 0
    assert not list(out.rglob(".*.tmp"))  # no half-written file of a second writer


@pytest.mark.parametrize("strategy", ["random", "evolution", "rl"])
def test_black_box_strategies_refuse_torchrun_with_one_line(tmp_path, strategy):
    res = _launch_cli(["search", "--strategy", strategy, "--preset", "tiny", "--out", tmp_path / strategy,
                       "--quiet"], world=2, timeout=120)
    for rc, err in res:
        assert rc == 1, err
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert lines[-1].startswith("Error: ") and "runs in one process" in lines[-1] and "Traceback" not in err
    assert not (tmp_path / strategy / "search").exists()
