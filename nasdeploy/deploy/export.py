"""Export a trained ``model.pt`` to one ONNX file and verify it against PyTorch.

The served graph is a logits-only wrapper in eval mode (running BatchNorm
statistics, no auxiliary head, no drop-path) with a dynamic batch axis,
input ``input`` [batch, C, H, W] and output ``logits`` [batch, classes], all
weights inside the one file (``external_data=False``). Checks, each recorded
in ``export/export.json``: ``onnx.checker`` full check; parity of ORT against
PyTorch on real test images at batch 1 and ``parity_batch`` (max abs
difference bounded by ``parity_atol``); batch-composition independence (a
sample alone vs inside a batch); dynamic batch sizes 1, 7 and 64 in ORT.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..artifacts import atomic_path, ensure_dir, write_json
from ..checkpoint import load_network
from ..config import ExportConfig
from ..data import SPLIT_KEYS, Dataset, DataSpec
from ..errors import CheckpointError, ExportError, ProfileError
from ..onnxio import (
    INPUT_NAME,
    OUTPUT_NAME,
    Logits,
    file_sha256,
    first_line,
    graph_inputs,
    graph_outputs,
    load_onnx,
    metadata,
    torch_export,
)
from ..space.network import count_weights
from ..version import __version__

DYNAMIC_BATCHES = (1, 7, 64)
# Parity is checked at the optimization level a deployment runs (fused ops included).
PARITY_OPT_LEVEL = "all"
NORMALIZATION = (
    "input = (pixel - mean[c]) / std[c] per channel, with pixels scaled to [0, 1] "
    "as the training data was; layout NCHW, float32"
)


@dataclass(frozen=True)
class ExportReport:
    """What ``export`` wrote and measured (the same figures as ``export.json``)."""

    onnx: Path
    report: Path
    opset: int
    exporter: str  # "dynamo" or "torchscript" (fallback when dynamo failed)
    parity: list[dict]  # per batch: batch, max_abs_diff, argmax_agreement
    parity_inputs: str  # where the parity images came from
    batch_independence_max_abs_diff: float
    dynamic_batches: tuple[int, ...]
    checker_ok: bool
    file_size: int
    sha256: str
    n_params: int

    @property
    def max_abs_diff(self) -> float:
        return max(p["max_abs_diff"] for p in self.parity)


def default_out(checkpoint: str | Path) -> Path:
    """``<run>/export`` for ``<run>/train/model.pt``, else ``export/`` beside the checkpoint."""
    p = Path(checkpoint)
    return p.parent.parent / "export" if p.parent.name == "train" else p.parent / "export"


def export(
    checkpoint: str | Path,
    cfg: ExportConfig | None = None,
    out: str | Path | None = None,
    data: Dataset | None = None,
) -> ExportReport:
    """Export ``model.pt`` to ``<out>/model.onnx`` and verify it; write ``<out>/export.json``.

    Args:
        checkpoint: a ``model.pt`` written by ``train`` (nothing else is read).
        cfg: opset, parity batch and tolerance; ``ExportConfig()`` by default.
        out: output directory; default ``<run>/export`` (see :func:`default_out`).
        data: images for the parity checks; by default the checkpoint's
            dataset when it is ``digits`` or an existing path, else random
            normal inputs (recorded as such in ``export.json``).

    Returns:
        ExportReport with the file, its hash and the parity figures.

    Raises:
        CheckpointError: missing, foreign, truncated or mismatched checkpoint.
        ExportError: the exporters fail, the checker rejects the model, or
            ORT's logits differ from PyTorch's by more than ``parity_atol``
            (then no ``model.onnx`` is left behind).

    Example:
        >>> export("runs/x/train/model.pt").max_abs_diff  # doctest: +SKIP
        3.2e-07
    """
    t_start = time.perf_counter()
    cfg = cfg or ExportConfig()
    net, payload = load_network(checkpoint)
    try:
        spec = DataSpec.from_dict(payload["data"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(
            f"{checkpoint}: stored data spec is malformed ({type(e).__name__}: {e})", "re-run `nasdeploy train`"
        ) from None
    out_dir = ensure_dir(default_out(checkpoint) if out is None else out)
    onnx_path, report_path = out_dir / "model.onnx", out_dir / "export.json"
    wrapper = Logits(net).eval()
    x_parity, parity_source = _parity_images(spec, data, max(cfg.parity_batch, *DYNAMIC_BATCHES))

    with atomic_path(onnx_path) as tmp:
        exporter, dynamo_error = torch_export(wrapper, x_parity[:2], tmp, cfg.opset)
        model = _add_metadata(tmp, payload, spec)
        checker_ok = _check(model)
        sess = _session(tmp)
        parity, independence, dyn = _verify(wrapper, sess, x_parity, spec, cfg)

    import onnx
    import onnxruntime

    inputs, outputs = graph_inputs(model), graph_outputs(model)
    n_params = count_weights(net, exclude_prefix="auxiliary_head")
    report = ExportReport(
        onnx=onnx_path,
        report=report_path,
        opset=cfg.opset,
        exporter=exporter,
        parity=parity,
        parity_inputs=parity_source,
        batch_independence_max_abs_diff=independence["max_abs_diff"],
        dynamic_batches=tuple(dyn["batches"]),
        checker_ok=checker_ok,
        file_size=onnx_path.stat().st_size,
        sha256=file_sha256(onnx_path),
        n_params=n_params,
    )
    write_json(
        report_path,
        {
            "onnx": onnx_path.name,
            "checkpoint": str(Path(checkpoint)),
            "opset": cfg.opset,
            "exporter": exporter,
            "dynamo_error": dynamo_error,
            "versions": {
                "nasdeploy": __version__,
                "torch": torch.__version__,
                "onnx": onnx.__version__,
                "onnxruntime": onnxruntime.__version__,
            },
            "inputs": [t.to_dict() for t in inputs],
            "outputs": [t.to_dict() for t in outputs],
            "parity": {
                "inputs": parity_source,
                "atol": cfg.parity_atol,
                "opt_level": PARITY_OPT_LEVEL,
                "batches": parity,
                "max_abs_diff": report.max_abs_diff,
            },
            "batch_independence": independence,
            "dynamic_batch": dyn,
            "checker": {"ok": checker_ok, "full_check": True},
            "file": {"size_bytes": report.file_size, "sha256": report.sha256, "external_data": False},
            "n_params": n_params,
            "metadata_keys": sorted(metadata(model)),
            "variants": {
                v: ("model.onnx" if v == "fp32" else "not built by export (see deploy/quantize.py)")
                for v in cfg.variants
            },
            "seconds": time.perf_counter() - t_start,
        },
    )
    return report


def _parity_images(spec: DataSpec, data: Dataset | None, n: int) -> tuple[torch.Tensor, str]:
    """At least ``n`` images of the model's input shape, and where they came from."""
    if data is None and spec.available():
        data = spec.load()  # the split the model was trained on (split_seed and fractions from model.pt)
    if data is not None:
        x = data.x_test if len(data.x_test) else data.x_val
        if tuple(x.shape[1:]) != tuple(spec.input_shape):
            raise ExportError(
                f"parity images are {tuple(x.shape[1:])}, the model takes {tuple(spec.input_shape)}",
                "pass the dataset the model was trained on",
            )
        source = f"test split of {data.spec.name} ({len(x)} images)"
        if len(x) < n:  # tile a small split up to the largest batch checked
            x = x.repeat(-(-n // len(x)), 1, 1, 1)
        return x[:n].float().contiguous(), source
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, *spec.input_shape, generator=g), f"random normal (dataset {spec.name!r} not available)"


def _add_metadata(path: Path, payload: dict, spec: DataSpec):
    """Write the deployment metadata into the model's ``metadata_props`` (DESIGN.md, ONNX contract)."""
    import onnx

    model = load_onnx(path, ExportError)
    if len(model.graph.output) != 1 or model.graph.output[0].name != OUTPUT_NAME:
        names = [o.name for o in model.graph.output]
        raise ExportError(
            f"exported graph has outputs {names}, expected exactly [{OUTPUT_NAME!r}]",
            "export a wrapper that returns only the logits",
        )
    props = {
        "genotype": json.dumps(payload["genotype"]),
        "input_shape": json.dumps(list(spec.input_shape)),
        "num_classes": str(spec.num_classes),
        "class_names": json.dumps(list(spec.class_names)),
        "mean": json.dumps(list(spec.mean)),
        "std": json.dumps(list(spec.std)),
        "normalization": NORMALIZATION,
        "dataset": spec.name,
        "data_split": json.dumps({k: getattr(spec, k) for k in SPLIT_KEYS}),
        "network": json.dumps(payload["network"]),
        "nasdeploy_version": __version__,
    }
    # The dynamo exporter annotates every node with stack traces and local file
    # paths: over half the file, and a hash that changes with the install path.
    for node in _all_nodes(model):
        del node.metadata_props[:]
    del model.metadata_props[:]
    for key, value in props.items():
        model.metadata_props.add(key=key, value=value)
    model.producer_name, model.producer_version = "nasdeploy", __version__
    onnx.save_model(model, str(path))
    return model


def _all_nodes(model):
    """Every node of the graph, its functions and subgraphs."""
    import onnx

    stack = [model.graph, *model.functions]
    while stack:
        g = stack.pop()
        for node in g.node:
            yield node
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    stack.append(attr.g)
                elif attr.type == onnx.AttributeProto.GRAPHS:
                    stack.extend(attr.graphs)


def _check(model) -> bool:
    import onnx

    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as e:  # ValidationError, InferenceError
        raise ExportError(
            f"onnx.checker rejected the exported model: {first_line(e)}", "report the failing op; try another --opset"
        ) from None
    return True


def _session(path: Path):
    from ..latency.measure import make_session

    try:
        return make_session(str(path), threads=1, opt_level=PARITY_OPT_LEVEL)
    except ProfileError as e:
        raise ExportError(
            f"onnxruntime cannot run the exported model: {e.problem}", "report the failing op; try another --opset"
        ) from None


def _verify(wrapper: nn.Module, sess, x: torch.Tensor, spec: DataSpec, cfg: ExportConfig):
    """Parity vs PyTorch, batch independence and dynamic batch sizes; raise on a failure."""

    def ort(xb: torch.Tensor) -> np.ndarray:
        return sess.run([OUTPUT_NAME], {INPUT_NAME: xb.numpy()})[0]

    parity = []
    for b in sorted({1, cfg.parity_batch}):
        xb = x[:b]
        with torch.no_grad():
            ref = wrapper(xb).numpy()
        got = ort(xb)
        diff = float(np.abs(got - ref).max())
        parity.append(
            {"batch": b, "max_abs_diff": diff, "argmax_agreement": float((got.argmax(1) == ref.argmax(1)).mean())}
        )
        if not diff <= cfg.parity_atol:  # also catches NaN
            raise ExportError(
                f"ONNX logits differ from PyTorch by {diff:.3g} at batch {b} (parity_atol {cfg.parity_atol:g})",
                "no model.onnx was written; check the exporter version, or raise --parity-atol",
            )

    # A sample's output must not depend on the rest of its batch (running BN statistics).
    n = cfg.parity_batch
    together = ort(x[:n])
    alone = np.concatenate([ort(x[i : i + 1]) for i in range(n)])
    ind = float(np.abs(together - alone).max())
    if not ind <= cfg.parity_atol:
        raise ExportError(
            f"a sample's ONNX output changes by {ind:.3g} with the rest of its batch",
            "the graph normalizes with batch statistics; export an eval-mode model",
        )
    independence = {"batch": n, "max_abs_diff": ind, "ok": True}

    shapes = {}
    for b in DYNAMIC_BATCHES:
        got = ort(x[:b])
        if got.shape != (b, spec.num_classes) or not np.isfinite(got).all():
            raise ExportError(
                f"ONNX output at batch {b} has shape {list(got.shape)} or non-finite values, "
                f"expected [{b}, {spec.num_classes}]",
                "the batch axis did not export as dynamic",
            )
        shapes[str(b)] = list(got.shape)
    return parity, independence, {"batches": list(DYNAMIC_BATCHES), "output_shapes": shapes, "ok": True}


__all__ = ["ExportReport", "export", "default_out"]
