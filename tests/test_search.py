"""A tiny DARTS search on digits: learns, writes loadable artifacts, is deterministic and resumable."""

import dataclasses

import pytest
import torch

from nasdeploy.artifacts import RunDir, load_checkpoint, read_jsonl
from nasdeploy.config import SearchConfig
from nasdeploy.space.genotype import Genotype
from nasdeploy.strategies.darts import search

TINY = SearchConfig(epochs=4, batch_size=64, C=4, layers=3, steps=2, multiplier=2, w_lr=0.05, a_lr=3e-3,
                    kernel="reference", seed=3)


def test_tiny_search_learns_and_writes_artifacts(digits, tmp_path):
    res = search(TINY, digits, tmp_path, progress=False)
    run = RunDir(tmp_path)
    assert res.val_acc > 0.5  # chance is 0.1
    assert Genotype.load(run.genotype) == res.genotype
    metrics = read_jsonl(run.search_metrics)
    assert [m["epoch"] for m in metrics] == [0, 1, 2, 3]
    assert metrics[-1]["val_acc"] > metrics[0]["val_acc"] or metrics[0]["val_acc"] > 0.5
    alphas = read_jsonl(run.alphas)
    assert len(alphas) == 4 and torch.tensor(alphas[-1]["alphas_normal"]).shape == (5, 8)
    ck = load_checkpoint(run.supernet, "supernet")
    assert ck["epoch"] == 3 and "a_optimizer" in ck and "rng" in ck
    # torch.load(weights_only=True) is what load_checkpoint uses: the checkpoint holds no pickled objects
    torch.load(run.supernet, weights_only=True)


class _Killed(Exception):
    pass


def _kill_at_epoch(n):
    def log(record):
        if record["epoch"] == n:
            raise _Killed
    return log


def test_search_is_deterministic_and_resume_matches(digits, tmp_path):
    cfg = dataclasses.replace(TINY, epochs=2)
    a = search(cfg, digits, tmp_path / "a", progress=False)
    with pytest.raises(_Killed):  # interrupted during epoch 1: only epoch 0 is checkpointed
        search(cfg, digits, tmp_path / "b", progress=False, log=_kill_at_epoch(1))
    assert [m["epoch"] for m in read_jsonl(RunDir(tmp_path / "b").search_metrics)] == [0]
    b2 = search(cfg, digits, tmp_path / "b", progress=False, resume=True)
    sa = load_checkpoint(RunDir(tmp_path / "a").supernet, "supernet")["state_dict"]
    sb = load_checkpoint(RunDir(tmp_path / "b").supernet, "supernet")["state_dict"]
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    assert a.genotype == b2.genotype
    assert [m["train_loss"] for m in a.metrics] == [m["train_loss"] for m in b2.metrics]


@pytest.mark.slow
def test_second_order_search_runs(digits, tmp_path):
    res = search(dataclasses.replace(TINY, order=2, epochs=2), digits, tmp_path, progress=False)
    assert res.val_acc > 0.3


def test_warmup_epochs_freeze_alpha_then_release_it(digits, tmp_path):
    cfg = dataclasses.replace(TINY, epochs=3, warmup_epochs=2)
    search(cfg, digits, tmp_path, progress=False)
    a = [torch.tensor(r["alphas_normal"]) for r in read_jsonl(RunDir(tmp_path).alphas)]
    assert torch.equal(a[0], a[1])  # warm-up: weights only
    assert not torch.equal(a[1], a[2])  # then alpha moves


def test_alpha_signal_in_search_summary(digits, tmp_path):
    from nasdeploy.artifacts import read_json
    from nasdeploy.space.cell import op_margins
    from nasdeploy.strategies.dispatch import run_strategy

    res = run_strategy(dataclasses.replace(TINY, epochs=3), digits, tmp_path, progress=False, pictures=False)
    sig = read_json(RunDir(tmp_path).search / "summary.json")["signal"]
    last = read_jsonl(RunDir(tmp_path).alphas)[-1]
    w = [torch.tensor(last[k]).softmax(-1) for k in ("alphas_normal", "alphas_reduce")]
    margins = torch.cat([op_margins(x, TINY.primitives) for x in w])
    assert sig["margin_median"] == pytest.approx(float(margins.median()))
    assert sig["weight_min"] == pytest.approx(min(float(x.min()) for x in w))
    assert len(sig["agreement_last_epochs"]) == 2 and sig["stable"] == (min(sig["agreement_last_epochs"]) == 1.0)
    assert res.genotype == Genotype.load(RunDir(tmp_path).genotype)


def test_op_margins_and_agreement_by_hand():
    from nasdeploy.space.cell import genotype_agreement, op_margins

    w = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.2, 0.7]])
    assert op_margins(w, ["none", "a", "b"]).tolist() == pytest.approx([0.1, 0.5])  # 'none' is never chosen
    a, b = "sep_conv_3x3", "skip_connect"
    g = Genotype.from_dict({"normal": [[a, 0], [b, 1]], "normal_concat": [2],
                            "reduce": [[a, 0], [a, 1]], "reduce_concat": [2]})
    h = Genotype.from_dict({"normal": [[b, 1], [a, 0]], "normal_concat": [2],
                            "reduce": [[a, 0], [b, 1]], "reduce_concat": [2]})
    assert genotype_agreement(g, h) == 0.75  # node order within a node does not matter; one reduce edge differs
