"""Fashion-MNIST and MNIST-layout IDX directories: parsing, validation, shipped test split, max_train, identity."""

import gzip
import struct

import numpy as np
import pytest
import torch

from nasdeploy.data import (
    FASHION_MNIST_CLASSES,
    PACKAGED,
    DataSpec,
    Packaged,
    dataset_identity,
    load_dataset,
    read_idx,
    source_available,
)
from nasdeploy.errors import DataError

TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS = (
    "train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def idx_bytes(a: np.ndarray) -> bytes:
    """``a`` (uint8) in the IDX format: 0, 0, type 0x08, ndim, big-endian dims, data."""
    return struct.pack(">BBBB", 0, 0, 0x08, a.ndim) + struct.pack(f">{a.ndim}I", *a.shape) + a.tobytes()


def write_idx(path, a: np.ndarray, gz: bool = False):
    data = idx_bytes(a)
    if gz:
        path = path.with_name(path.name + ".gz")
        data = gzip.compress(data)
    path.write_bytes(data)
    return path


def make_idx_dir(d, n_train=40, n_test=10, h=5, w=4, gz=False, seed=0):
    rng = np.random.default_rng(seed)
    arrays = {
        TRAIN_IMAGES: rng.integers(0, 256, (n_train, h, w), dtype=np.uint8),
        TRAIN_LABELS: (np.arange(n_train) % 10).astype(np.uint8),
        TEST_IMAGES: rng.integers(0, 256, (n_test, h, w), dtype=np.uint8),
        TEST_LABELS: (np.arange(n_test) % 10).astype(np.uint8),
    }
    d.mkdir(parents=True, exist_ok=True)
    for stem, a in arrays.items():
        write_idx(d / stem, a, gz)
    return arrays


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzipped"])
def test_idx_dir_loads_shapes_labels_and_shipped_test_split(tmp_path, gz):
    arrays = make_idx_dir(tmp_path / "m", gz=gz)
    d = load_dataset(str(tmp_path / "m"), val_fraction=0.25)
    assert d.spec.input_shape == (1, 5, 4) and d.x_train.shape[1:] == (1, 5, 4)
    assert d.spec.class_names == tuple(str(i) for i in range(10))  # no names for an unknown directory
    # the t10k files are the test split, in file order, scaled by 1/255 and normalized by train statistics
    assert torch.equal(d.y_test, torch.from_numpy(arrays[TEST_LABELS].astype(np.int64)))
    expect = (arrays[TEST_IMAGES][:, None] / 255.0 - d.spec.mean[0]) / d.spec.std[0]
    assert np.allclose(d.x_test.numpy(), expect, atol=1e-5)
    assert len(d.y_train) + len(d.y_val) == 40 and len(d.y_val) == 10


def test_plain_and_gzipped_files_give_the_same_data_and_fingerprint(tmp_path):
    make_idx_dir(tmp_path / "plain", gz=False)
    make_idx_dir(tmp_path / "gz", gz=True)
    a, b = (load_dataset(str(tmp_path / k), val_fraction=0.25) for k in ("plain", "gz"))
    assert torch.equal(a.x_train, b.x_train) and a.spec.fingerprint == b.spec.fingerprint
    ia, ib = (dataset_identity(str(tmp_path / k)) for k in ("plain", "gz"))
    assert {k: v for k, v in ia.items() if k not in ("name", "source")} == {
        k: v for k, v in ib.items() if k not in ("name", "source")}


def test_idx_dir_without_t10k_draws_its_test_split(tmp_path):
    make_idx_dir(tmp_path / "m", n_train=50)
    for stem in (TEST_IMAGES, TEST_LABELS):
        (tmp_path / "m" / stem).unlink()
    d = load_dataset(str(tmp_path / "m"), val_fraction=0.2, test_fraction=0.2)
    assert (len(d.y_train), len(d.y_val), len(d.y_test)) == (30, 10, 10)


def test_read_idx_reads_big_endian_multi_byte_types(tmp_path):
    a = (np.arange(6).reshape(2, 3) * 70000).astype(">i4")
    p = tmp_path / "ints-idx2"
    p.write_bytes(struct.pack(">BBBBII", 0, 0, 0x0C, 2, 2, 3) + a.tobytes())
    out = read_idx(p, ndim=2)
    assert out.dtype == np.int32 and out.dtype.byteorder in "=<|" and out.tolist() == a.tolist()


def _corrupt(tmp_path, stem, data: bytes):
    make_idx_dir(tmp_path / "m")
    (tmp_path / "m" / stem).write_bytes(data)
    return tmp_path / "m"


@pytest.mark.parametrize("make, message", [
    (lambda t: _corrupt(t, TRAIN_IMAGES, b"\x00\x01\x08\x03" + b"\x00" * 12), "bad magic number 0x00010803"),
    (lambda t: _corrupt(t, TRAIN_IMAGES, b"PK\x03\x04" + b"\x00" * 12), "bad magic number"),
    (lambda t: _corrupt(t, TRAIN_LABELS, idx_bytes(np.zeros((40, 2), np.uint8))), "has 2 dimensions.*expected 1"),
    (lambda t: _corrupt(t, TRAIN_IMAGES, b"\x00\x00"), "truncated .2 bytes"),
    (lambda t: _corrupt(t, TRAIN_IMAGES, b"\x00\x00\x08\x03\x00\x00"), "header cut off"),
    (lambda t: _corrupt(t, TRAIN_IMAGES, idx_bytes(np.zeros((40, 5, 4), np.uint8))[:-7]), "is truncated .793 data"),
    (lambda t: _corrupt(t, TRAIN_IMAGES, idx_bytes(np.zeros((40, 5, 4), np.uint8)) + b"\x00"),
     "longer than its header says"),
    (lambda t: _corrupt(t, TRAIN_LABELS, idx_bytes(np.arange(39, dtype=np.uint8) % 10)), "40 images but .* 39 labels"),
    (lambda t: _corrupt(t, TEST_LABELS, idx_bytes(np.full(10, 12, np.uint8))), "out of range"),
    (lambda t: _corrupt(t, TEST_IMAGES, idx_bytes(np.zeros((10, 6, 4), np.uint8))), "images are"),
])
def test_malformed_idx_gives_one_error_naming_the_file(tmp_path, make, message):
    with pytest.raises(DataError, match=message) as e:
        load_dataset(str(make(tmp_path)))
    assert str(tmp_path / "m") in str(e.value)


def test_truncated_gzip_and_missing_files_name_the_file(tmp_path):
    make_idx_dir(tmp_path / "m", gz=True)
    gz = tmp_path / "m" / f"{TRAIN_LABELS}.gz"
    gz.write_bytes(gz.read_bytes()[:-10])
    with pytest.raises(DataError, match=f"{TRAIN_LABELS}.gz cannot be read"):
        load_dataset(str(tmp_path / "m"))
    gz.unlink()
    with pytest.raises(DataError, match=f"no {TRAIN_LABELS}"):
        load_dataset(str(tmp_path / "m"))
    make_idx_dir(tmp_path / "n")
    (tmp_path / "n" / TEST_LABELS).unlink()
    with pytest.raises(DataError, match=f"no {TEST_LABELS}.*beside the other t10k file"):
        load_dataset(str(tmp_path / "n"))


def test_fashion_mnist_name_reads_the_package_dir_with_its_class_names(tmp_path, monkeypatch):
    make_idx_dir(tmp_path / "fm", n_train=100)
    monkeypatch.setitem(PACKAGED, "fashion-mnist", Packaged(tmp_path / "fm", "dataset-fashion-mnist",
                                                            FASHION_MNIST_CLASSES))
    d = load_dataset("fashion-mnist")
    assert d.spec.name == "fashion-mnist" and d.spec.class_names[0] == "T-shirt/top"
    assert d.spec.class_names[-1] == "Ankle boot" and len(d.spec.class_names) == 10
    assert d.summary().startswith(f"fashion-mnist ({tmp_path / 'fm'}, package dataset-fashion-mnist): 1x5x4")
    assert source_available("fashion-mnist") and d.spec.available()
    assert DataSpec.from_dict(d.spec.to_dict()).load().spec == d.spec  # later stages reload this very split
    # the package's directory given as a path keeps the class names
    assert load_dataset(str(tmp_path / "fm")).spec.class_names == FASHION_MNIST_CLASSES


def test_missing_package_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(PACKAGED, "fashion-mnist", Packaged(tmp_path / "absent", "dataset-fashion-mnist",
                                                            FASHION_MNIST_CLASSES))
    with pytest.raises(DataError, match="not installed.*apt-get install dataset-fashion-mnist"):
        load_dataset("fashion-mnist")
    assert not source_available("fashion-mnist")


def test_max_train_caps_the_training_split_only_and_is_recorded(tmp_path):
    make_idx_dir(tmp_path / "m", n_train=200, n_test=20)
    full = load_dataset(str(tmp_path / "m"), seed=3)
    cap = load_dataset(str(tmp_path / "m"), seed=3, max_train=50)
    assert len(cap.y_train) == 50 and torch.bincount(cap.y_train).tolist() == [5] * 10  # stratified
    assert torch.equal(cap.y_val, full.y_val) and torch.equal(cap.y_test, full.y_test)
    assert cap.spec.max_train == 50 and cap.spec.fingerprint == full.spec.fingerprint
    assert "max_train" not in full.spec.to_dict()  # uncapped specs keep the dict they always had
    again = DataSpec.from_dict(cap.spec.to_dict()).load()
    assert torch.equal(again.y_train, cap.y_train) and torch.equal(again.x_train, cap.x_train)
    assert "train 50 (max_train 50)" in cap.summary()
    assert len(load_dataset(str(tmp_path / "m"), max_train=10_000).y_train) == len(full.y_train)
    for bad in (0, -1, 2.5, True):
        with pytest.raises(DataError, match="bad max_train"):
            load_dataset(str(tmp_path / "m"), max_train=bad)
    with pytest.raises(DataError, match="cannot split"):
        load_dataset(str(tmp_path / "m"), max_train=3)  # fewer images than classes: no stratified draw


def test_max_val_caps_the_validation_split_only_and_survives_export_metadata(tmp_path):
    make_idx_dir(tmp_path / "m", n_train=400, n_test=20)
    full = load_dataset(str(tmp_path / "m"), seed=3)
    cap = load_dataset(str(tmp_path / "m"), seed=3, max_train=100, max_val=20)
    assert len(full.y_val) == 40 and len(cap.y_val) == 20
    assert torch.bincount(cap.y_val).tolist() == [2] * 10  # stratified
    assert set(cap.y_val.tolist()) <= set(full.y_val.tolist())
    # a subset of the uncapped validation images; train (capped alone) and test unchanged
    same_train = load_dataset(str(tmp_path / "m"), seed=3, max_train=100)  # the same normalization
    full_rows = {tuple(r.tolist()) for r in same_train.x_val.flatten(1)}
    assert all(tuple(r.tolist()) in full_rows for r in cap.x_val.flatten(1))
    assert torch.equal(cap.x_train, same_train.x_train) and torch.equal(cap.y_test, full.y_test)
    assert "max_val" not in full.spec.to_dict() and cap.spec.to_dict()["max_val"] == 20
    again = DataSpec.from_dict(cap.spec.to_dict()).load()
    assert torch.equal(again.x_val, cap.x_val)
    assert "val 20 (max_val 20)" in cap.summary()
    with pytest.raises(DataError, match="bad max_val"):
        load_dataset(str(tmp_path / "m"), max_val=0)


def test_dataset_identity_of_name_path_and_config(tmp_path):
    from nasdeploy.config import load_config

    make_idx_dir(tmp_path / "m", n_train=100, n_test=10)
    ident = dataset_identity(str(tmp_path / "m"))
    assert ident["kind"] == "idx" and ident["source"] == str((tmp_path / "m").resolve())
    assert (ident["n_train"], ident["n_test"], ident["num_classes"]) == (100, 10, 10)
    assert ident["input_shape"] == [1, 5, 4] and len(ident["labels_sha256"]) == 64
    assert ident["fingerprint"] == load_dataset(str(tmp_path / "m")).spec.fingerprint
    cfg = load_config(preset="tiny", overrides={"data": {"dataset": str(tmp_path / "m")}})
    assert dataset_identity(cfg) == ident and dataset_identity(cfg.data) == ident
    digits = dataset_identity("digits")
    assert digits["kind"] == "embedded" and digits["n_test"] is None and digits["n_train"] == 1797
    make_idx_dir(tmp_path / "m", n_train=100, n_test=10, seed=1)  # same labels, new pixels
    changed = dataset_identity(str(tmp_path / "m"))
    assert changed["labels_sha256"] == ident["labels_sha256"] and changed["images_sha256"] != ident["images_sha256"]
    with pytest.raises(TypeError):
        dataset_identity(42)


@pytest.mark.skipif(not PACKAGED["fashion-mnist"].root.is_dir(),
                    reason="Fashion-MNIST not installed: apt-get install dataset-fashion-mnist")
def test_installed_fashion_mnist_is_the_full_release():
    ident = dataset_identity("fashion-mnist")
    assert (ident["n_train"], ident["n_test"], ident["input_shape"]) == (60000, 10000, [1, 28, 28])
    d = load_dataset("fashion-mnist", max_train=1000)
    assert d.spec.class_names == FASHION_MNIST_CLASSES
    assert (len(d.y_train), len(d.y_val), len(d.y_test)) == (1000, 6000, 10000)
    assert torch.bincount(d.y_test).tolist() == [1000] * 10  # the shipped test split: 1000 per class
    # statistics from the (capped) training split: close to the published 0.2860 / 0.3530
    assert abs(d.spec.mean[0] - 0.286) < 0.02 and abs(d.spec.std[0] - 0.353) < 0.02
