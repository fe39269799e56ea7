"""Datasets: digits (embedded), CIFAR-10 pickle dir, image folder, ``.npz`` → in-memory splits.

Every loader returns a ``Dataset`` whose tensors are float32 NCHW, already
normalized with per-channel mean/std computed on the training split; the
statistics travel in ``DataSpec`` to the checkpoint and the ONNX metadata so a
server can normalize the same way.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from .errors import DataError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


@dataclass(frozen=True)
class DataSpec:
    """What a model needs to know about its data (JSON-able)."""

    name: str
    input_shape: tuple[int, int, int]  # C, H, W
    num_classes: int
    class_names: tuple[str, ...]
    mean: tuple[float, ...]  # per channel, on the [0, 1] scale of the raw pixels
    std: tuple[float, ...]

    def to_dict(self) -> dict:
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict) -> DataSpec:
        return cls(
            name=d["name"],
            input_shape=tuple(d["input_shape"]),
            num_classes=int(d["num_classes"]),
            class_names=tuple(d["class_names"]),
            mean=tuple(d["mean"]),
            std=tuple(d["std"]),
        )


@dataclass
class Dataset:
    """Normalized train/val/test tensors plus their spec."""

    spec: DataSpec
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor

    def summary(self) -> str:
        c, h, w = self.spec.input_shape
        return (
            f"{self.spec.name}: {c}x{h}x{w}, {self.spec.num_classes} classes, "
            f"train {len(self.y_train)} / val {len(self.y_val)} / test {len(self.y_test)}"
        )


def batches(
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int,
    generator: torch.Generator | None = None,
    drop_last: bool = False,
    rank: int = 0,
    world_size: int = 1,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Mini-batches of ``batch_size`` (per rank); shuffled when a generator is given.

    With ``world_size > 1`` every rank draws the same permutation and takes its
    slice of each global batch of ``batch_size * world_size`` samples; a shorter
    last global batch is split as evenly as possible (``shard``).
    """
    n = len(y)
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    global_bs = batch_size * world_size
    stop = n - n % global_bs if drop_last else n
    for start in range(0, stop, global_bs):
        chunk = order[start : start + global_bs]
        idx = chunk[shard(len(chunk), rank, world_size)]
        if len(idx):
            yield x[idx], y[idx]


def shard(n: int, rank: int, world_size: int) -> slice:
    """Rank ``rank``'s part of a global batch of ``n`` samples: contiguous, sizes differ by at most one."""
    return slice(rank * n // world_size, (rank + 1) * n // world_size)


def num_batches(n: int, batch_size: int, drop_last: bool = False, world_size: int = 1) -> int:
    g = batch_size * world_size
    return n // g if drop_last else -(-n // g)


# --------------------------------------------------------------------------- loading


def load_dataset(
    name: str,
    seed: int = 0,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
) -> Dataset:
    """Load ``digits``, or a path: CIFAR-10 pickle dir, image-folder tree, or ``.npz``.

    Splits are drawn by ``seed`` (stratified), except where the source ships its
    own test split (CIFAR-10 ``test_batch``; ``x_test``/``y_test`` in an npz).
    """
    if not (0 < val_fraction < 1) or not (0 <= test_fraction < 1) or val_fraction + test_fraction >= 1:
        raise DataError(
            f"bad split fractions val={val_fraction} test={test_fraction}",
            "use 0 < val, 0 <= test, val + test < 1",
        )
    if name == "digits":
        x, y, classes, test = _digits()
    else:
        p = Path(name)
        if not p.exists():
            raise DataError(
                f"dataset {name!r} is neither a known name nor an existing path",
                "use --dataset digits, a CIFAR-10 python directory, an image folder, or a .npz file",
            )
        if p.is_file():
            if p.suffix != ".npz":
                raise DataError(f"{p} is not a .npz file", "give a .npz with arrays x and y, or a directory")
            x, y, classes, test = _npz(p)
        elif (p / "data_batch_1").exists() or (p / "cifar-10-batches-py" / "data_batch_1").exists():
            x, y, classes, test = _cifar10(p if (p / "data_batch_1").exists() else p / "cifar-10-batches-py")
        else:
            x, y, classes, test = _image_folder(p)
        name = str(p)
    return _split(name, x, y, classes, test, seed, val_fraction, test_fraction)


def _check_arrays(x: np.ndarray, y: np.ndarray, source: str, num_classes: int | None = None) -> None:
    if x.ndim != 4:
        raise DataError(
            f"{source}: images must be N x C x H x W after loading, got shape {x.shape}", "see README, Data"
        )
    if len(x) == 0:
        raise DataError(f"{source}: the dataset is empty", "add samples")
    if len(x) != len(y):
        raise DataError(f"{source}: {len(x)} images but {len(y)} labels", "give one label per image")
    if not np.isfinite(x).all():
        raise DataError(f"{source}: images contain NaN or infinite values", "clean the data")
    if y.ndim != 1 or (y.dtype.kind not in "iu" and not np.all(np.equal(np.mod(y, 1), 0))):
        raise DataError(f"{source}: labels must be a 1-D array of integers", "store class indices 0..K-1")
    if y.min() < 0 or (num_classes is not None and y.max() >= num_classes):
        hi = f"0..{num_classes - 1}" if num_classes else "0..K-1"
        raise DataError(f"{source}: labels out of range ({int(y.min())}..{int(y.max())})", f"use class indices {hi}")
    if len(np.unique(y)) < 2:
        raise DataError(f"{source}: only one class present", "a classifier needs at least two classes")


def _digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images.astype(np.float32) / 16.0)[:, None]  # 1797 x 1 x 8 x 8, pixel values 0..16
    return x, d.target.astype(np.int64), [str(c) for c in d.target_names], None


def _npz(p: Path):
    try:
        with np.load(p, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except Exception as e:  # zipfile/ValueError/OSError for corrupt files
        raise DataError(f"{p} is not a readable .npz ({type(e).__name__}: {e})", "save it with numpy.savez") from None
    for key in ("x", "y"):
        if key not in arrays:
            raise DataError(f"{p}: missing array {key!r} (found {sorted(arrays)})", "save images as x and labels as y")

    def images(a: np.ndarray, key: str) -> np.ndarray:
        if a.dtype.kind not in "fiub":
            raise DataError(f"{p}: {key} has dtype {a.dtype}, not numeric", "store images as uint8 or float arrays")
        if a.ndim == 3:
            a = a[:, None]
        elif a.ndim == 4 and a.shape[-1] in (1, 3, 4) and a.shape[1] not in (1, 3, 4):
            a = a.transpose(0, 3, 1, 2)  # NHWC -> NCHW
        elif a.ndim != 4:
            raise DataError(f"{p}: {key} has shape {a.shape}", "use N x H x W, N x C x H x W or N x H x W x C")
        return a.astype(np.float32) / 255.0 if a.dtype == np.uint8 else a.astype(np.float32)

    x = images(arrays["x"], "x")
    y = arrays["y"]
    classes = [str(c) for c in arrays["class_names"]] if "class_names" in arrays else None
    _check_arrays(x, y, str(p), len(classes) if classes else None)
    test = None
    if "x_test" in arrays and "y_test" in arrays:
        xt, yt = images(arrays["x_test"], "x_test"), arrays["y_test"]
        _check_arrays(xt, yt, f"{p} (test)", len(classes) if classes else int(y.max()) + 1)
        if xt.shape[1:] != x.shape[1:]:
            raise DataError(f"{p}: x_test shape {xt.shape[1:]} differs from x {x.shape[1:]}", "use one image size")
        test = (xt, yt.astype(np.int64))
    if classes is None:
        classes = [str(i) for i in range(int(y.max()) + 1)]
    return x, y.astype(np.int64), classes, test


def _cifar10(d: Path):
    def read(f: Path):
        try:
            with open(f, "rb") as fh:
                b = pickle.load(fh, encoding="bytes")
            return np.asarray(b[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32), np.asarray(b[b"labels"])
        except Exception as e:
            raise DataError(
                f"{f} is not a CIFAR-10 python batch ({type(e).__name__})", "re-extract the archive"
            ) from None

    parts = [read(d / f"data_batch_{i}") for i in range(1, 6) if (d / f"data_batch_{i}").exists()]
    x = np.concatenate([p[0] for p in parts]).astype(np.float32) / 255.0
    y = np.concatenate([p[1] for p in parts]).astype(np.int64)
    classes = [str(i) for i in range(10)]
    meta = d / "batches.meta"
    if meta.exists():
        with open(meta, "rb") as fh:
            classes = [c.decode() for c in pickle.load(fh, encoding="bytes")[b"label_names"]]
    test = None
    if (d / "test_batch").exists():
        xt, yt = read(d / "test_batch")
        test = (xt.astype(np.float32) / 255.0, yt.astype(np.int64))
    _check_arrays(x, y, str(d), len(classes))
    return x, y, classes, test


def _image_folder(root: Path):
    from PIL import Image, UnidentifiedImageError

    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise DataError(f"{root}: no class sub-folders", "put images in one sub-folder per class: root/<class>/<img>")
    xs, ys, first = [], [], None
    for label, cdir in enumerate(class_dirs):
        files = sorted(f for f in cdir.iterdir() if f.is_file() and not f.name.startswith("."))
        for f in files:
            if f.suffix.lower() not in IMAGE_SUFFIXES:
                raise DataError(f"{f} is not an image file", "keep only images in the class folders")
            try:
                with Image.open(f) as im:
                    im.load()
                    mode, size = im.mode, im.size
                    arr = np.asarray(im.convert("L" if mode in ("L", "1", "I;16") else "RGB"))
            except (UnidentifiedImageError, OSError) as e:
                raise DataError(f"{f} cannot be read as an image ({e})", "remove or replace the file") from None
            key = (arr.ndim, size)
            if first is None:
                first = (key, f)
            elif key != first[0]:
                raise DataError(
                    f"{f}: size {size} / mode {mode} differs from {first[1].name} (all images must match)",
                    "resize/convert all images to one size and mode",
                )
            xs.append(arr if arr.ndim == 3 else arr[..., None])
            ys.append(label)
    if not xs:
        raise DataError(f"{root}: the class folders hold no images", "add images")
    x = np.stack(xs).transpose(0, 3, 1, 2).astype(np.float32) / 255.0
    y = np.asarray(ys, dtype=np.int64)
    classes = [c.name for c in class_dirs]
    _check_arrays(x, y, str(root), len(classes))
    return x, y, classes, None


def _split(name, x, y, classes, test, seed, val_fraction, test_fraction) -> Dataset:
    from sklearn.model_selection import train_test_split

    def stratify(labels):
        counts = np.bincount(labels)
        return labels if counts[counts > 0].min() >= 2 else None

    idx = np.arange(len(y))
    try:
        if test is None:
            idx, test_idx = train_test_split(idx, test_size=test_fraction, random_state=seed, stratify=stratify(y))
            xt, yt = x[test_idx], y[test_idx]
        else:
            xt, yt = test
        rel_val = val_fraction / (1 - (test_fraction if test is None else 0))
        tr_idx, va_idx = train_test_split(idx, test_size=rel_val, random_state=seed + 1, stratify=stratify(y[idx]))
    except ValueError as e:
        raise DataError(
            f"{name}: cannot split {len(y)} samples ({e})", "add samples or change the split fractions"
        ) from None
    xtr, ytr = x[tr_idx], y[tr_idx]
    mean = xtr.mean(axis=(0, 2, 3))
    std = xtr.std(axis=(0, 2, 3))
    std = np.where(std < 1e-6, 1.0, std)

    def norm(a):
        return torch.from_numpy(((a - mean[None, :, None, None]) / std[None, :, None, None]).astype(np.float32))

    spec = DataSpec(
        name=name,
        input_shape=tuple(int(s) for s in x.shape[1:]),
        num_classes=len(classes),
        class_names=tuple(classes),
        mean=tuple(float(m) for m in mean),
        std=tuple(float(s) for s in std),
    )
    t = torch.from_numpy
    return Dataset(spec, norm(xtr), t(ytr), norm(x[va_idx]), t(y[va_idx]), norm(xt), t(np.asarray(yt)))

