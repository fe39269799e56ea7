"""The whole job: search → train → export → profile in one run dir; resume; a second run refused."""

import json

import onnxruntime as ort
import pytest
from click.testing import CliRunner

from nasdeploy.artifacts import RunDir
from nasdeploy.cli import main
from nasdeploy.config import load_config
from nasdeploy.errors import ConfigError
from nasdeploy.stages import pipeline


def _cfg(**search):
    return load_config(preset="tiny", overrides={"search": {"epochs": 1, "kernel": "reference", **search},
                                                 "train": {"epochs": 1}})


def test_tiny_pipeline_end_to_end_and_resume(tmp_path):
    out = tmp_path / "run"
    res = pipeline(_cfg(), out, progress=False, echo=lambda s: None)
    run = RunDir(out)
    for f in (run.config, run.genotype, run.model, run.onnx, run.export_report, run.latency_json, run.latency_md):
        assert f.is_file(), f
    assert 0 <= res.test_acc <= 1 and res.n_params > 0 and res.p50_ms_batch1 > 0
    sess = ort.InferenceSession(str(run.onnx), providers=["CPUExecutionProvider"])
    assert sess.get_inputs()[0].name == "input"

    # all stages finished: a re-run skips them all
    again = pipeline(_cfg(), out, progress=False, echo=lambda s: None)
    assert again.skipped == ["search", "train", "export", "profile"]

    # remove a middle stage's output: it and the later stages that depend on it re-run
    onnx_mtime = run.onnx.stat().st_mtime_ns
    run.export_report.unlink()
    run.latency_json.unlink()
    third = pipeline(_cfg(), out, progress=False, echo=lambda s: None)
    assert third.skipped == ["search", "train"]
    assert run.onnx.stat().st_mtime_ns != onnx_mtime
    assert json.loads(run.latency_json.read_text())["batches"]


def test_a_directory_holding_another_run_is_refused(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.toml").write_text("[search]\nepochs = 5\n")
    with pytest.raises(ConfigError, match="already holds another run"):
        pipeline(_cfg(), out, progress=False, echo=lambda s: None)


def _clean_error(r, needle):
    assert r.exit_code == 1, r.output
    assert r.output.strip().splitlines()[-1].startswith("Error: ") and "Traceback" not in r.output
    assert needle in r.output, r.output


def test_export_and_profile_bad_input(tmp_path):
    runner = CliRunner()
    bad = tmp_path / "model.pt"
    _clean_error(runner.invoke(main, ["export", str(bad)]), "checkpoint not found")
    bad.write_bytes(b"\x80\x02 definitely not a checkpoint")
    _clean_error(runner.invoke(main, ["export", str(bad)]), "not a readable nasdeploy checkpoint")
    txt = tmp_path / "m.onnx"
    txt.write_text("hello")
    _clean_error(runner.invoke(main, ["profile", str(txt)]), "not an ONNX model")
    _clean_error(runner.invoke(main, ["profile", str(txt), "--batch-sizes", "0"]), "batch")
