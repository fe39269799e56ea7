"""Data loaders: digits, .npz, image folder, CIFAR-10 pickles; splits and normalization; bad input."""

import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from nasdeploy.data import batches, load_dataset
from nasdeploy.errors import DataError


def test_digits_fixed_split_and_training_statistics():
    a, b = load_dataset("digits", seed=0), load_dataset("digits", seed=0)
    assert torch.equal(a.x_test, b.x_test) and a.spec == b.spec
    assert a.spec.input_shape == (1, 8, 8) and a.spec.num_classes == 10
    assert len(a.y_train) + len(a.y_val) + len(a.y_test) == 1797
    # normalized with the training split's own statistics
    assert abs(a.x_train.mean().item()) < 1e-4 and abs(a.x_train.std().item() - 1) < 1e-2
    c = load_dataset("digits", seed=1)
    assert not torch.equal(a.y_test, c.y_test)


def test_npz_nhwc_uint8_and_shipped_test_split(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, size=(40, 5, 5, 3), dtype=np.uint8)
    y = np.arange(40) % 4
    p = tmp_path / "d.npz"
    np.savez(p, x=x, y=y, x_test=x[:8], y_test=y[:8], class_names=np.array(["a", "b", "c", "d"]))
    d = load_dataset(str(p))
    assert d.spec.input_shape == (3, 5, 5) and d.spec.class_names == ("a", "b", "c", "d")
    assert len(d.y_test) == 8 and len(d.y_train) + len(d.y_val) == 40
    expect = (x[:8].transpose(0, 3, 1, 2) / 255.0 - np.array(d.spec.mean)[None, :, None, None]) / np.array(
        d.spec.std)[None, :, None, None]
    assert np.allclose(d.x_test.numpy(), expect, atol=1e-5)


def test_image_folder(tmp_path):
    for c in ("cat", "dog"):
        (tmp_path / c).mkdir()
        for i in range(6):
            Image.fromarray(np.full((4, 6, 3), 40 * i, dtype=np.uint8)).save(tmp_path / c / f"{i}.png")
    d = load_dataset(str(tmp_path), test_fraction=0.25, val_fraction=0.25)
    assert d.spec.class_names == ("cat", "dog") and d.spec.input_shape == (3, 4, 6)


def test_cifar10_pickle_dir(tmp_path):
    rng = np.random.default_rng(0)
    for name, n in (("data_batch_1", 30), ("test_batch", 10)):
        with open(tmp_path / name, "wb") as f:
            pickle.dump({b"data": rng.integers(0, 255, (n, 3072), dtype=np.uint8),
                         b"labels": list(np.arange(n) % 10)}, f)
    d = load_dataset(str(tmp_path), val_fraction=0.34)
    assert d.spec.input_shape == (3, 32, 32) and len(d.y_test) == 10


def test_batches_shard_the_global_batch_across_ranks():
    x, y = torch.arange(10.0)[:, None], torch.arange(10)
    g = [torch.Generator().manual_seed(0) for _ in range(2)]
    r0 = list(batches(x, y, 2, g[0], rank=0, world_size=2))
    r1 = list(batches(x, y, 2, g[1], rank=1, world_size=2))
    seen = torch.cat([b[1] for b in r0] + [b[1] for b in r1])
    assert sorted(seen.tolist()) == list(range(10))


def _npz(tmp_path, **arrays):
    p = tmp_path / "bad.npz"
    np.savez(p, **arrays)
    return str(p)


@pytest.mark.parametrize("make, message", [
    (lambda t: "nope", "neither a known name nor an existing path"),
    (lambda t: str(t / "missing_dir"), "neither a known name nor an existing path"),
    (lambda t: _npz(t, x=np.zeros((4, 3, 3))), "missing array 'y'"),
    (lambda t: _npz(t, x=np.zeros((4, 3, 3)), y=np.zeros(3)), "4 images but 3 labels"),
    (lambda t: _npz(t, x=np.full((4, 3, 3), np.nan), y=np.array([0, 1, 0, 1])), "NaN"),
    (lambda t: _npz(t, x=np.zeros((4, 3, 3)), y=np.zeros(4)), "only one class"),
    (lambda t: _npz(t, x=np.zeros((4, 3, 3)), y=np.array([0, 1, -1, 1])), "labels out of range"),
    (lambda t: _npz(t, x=np.zeros((0, 3, 3)), y=np.zeros(0)), "empty"),
    (lambda t: _npz(t, x=np.zeros((4, 2)), y=np.array([0, 1, 0, 1])), "has shape"),
])
def test_bad_data_gives_one_clear_error(tmp_path, make, message):
    with pytest.raises(DataError, match=message):
        load_dataset(make(tmp_path))


def test_corrupt_npz_and_mixed_images(tmp_path):
    p = tmp_path / "c.npz"
    p.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(DataError, match="not a readable .npz"):
        load_dataset(str(p))
    (tmp_path / "imgs" / "a").mkdir(parents=True)
    (tmp_path / "imgs" / "b").mkdir()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "imgs" / "a" / "0.png")
    Image.fromarray(np.zeros((5, 5, 3), np.uint8)).save(tmp_path / "imgs" / "b" / "0.png")
    with pytest.raises(DataError, match="differs from"):
        load_dataset(str(tmp_path / "imgs"))
    (tmp_path / "imgs" / "b" / "0.png").unlink()
    (tmp_path / "imgs" / "b" / "notes.txt").write_text("hi")
    with pytest.raises(DataError, match="not an image file"):
        load_dataset(str(tmp_path / "imgs"))
