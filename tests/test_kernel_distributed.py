"""The fused mixed op under torchrun: 2 gloo CPU processes run it, with SyncBatchNorm inside, and match 1 process.

Every BatchNorm is a ``distributed.GlooSyncBatchNorm`` on 2 ranks; the fused op recognises it and
all-reduces the batch statistics (and, in backward, their gradient terms) inside
``nasdeploy::mixed_op``. Without that reduction each rank would normalize its half-batch with its
own statistics and the losses would differ from the 1-process run far beyond 1e-5.
"""

from __future__ import annotations

import textwrap

import pytest
from test_distributed import _launch

from nasdeploy.artifacts import RunDir, read_jsonl
from nasdeploy.ops import kernel_status

if not kernel_status()["cpu"]["available"]:
    pytest.skip("the fused CPU kernel is not built", allow_module_level=True)

WORKER = textwrap.dedent(
    """
    import json, sys, torch
    from nasdeploy.config import SearchConfig
    from nasdeploy.data import Dataset, DataSpec
    from nasdeploy.strategies.darts import search

    torch.set_num_threads(1)
    kind, out = sys.argv[1], sys.argv[2]
    g = torch.Generator().manual_seed(0)
    n, classes = 176, 4   # 128 train (2 global batches of 32 per half), 48 val
    y = torch.arange(n) % classes
    x = torch.randn(n, 1, 8, 8, generator=g) * 0.5
    for c in range(classes):
        x[y == c, :, 2 * c : 2 * c + 2, :] += 1.5
    spec = DataSpec("synthetic", (1, 8, 8), classes, tuple(map(str, range(classes))), (0.0,), (1.0,))
    data = Dataset(spec, x[:128], y[:128], x[128:], y[128:], x[128:], y[128:])
    cfg = SearchConfig(epochs=2, batch_size=32, C=4, layers=3, steps=2, multiplier=2, w_lr=0.05, a_lr=0.03,
                       primitives=("none", "skip_connect", "max_pool_3x3", "avg_pool_3x3", "sep_conv_3x3",
                                   "dil_conv_3x3"),
                       kernel="fused", order=int(kind), seed=1)
    with torch.profiler.profile() as prof:
        res = search(cfg, data, out, progress=False)
    names = [e.name for e in prof.events()]
    print("RESULT " + json.dumps({
        "genotype": res.genotype.to_dict(), "train_loss": [m["train_loss"] for m in res.metrics],
        "fused": names.count("nasdeploy::mixed_op"), "fused_backward": names.count("nasdeploy::mixed_op_backward"),
        "reference_pools": names.count("aten::max_pool2d_with_indices"),
        "all_reduce": sum("all_reduce" in n for n in names)}))
    """
)


def test_two_process_fused_search_runs_the_fused_op_and_matches_one_process(tmp_path):
    order = 1  # second order under torchrun takes w' from each rank's own gradient: not the 1-process w'

    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    one, two = tmp_path / "one", tmp_path / "two"
    (r1,) = _launch(script, str(order), one, world=1)
    r2 = _launch(script, str(order), two, world=2)
    edges, steps, epochs = 5 * 3, 2, 2  # 5 edges per cell (steps=2), 3 cells; 2 steps per epoch
    forwards = 2 if order == 1 else 5  # arch + weight step; order 2: w', L_val(w'), 2 HVP losses + weight step
    for r in (r1, *r2):
        assert r["reference_pools"] == 0  # no candidate fell back to the reference
        assert r["fused_backward"] == forwards * steps * epochs * edges
        assert r["fused"] == r["fused_backward"] + epochs * edges  # + one eval pass (batch 256 > 48) per epoch
    assert r2[0]["all_reduce"] >= 2 * r2[0]["fused_backward"]  # a reduction in every op's forward and backward
    assert r1["all_reduce"] == 0
    assert r2[0]["train_loss"] == r2[1]["train_loss"] and r2[0]["genotype"] == r2[1]["genotype"]
    m1, m2 = read_jsonl(RunDir(one).search_metrics), read_jsonl(RunDir(two).search_metrics)
    for a, b in zip(m1, m2, strict=True):
        for key in ("train_loss", "arch_loss", "val_loss", "train_acc", "val_acc"):
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6), key
    a1, a2 = read_jsonl(RunDir(one).alphas)[-1], read_jsonl(RunDir(two).alphas)[-1]
    for key in ("alphas_normal", "alphas_reduce"):
        for row1, row2 in zip(a1[key], a2[key], strict=True):
            assert row2 == pytest.approx(row1, abs=1e-5), key
    assert r2[0]["genotype"] == r1["genotype"]
