"""Bad input across every command: one ``Error:`` line naming the problem and the fix, a non-zero
exit, no traceback (unless ``--debug``), and the earlier artifacts of the run directory untouched."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from nasdeploy.artifacts import RunDir, save_checkpoint
from nasdeploy.cli import main
from nasdeploy.config import load_config, save_config
from nasdeploy.space.genotype import GENOTYPES

TINY = ["--preset", "tiny", "--quiet"]


@pytest.fixture
def prev(tmp_path):
    """A run directory holding another run's artifacts (a different [search] seed)."""
    run = RunDir(tmp_path / "prev")
    save_config(load_config(preset="tiny", overrides={"search": {"seed": 99}}), run.config)
    run.search.mkdir(parents=True)
    GENOTYPES["DARTS_V2"].save(run.genotype)
    run.search_metrics.write_text('{"epoch": 0}\n')
    run.alphas.write_text('{"epoch": 0}\n')
    run.train.mkdir()
    run.model.write_bytes(b"not really a model")
    return run


def _snapshot(root):
    return {p: p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------- bad files, built per case

def npz(tmp, **arrays):
    p = tmp / "data.npz"
    np.savez(p, **arrays)
    return str(p)


def _xy(n=40, classes=4):
    rng = np.random.default_rng(0)
    return rng.random((n, 1, 8, 8)).astype(np.float32), np.arange(n) % classes


def empty_npz(tmp):
    return npz(tmp, x=np.zeros((0, 1, 8, 8), np.float32), y=np.zeros(0, np.int64))


def one_class_npz(tmp):
    x, _ = _xy()
    return npz(tmp, x=x, y=np.zeros(len(x), np.int64))


def labels_out_of_range_npz(tmp):
    x, y = _xy()
    return npz(tmp, x=x, y=y, class_names=np.array(["a", "b", "c"]))


def nan_npz(tmp):
    x, y = _xy()
    x[3, 0, 2, 2] = np.nan
    return npz(tmp, x=x, y=y)


def corrupt_npz(tmp):
    p = tmp / "broken.npz"
    p.write_bytes(b"PK\x03\x04 this is not a zip archive")
    return str(p)


def text_dataset(tmp):
    p = tmp / "data.csv"
    p.write_text("1,2,3\n")
    return str(p)


def image_folder(tmp, images):
    root = tmp / "images"
    for cls, name, make in images:
        (root / cls).mkdir(parents=True, exist_ok=True)
        make(root / cls / name)
    return str(root)


def png(size, mode="L"):
    return lambda p: Image.new(mode, size, 128).save(p)


def mixed_sizes(tmp):
    return image_folder(tmp, [("a", "1.png", png((8, 8))), ("b", "2.png", png((9, 8)))])


def mixed_modes(tmp):
    return image_folder(tmp, [("a", "1.png", png((8, 8), "L")), ("b", "2.png", png((8, 8), "RGB"))])


def non_image_file(tmp):
    return image_folder(tmp, [("a", "1.png", png((8, 8))), ("b", "notes.txt", lambda p: p.write_text("hi"))])


def garbage_png(tmp):
    return image_folder(tmp, [("a", "1.png", png((8, 8))), ("b", "2.png", lambda p: p.write_bytes(b"\x89PNGjunk"))])


def no_class_folders(tmp):
    (tmp / "flat").mkdir()
    png((8, 8))(tmp / "flat" / "1.png")
    return str(tmp / "flat")


def toml(tmp, text):
    p = tmp / "cfg.toml"
    p.write_text(text)
    return str(p)


def genotype_file(tmp, mutate):
    d = GENOTYPES["DARTS_V2"].to_dict()
    mutate(d)
    p = tmp / "g.json"
    p.write_text(json.dumps(d))
    return str(p)


def supernet_as_model(tmp):
    p = tmp / "supernet.pt"
    save_checkpoint(p, {"epoch": 0}, "supernet")
    return str(p)


def truncated_model(tmp):
    p = tmp / "model.pt"
    save_checkpoint(p, {"state_dict": {"w": torch.zeros(2000)}}, "model")
    p.write_bytes(p.read_bytes()[:3000])
    return str(p)


def mismatched_model(tmp):
    p = tmp / "model.pt"
    save_checkpoint(p, {"genotype": GENOTYPES["DARTS_V2"].to_dict(),
                        "network": {"C": 4, "num_classes": 10, "layers": 3, "in_channels": 1},
                        "state_dict": {"stem.0.weight": torch.zeros(3, 3)}, "data": {}}, "model")
    return str(p)


def text_as_onnx(tmp):
    p = tmp / "model.onnx"
    p.write_text("this is not an ONNX protobuf")
    return str(p)


def file_as_parent(tmp):
    (tmp / "afile").write_text("x")
    return str(tmp / "afile" / "run")


def foreign_train_state(prev):
    save_checkpoint(prev.train_state, {"genotype": GENOTYPES["DARTS_V1"].to_dict()}, "train_state")


def foreign_supernet(prev):
    save_checkpoint(prev.supernet, {"config": {"seed": 0}, "epoch": 0}, "supernet")


def _search(ds="digits"):
    return ["search", "--dataset", ds, *TINY]


def _train(genotype="DARTS_V2", ds="digits"):
    return ["train", "--genotype", genotype, "--dataset", ds, *TINY]


# (id, args(tmp, prev) -> argv, words the Error line must contain, optional setup(prev))
CASES = [
    ("missing dataset path", lambda t, r: _search(str(t / "nope")), ["neither a known name", "use --dataset"]),
    ("empty dataset", lambda t, r: _search(empty_npz(t)), ["empty"]),
    ("one class only", lambda t, r: _search(one_class_npz(t)), ["only one class", "at least two"]),
    ("mixed image sizes", lambda t, r: _search(mixed_sizes(t)), ["differs from", "resize"]),
    ("mixed image modes", lambda t, r: _search(mixed_modes(t)), ["mode", "convert"]),
    ("non-image file in image folder", lambda t, r: _search(non_image_file(t)), ["not an image file"]),
    ("unreadable image", lambda t, r: _search(garbage_png(t)), ["cannot be read as an image"]),
    ("image folder without classes", lambda t, r: _search(no_class_folders(t)), ["no class sub-folders"]),
    ("labels out of range", lambda t, r: _train(ds=labels_out_of_range_npz(t)), ["labels out of range", "0..2"]),
    ("NaN in npz", lambda t, r: _search(nan_npz(t)), ["NaN", "clean"]),
    ("corrupt npz", lambda t, r: _search(corrupt_npz(t)), ["not a readable .npz"]),
    ("dataset is a csv", lambda t, r: _train(ds=text_dataset(t)), ["not a .npz file"]),
    ("misspelled config key", lambda t, r: ["search", "--config", toml(t, "[search]\nepohcs = 3\n"), "--quiet"],
     ["unknown key", "'epochs'"]),
    ("unknown config section", lambda t, r: ["train", "--genotype", "DARTS_V2", "--config",
                                             toml(t, "[trian]\nepochs = 3\n")], ["unknown section", "'train'"]),
    ("wrong config type", lambda t, r: ["search", "--config", toml(t, "[search]\nepochs = \"two\"\n")],
     ["expected int", "str"]),
    ("invalid TOML", lambda t, r: ["search", "--config", toml(t, "[search\nepochs = 3\n")], ["not valid TOML"]),
    ("missing config file", lambda t, r: ["search", "--config", str(t / "none.toml")], ["config file not found"]),
    ("genotype unknown op", lambda t, r: _train(genotype_file(t, lambda d: d["normal"][0].__setitem__(0, "conv_9x9"))),
     ["$.normal[0][0]", "unknown op 'conv_9x9'"]),
    ("genotype bad node index", lambda t, r: _train(genotype_file(t, lambda d: d["reduce"][2].__setitem__(1, 7))),
     ["$.reduce[2][1]", "out of range"]),
    ("genotype wrong arity", lambda t, r: _train(genotype_file(t, lambda d: d["normal"].pop())),
     ["$.normal", "exactly 2 inputs"]),
    ("genotype not JSON", lambda t, r: _train(toml(t, "{normal: [")), ["not valid JSON"]),
    ("unknown genotype name", lambda t, r: _train("DARTS_V3"), ["neither a file nor a published name", "DARTS_V2"]),
    ("supernet passed to export", lambda t, r: ["export", supernet_as_model(t), "--out", str(r.export)],
     ["not a model checkpoint", "nasdeploy.supernet/1"]),
    ("truncated checkpoint", lambda t, r: ["export", truncated_model(t), "--out", str(r.export)],
     ["truncated or foreign"]),
    ("checkpoint weights mismatch genotype", lambda t, r: ["export", mismatched_model(t), "--out", str(r.export)],
     ["does not match"]),
    ("missing checkpoint", lambda t, r: ["export", str(t / "nope.pt"), "--out", str(r.export)],
     ["checkpoint not found"]),
    ("non-ONNX file to profile", lambda t, r: ["profile", text_as_onnx(t), "--out", str(r.root)], ["ONNX"]),
    ("missing ONNX file", lambda t, r: ["profile", str(t / "none.onnx"), "--out", str(r.root)], ["none.onnx"]),
    ("zero batch size", lambda t, r: [*_search(), "--batch-size", "0", "--out", str(r.root)],
     ["batch_size = 0", "must be positive"]),
    ("negative batch size", lambda t, r: [*_train(), "--batch-size", "-4", "--out", str(r.root)],
     ["batch_size = -4", "must be positive"]),
    ("zero profile batch size", lambda t, r: ["profile", text_as_onnx(t), "--batch-sizes", "0,1"],
     ["batch_sizes", "positive"]),
    ("zero ORT threads", lambda t, r: ["profile", text_as_onnx(t), "--threads", "0"], ["threads = 0"]),
    ("negative torch threads", lambda t, r: [*_search(), "--threads", "-1", "--out", str(r.root)],
     ["threads = -1"]),
    ("zero latency target", lambda t, r: [*_search(), "--latency-target", "0", "--out", str(r.root)],
     ["latency_target = 0", "milliseconds"]),
    ("negative latency target", lambda t, r: [*_search(), "--latency-target", "-5", "--out", str(r.root)],
     ["latency_target = -5"]),
    ("zero parity batch", lambda t, r: ["export", mismatched_model(t), "--parity-batch", "0"],
     ["parity_batch = 0"]),
    ("unwritable output directory", lambda t, r: [*_search(), "--out", file_as_parent(t)],
     ["cannot create output directory", "writable"]),
    ("run dir holds another run (search)", lambda t, r: [*_search(), "--out", str(r.root)],
     ["already holds another run", "--out"]),
    ("run dir holds another run (pipeline)", lambda t, r: ["pipeline", "--preset", "tiny", "--out", str(r.root),
                                                           "--quiet"], ["already holds another run"]),
    ("resume from another genotype's state", lambda t, r: [*_train("DARTS_V2"), "--out", str(r.root), "--resume"],
     ["cannot resume", "genotype differs"], foreign_train_state),
    ("resume a search with other settings", lambda t, r: [*_search(), "--out", str(r.root), "--resume",
                                                          "--seed", "99"],
     ["different search configuration"], foreign_supernet),
    ("show without a search", lambda t, r: ["show", str(t)], ["genotype.json not found"]),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_fails_cleanly(case, tmp_path, prev):
    name, argv, words, *setup = case
    for s in setup:
        s(prev)
    args = argv(tmp_path, prev)
    before = _snapshot(prev.root)
    res = CliRunner().invoke(main, args)
    out = res.output
    errors = [line for line in out.splitlines() if line.startswith("Error:")]
    assert res.exit_code not in (0, None), out
    assert len(errors) == 1, out
    assert "Traceback" not in out
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    for w in words:
        assert w in errors[0], (w, errors[0])
    assert _snapshot(prev.root) == before  # earlier artifacts untouched


def test_debug_shows_the_traceback(tmp_path):
    res = CliRunner().invoke(main, ["--debug", *_search(str(tmp_path / "nope"))])
    assert res.exit_code != 0
    assert type(res.exception).__name__ == "DataError"  # re-raised for the traceback


def test_at_least_25_distinct_bad_inputs():
    assert len({c[0] for c in CASES}) >= 25
