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
