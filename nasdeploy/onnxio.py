"""ONNX files in and out: the one-file torch export, loading with a clear error, inputs, metadata, feeds.

Shared by ``deploy`` (export writes the served file; profile, quantize and
Triton read it) and ``latency.table`` (which times pieces exported exactly as
the served model is); each caller passes the error type of its own stage.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .artifacts import existing_file, file_sha256  # noqa: F401  (file_sha256 re-exported: the ONNX files' hash)
from .errors import ExportError, NasdeployError, ProfileError

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
MAX_BATCH = 4096


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


class Logits(nn.Module):
    """The served graph: exactly one tensor out (a ``(logits, None)`` tuple would lose an output)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def torch_export(wrapper: nn.Module, example: torch.Tensor, path: Path, opset: int) -> tuple[str, str | None]:
    """Export with the dynamo exporter; fall back to TorchScript only if it fails. Returns (exporter, dynamo error).

    One file (``external_data=False``), input ``input`` with a dynamic batch axis, output ``logits``.
    """
    # The two exporters differ only in how the batch axis is declared.
    dynamo = dict(dynamo=True, external_data=False,
                  dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1, max=MAX_BATCH)}})
    torchscript = dict(dynamo=False, dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})
    errors = []
    for name, kw in (("dynamo", dynamo), ("torchscript", torchscript)):
        try:
            with quiet("torch.onnx", silence_warnings=True):
                torch.onnx.export(wrapper, (example,), str(path), input_names=[INPUT_NAME],
                                  output_names=[OUTPUT_NAME], opset_version=opset, verbose=False, **kw)
            return name, (errors[0] if errors else None)
        except Exception as e:  # the exporters raise many types
            errors.append(first_line(e))
    raise ExportError(f"ONNX export failed (dynamo: {errors[0]}; torchscript: {errors[1]})",
                      "report the failing op; try another --opset")


@contextlib.contextmanager
def exported(net: nn.Module, example: torch.Tensor, prefix: str = "nasdeploy-", opset: int = 20) -> Iterator[Path]:
    """A temporary ``.onnx`` of the eval-mode served graph of ``net``, exported as ``deploy.export`` does."""
    with tempfile.TemporaryDirectory(prefix=prefix) as d:
        path = Path(d) / "model.onnx"
        with torch.no_grad():
            torch_export(Logits(net).eval(), example, path, opset)
        yield path


@contextlib.contextmanager
def quiet(logger: str | None = None, silence_warnings: bool = False):
    """Silence the exporters' and ORT tools' progress prints and logs (failures still raise).

    ``logger``: the logger kept at ERROR meanwhile (None: the root logger); ``silence_warnings``: drop warnings too.
    """
    log = logging.getLogger(logger)
    prev = log.level
    log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            if silence_warnings:
                warnings.simplefilter("ignore")
            yield
    finally:
        log.setLevel(prev)


def first_line(e: BaseException) -> str:
    """An exception's first line (at most 200 characters), for one-line error messages."""
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:200]


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

    p = existing_file(path, error, "ONNX model", ".onnx", "check the path, or run `nasdeploy export` first")
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
