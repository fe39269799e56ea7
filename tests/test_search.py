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
