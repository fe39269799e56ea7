"""Datasets: digits (embedded), Fashion-MNIST (Debian package), CIFAR-10 pickle dir, MNIST-layout
IDX dir, image folder, ``.npz`` → in-memory splits.

Every loader returns a ``Dataset`` whose tensors are float32 NCHW, already
normalized with per-channel mean/std computed on the training split; the
statistics travel in ``DataSpec`` to the checkpoint and the ONNX metadata so a
server can normalize the same way.
"""

from __future__ import annotations

import gzip
import hashlib
import pickle
import zlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from .errors import DataError

# Data sets known by name (no path): what DataSpec.available() can reload without the user's files.
EMBEDDED = ("digits",)
# The DataSpec fields that pin a split (recorded in model.pt and the ONNX metadata).
SPLIT_KEYS = ("split_seed", "val_fraction", "test_fraction", "fingerprint", "max_train", "max_val")

# Xiao, Rasul & Vollgraf 2017, "Fashion-MNIST", table 1: label index -> name.
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")


@dataclass(frozen=True)
class Packaged:
    """A data set a system package installs as an MNIST-layout IDX directory."""

    root: Path
    package: str  # the Debian package that installs ``root``
    class_names: tuple[str, ...]


# Data sets known by name that a system package provides (loaded only where it is installed).
PACKAGED = {
    "fashion-mnist": Packaged(Path("/usr/share/datasets/fashion-mnist"), "dataset-fashion-mnist",
                              FASHION_MNIST_CLASSES),
}
# The four files of an MNIST-layout directory, each plain or ``.gz`` (LeCun et al., MNIST page).
IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
# IDX type byte -> big-endian numpy dtype.
IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}

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
    # The split the model was trained on: later stages (export parity, INT8 calibration) reload
    # exactly these images. ``fingerprint`` identifies the source's contents (sizes + label hash).
    split_seed: int = 0
    val_fraction: float = 0.1
    test_fraction: float = 0.2
    fingerprint: str = ""
    max_train: int | None = None  # training split capped to this many images (None: all of it)
    max_val: int | None = None  # validation split capped likewise (None: all of it)

    def to_dict(self) -> dict:
        d = asdict(self)
        for cap in ("max_train", "max_val"):
            if d[cap] is None:  # recorded only when set: uncapped specs keep the dict they always had
                del d[cap]
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
            # checkpoints of format 1 before the split was recorded: the defaults they were made with
            split_seed=int(d.get("split_seed", 0)),
            val_fraction=float(d.get("val_fraction", 0.1)),
            test_fraction=float(d.get("test_fraction", 0.2)),
            fingerprint=str(d.get("fingerprint", "")),
            max_train=None if d.get("max_train") is None else int(d["max_train"]),
            max_val=None if d.get("max_val") is None else int(d["max_val"]),
        )

    def available(self) -> bool:
        """Whether :meth:`load` can find the source here (embedded, an installed package, or a path)."""
        return source_available(self.name)

    def load(self) -> Dataset:
        """The very split this spec describes; DataError if the source changed since."""
        data = load_dataset(self.name, seed=self.split_seed, val_fraction=self.val_fraction,
                            test_fraction=self.test_fraction, max_train=self.max_train, max_val=self.max_val)
        if self.fingerprint and data.spec.fingerprint != self.fingerprint:
            raise DataError(f"dataset {self.name!r} differs from the one the model was trained on "
                            f"(fingerprint {data.spec.fingerprint} here, {self.fingerprint} recorded)",
                            "point --dataset at the original data")
        return data


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
        name = self.spec.name
        if name in PACKAGED:
            name += f" ({PACKAGED[name].root}, package {PACKAGED[name].package})"
        def cap(key):
            n = getattr(self.spec, key)
            return f" ({key} {n})" if n is not None else ""

        return (
            f"{name}: {c}x{h}x{w}, {self.spec.num_classes} classes, "
            f"train {len(self.y_train)}{cap('max_train')} / val {len(self.y_val)}{cap('max_val')} "
            f"/ test {len(self.y_test)}"
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
    max_train: int | None = None,
    max_val: int | None = None,
) -> Dataset:
    """Load ``digits``, ``fashion-mnist``, or a path: CIFAR-10 pickle dir, MNIST-layout IDX dir,
    image-folder tree, or ``.npz``.

    Splits are drawn by ``seed`` (stratified), except where the source ships its
    own test split (CIFAR-10 ``test_batch``; IDX ``t10k-*``; ``x_test``/``y_test`` in an npz).

    Args:
        name: a known name (``digits``, ``fashion-mnist``) or a path.
        seed: seed of the stratified train/val/test split.
        val_fraction: share of the source's samples held out for validation.
        test_fraction: share held out for testing; ignored where the source ships a test split.
        max_train: keep at most this many training images (a stratified draw by ``seed``) to
            make large sources cheap; val and test are the same as without the cap.
        max_val: keep at most this many validation images (a stratified draw by ``seed``): the
            split every epoch is scored on, so a big source's quick run does not spend its time
            there; train and test are the same as without the cap.

    Example:
        >>> load_dataset("fashion-mnist", max_train=5000).summary()  # doctest: +SKIP
    """
    if not (0 < val_fraction < 1) or not (0 <= test_fraction < 1) or val_fraction + test_fraction >= 1:
        raise DataError(
            f"bad split fractions val={val_fraction} test={test_fraction}",
            "use 0 < val, 0 <= test, val + test < 1",
        )
    for key, n in (("max_train", max_train), ("max_val", max_val)):
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
            raise DataError(f"bad {key}={n!r}", "use a positive number of images, or None for all")
    src = _read(name)
    return _split(src.name, src.x, src.y, src.classes, src.test, seed, val_fraction, test_fraction, max_train,
                  max_val)


def source_available(name: str) -> bool:
    """Whether ``name`` can be loaded here: embedded, an installed package's data set, or an existing path."""
    if name in EMBEDDED:
        return True
    if name in PACKAGED:
        return PACKAGED[name].root.is_dir()
    return Path(name).exists()


def dataset_identity(source) -> dict:
    """What a data source is, for the record: name, kind, where it was read, sizes and a label hash.

    Args:
        source: a dataset name or path, a ``DataConfig`` (``.dataset``) or a ``RunConfig`` (``.data``).

    Returns:
        ``{"name", "kind", "source", "package", "input_shape", "num_classes", "n_train", "n_test",
        "labels_sha256", "images_sha256", "fingerprint"}``. ``n_train`` counts the source's
        training pool (before val is carved from it); ``n_test`` is None where the source ships no
        test split. ``labels_sha256`` hashes the int64 train labels, then the test labels;
        ``images_sha256`` the float32 [0, 1] images likewise; ``fingerprint`` is
        ``DataSpec.fingerprint`` (image shapes + labels only). All hash decoded contents, so the
        same data compressed differently has the same identity.

    Example:
        >>> dataset_identity("fashion-mnist")["n_train"]  # doctest: +SKIP
        60000
    """
    if isinstance(source, (str, Path)):
        name = str(source)
    elif hasattr(source, "data") and hasattr(source.data, "dataset"):
        name = source.data.dataset
    elif hasattr(source, "dataset"):
        name = source.dataset
    else:
        raise TypeError(f"dataset_identity takes a name, path, DataConfig or RunConfig, not {type(source).__name__}")
    src = _read(name)
    labels = hashlib.sha256(np.ascontiguousarray(src.y, dtype=np.int64).tobytes())
    images = hashlib.sha256(np.ascontiguousarray(src.x, dtype=np.float32).data)
    if src.test is not None:
        labels.update(np.ascontiguousarray(src.test[1], dtype=np.int64).tobytes())
        images.update(np.ascontiguousarray(src.test[0], dtype=np.float32).data)
    return {
        "name": src.name,
        "kind": src.kind,
        "source": src.source,
        "package": PACKAGED[name].package if name in PACKAGED else None,
        "input_shape": [int(s) for s in src.x.shape[1:]],
        "num_classes": len(src.classes),
        "n_train": len(src.y),
        "n_test": None if src.test is None else len(src.test[1]),
        "labels_sha256": labels.hexdigest(),
        "images_sha256": images.hexdigest(),
        "fingerprint": _fingerprint(src.x, src.y, src.test),
    }


@dataclass
class _Source:
    """A source as read, before splitting: ``test`` is its shipped test split, or None."""

    name: str  # as DataSpec records it
    kind: str  # embedded | packaged | cifar10 | idx | image-folder | npz
    source: str  # where it was read (an absolute path, or the embedding library)
    x: np.ndarray
    y: np.ndarray
    classes: list[str]
    test: tuple[np.ndarray, np.ndarray] | None


def _read(name: str) -> _Source:
    if name == "digits":
        return _Source(name, "embedded", "sklearn.datasets.load_digits", *_digits())
    if name in PACKAGED:
        pk = PACKAGED[name]
        if not pk.root.is_dir():
            raise DataError(
                f"dataset {name!r} is not installed (no {pk.root})",
                f"apt-get install {pk.package}, or pass --dataset DIR holding its IDX files",
            )
        return _Source(name, "packaged", str(pk.root), *_idx_dir(pk.root, list(pk.class_names)))
    p = Path(name)
    if not p.exists():
        raise DataError(
            f"dataset {name!r} is neither a known name nor an existing path",
            f"use --dataset digits, {', '.join(PACKAGED)}, a CIFAR-10 python directory, an MNIST-layout "
            "IDX directory, an image folder, or a .npz file",
        )
    where = str(p.resolve())
    if p.is_file():
        if p.suffix != ".npz":
            raise DataError(f"{p} is not a .npz file", "give a .npz with arrays x and y, or a directory")
        return _Source(str(p), "npz", where, *_npz(p))
    if (p / "data_batch_1").exists() or (p / "cifar-10-batches-py" / "data_batch_1").exists():
        return _Source(str(p), "cifar10", where,
                       *_cifar10(p if (p / "data_batch_1").exists() else p / "cifar-10-batches-py"))
    if _idx_path(p, IDX_FILES[0]) is not None:
        # a packaged set given by its path still gets its class names
        names = next((list(pk.class_names) for pk in PACKAGED.values() if pk.root.resolve() == p.resolve()), None)
        return _Source(str(p), "idx", where, *_idx_dir(p, names))
    return _Source(str(p), "image-folder", where, *_image_folder(p))


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


def read_idx(path: Path, ndim: int | None = None) -> np.ndarray:
    """One IDX file (the MNIST format; gzipped when named ``*.gz``) as a native-endian array.

    Raises DataError naming the file for a bad magic number, a wrong number of
    dimensions, or data shorter or longer than the header's dimensions promise.
    """
    path = Path(path)
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:  # BadGzipFile is an OSError; a cut-off stream is EOFError
        raise DataError(f"{path} cannot be read ({type(e).__name__}: {e})", "re-download or reinstall it") from None
    # header: two zero bytes, a type byte, a dimension count, then one big-endian uint32 per dimension
    if len(raw) < 4:
        raise DataError(f"{path} is truncated ({len(raw)} bytes, no IDX header)", "re-download or reinstall it")
    magic = int.from_bytes(raw[:4], "big")
    if raw[0] or raw[1] or raw[2] not in IDX_TYPES:
        raise DataError(f"{path} is not an IDX file (bad magic number 0x{magic:08x})",
                        "give MNIST-layout files (magic 0x00000803 for images, 0x00000801 for labels)")
    if ndim is not None and raw[3] != ndim:
        raise DataError(f"{path} has {raw[3]} dimensions (magic 0x{magic:08x}), expected {ndim}",
                        "check that images and labels files are not swapped")
    head = 4 + 4 * raw[3]
    if len(raw) < head:
        raise DataError(f"{path} is truncated (header cut off at {len(raw)} bytes)", "re-download or reinstall it")
    dims = tuple(int(d) for d in np.frombuffer(raw, ">u4", raw[3], 4))
    dtype = np.dtype(IDX_TYPES[raw[2]])
    want = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(raw) - head != want:
        what = "truncated" if len(raw) - head < want else "longer than its header says"
        raise DataError(f"{path} is {what} ({len(raw) - head} data bytes, header {dims} needs {want})",
                        "re-download or reinstall it")
    return np.frombuffer(raw, dtype, offset=head).reshape(dims).astype(dtype.newbyteorder("="))


def _idx_path(d: Path, stem: str) -> Path | None:
    """``d/stem`` or ``d/stem.gz`` (the plain file where both exist), or None."""
    return next((f for f in (d / stem, d / f"{stem}.gz") if f.is_file()), None)


def _idx_pair(images: Path, labels: Path):
    x, y = read_idx(images, ndim=3), read_idx(labels, ndim=1)
    if len(x) != len(y):
        raise DataError(f"{images} holds {len(x)} images but {labels} holds {len(y)} labels",
                        "use the images and labels files of one release")
    # N x H x W -> N x 1 x H x W; unsigned bytes on the [0, 1] scale like every other loader
    x = x[:, None].astype(np.float32) / 255.0 if x.dtype == np.uint8 else x[:, None].astype(np.float32)
    return x, y.astype(np.int64)


def _idx_dir(d: Path, classes: list[str] | None = None):
    paths = [_idx_path(d, stem) for stem in IDX_FILES]
    if paths[0] is None or paths[1] is None:
        missing = IDX_FILES[0] if paths[0] is None else IDX_FILES[1]
        raise DataError(f"{d}: no {missing}[.gz]", f"an MNIST-layout directory holds {', '.join(IDX_FILES)}")
    x, y = _idx_pair(paths[0], paths[1])
    test = None
    if (paths[2] is None) != (paths[3] is None):
        missing = IDX_FILES[2] if paths[2] is None else IDX_FILES[3]
        raise DataError(f"{d}: no {missing}[.gz] beside the other t10k file", "add it, or remove both t10k files")
    if paths[2] is not None:
        test = _idx_pair(paths[2], paths[3])
        if test[0].shape[1:] != x.shape[1:]:
            raise DataError(f"{paths[2]}: images are {test[0].shape[2:]}, the training images {x.shape[2:]}",
                            "use the files of one release")
    if classes is None:  # the training labels define the classes; a test label beyond them is an error
        classes = [str(i) for i in range(int(y.max(initial=0)) + 1)]
    _check_arrays(x, y, str(d), len(classes))
    if test is not None:
        _check_arrays(*test, f"{d} (test)", len(classes))
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


def _fingerprint(x, y, test) -> str:
    """Identity of a source's contents: sizes and a hash of the labels (cheap, and changes with the data)."""
    h = hashlib.sha256(f"{x.shape}".encode())
    h.update(np.ascontiguousarray(y, dtype=np.int64).tobytes())
    if test is not None:
        h.update(f"{np.shape(test[0])}".encode())
        h.update(np.ascontiguousarray(test[1], dtype=np.int64).tobytes())
    return h.hexdigest()[:16]


def _split(name, x, y, classes, test, seed, val_fraction, test_fraction, max_train=None, max_val=None) -> Dataset:
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
        # Each cap is drawn from its own split alone, so the other splits are those of the uncapped one.
        if max_train is not None and max_train < len(tr_idx):
            tr_idx, _ = train_test_split(tr_idx, train_size=max_train, random_state=seed + 2,
                                         stratify=stratify(y[tr_idx]))
        if max_val is not None and max_val < len(va_idx):
            va_idx, _ = train_test_split(va_idx, train_size=max_val, random_state=seed + 3,
                                         stratify=stratify(y[va_idx]))
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
        split_seed=seed,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        fingerprint=_fingerprint(x, y, test),
        max_train=max_train,
        max_val=max_val,
    )
    t = torch.from_numpy
    return Dataset(spec, norm(xtr), t(ytr), norm(x[va_idx]), t(y[va_idx]), norm(xt), t(np.asarray(yt)))

