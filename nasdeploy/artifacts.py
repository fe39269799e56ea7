"""Run-directory layout, atomic file writes, JSON/JSONL, checkpoints.

Every artifact is written to a temporary file in the destination folder and
renamed into place, so a kill never leaves a truncated file behind.
Checkpoints are plain dicts of tensors and JSON-able values, loadable with
``torch.load(weights_only=True)``; each carries ``format`` (its kind and
version) so a foreign or mismatched file is named, not misread.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import CheckpointError, ConfigError

# Format tags: bump the version when the layout of that checkpoint changes.
FORMATS = {
    "supernet": "nasdeploy.supernet/1",
    "model": "nasdeploy.model/1",
    "train_state": "nasdeploy.train_state/1",
}


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


@dataclass(frozen=True)
class RunDir:
    """The layout of ``runs/<name>/`` (DESIGN.md). Paths only; creates nothing."""

    root: Path

    def __post_init__(self):
        object.__setattr__(self, "root", Path(self.root))

    @property
    def config(self) -> Path:
        return self.root / "config.toml"

    # search/
    @property
    def search(self) -> Path:
        return self.root / "search"

    @property
    def genotype(self) -> Path:
        return self.search / "genotype.json"

    @property
    def alphas(self) -> Path:
        return self.search / "alphas.jsonl"

    @property
    def search_metrics(self) -> Path:
        return self.search / "metrics.jsonl"

    @property
    def supernet(self) -> Path:
        return self.search / "supernet.pt"

    # train/
    @property
    def train(self) -> Path:
        return self.root / "train"

    @property
    def model(self) -> Path:
        return self.train / "model.pt"

    @property
    def best(self) -> Path:
        return self.train / "best.pt"

    @property
    def train_state(self) -> Path:
        return self.train / "last.pt"

    @property
    def train_metrics(self) -> Path:
        return self.train / "metrics.jsonl"

    # export/
    @property
    def export(self) -> Path:
        return self.root / "export"

    @property
    def onnx(self) -> Path:
        return self.export / "model.onnx"

    @property
    def export_report(self) -> Path:
        return self.export / "export.json"

    # profile/
    @property
    def profile(self) -> Path:
        return self.root / "profile"

    @property
    def latency_json(self) -> Path:
        return self.profile / "latency.json"

    @property
    def latency_md(self) -> Path:
        return self.profile / "latency.md"

    def triton(self, model_name: str) -> Path:
        return self.root / "triton" / model_name


def ensure_dir(path: str | os.PathLike) -> Path:
    """Create ``path`` (and parents); a clear ConfigError if that is impossible."""
    p = Path(path)
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(
            f"cannot create output directory {p}: {e.strerror or e}",
            "choose a writable --out directory",
        ) from None
    if not os.access(p, os.W_OK):
        raise ConfigError(f"output directory {p} is not writable", "choose a writable --out directory")
    return p


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it into place on success.

    For writers that want a filename (torch.onnx.export, ORT); the temp file is
    removed if the block raises.
    """
    dest = Path(path)
    ensure_dir(dest.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; artifacts get the usual permissions
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp_path.unlink()
        raise


def atomic_write(path: str | os.PathLike, data: bytes | str) -> Path:
    """Write ``data`` to ``path`` through a temp file + fsync + rename."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
    return Path(path)


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _jsonable(obj: Any) -> Any:
    """Convert numpy/torch scalars and non-finite floats to strict JSON values."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if hasattr(obj, "tolist"):  # numpy / torch
        return _jsonable(obj.tolist())
    if isinstance(obj, Path):
        return str(obj)
    return obj


def dumps_json(obj: Any) -> str:
    return json.dumps(_jsonable(obj), indent=2, allow_nan=False) + "\n"


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write(path, dumps_json(obj))


def read_json(path: str | os.PathLike, what: str = "JSON file") -> Any:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{what} not found: {p}", "check the path")
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"{what} {p} is not valid JSON ({e})", "fix or regenerate the file") from None


def append_jsonl(path: str | os.PathLike, record: dict) -> None:
    """Append one record; the whole file is rewritten atomically (files are small)."""
    p = Path(path)
    old = p.read_bytes() if p.exists() else b""
    atomic_write(p, old + (json.dumps(_jsonable(record), allow_nan=False) + "\n").encode())


def write_jsonl(path: str | os.PathLike, records: list[dict]) -> Path:
    return atomic_write(path, "".join(json.dumps(_jsonable(r), allow_nan=False) + "\n" for r in records))


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    p = Path(path)
    if not p.exists():
        return []
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]


def save_checkpoint(path: str | os.PathLike, payload: dict, kind: str) -> Path:
    """Save ``payload`` (tensors + JSON-able values) tagged with ``kind``'s format."""
    import torch

    from .version import __version__

    obj = dict(payload)
    obj["format"] = FORMATS[kind]
    obj.setdefault("version", __version__)
    buf = io.BytesIO()
    torch.save(obj, buf)
    return atomic_write(path, buf.getvalue())


def existing_file(path: str | os.PathLike, error: type[Exception], what: str, suffix: str, fix: str) -> Path:
    """``path`` as a Path if it is a file; else ``error`` naming whether it is missing or a directory."""
    p = Path(path)
    if not p.exists():
        raise error(f"{what} not found: {p}", fix)
    if p.is_dir():
        raise error(f"{p} is a directory, not a {suffix} file", f"pass the {suffix} file itself")
    return p


def load_checkpoint(path: str | os.PathLike, kind: str, map_location: str = "cpu") -> dict:
    """Load a checkpoint of ``kind`` with ``weights_only=True``; name what is wrong."""
    import torch

    p = existing_file(path, CheckpointError, "checkpoint", ".pt", "check the path, or run the stage that writes it")
    try:
        obj = torch.load(p, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises many types for truncated/foreign files
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"{p} is not a readable nasdeploy checkpoint (truncated or foreign file: {msg[:160]})",
            "re-run the stage that writes it",
        ) from None
    fmt = obj.get("format") if isinstance(obj, dict) else None
    want = FORMATS[kind]
    if fmt != want:
        found = f"format {fmt!r}" if fmt else "no nasdeploy format tag"
        raise CheckpointError(
            f"{p} is not a {kind} checkpoint ({found}, expected {want!r})",
            f"pass a {kind} checkpoint written by nasdeploy",
        )
    return obj
