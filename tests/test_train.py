"""Retraining: files, reloading, determinism, exact resume, checkpoint mismatch."""

from __future__ import annotations

import dataclasses
import importlib
import json
import math

import pytest
import torch

from nasdeploy.artifacts import RunDir, load_checkpoint, read_jsonl, save_checkpoint
from nasdeploy.config import TrainConfig
from nasdeploy.data import Dataset, DataSpec
from nasdeploy.errors import CheckpointError, ConfigError
from nasdeploy.space.genotype import GENOTYPES
from nasdeploy.training import cutout, evaluate, is_better_epoch, load_network, train

GENOTYPE = GENOTYPES["DARTS_V2"]
CFG = TrainConfig(
    epochs=3, batch_size=32, C=4, layers=3, auxiliary=True, drop_path_prob=0.2, cutout=True, seed=3, threads=1
)  # bitwise results need the same thread count

# nasdeploy.train is the API function; the module lives in sys.modules under the same name
train_mod = importlib.import_module("nasdeploy.training")


def synthetic_data(n_per_class: int = 40, classes: int = 3, seed: int = 0) -> Dataset:
    """A learnable 1x8x8 problem: each class lights up its own band of rows, plus noise."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(classes).repeat_interleave(n_per_class)
    x = torch.randn(len(y), 1, 8, 8, generator=g) * 0.5
    for c in range(classes):
        x[y == c, :, 2 * c : 2 * c + 2, :] += 2.0
    perm = torch.randperm(len(y), generator=g)
    x, y = x[perm], y[perm]
    n_tr, n_va = int(0.6 * len(y)), int(0.2 * len(y))
    spec = DataSpec("synthetic", (1, 8, 8), classes, tuple(f"c{i}" for i in range(classes)), (0.5,), (0.25,))
    return Dataset(
        spec, x[:n_tr], y[:n_tr], x[n_tr : n_tr + n_va], y[n_tr : n_tr + n_va], x[n_tr + n_va :], y[n_tr + n_va :]
    )


@pytest.fixture(scope="module")
def data() -> Dataset:
    return synthetic_data()


@pytest.fixture(scope="module")
def run(tmp_path_factory, data):
    out = tmp_path_factory.mktemp("run")
    threads = torch.get_num_threads()  # train() sets cfg.threads process-wide; restore it
    try:
        result = train(GENOTYPE, CFG, data, out, progress=False)
    finally:
        torch.set_num_threads(threads)
    return out, result


def _state(path, kind="model"):
    return load_checkpoint(path, kind)["state_dict"]


def _assert_same_weights(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_train_writes_every_file_with_per_epoch_metrics(run):
    out, result = run
    rd = RunDir(out)
    for p in (rd.model, rd.best, rd.train_state, rd.train_metrics):
        assert p.is_file(), p
    assert result.checkpoint == rd.model and result.best == rd.best and result.epochs == 3
    records = read_jsonl(rd.train_metrics)
    assert [r["epoch"] for r in records] == [1, 2, 3]
    for r in records:
        assert {"train_loss", "train_acc", "val_loss", "val_acc", "lr", "drop_path", "seconds"} <= r.keys()
    # cosine schedule per epoch and the linear drop-path ramp
    assert [r["lr"] for r in records] == pytest.approx([CFG.lr, CFG.lr * 0.75, CFG.lr * 0.25])
    assert [r["drop_path"] for r in records] == pytest.approx([0.0, CFG.drop_path_prob / 3, CFG.drop_path_prob * 2 / 3])
    assert result.best_val_acc == max(r["val_acc"] for r in records)
    assert 0.0 <= result.test_acc <= 1.0 and result.n_params > 0


def test_best_epoch_is_the_highest_val_accuracy_then_the_lowest_val_loss(run):
    # A default digits run's history: val accuracy 0.994 first at epoch 7, again at 10-12 with a
    # third of the loss. The first-reached rule kept epoch 7 (test 0.975); the tie-break keeps 10.
    history = [(0.956, 0.181), (0.994, 0.040), (0.978, 0.044), (0.983, 0.063), (0.994, 0.022), (0.994, 0.026),
               (0.994, 0.022)]
    best = (-1.0, math.inf, None)
    for epoch, (acc, loss) in enumerate(history, start=6):
        if is_better_epoch(acc, loss, best[0], best[1]):
            best = (acc, loss, epoch)
    assert best == (0.994, 0.022, 10)
    # The real run picked its model.pt epoch by the same rule.
    out, _ = run
    records = read_jsonl(RunDir(out).train_metrics)
    want = max(records, key=lambda r: (r["val_acc"], -r["val_loss"], -r["epoch"]))["epoch"]
    assert load_checkpoint(RunDir(out).model, "model")["metrics"]["best_epoch"] == want


def test_model_pt_loads_with_weights_only_and_reproduces_its_accuracy(run, data):
    out, result = run
    payload = torch.load(result.checkpoint, weights_only=True)
    keys = {"genotype", "network", "state_dict", "data", "metrics", "train_config", "format", "version"}
    assert keys <= payload.keys()
    json.dumps({k: v for k, v in payload.items() if k != "state_dict"})  # everything else is JSON-able
    assert payload["genotype"] == GENOTYPE.to_dict()
    assert payload["data"] == data.spec.to_dict()
    assert payload["metrics"]["test_acc"] == result.test_acc
    assert payload["metrics"]["n_params"] == result.n_params

    net, loaded = load_network(result.checkpoint)
    assert not net.training
    _, acc = evaluate(net, data.x_test, data.y_test, batch_size=7)
    assert acc == result.test_acc
    # model.pt holds the best-by-validation weights, the same as best.pt
    best, _ = load_network(result.best)
    with torch.no_grad():
        torch.testing.assert_close(net(data.x_test), best(data.x_test), rtol=0, atol=0)


def test_training_is_deterministic_for_a_seed(run, data, tmp_path):
    out, result = run
    again = train(GENOTYPE, CFG, data, tmp_path, progress=False)
    _assert_same_weights(_state(result.checkpoint), _state(again.checkpoint))
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in read_jsonl(RunDir(out).train_metrics)]
    assert strip == [{k: v for k, v in r.items() if k != "seconds"} for r in read_jsonl(RunDir(tmp_path).train_metrics)]


def test_resume_from_last_pt_matches_an_uninterrupted_run(run, data, tmp_path, monkeypatch):
    out, result = run

    class Killed(Exception):
        pass

    real_save = train_mod.save_checkpoint

    def save_then_die(path, payload, kind):
        real_save(path, payload, kind)
        if kind == "train_state" and payload["epoch"] == 2:  # after an epoch that drew drop-path masks
            raise Killed

    monkeypatch.setattr(train_mod, "save_checkpoint", save_then_die)
    with pytest.raises(Killed):
        train(GENOTYPE, CFG, data, tmp_path, progress=False)
    monkeypatch.setattr(train_mod, "save_checkpoint", real_save)
    assert not RunDir(tmp_path).model.exists()
    # scramble the global RNG: resume must restore it from last.pt
    torch.manual_seed(12345)
    resumed = train(GENOTYPE, CFG, data, tmp_path, progress=False, resume=True)
    _assert_same_weights(_state(result.checkpoint), _state(resumed.checkpoint))
    _assert_same_weights(
        _state(RunDir(out).train_state, "train_state"), _state(RunDir(tmp_path).train_state, "train_state")
    )
    assert [r["epoch"] for r in read_jsonl(RunDir(tmp_path).train_metrics)] == [1, 2, 3]
    assert resumed.test_acc == result.test_acc


def test_resume_refuses_another_recipe_or_a_missing_state(run, data, tmp_path):
    out, _ = run
    with pytest.raises(CheckpointError, match="train.lr"):
        train(GENOTYPE, dataclasses.replace(CFG, lr=0.1), data, out, progress=False, resume=True)
    with pytest.raises(CheckpointError, match="genotype"):
        train(GENOTYPES["DARTS_V1"], CFG, data, out, progress=False, resume=True)
    with pytest.raises(CheckpointError, match="does not exist"):
        train(GENOTYPE, CFG, data, tmp_path, progress=False, resume=True)


def test_swapped_genotype_in_model_pt_is_a_checkpoint_error(run, tmp_path):
    _, result = run
    payload = load_checkpoint(result.checkpoint, "model")
    payload["genotype"] = GENOTYPES["DARTS_V1"].to_dict()
    save_checkpoint(tmp_path / "model.pt", payload, "model")
    with pytest.raises(CheckpointError, match="state_dict does not match the genotype/network"):
        load_network(tmp_path / "model.pt")
    payload = load_checkpoint(result.checkpoint, "model")
    payload["network"] = {**payload["network"], "C": 6}
    save_checkpoint(tmp_path / "model.pt", payload, "model")
    with pytest.raises(CheckpointError, match="state_dict does not match"):
        load_network(tmp_path / "model.pt")
    # a training state is not a model checkpoint
    with pytest.raises(CheckpointError, match="not a model checkpoint"):
        load_network(RunDir(result.checkpoint.parent.parent).train_state)


def test_cutout_is_seeded_by_its_generator_and_leaves_the_global_rng_alone():
    x = torch.ones(16, 2, 8, 8)
    before = torch.get_rng_state()
    a = cutout(x, 4, torch.Generator().manual_seed(0))
    b = cutout(x, 4, torch.Generator().manual_seed(0))
    assert torch.equal(torch.get_rng_state(), before)
    assert torch.equal(a, b)
    holes = (a == 0).sum(dim=(2, 3))
    assert torch.equal(holes[:, 0], holes[:, 1])  # the same square in every channel
    assert holes.max() <= 16 and holes.sum() > 0 and (a != 0).any()


def test_random_shift_translates_each_image_against_a_reference_crop():
    from nasdeploy.training import random_shift

    x = torch.randn(12, 3, 8, 8)
    g = torch.Generator().manual_seed(5)
    out = random_shift(x, 2, g)
    # the same draws, replayed: dy then dx per image, offsets into the replicate-padded image
    g2 = torch.Generator().manual_seed(5)
    dy, dx = torch.randint(5, (12, 1), generator=g2), torch.randint(5, (12, 1), generator=g2)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2), mode="replicate")
    for i in range(12):
        a, b = int(dy[i]), int(dx[i])
        assert torch.equal(out[i], padded[i, :, a:a + 8, b:b + 8])
    assert not torch.equal(out, x)  # some image moved
    assert torch.equal(random_shift(x, 0, g), x)


def test_shift_as_large_as_the_image_is_refused(data):
    cfg = TrainConfig(epochs=1, batch_size=16, C=4, layers=3, shift=8)
    with pytest.raises(ConfigError, match="shift must be smaller"):
        train_mod.train(GENOTYPE, cfg, data, "/tmp/nasdeploy-shift-refused", progress=False)


def test_evaluate_uses_eval_mode_and_restores_the_mode(data):
    net = train_mod.Network(GENOTYPE, 4, 3, 3, in_channels=1).train()
    loss1, acc1 = evaluate(net, data.x_val, data.y_val, batch_size=5)
    loss2, acc2 = evaluate(net, data.x_val, data.y_val, batch_size=64)
    assert net.training
    assert acc1 == acc2 and loss1 == pytest.approx(loss2, abs=1e-5)  # batch-size independent
