"""The run directory as the source of truth: stages read the run's config, refuse to overwrite finished
work, record what they consumed, and the run summary carries the headline figures."""

import json

import pytest
import torch
from click.testing import CliRunner

from nasdeploy.artifacts import RunDir, load_checkpoint
from nasdeploy.cli import main
from nasdeploy.config import load_config
from nasdeploy.data import load_dataset
from nasdeploy.runs import read_record, stale_reason
from nasdeploy.stages import pipeline

TINY = ("--preset", "tiny", "--epochs", 1, "--quiet")


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _ok(r):
    assert r.exit_code == 0, r.output
    return r


def _refused(r, *needles):
    assert r.exit_code == 1, r.output
    last = [ln for ln in r.output.splitlines() if ln.strip()][-1]
    assert last.startswith("Error: ") and "Traceback" not in r.output, r.output
    for n in needles:
        assert n in last, last


def test_train_in_a_run_dir_trains_on_the_runs_dataset_and_refuses_another(tmp_path, tiny_npz):
    out = tmp_path / "run"
    _ok(run("search", "--dataset", tiny_npz, *TINY, "--kernel", "reference", "--out", out))
    # no --dataset: the run's config.toml says which data; no --genotype: the run's search result
    _ok(run("train", *TINY, "--out", out))
    ck = load_checkpoint(RunDir(out).model, "model")
    assert ck["data"]["name"] == str(tiny_npz) and ck["data"]["input_shape"] == [2, 6, 6]
    assert ck["genotype"] == json.loads(RunDir(out).genotype.read_text())
    # a flag that contradicts the data the run was searched on is refused with the fix
    other = tmp_path / "run2"
    _ok(run("search", "--dataset", tiny_npz, *TINY, "--kernel", "reference", "--out", other))
    _refused(run("train", "--dataset", "digits", *TINY, "--out", other), "contradicts the run", "--dataset")
    assert not RunDir(other).model.exists()


def test_search_into_a_finished_run_is_refused_and_keeps_its_logs(tmp_path):
    out = tmp_path / "run"
    args = ("search", "--dataset", "digits", *TINY, "--kernel", "reference", "--out", out)
    _ok(run(*args))
    run_dir = RunDir(out)
    logs = {p: p.read_bytes() for p in (run_dir.search_metrics, run_dir.alphas, run_dir.genotype)}
    _refused(run(*args), "already finished", "--overwrite")
    assert {p: p.read_bytes() for p in logs} == logs
    _ok(run(*args, "--overwrite"))


def test_resume_with_nothing_to_resume_is_an_error(tmp_path):
    _refused(run("search", "--dataset", "digits", *TINY, "--out", tmp_path / "a", "--resume"), "nothing to resume")
    _refused(run("train", "--genotype", "DARTS_V2", *TINY, "--out", tmp_path / "b", "--resume"),
             "nothing to resume")


def test_retrain_into_a_pipeline_run_needs_overwrite_and_then_the_pipeline_rebuilds_what_depends_on_it(tmp_path):
    out = tmp_path / "run"
    cfg = load_config(preset="tiny", overrides={"search": {"epochs": 1, "kernel": "reference"},
                                                "train": {"epochs": 1}})
    pipeline(cfg, out, progress=False, echo=lambda s: None)
    run_dir = RunDir(out)
    model_bytes = run_dir.model.read_bytes()
    _refused(run("train", "--out", out, "--quiet"), "already finished", "--overwrite")
    assert run_dir.model.read_bytes() == model_bytes

    _ok(run("train", "--out", out, "--quiet", "--overwrite", "--seed", 5))  # the run's config, another seed
    assert run_dir.model.read_bytes() != model_bytes
    assert stale_reason(run_dir, "export", load_config(run_dir.config)) == "train/model.pt changed since export ran"
    said = []
    res = pipeline(None, out, progress=False, echo=said.append)  # None: the run's own config.toml
    assert res.skipped == ["search", "train"]
    assert "export   re-run: train/model.pt changed since export ran" in said, said
    summary = json.loads((out / "summary.json").read_text())
    assert json.loads(run_dir.export_report.read_text())["file"]["sha256"] == summary["export"]["sha256"]
    assert read_record(run_dir, "export")["inputs"]["train/model.pt"] == read_record(run_dir, "train")[
        "outputs"]["train/model.pt"]
    assert summary["train"]["test_acc"] == pytest.approx(res.test_acc)
    # a genotype given by hand is an input too: the pipeline trains the run's own search result again
    _ok(run("train", "--genotype", "DARTS_V2", "--out", out, "--quiet", "--overwrite"))
    assert stale_reason(run_dir, "train", load_config(run_dir.config)) == "genotype changed since train ran"


def test_pipeline_records_the_data_split_and_export_checks_parity_on_it(tmp_path):
    from nasdeploy.checkpoint import checkpoint_data
    from nasdeploy.deploy.export import _parity_images

    out = tmp_path / "run"
    cfg = load_config(preset="tiny", overrides={"data": {"split_seed": 3},
                                                "search": {"epochs": 1, "kernel": "reference"},
                                                "train": {"epochs": 1}})
    res = pipeline(cfg, out, progress=False, echo=lambda s: None)
    spec = checkpoint_data(load_checkpoint(RunDir(out).model, "model"))
    assert spec.split_seed == 3 and spec.fingerprint
    seed3, seed0 = load_dataset("digits", seed=3), load_dataset("digits", seed=0)
    x, source = _parity_images(spec, None, 16)  # what export uses when given only model.pt
    assert torch.equal(x, seed3.x_test[:16]) and not torch.equal(x, seed0.x_test[:16])
    assert "test split of digits" in source

    summary = json.loads((out / "summary.json").read_text())
    assert summary["split_seed"] == 3
    assert summary["train"]["test_acc"] == pytest.approx(res.test_acc)
    assert summary["train"]["mult_adds"] > 0 and summary["train"]["n_params"] == res.n_params
    assert summary["latency"]["p50_ms"]["fp32"]["1"] == pytest.approx(res.p50_ms_batch1)
    assert summary["genotype"] == res.genotype.to_dict()
    report = (out / "report.md").read_text()
    assert f"test accuracy {res.test_acc:.4f}" in report and "batch 1" in report
    shown = _ok(run("show", out)).output
    assert "test accuracy" in shown and "ONNX Runtime p50" in shown


def test_resume_says_where_it_continues(tmp_path):
    out = tmp_path / "run"
    _ok(run("search", "--dataset", "digits", "--preset", "tiny", "--epochs", 1, "--kernel", "reference",
            "--out", out, "--quiet"))
    r = run("search", "--dataset", "digits", "--preset", "tiny", "--epochs", 2, "--kernel", "reference",
            "--out", out, "--quiet", "--resume")
    _ok(r)
    assert "resuming DARTS search at epoch 2 (after finished epoch 1)" in r.output
