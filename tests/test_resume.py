"""Interruption and resume: SIGKILL and SIGTERM mid-epoch, truncated checkpoints named.

A resumed run must end with the same genotype, alphas and weights as an
uninterrupted run with the same seed (CPU, same thread count: bit for bit).
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from click.testing import CliRunner

from nasdeploy.artifacts import RunDir, load_checkpoint, read_jsonl
from nasdeploy.cli import main
from nasdeploy.config import SearchConfig, TrainConfig
from nasdeploy.data import num_batches
from nasdeploy.distributed import Interrupted, StopFlag
from nasdeploy.space.genotype import GENOTYPES
from nasdeploy.strategies.darts import search
from nasdeploy.training import train

SEARCH_ARGS = ["search", "--preset", "tiny", "--kernel", "reference", "--epochs", "3", "--batch-size", "16",
               "--seed", "4", "--threads", "1", "--quiet"]


@pytest.fixture(scope="module")
def small_npz(tmp_path_factory):
    """320 learnable 1x8x8 images of 4 classes: 7 weight steps per search epoch at batch 16."""
    import numpy as np

    rng = np.random.default_rng(0)
    y = np.arange(320) % 4
    x = rng.normal(0, 0.3, size=(320, 1, 8, 8)).astype(np.float32)
    for i, k in enumerate(y):
        x[i, :, 2 * k : 2 * k + 2, :] += 1.0
    path = tmp_path_factory.mktemp("data") / "small.npz"
    np.savez(path, x=x, y=y)
    return path


def _cli(data, out, *extra):
    return [sys.executable, "-m", "nasdeploy.cli", *SEARCH_ARGS, "--dataset", str(data), "--out", str(out), *extra]


def _wait_for(path, proc, timeout=180):
    t0 = time.monotonic()
    while not path.exists():
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert time.monotonic() - t0 < timeout, f"{path} never appeared"
        time.sleep(0.02)


def _same_search(a, b):
    ra, rb = RunDir(a), RunDir(b)
    assert ra.genotype.read_bytes() == rb.genotype.read_bytes()
    la, lb = read_jsonl(ra.alphas), read_jsonl(rb.alphas)
    assert [r["epoch"] for r in la] == [r["epoch"] for r in lb]
    assert la[-1]["alphas_normal"] == lb[-1]["alphas_normal"]
    assert la[-1]["alphas_reduce"] == lb[-1]["alphas_reduce"]
    sa, sb = load_checkpoint(ra.supernet, "supernet")["state_dict"], load_checkpoint(rb.supernet, "supernet")[
        "state_dict"]
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    assert [m["train_loss"] for m in read_jsonl(ra.search_metrics)] == [
        m["train_loss"] for m in read_jsonl(rb.search_metrics)]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, small_npz):
    out = tmp_path_factory.mktemp("whole")
    subprocess.run(_cli(small_npz, out), check=True, capture_output=True, text=True, timeout=600)
    return out


def test_search_killed_mid_epoch_resumes_to_the_same_result(uninterrupted, small_npz, tmp_path):
    proc = subprocess.Popen(_cli(small_npz, tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(RunDir(tmp_path).supernet, proc)  # epoch 1 of 3 is checkpointed; epoch 2 is running
    time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert not RunDir(tmp_path).genotype.exists()  # really stopped mid-run
    assert load_checkpoint(RunDir(tmp_path).supernet, "supernet")["epoch"] < 2
    subprocess.run(_cli(small_npz, tmp_path, "--resume"), check=True, capture_output=True, text=True, timeout=600)
    _same_search(uninterrupted, tmp_path)


@pytest.mark.slow  # ~60 s on 2 shared cores; the in-process tests below cover the same mid-epoch path
def test_search_sigterm_saves_mid_epoch_checkpoint_and_resumes_exactly(uninterrupted, small_npz, tmp_path):
    proc = subprocess.Popen(_cli(small_npz, tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(RunDir(tmp_path).supernet, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert "Interrupted: stopped by SIGTERM at epoch 2 step" in err and "--resume" in err
    assert "Traceback" not in err
    ck = load_checkpoint(RunDir(tmp_path).supernet, "supernet")
    assert ck["partial"]["epoch"] == 1 and ck["epoch"] == 0
    subprocess.run(_cli(small_npz, tmp_path, "--resume"), check=True, capture_output=True, text=True, timeout=600)
    _same_search(uninterrupted, tmp_path)


class StopAt(StopFlag):
    """A stop flag that 'receives' SIGTERM at the n-th poll (one poll per step)."""

    def __init__(self, n: int):
        super().__init__()
        self.polls, self.n = 0, n

    @property
    def requested(self) -> bool:
        self.polls += 1
        if self.polls >= self.n:
            self.signum = signal.SIGTERM
        return self.signum is not None


def test_search_stopped_at_any_step_resumes_bit_exactly(digits, tmp_path):
    cfg = SearchConfig(epochs=2, batch_size=128, C=4, layers=3, steps=2, multiplier=2, kernel="reference", seed=3,
                       threads=1)
    whole = search(cfg, digits, tmp_path / "a", progress=False)
    per_epoch = num_batches(round(0.5 * len(digits.y_train)), 128)
    with pytest.raises(Interrupted, match="SIGTERM at epoch 2 step 2/"):
        search(cfg, digits, tmp_path / "b", progress=False, stop=StopAt(per_epoch + 3))
    ck = load_checkpoint(RunDir(tmp_path / "b").supernet, "supernet")
    assert ck["partial"]["step"] == 2 and ck["partial"]["epoch"] == 1
    resumed = search(cfg, digits, tmp_path / "b", progress=False, resume=True)
    assert resumed.genotype == whole.genotype
    _same_search(tmp_path / "a", tmp_path / "b")


def test_train_stopped_mid_epoch_resumes_bit_exactly(tmp_path):
    from test_train import synthetic_data

    data = synthetic_data()
    cfg = TrainConfig(epochs=2, batch_size=16, C=4, layers=3, auxiliary=True, drop_path_prob=0.2, cutout=True,
                      seed=3, threads=1)
    train(GENOTYPES["DARTS_V2"], cfg, data, tmp_path / "a", progress=False)
    with pytest.raises(Interrupted, match="SIGTERM at epoch 2 step 1"):
        stop = StopAt(num_batches(len(data.y_train), 16) + 2)
        train(GENOTYPES["DARTS_V2"], cfg, data, tmp_path / "b", progress=False, stop=stop)
    assert load_checkpoint(RunDir(tmp_path / "b").train_state, "train_state")["partial"]["step"] == 1
    train(GENOTYPES["DARTS_V2"], cfg, data, tmp_path / "b", progress=False, resume=True)
    sa = load_checkpoint(RunDir(tmp_path / "a").model, "model")["state_dict"]
    sb = load_checkpoint(RunDir(tmp_path / "b").model, "model")["state_dict"]
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    assert [m["train_loss"] for m in read_jsonl(RunDir(tmp_path / "a").train_metrics)] == [
        m["train_loss"] for m in read_jsonl(RunDir(tmp_path / "b").train_metrics)]


@pytest.mark.parametrize("stage", ["search", "train"])
def test_truncated_checkpoint_is_detected_and_named(tmp_path, stage):
    run = RunDir(tmp_path)
    path = run.supernet if stage == "search" else run.train_state
    path.parent.mkdir(parents=True)
    good = tmp_path / "good.pt"
    torch.save({"format": "x", "w": torch.zeros(1000)}, good)
    path.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    before = path.read_bytes()
    args = (["search", "--dataset", "digits", "--preset", "tiny", "--kernel", "reference"] if stage == "search"
            else ["train", "--genotype", "DARTS_V2", "--dataset", "digits", "--preset", "tiny"])
    res = CliRunner().invoke(main, [*args, "--out", str(tmp_path), "--resume", "--quiet"])
    assert res.exit_code == 1
    assert f"Error: {path} is not a readable nasdeploy checkpoint (truncated" in res.output
    assert "Traceback" not in res.output
    assert path.read_bytes() == before


def test_signal_handlers_are_restored(digits, tmp_path):
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    search(dataclasses.replace(SearchConfig(epochs=1, batch_size=256, C=2, layers=1, steps=1, multiplier=1),
                               kernel="reference"), digits, tmp_path, progress=False)
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before
    assert os.getpid()  # the test process itself was never signalled


def test_cli_seed_makes_search_and_train_bit_for_bit_repeatable(small_npz, tmp_path):
    threads = torch.get_num_threads()
    try:
        for name in ("a", "b"):
            out = str(tmp_path / name)
            for args in (["search", "--dataset", str(small_npz), "--preset", "tiny", "--epochs", "1", "--seed", "7",
                          "--threads", "1", "--quiet", "--out", out],
                         ["train", "--genotype", str(tmp_path / name / "search" / "genotype.json"), "--dataset",
                          str(small_npz), "--preset", "tiny", "--epochs", "1", "--seed", "7", "--threads", "1",
                          "--quiet", "--out", out]):
                res = CliRunner().invoke(main, args)
                assert res.exit_code == 0, res.output
    finally:
        torch.set_num_threads(threads)
    a, b = RunDir(tmp_path / "a"), RunDir(tmp_path / "b")
    assert a.genotype.read_bytes() == b.genotype.read_bytes()
    assert a.alphas.read_bytes() == b.alphas.read_bytes()  # alphas as JSON floats: every bit
    for path, kind in ((a.supernet, "supernet"), (a.model, "model")):
        other = b.root / path.relative_to(a.root)
        sa, sb = load_checkpoint(path, kind)["state_dict"], load_checkpoint(other, kind)["state_dict"]
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa), path.name
    strip = [{k: v for k, v in m.items() if k != "seconds"} for m in read_jsonl(a.train_metrics)]
    assert strip == [{k: v for k, v in m.items() if k != "seconds"} for m in read_jsonl(b.train_metrics)]


def test_sigterm_only_sets_the_flag_inside_the_block():
    from nasdeploy.distributed import stop_on_signals

    with stop_on_signals() as flag:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.01)  # the handler runs between bytecodes of the main thread
        assert flag.requested and flag.signum == signal.SIGTERM
