"""Small helpers over ONNX files: load with a clear error, inputs, metadata, sha256.

Shared by export (which writes the file), profile and the Triton stage
(which read it); each caller passes the error type of its own stage.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import NasdeployError, ProfileError


@dataclass(frozen=True)
class TensorSpec:
    """A graph input/output: name, dims (int, or the symbolic name of a dynamic dim), numpy dtype."""

    name: str
    shape: tuple[int | str, ...]
    dtype: str  # numpy dtype name, e.g. "float32"

    def to_dict(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    def concrete_shape(self, batch_size: int, error: type[NasdeployError] = ProfileError) -> tuple[int, ...]:
        """The shape with the leading (batch) dim set to ``batch_size``; other dims must be fixed."""
        if not self.shape:
            raise error(f"input {self.name!r} is a scalar, not a batch", "export the model with a batch axis")
        lead, rest = self.shape[0], self.shape[1:]
        if isinstance(lead, int) and lead > 0 and lead != batch_size:
            raise error(
                f"input {self.name!r} has a fixed batch size of {lead}, cannot run batch {batch_size}",
                f"export with a dynamic batch axis, or use batch size {lead}",
            )
        dynamic = [i + 1 for i, d in enumerate(rest) if not (isinstance(d, int) and d > 0)]
        if dynamic:
            raise error(
                f"input {self.name!r} has dynamic dims other than the batch (axes {dynamic}, shape {list(self.shape)})",
                "export with fixed non-batch dims",
            )
        return (batch_size, *rest)


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def load_onnx(path: str | os.PathLike, error: type[NasdeployError] = ProfileError):
    """Load an ONNX model's graph (weights in external files are not read).

    Args:
        path: the .onnx file.
        error: the stage's error type to raise.

    Returns:
        ``onnx.ModelProto``.

    Raises:
        error: missing path, a directory, or a file that is not an ONNX model
            (protobuf parse fails, or it parses to an empty graph — protobuf
            reads many foreign byte strings "successfully").
    """
    import onnx

    p = Path(path)
    if not p.exists():
        raise error(f"ONNX model not found: {p}", "check the path, or run `nasdeploy export` first")
    if p.is_dir():
        raise error(f"{p} is a directory, not an ONNX file", "pass the .onnx file itself")
    try:
        model = onnx.load(str(p), load_external_data=False)
    except Exception as e:  # DecodeError, ValueError, ... for foreign files
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise error(
            f"{p} is not an ONNX model ({msg[:120]})", "pass the .onnx file written by `nasdeploy export`"
        ) from None
    if model.ir_version <= 0 or not model.opset_import or len(model.graph.node) == 0 or not model.graph.input:
        raise error(
            f"{p} is not an ONNX model (no IR version, opset, nodes or inputs)",
            "pass the .onnx file written by `nasdeploy export`",
        )
    return model


def _specs(values, skip: set[str] = frozenset()) -> list[TensorSpec]:
    import onnx

    out = []
    for v in values:
        if v.name in skip:
            continue
        tt = v.type.tensor_type
        dims: list[int | str] = []
        for d in tt.shape.dim:
            if d.HasField("dim_value"):
                dims.append(int(d.dim_value))
            else:
                dims.append(d.dim_param or "?")
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type)).name if tt.elem_type else "unknown"
        out.append(TensorSpec(v.name, tuple(dims), dtype))
    return out


def graph_inputs(model) -> list[TensorSpec]:
    """The inputs a caller must feed (graph inputs that are not initializers)."""
    # IR < 4 lists initializers among the inputs; they have defaults and are not fed.
    inits = {t.name for t in model.graph.initializer}
    return _specs(model.graph.input, skip=inits)


def graph_outputs(model) -> list[TensorSpec]:
    """The graph outputs."""
    return _specs(model.graph.output)


def metadata(model) -> dict[str, str]:
    """``metadata_props`` as a dict."""
    return {p.key: p.value for p in model.metadata_props}


def random_feeds(inputs: list[TensorSpec], batch_size: int, seed: int = 0, error: type[NasdeployError] = ProfileError):
    """Inputs for timing: standard-normal floats (zeros for other dtypes), batch dim set.

    Values do not change the latency of a CNN; a fixed seed keeps runs identical.
    """
    rng = np.random.default_rng(seed)
    feeds = {}
    for spec in inputs:
        shape = spec.concrete_shape(batch_size, error)
        dt = np.dtype(spec.dtype) if spec.dtype != "unknown" else np.dtype("float32")
        if np.issubdtype(dt, np.floating):
            feeds[spec.name] = rng.standard_normal(shape).astype(dt)
        else:
            feeds[spec.name] = np.zeros(shape, dtype=dt)
    return feeds
