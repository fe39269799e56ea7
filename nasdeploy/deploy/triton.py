"""A Triton Inference Server model repository for an exported ONNX model.

Layout (Triton's model repository convention)::

    DIR/NAME/config.pbtxt
    DIR/NAME/labels.txt        class names, one per line (Triton's classification extension)
    DIR/NAME/1/model.onnx

``config.pbtxt`` is written from the ONNX graph itself: platform
``onnxruntime_onnx``, ``max_batch_size``, each input's and output's name,
data type and dims with the batch dimension left out (Triton adds it when
``max_batch_size > 0``), dynamic batching, and one CPU or GPU instance group.
Writing needs nothing beyond this package; :func:`check_repository` parses the
file with Triton's own schema (``tritonclient.grpc.model_config_pb2``, extra
``nasdeploy[serve]``) and cross-checks every field against the ONNX graph.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from ..artifacts import atomic_write, ensure_dir
from ..errors import ExportError
from ..onnxio import TensorSpec, file_sha256, graph_inputs, graph_outputs, load_onnx, metadata

PLATFORM = "onnxruntime_onnx"
VERSION = "1"
MODEL_FILE = "model.onnx"
LABELS_FILE = "labels.txt"
QUEUE_DELAY_US = 100  # how long the dynamic batcher waits to fill a batch

# numpy dtype name -> Triton DataType (model_config.proto)
TRITON_DTYPES = {
    "bool": "TYPE_BOOL",
    "uint8": "TYPE_UINT8",
    "uint16": "TYPE_UINT16",
    "uint32": "TYPE_UINT32",
    "uint64": "TYPE_UINT64",
    "int8": "TYPE_INT8",
    "int16": "TYPE_INT16",
    "int32": "TYPE_INT32",
    "int64": "TYPE_INT64",
    "float16": "TYPE_FP16",
    "float32": "TYPE_FP32",
    "float64": "TYPE_FP64",
}
_NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")


def triton_dims(spec: TensorSpec, max_batch_size: int) -> list[int]:
    """Triton dims of a graph tensor: without the batch axis when batching; -1 for a dynamic dim."""
    if max_batch_size > 0:
        if not spec.shape:
            raise ExportError(f"tensor {spec.name!r} is a scalar, Triton cannot batch it", "export with a batch axis")
        if isinstance(spec.shape[0], int) and spec.shape[0] > 0:
            raise ExportError(
                f"tensor {spec.name!r} has a fixed batch size {spec.shape[0]}; Triton batching needs a dynamic one",
                "export with a dynamic batch axis (nasdeploy export does)",
            )
        shape = spec.shape[1:]
    else:
        shape = spec.shape
    return [d if isinstance(d, int) and d > 0 else -1 for d in shape]


def triton_dtype(spec: TensorSpec) -> str:
    if spec.dtype not in TRITON_DTYPES:
        raise ExportError(
            f"tensor {spec.name!r} has dtype {spec.dtype}, which Triton's ONNX backend does not serve",
            "export float32 inputs and outputs",
        )
    return TRITON_DTYPES[spec.dtype]


def render_config(
    onnx_path: str | os.PathLike, model_name: str, max_batch_size: int = 64, gpu: bool = False, labels: bool = False
) -> str:
    """The ``config.pbtxt`` text for ``onnx_path`` (protobuf text format of Triton's ``ModelConfig``)."""
    if max_batch_size < 1:
        raise ExportError(f"max_batch_size = {max_batch_size}: must be >= 1", "e.g. --max-batch-size 64")
    model = load_onnx(onnx_path, ExportError)

    def tensor(spec: TensorSpec, label: bool = False) -> str:
        dims = ", ".join(str(d) for d in triton_dims(spec, max_batch_size))
        lines = [f'    name: "{spec.name}"', f"    data_type: {triton_dtype(spec)}", f"    dims: [ {dims} ]"]
        if label:
            lines.append(f'    label_filename: "{LABELS_FILE}"')
        return "  {\n" + "\n".join(lines) + "\n  }"

    outputs = graph_outputs(model)
    kind = "KIND_GPU" if gpu else "KIND_CPU"
    return "\n".join(
        [
            "# Written by nasdeploy from the ONNX graph; dims leave out the batch axis (max_batch_size > 0).",
            f'name: "{model_name}"',
            f'platform: "{PLATFORM}"',
            f"max_batch_size: {max_batch_size}",
            f'default_model_filename: "{MODEL_FILE}"',
            "input [\n" + ",\n".join(tensor(s) for s in graph_inputs(model)) + "\n]",
            "output [\n" + ",\n".join(tensor(s, labels and i == 0) for i, s in enumerate(outputs)) + "\n]",
            f"dynamic_batching {{\n  max_queue_delay_microseconds: {QUEUE_DELAY_US}\n}}",
            f"instance_group [\n  {{\n    count: 1\n    kind: {kind}\n  }}\n]",
            "",
        ]
    )


def write_repository(
    onnx_path: str | os.PathLike, repo: str | os.PathLike, model_name: str, max_batch_size: int = 64, gpu: bool = False
) -> Path:
    """Write ``repo/model_name/{config.pbtxt, labels.txt, 1/model.onnx}`` for the exported model.

    Args:
        onnx_path: an ONNX file with a dynamic batch axis (``model.onnx`` or a variant).
        repo: the model repository root (``tritonserver --model-repository``).
        model_name: the model's folder and ``name`` (letters, digits, ``_.-``).
        max_batch_size: Triton's largest batch; requests are batched up to it.
        gpu: one ``KIND_GPU`` instance instead of one ``KIND_CPU`` instance.

    Returns:
        The model folder ``repo/model_name``.

    Raises:
        ExportError: a bad name, a model without a dynamic batch axis, a dtype Triton cannot serve.

    Example:
        >>> write_repository("runs/x/export/model.onnx", "runs/x/triton", "darts_digits")  # doctest: +SKIP
        PosixPath('runs/x/triton/darts_digits')
    """
    if not _NAME.match(model_name or ""):
        raise ExportError(
            f"model name {model_name!r} is not a folder name Triton accepts", "use letters, digits, '_', '.' and '-'"
        )
    model = load_onnx(onnx_path, ExportError)
    class_names = _class_names(model, graph_outputs(model))
    text = render_config(onnx_path, model_name, max_batch_size, gpu, labels=class_names is not None)
    folder = ensure_dir(Path(repo) / model_name)
    atomic_write(folder / VERSION / MODEL_FILE, Path(onnx_path).read_bytes())
    if class_names is not None:
        atomic_write(folder / LABELS_FILE, "".join(f"{c}\n" for c in class_names))
    atomic_write(folder / "config.pbtxt", text)  # last: its presence marks the repository complete
    return folder


def _class_names(model, outputs: list[TensorSpec]) -> list[str] | None:
    """Class names from the export metadata when they match the first output's last dim."""
    raw = metadata(model).get("class_names")
    if not raw or not outputs or not outputs[0].shape:
        return None
    try:
        names = [str(c) for c in json.loads(raw)]
    except (ValueError, TypeError):
        return None
    n = outputs[0].shape[-1]
    return names if isinstance(n, int) and n == len(names) and all("\n" not in c for c in names) else None


def schema_available() -> bool:
    """Whether Triton's model-config protobuf (``tritonclient[grpc]``) can be imported."""
    try:
        from tritonclient.grpc import model_config_pb2  # noqa: F401
    except ImportError:
        return False
    return True


def load_config(config_path: str | os.PathLike):
    """Parse ``config.pbtxt`` with Triton's ``ModelConfig`` schema (needs ``tritonclient[grpc]``)."""
    try:
        from google.protobuf import text_format
        from tritonclient.grpc import model_config_pb2
    except ImportError:
        raise ExportError(
            "tritonclient is not installed, so Triton's model-config schema is not available",
            "pip install 'nasdeploy[serve]'",
        ) from None
    text = Path(config_path).read_text(encoding="utf-8")
    try:
        return text_format.Parse(text, model_config_pb2.ModelConfig())
    except text_format.ParseError as e:
        raise ExportError(
            f"{config_path} is not a valid Triton model config: {e}", "re-run export --triton-repo"
        ) from None


def check_repository(folder: str | os.PathLike, onnx_path: str | os.PathLike | None = None) -> list[str]:
    """Cross-check ``folder/config.pbtxt`` against Triton's schema and the ONNX graph in ``folder/1/``.

    Returns the list of problems (empty when the repository is consistent):
    name vs folder, platform, batching, each input/output's name, data type and
    dims, dynamic batching, instance group, the labels file, and (given
    ``onnx_path``) that ``1/model.onnx`` is a byte copy of it.
    """
    folder = Path(folder)
    cfg = load_config(folder / "config.pbtxt")  # raises ExportError without tritonclient
    from tritonclient.grpc import model_config_pb2 as mc

    model_file = folder / VERSION / (cfg.default_model_filename or MODEL_FILE)
    problems: list[str] = []

    def expect(cond: bool, what: str) -> None:
        if not cond:
            problems.append(what)

    expect(cfg.name == folder.name, f"name {cfg.name!r} differs from the folder {folder.name!r}")
    expect(cfg.platform == PLATFORM, f"platform {cfg.platform!r}, expected {PLATFORM!r}")
    expect(cfg.max_batch_size > 0, f"max_batch_size {cfg.max_batch_size}, expected > 0 (dynamic batch axis)")
    expect(cfg.HasField("dynamic_batching"), "no dynamic_batching block")
    expect(
        len(cfg.instance_group) == 1
        and cfg.instance_group[0].kind in (mc.ModelInstanceGroup.KIND_CPU, mc.ModelInstanceGroup.KIND_GPU)
        and cfg.instance_group[0].count >= 1,
        "expected one CPU or GPU instance group with count >= 1",
    )
    if not model_file.is_file():
        return [*problems, f"{model_file} is missing"]
    if onnx_path is not None:
        expect(file_sha256(model_file) == file_sha256(onnx_path), f"{model_file} is not a copy of {onnx_path}")
    model = load_onnx(model_file, ExportError)
    for kind, declared, specs in (
        ("input", cfg.input, graph_inputs(model)),
        ("output", cfg.output, graph_outputs(model)),
    ):
        got = {t.name: t for t in declared}
        expect(
            sorted(got) == sorted(s.name for s in specs),
            f"{kind} names {sorted(got)} differ from the graph's {sorted(s.name for s in specs)}",
        )
        for s in specs:
            t = got.get(s.name)
            if t is None:
                continue
            want_type = mc.DataType.Value(TRITON_DTYPES.get(s.dtype, "TYPE_INVALID"))
            expect(
                t.data_type == want_type,
                f"{kind} {s.name!r} data_type {mc.DataType.Name(t.data_type)}, "
                f"graph has {s.dtype} ({mc.DataType.Name(want_type)})",
            )
            want_dims = triton_dims(s, cfg.max_batch_size) if cfg.max_batch_size > 0 else list(s.shape)
            expect(
                list(t.dims) == want_dims,
                f"{kind} {s.name!r} dims {list(t.dims)}, graph gives {want_dims} (batch axis left out)",
            )
            if kind == "output" and t.label_filename:
                labels = folder / t.label_filename
                n = s.shape[-1] if s.shape else None
                expect(
                    labels.is_file() and len(labels.read_text(encoding="utf-8").splitlines()) == n,
                    f"{labels} missing or without one line per class ({n})",
                )
    return problems


__all__ = [
    "write_repository",
    "render_config",
    "check_repository",
    "load_config",
    "schema_available",
    "triton_dims",
    "TRITON_DTYPES",
]
