"""OpenVINO as a second runtime for the exported model (optional extra ``nasdeploy[openvino]``).

OpenVINO reads ``model.onnx`` directly (and the ``ort-basic`` variant, which
stays in the standard ONNX domain). On CPUs with bf16 support its CPU plugin
computes in bf16 unless told otherwise (logits then differ from ONNX Runtime
by ~5e-2 on the digits model), so every model here is compiled with the
inference precision hint forced to f32.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import ExportError
from ..onnxio import graph_inputs, graph_outputs, load_onnx

PRECISIONS = ("f32", "bf16", "f16")


def _openvino():
    try:
        import openvino
    except ImportError:
        raise ExportError("OpenVINO is not installed", "pip install 'nasdeploy[openvino]'") from None
    return openvino


def compile_model(
    onnx_path: str | os.PathLike, device: str = "CPU", precision: str = "f32", threads: int | None = None
):
    """Read an ONNX file and compile it for ``device`` with the given inference precision.

    Args:
        onnx_path: an ONNX model in the standard domain (``model.onnx``, ``model.ort-basic.onnx``).
        device: OpenVINO device name (``CPU``, ``GPU``, ...).
        precision: ``INFERENCE_PRECISION_HINT``: f32 (default, for parity), bf16 or f16.
        threads: CPU inference threads; None keeps OpenVINO's default.

    Returns:
        ``openvino.CompiledModel``; its ``INFERENCE_PRECISION_HINT`` property is checked to be ``precision``.

    Raises:
        ExportError: OpenVINO missing, an unknown precision, or a model it cannot read.
    """
    ov = _openvino()
    if precision not in PRECISIONS:
        raise ExportError(f"unknown OpenVINO inference precision {precision!r}", f"use one of {', '.join(PRECISIONS)}")
    load_onnx(onnx_path, ExportError)  # a clear error for a missing or foreign file
    config: dict = {"INFERENCE_PRECISION_HINT": precision}
    if threads is not None:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    try:
        compiled = ov.Core().compile_model(str(onnx_path), device, config)
    except Exception as e:  # OpenVINO raises RuntimeError with a multi-line message
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ExportError(
            f"OpenVINO cannot compile {onnx_path} for {device}: {msg[:200]}",
            "export again, or use the fp32 / ort-basic variant",
        ) from None
    got = compiled.get_property("INFERENCE_PRECISION_HINT")
    if got != getattr(ov.Type, precision):
        raise ExportError(
            f"OpenVINO compiled with inference precision {got}, not {precision}", "report the OpenVINO version"
        )
    return compiled


def predict(compiled, x: np.ndarray) -> np.ndarray:
    """The first output of ``compiled`` for the float32 batch ``x``."""
    request = compiled.create_infer_request()
    return np.array(request.infer({0: np.ascontiguousarray(x, dtype=np.float32)})[compiled.output(0)])


def compare(onnx_path: str | os.PathLike, x: np.ndarray, torch_model=None, threads: int = 1) -> dict:
    """Run the same batch through OpenVINO (f32), ONNX Runtime and optionally PyTorch; report the differences.

    Args:
        onnx_path: the exported model.
        x: a float32 batch of the model's input shape (e.g. test images).
        torch_model: the eval-mode PyTorch network the file was exported from.
        threads: threads for each runtime.

    Returns:
        ``{"openvino", "inference_precision", "batch", "max_abs_diff_openvino_vs_ort",
        "argmax_agreement_openvino_vs_ort"}`` plus the ``..._vs_torch`` figures
        when ``torch_model`` is given.

    Example:
        >>> r = compare("runs/x/export/model.onnx", data.x_test[:64].numpy())  # doctest: +SKIP
        >>> r["max_abs_diff_openvino_vs_ort"]  # doctest: +SKIP
        7.6e-06
    """
    from ..latency.measure import make_session

    ov = _openvino()
    model = load_onnx(onnx_path, ExportError)
    in_name, out_name = graph_inputs(model)[0].name, graph_outputs(model)[0].name
    x = np.ascontiguousarray(x, dtype=np.float32)
    got = predict(compile_model(onnx_path, threads=threads), x)
    ref = make_session(Path(onnx_path), threads=threads, opt_level="all").run([out_name], {in_name: x})[0]
    result = {
        "openvino": ov.__version__,
        "inference_precision": "f32",
        "batch": int(len(x)),
        "max_abs_diff_openvino_vs_ort": float(np.abs(got - ref).max()),
        "argmax_agreement_openvino_vs_ort": float((got.argmax(1) == ref.argmax(1)).mean()),
    }
    if torch_model is not None:
        import torch

        with torch.no_grad():
            t = torch_model(torch.from_numpy(x)).numpy()
        result["max_abs_diff_openvino_vs_torch"] = float(np.abs(got - t).max())
        result["argmax_agreement_openvino_vs_torch"] = float((got.argmax(1) == t.argmax(1)).mean())
        result["max_abs_diff_ort_vs_torch"] = float(np.abs(ref - t).max())
    return result


__all__ = ["compile_model", "predict", "compare", "PRECISIONS"]
