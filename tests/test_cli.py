"""The command line: help text, a tiny search, and bad input → one Error line, exit 1, no traceback."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from nasdeploy.cli import main


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_help_lists_every_command():
    r = run("--help")
    assert r.exit_code == 0
    for cmd in ("search", "train", "export", "profile", "pipeline", "info"):
        assert cmd in r.output
    for cmd in ("search", "train", "export", "profile", "pipeline"):
        h = run(cmd, "--help")
        assert h.exit_code == 0 and "Example" in h.output, cmd


def test_cli_tiny_search(tmp_path):
    r = run("search", "--dataset", "digits", "--preset", "tiny", "--epochs", 1, "--kernel", "reference",
            "--out", tmp_path, "--quiet")
    assert r.exit_code == 0, r.output
    assert "val accuracy" in r.output and "normal" in r.output
    assert json.loads((tmp_path / "search" / "genotype.json").read_text())["normal"]
    assert (tmp_path / "config.toml").exists()


def _assert_clean_error(r, *needles):
    assert r.exit_code == 1, r.output
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert lines[-1].startswith("Error: "), r.output
    assert "Traceback" not in r.output
    for n in needles:
        assert n in lines[-1], lines[-1]


def test_unknown_dataset(tmp_path):
    _assert_clean_error(run("search", "--dataset", "imagenet-21k", "--out", tmp_path), "neither a known name")


def test_missing_directory(tmp_path):
    _assert_clean_error(run("search", "--dataset", tmp_path / "nope", "--out", tmp_path / "o"), "nope")


def test_malformed_npz(tmp_path):
    p = tmp_path / "d.npz"
    np.savez(p, images=np.zeros((3, 4, 4)))
    _assert_clean_error(run("search", "--dataset", p, "--out", tmp_path / "o"), "missing array 'x'")


def test_bad_genotype_json(tmp_path):
    p = tmp_path / "g.json"
    p.write_text(json.dumps({"normal": [["sep_conv_3x3", 0]], "normal_concat": [2], "reduce": [],
                             "reduce_concat": [2]}))
    _assert_clean_error(run("train", "--genotype", p, "--out", tmp_path / "o"), "$.normal: 1 edges")


@pytest.mark.parametrize("args, needle", [
    (("search", "--epochs", 0), "epochs = 0"),
    (("search", "--kernel", "reference", "--primitives", "none,conv_9x9"), "conv_9x9"),
    (("search", "--config", "missing.toml"), "config file not found"),
])
def test_bad_options(tmp_path, args, needle):
    _assert_clean_error(run(*args, "--out", tmp_path / "o"), needle)


def test_debug_shows_the_traceback(tmp_path):
    r = run("--debug", "search", "--dataset", "nope", "--out", tmp_path)
    assert r.exit_code != 0 and r.exception is not None


def test_crowded_machine_warning_names_the_crowd_and_the_fix():
    from nasdeploy.errors import BusyMachineWarning
    from nasdeploy.stages import warn_if_crowded

    crowd = r"3 other task\(s\) .* 2 core\(s\) .* starts 2 thread\(s\).*--threads 1"
    with pytest.warns(BusyMachineWarning, match=crowd):
        assert warn_if_crowded(2, others=3, cores=2)
    assert warn_if_crowded(1, others=1, cores=2) is None  # one free core for one thread: quiet
    assert warn_if_crowded(1, others=5, cores=2) is None  # one thread only gets its time share: nothing waits
    assert warn_if_crowded(4, others=0, cores=8) is None


def test_runnable_tasks_counts_this_process():
    from nasdeploy.latency.measure import runnable_tasks

    n = runnable_tasks(samples=3, interval_s=0.0)
    if n is None:
        pytest.skip("no /proc/loadavg on this OS")
    assert n >= 1  # the reading process itself is running


def test_cli_prints_a_busy_machine_warning_as_one_line(tmp_path, monkeypatch):
    import nasdeploy.stages as stages

    monkeypatch.setattr(stages, "runnable_tasks", lambda *a, **k: 9)  # this process + 8 others
    r = run("search", "--dataset", "digits", "--preset", "tiny", "--epochs", 1, "--kernel", "reference",
            "--threads", 2, "--out", tmp_path, "--quiet")
    assert r.exit_code == 0, r.output
    lines = [ln for ln in r.output.splitlines() if "other task(s)" in ln]
    assert len(lines) == 1 and lines[0].startswith("Warning: 8 other task(s)"), r.output
    assert "--threads 1" in lines[0]
    assert "warnings.warn" not in r.output and "stages.py" not in r.output
