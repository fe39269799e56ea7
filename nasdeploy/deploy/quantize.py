"""Deployment variants of an exported ``model.onnx``, and their side-by-side latency.

Each variant is one more ONNX file beside ``model.onnx`` in ``export/``:

- ``fp32``       ``model.onnx`` itself (written by ``export``).
- ``ort-basic``  ``model.ort-basic.onnx``: ONNX Runtime's offline graph
  optimization at level BASIC (constant folding, Conv+BatchNorm and other
  standard-op fusions). EXTENDED/ALL would write ``com.microsoft`` fused ops
  that other runtimes cannot read, so the file is checked to hold only
  standard-domain nodes.
- ``int8``       ``model.int8.onnx``: static quantization in QDQ format
  (QuantizeLinear/DequantizeLinear pairs, readable by any runtime), uint8
  activations and per-channel int8 weights, activation ranges calibrated
  (min/max) on training images. The test-accuracy change and the latency
  ratio to fp32 at batch 1 and 32 are recorded.
- ``fp16``       ``model.fp16.onnx``: fp16 weights and compute, fp32 inputs and
  outputs (``keep_io_types``) so clients are unchanged; for GPU servers (on a
  CPU ONNX Runtime inserts casts and it runs slower than fp32).

Every variant keeps the fp32 model's ``metadata_props`` plus ``nasdeploy_variant``.
Figures go into ``export.json`` under ``variants``.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np
from onnxruntime.quantization import CalibrationDataReader

from ..artifacts import atomic_path, atomic_write, read_json, write_json
from ..config import EXPORT_VARIANTS, ExportConfig, ProfileConfig
from ..data import Dataset, load_dataset, source_available
from ..errors import ExportError, ProfileError
from ..latency.measure import load_avg
from ..onnxio import file_sha256, first_line, graph_inputs, graph_outputs, load_onnx, metadata, quiet, random_feeds

VARIANTS = EXPORT_VARIANTS
FILES = {
    "fp32": "model.onnx",
    "ort-basic": "model.ort-basic.onnx",
    "int8": "model.int8.onnx",
    "fp16": "model.fp16.onnx",
}
STANDARD_DOMAINS = ("", "ai.onnx")
LATENCY_BATCHES = (1, 32)  # the batch sizes of the int8/fp32 ratio in export.json
EVAL_OPT_LEVEL = "all"  # accuracy and latency at the level a deployment runs


# ----------------------------------------------------------------- the variants


def optimize_basic(onnx_path: str | Path, out_path: str | Path) -> Path:
    """ORT's offline BASIC-level optimization; raise if any node leaves the standard ONNX domain."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    so.log_severity_level = 3
    with atomic_path(out_path) as tmp:
        so.optimized_model_filepath = str(tmp)
        try:
            ort.InferenceSession(str(onnx_path), sess_options=so, providers=["CPUExecutionProvider"])
        except Exception as e:  # ORT raises Fail/InvalidGraph/...
            raise ExportError(
                f"onnxruntime cannot optimize {onnx_path}: {first_line(e)}", "re-export the model"
            ) from None
        model = load_onnx(tmp, ExportError)
        foreign = non_standard_ops(model)
        if foreign:
            raise ExportError(
                f"the BASIC-optimized model holds non-standard ops {foreign[:5]}",
                "other runtimes cannot read it; report the onnxruntime version",
            )
        _save_with_metadata(model, tmp, onnx_path, "ort-basic")
    return Path(out_path)


def non_standard_ops(model) -> list[str]:
    """``domain::op_type`` of every node outside the standard ONNX domain (e.g. ``com.microsoft::FusedConv``)."""
    return sorted({f"{n.domain}::{n.op_type}" for n in model.graph.node if n.domain not in STANDARD_DOMAINS})


class ImageReader(CalibrationDataReader):
    """ORT's ``CalibrationDataReader`` over an array of images, fed in mini-batches (the batch axis is dynamic)."""

    def __init__(self, images: np.ndarray, input_name: str, batch_size: int = 32):
        self.input_name = input_name
        self.batches = [np.ascontiguousarray(images[i : i + batch_size]) for i in range(0, len(images), batch_size)]
        self.rewind()

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = iter([{self.input_name: b} for b in self.batches])


def quantize_int8(
    onnx_path: str | Path,
    out_path: str | Path,
    calibration: np.ndarray,
    per_channel: bool = True,
    reduce_range: bool = True,
) -> Path:
    """Static INT8 quantization, QDQ format, calibrated on ``calibration`` images (N, C, H, W float32).

    The model is first pre-processed (shape inference and BASIC optimization,
    which folds BatchNorm into the convolutions so the folded weights are the
    ones quantized), as ONNX Runtime's quantization guide prescribes.
    ``reduce_range`` keeps weights in 7 bits so that AVX2 CPUs without VNNI do not
    saturate their 16-bit pair sums (docs/deploy.md).
    """
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if calibration.ndim != 4 or len(calibration) == 0:
        raise ExportError(
            f"calibration images must be a non-empty N x C x H x W array, got {calibration.shape}",
            "pass training images of the model's input shape",
        )
    name = graph_inputs(load_onnx(onnx_path, ExportError))[0].name

    with tempfile.TemporaryDirectory(prefix="nasdeploy-int8-") as td, atomic_path(out_path) as tmp, quiet():
        pre = Path(td) / "pre.onnx"
        try:
            quant_pre_process(str(onnx_path), str(pre), skip_symbolic_shape=True)
            quantize_static(
                str(pre),
                str(tmp),
                calibration_data_reader=ImageReader(calibration.astype(np.float32), name),
                quant_format=QuantFormat.QDQ,
                per_channel=per_channel,
                reduce_range=reduce_range,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibration_providers=["CPUExecutionProvider"],
            )
        except Exception as e:  # ORT's quantizer raises ValueError/RuntimeError/onnx errors
            raise ExportError(
                f"INT8 quantization of {onnx_path} failed: {first_line(e)}",
                "report the failing op; the fp32 and fp16 variants are unaffected",
            ) from None
        _save_with_metadata(load_onnx(tmp, ExportError), tmp, onnx_path, "int8")
    return Path(out_path)


def convert_fp16(onnx_path: str | Path, out_path: str | Path) -> Path:
    """fp16 weights and compute with fp32 inputs/outputs (``keep_io_types``), ORT's float16 converter."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = load_onnx(onnx_path, ExportError)
    with quiet():
        half = convert_float_to_float16(model, keep_io_types=True)
    with atomic_path(out_path) as tmp:
        _save_with_metadata(half, tmp, onnx_path, "fp16")
    return Path(out_path)


def _save_with_metadata(model, path: Path, source: str | Path, variant: str) -> None:
    """Copy the fp32 model's metadata_props (genotype, normalization, classes) and tag the variant."""
    import onnx

    props = metadata(load_onnx(source, ExportError))
    props["nasdeploy_variant"] = variant
    # ORT's optimizer declares every domain it knows (com.microsoft.nchwc, org.pytorch.aten, ...)
    # even when no node uses it; a strict reader rejects unknown domains, so keep only used ones.
    used = {n.domain for n in model.graph.node} | {""}
    for f in model.functions:
        used |= {f.domain} | {n.domain for n in f.node}
    kept = [o for o in model.opset_import if o.domain in used or o.domain == "ai.onnx"]
    del model.opset_import[:]
    model.opset_import.extend(kept)
    del model.metadata_props[:]
    for k, v in props.items():
        model.metadata_props.add(key=k, value=v)
    onnx.save_model(model, str(path))


# ----------------------------------------------------------------- building and measuring


def build_variants(
    onnx_path: str | Path,
    cfg: ExportConfig | None = None,
    data: Dataset | None = None,
    out: str | Path | None = None,
    warmup: int = 10,
    repeats: int = 50,
    rounds: int = 3,
) -> dict:
    """Write the variants named in ``cfg.variants`` beside ``onnx_path`` and measure them.

    Args:
        onnx_path: the fp32 ``model.onnx`` written by ``export``.
        cfg: ``variants`` (a subset of ``VARIANTS``), ``calibration_samples``
            (training images for the INT8 ranges), ``per_channel``.
        data: the model's dataset (training images calibrate, test images
            score); default: the dataset named in the model's metadata.
        out: folder for the files; default the folder of ``onnx_path``. Its
            ``export.json``, when present, gets the result under ``variants``.
        warmup, repeats, rounds: latency of each variant at batch 1 and 32:
            the median over ``rounds`` interleaved rounds of the p50 of
            ``repeats`` timed runs (``latency.measure``, 1 thread, level all).

    Returns:
        ``{variant: {"file", "sha256", "size_bytes", "test_accuracy",
        "accuracy_change", "max_abs_diff_vs_fp32", "argmax_agreement_vs_fp32",
        "latency": {batch: {"p50_ms", "ratio_to_fp32"}}, ...}}``.

    Raises:
        ExportError: an unknown variant, no data for calibration, or a
            variant that fails to build or breaks the standard-domain rule.

    Example:
        >>> build_variants("runs/x/export/model.onnx", ExportConfig(variants=("fp32", "int8")))  # doctest: +SKIP
    """
    cfg = cfg or ExportConfig()
    unknown = [v for v in cfg.variants if v not in VARIANTS]
    if unknown:
        raise ExportError(f"unknown variant {unknown[0]!r}", f"choose from {', '.join(VARIANTS)}")
    src = Path(onnx_path)
    model = load_onnx(src, ExportError)
    inputs, outputs = graph_inputs(model), graph_outputs(model)
    if len(inputs) != 1 or len(outputs) != 1:
        raise ExportError(
            f"{src} has {len(inputs)} inputs and {len(outputs)} outputs, expected 1 and 1",
            "pass the model.onnx written by `nasdeploy export`",
        )
    out_dir = Path(out) if out is not None else src.parent
    data = data if data is not None else _dataset_of(model, src)
    shape = tuple(inputs[0].shape[1:])
    if data is not None and tuple(data.x_test.shape[1:]) != shape:
        raise ExportError(
            f"dataset images are {tuple(data.x_test.shape[1:])}, the model takes {shape}",
            "pass the dataset the model was trained on",
        )
    del model

    t0 = time.perf_counter()
    paths: dict[str, Path] = {}
    for v in dict.fromkeys(("fp32", *cfg.variants)):  # fp32 is the reference of every figure
        dest = out_dir / FILES[v]
        if v == "fp32":
            if dest.resolve() != src.resolve():
                atomic_write(dest, src.read_bytes())
        elif v == "ort-basic":
            optimize_basic(src, dest)
        elif v == "int8":
            if data is None:
                raise ExportError(
                    "INT8 calibration needs the model's training images, and its dataset is not here",
                    "pass data=load_dataset(...) of the dataset the model was trained on",
                )
            quantize_int8(
                src, dest, _calibration_images(data, cfg.calibration_samples), cfg.per_channel, cfg.reduce_range
            )
        elif v == "fp16":
            convert_fp16(src, dest)
        paths[v] = dest

    report = _evaluate(paths, inputs[0].name, outputs[0].name, data, warmup, repeats, rounds)
    if "int8" in report:
        report["int8"]["calibration"] = {
            "images": min(cfg.calibration_samples, len(data.x_train)),
            "split": "train",
            "method": "minmax",
            "format": "QDQ",
            "activations": "uint8",
            "weights": ("int8 per-channel" if cfg.per_channel else "int8 per-tensor")
            + (", 7-bit range" if cfg.reduce_range else ""),
        }
    for v in report:
        report[v]["readable_by_other_runtimes"] = not non_standard_ops(load_onnx(paths[v], ExportError))
    report_path = out_dir / "export.json"
    if report_path.exists():
        doc = read_json(report_path, "export report")
        doc["variants"] = report
        doc["variants_seconds"] = time.perf_counter() - t0
        write_json(report_path, doc)
    return report


def _dataset_of(model, src: Path) -> Dataset | None:
    """The split named in the model's metadata (dataset + ``data_split``), where its source is here."""
    md = metadata(model)
    name = md.get("dataset")
    if not name or not source_available(name):
        return None
    split = json.loads(md.get("data_split", "{}"))
    return load_dataset(name, seed=split.get("split_seed", 0), val_fraction=split.get("val_fraction", 0.1),
                        test_fraction=split.get("test_fraction", 0.2), max_train=split.get("max_train"),
                        max_val=split.get("max_val"))


def _calibration_images(data: Dataset, n: int) -> np.ndarray:
    """``n`` training images drawn without replacement by a fixed seed (all of them if fewer)."""
    x = data.x_train.numpy().astype(np.float32)
    idx = np.random.default_rng(0).permutation(len(x))[: min(n, len(x))]
    return x[np.sort(idx)]


def _evaluate(
    paths: dict[str, Path], in_name: str, out_name: str, data: Dataset | None, warmup: int, repeats: int, rounds: int
) -> dict:
    from ..latency.measure import make_session, measure

    def sessions() -> dict:
        return {v: make_session(p, threads=1, opt_level=EVAL_OPT_LEVEL) for v, p in paths.items()}

    spec = graph_inputs(load_onnx(paths["fp32"], ExportError))
    report: dict[str, dict] = {}
    if data is not None:
        x = data.x_test.numpy().astype(np.float32)
        y = data.y_test.numpy()
        logits = {
            v: np.concatenate([s.run([out_name], {in_name: x[i : i + 256]})[0] for i in range(0, len(x), 256)])
            for v, s in sessions().items()
        }
    for v, p in paths.items():
        r: dict = {"file": p.name, "sha256": file_sha256(p), "size_bytes": p.stat().st_size}
        if data is not None:
            acc = float((logits[v].argmax(1) == y).mean())
            ref = logits["fp32"]
            r.update(
                {
                    "test_images": int(len(y)),
                    "test_accuracy": acc,
                    "accuracy_change": acc - float((ref.argmax(1) == y).mean()),
                    "max_abs_diff_vs_fp32": float(np.abs(logits[v].astype(np.float64) - ref).max()),
                    "argmax_agreement_vs_fp32": float((logits[v].argmax(1) == ref.argmax(1)).mean()),
                }
            )
        report[v] = r

    # Fresh sessions per batch size: once an ORT session has run a larger batch, its smaller
    # batches can run slower (measured here: INT8 at batch 32 went from 2.0 to 4.4 ms after one
    # batch of 256). Interleaved rounds: a burst of load from a neighbour hits every variant alike.
    p50: dict[str, dict[int, list[float]]] = {v: {b: [] for b in LATENCY_BATCHES} for v in paths}
    for b in LATENCY_BATCHES:
        feeds = random_feeds(spec, b, error=ExportError)
        timed = sessions()
        for _ in range(rounds):
            for v, s in timed.items():
                p50[v][b].append(measure(s, feeds, warmup=warmup, repeats=repeats).p50_ms)
    for v in paths:
        lat = {}
        for b in LATENCY_BATCHES:
            ms = float(np.median(p50[v][b]))
            lat[str(b)] = {"p50_ms": ms, "ratio_to_fp32": ms / float(np.median(p50["fp32"][b]))}
        report[v]["latency"] = lat
        report[v]["latency_method"] = {
            "opt_level": EVAL_OPT_LEVEL,
            "threads": 1,
            "warmup": warmup,
            "repeats": repeats,
            "rounds": rounds,
            "statistic": "median over rounds of the p50",
            # Timings taken on a busy machine are not comparable: say how busy it was.
            "load_avg": load_avg(),
        }
    return report


# ----------------------------------------------------------------- profile: all variants side by side


def find_variants(export_dir: str | Path) -> dict[str, Path]:
    """The variant files present in ``export_dir`` (``model.onnx`` first)."""
    d = Path(export_dir)
    return {v: d / f for v, f in FILES.items() if (d / f).is_file()}


def profile_variants(export_dir: str | Path, cfg: ProfileConfig | None = None, out: str | Path | None = None) -> dict:
    """Time every variant file of ``export_dir`` over ``cfg.batch_sizes``, side by side.

    Args:
        export_dir: the folder holding ``model.onnx`` and its variants.
        cfg: batch sizes, threads, provider, optimization level, warm-up,
            repeats (``latency.measure`` with the same settings as ``profile``).
        out: run directory; writes ``out/profile/variants.json`` and appends a
            "Variants" table to ``out/profile/latency.md`` when it exists.

    Returns:
        ``{"fingerprint", "variants": [...], "batches": {batch: {variant:
        LatencyStats dict + "ratio_to_fp32"}}, "markdown"}``.
    """
    from ..artifacts import RunDir
    from ..latency.measure import machine_fingerprint, make_session, measure

    cfg = cfg or ProfileConfig()
    files = find_variants(export_dir)
    if "fp32" not in files:
        raise ProfileError(f"no model.onnx in {export_dir}", "run `nasdeploy export` first")
    spec = graph_inputs(load_onnx(files["fp32"], ProfileError))
    kw = dict(warmup=cfg.warmup, repeats=cfg.repeats, min_time_s=cfg.min_time_s, max_time_s=cfg.max_time_s)
    batches: dict[str, dict] = {}
    for b in cfg.batch_sizes:
        feeds = random_feeds(spec, b)
        # A fresh session per batch size, as in build_variants (a session's past batches change its timings).
        sessions = {v: make_session(p, cfg.provider, cfg.threads, cfg.opt_level) for v, p in files.items()}
        row = {v: measure(s, feeds, **kw).to_dict() for v, s in sessions.items()}
        for v in row:
            row[v]["ratio_to_fp32"] = row[v]["p50_ms"] / row["fp32"]["p50_ms"]
        batches[str(b)] = row
    result = {
        "fingerprint": machine_fingerprint(cfg.threads, cfg.opt_level, cfg.provider),
        "files": {v: str(p) for v, p in files.items()},
        "variants": list(files),
        "batches": batches,
    }
    result["markdown"] = render_variants_markdown(result)
    if out is not None:
        run = RunDir(out)
        write_json(run.profile / "variants.json", result)
        if run.latency_md.exists():
            text = run.latency_md.read_text(encoding="utf-8")
            head = text.split("\n## Variants", 1)[0].rstrip("\n")  # re-profiling replaces the section
            atomic_write(run.latency_md, head + "\n\n" + result["markdown"])
    return result


def render_variants_markdown(result: dict) -> str:
    """The variants table: p50 ms per batch size and variant, with the ratio to fp32."""
    names = result["variants"]
    fp = result["fingerprint"]
    lines = [
        "## Variants",
        "",
        f"p50 ms (ratio to fp32) with ONNX Runtime {fp['onnxruntime']}, {fp['provider']}, "
        f"{fp['threads']} thread(s), optimization level {fp['opt_level']}.",
        "",
        "| batch | " + " | ".join(names) + " |",
        "|---:|" + "---:|" * len(names),
    ]
    for b, row in result["batches"].items():
        cells = [f"{row[v]['p50_ms']:.3f} ({row[v]['ratio_to_fp32']:.2f}x)" for v in names]
        lines.append(f"| {b} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


__all__ = [
    "VARIANTS",
    "FILES",
    "build_variants",
    "optimize_basic",
    "quantize_int8",
    "convert_fp16",
    "non_standard_ops",
    "find_variants",
    "profile_variants",
    "render_variants_markdown",
]
