"""Deployment variants: ORT BASIC stays standard ONNX, INT8 QDQ per-channel calibrated on training images,
fp16 with fp32 I/O, figures in export.json, all variants profiled side by side, and the CLI that drives them."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from nasdeploy.artifacts import write_json
from nasdeploy.cli import main
from nasdeploy.config import ExportConfig, ProfileConfig, load_config
from nasdeploy.deploy.quantize import (
    FILES,
    ImageReader,
    build_variants,
    convert_fp16,
    non_standard_ops,
    optimize_basic,
    profile_variants,
    quantize_int8,
)
from nasdeploy.errors import ConfigError, ExportError
from nasdeploy.space.genotype import GENOTYPES
from nasdeploy.space.network import Network

FAST = dict(warmup=1, repeats=5, rounds=1)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, digits, export_onnx):
    """A small DARTS_V2 network trained for a few hundred steps on digits (~80% test accuracy), exported."""
    torch.manual_seed(0)
    net = Network(GENOTYPES["DARTS_V2"], C=8, num_classes=10, layers=3, in_channels=1)
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    g = torch.Generator().manual_seed(0)
    net.train()
    for _ in range(4):
        order = torch.randperm(len(digits.y_train), generator=g)
        for i in range(0, len(order), 64):
            idx = order[i : i + 64]
            opt.zero_grad()
            F.cross_entropy(net(digits.x_train[idx]), digits.y_train[idx]).backward()
            opt.step()
    d = tmp_path_factory.mktemp("variants")
    return net.eval(), export_onnx(net, d / "model.onnx", class_names=[str(i) for i in range(10)])


def _session(path, level=ort.GraphOptimizationLevel.ORT_ENABLE_ALL):
    so = ort.SessionOptions()
    so.graph_optimization_level = level
    so.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _run(path, x, level=ort.GraphOptimizationLevel.ORT_ENABLE_ALL):
    return _session(path, level).run(["logits"], {"input": np.ascontiguousarray(x, dtype=np.float32)})[0]


def test_ort_basic_writes_only_standard_onnx_ops_and_same_logits(trained, digits, tmp_path):
    _, src = trained
    out = optimize_basic(src, tmp_path / FILES["ort-basic"])
    model = onnx.load(str(out))
    assert non_standard_ops(model) == []
    assert {o.domain for o in model.opset_import} <= {"", "ai.onnx"}  # no stray com.microsoft imports
    onnx.checker.check_model(model, full_check=True)
    assert {p.key: p.value for p in model.metadata_props}["nasdeploy_variant"] == "ort-basic"
    x = digits.x_test[:32].numpy()
    none = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    np.testing.assert_allclose(_run(out, x, none), _run(src, x, none), atol=1e-4)


def test_non_standard_op_check_catches_ort_extended_output(trained, tmp_path):
    # The control: level ALL does write com.microsoft fused ops, so the check above is not vacuous.
    _, src = trained
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.optimized_model_filepath = str(tmp_path / "all.onnx")
    ort.InferenceSession(str(src), so, providers=["CPUExecutionProvider"])
    assert any(op.startswith("com.microsoft") for op in non_standard_ops(onnx.load(str(tmp_path / "all.onnx"))))


def test_calibration_reader_feeds_every_image_once_in_batches_and_rewinds():
    x = np.arange(70 * 4, dtype=np.float32).reshape(70, 1, 2, 2)
    r = ImageReader(x, "input", batch_size=32)
    got = []
    while (b := r.get_next()) is not None:
        got.append(b["input"])
    assert [len(b) for b in got] == [32, 32, 6]
    np.testing.assert_array_equal(np.concatenate(got), x)
    r.rewind()
    assert r.get_next()["input"].shape == (32, 1, 2, 2)


def test_int8_is_static_qdq_with_per_channel_int8_weights(trained, digits, tmp_path):
    _, src = trained
    calib = digits.x_train[:128].numpy()
    out = quantize_int8(src, tmp_path / FILES["int8"], calib)
    model = onnx.load(str(out))
    ops = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops
    assert not ops & {"QLinearConv", "ConvInteger"}  # QDQ format, not the operator-oriented one
    assert non_standard_ops(model) == []
    inits = {t.name: t for t in model.graph.initializer}
    conv_weights = {n.input[1] for n in model.graph.node if n.op_type == "Conv"}
    # Every conv weight comes out of a DequantizeLinear over an int8 tensor with one scale per output channel.
    deq = {n.output[0]: n for n in model.graph.node if n.op_type == "DequantizeLinear"}
    assert conv_weights <= set(deq)
    per_channel = 0
    for w in conv_weights:
        q, scale = deq[w].input[0], deq[w].input[1]
        assert inits[q].data_type == onnx.TensorProto.INT8
        assert np.abs(onnx.numpy_helper.to_array(inits[q]).astype(int)).max() <= 64  # 7-bit range by default
        n_out = inits[q].dims[0]
        if n_out > 1:
            assert tuple(inits[scale].dims) == (n_out,)
            per_channel += 1
    assert per_channel > 0
    # Activations are uint8, calibrated: the first QuantizeLinear's scale is data-driven, not a default.
    first_q = next(n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "input")
    zp = inits[first_q.input[2]]
    assert zp.data_type == onnx.TensorProto.UINT8
    scale = float(onnx.numpy_helper.to_array(inits[first_q.input[1]]))
    span = float(calib.max() - min(calib.min(), 0.0))
    assert scale == pytest.approx(span / 255, rel=1e-3)


def test_int8_full_range_weights_when_asked(trained, digits, tmp_path):
    _, src = trained
    out = quantize_int8(src, tmp_path / FILES["int8"], digits.x_train[:64].numpy(), reduce_range=False)
    model = onnx.load(str(out))
    q = [onnx.numpy_helper.to_array(t) for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT8]
    assert max(np.abs(w.astype(int)).max() for w in q) == 127  # symmetric per-channel: each channel's max is 127


def test_fp16_has_half_weights_and_float_io(trained, digits, tmp_path):
    _, src = trained
    out = convert_fp16(src, tmp_path / FILES["fp16"])
    model = onnx.load(str(out))
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    types = {t.data_type for t in model.graph.initializer if len(t.dims) == 4}
    assert types == {onnx.TensorProto.FLOAT16}
    x = digits.x_test[:64].numpy()
    assert np.abs(_run(out, x) - _run(src, x)).max() < 5e-2


def test_build_variants_records_accuracy_change_and_latency_ratio_in_export_json(trained, digits, tmp_path):
    net, src = trained
    out = tmp_path / "export"
    out.mkdir()
    (out / "model.onnx").write_bytes(src.read_bytes())
    write_json(out / "export.json", {"opset": 20, "variants": {"fp32": "model.onnx"}})
    cfg = ExportConfig(variants=("ort-basic", "int8", "fp16"), calibration_samples=200)
    report = build_variants(out / "model.onnx", cfg, data=digits, **FAST)

    assert set(report) == {"fp32", "ort-basic", "int8", "fp16"}
    doc = json.loads((out / "export.json").read_text())
    assert doc["opset"] == 20 and doc["variants"] == json.loads(json.dumps(report))
    for name, v in report.items():
        assert (out / v["file"]).is_file() and v["file"] == FILES[name]
        assert v["readable_by_other_runtimes"] is True
        assert set(v["latency"]) == {"1", "32"}
        assert all(x["p50_ms"] > 0 and x["ratio_to_fp32"] > 0 for x in v["latency"].values())
    assert report["fp32"]["latency"]["1"]["ratio_to_fp32"] == 1.0

    with torch.no_grad():
        torch_acc = float((net(digits.x_test).argmax(1) == digits.y_test).float().mean())
    fp32, int8 = report["fp32"], report["int8"]
    assert fp32["test_accuracy"] == pytest.approx(torch_acc, abs=1 / len(digits.y_test))
    assert fp32["test_accuracy"] > 0.7  # far above chance (0.1), so the int8 change means something
    assert int8["accuracy_change"] == pytest.approx(int8["test_accuracy"] - fp32["test_accuracy"])
    assert abs(int8["accuracy_change"]) < 0.05 and int8["argmax_agreement_vs_fp32"] > 0.9
    assert int8["calibration"]["images"] == 200 and int8["calibration"]["split"] == "train"
    assert report["ort-basic"]["max_abs_diff_vs_fp32"] < 1e-4
    assert report["fp16"]["argmax_agreement_vs_fp32"] > 0.97
    meta = {p.key: p.value for p in onnx.load(str(out / FILES["int8"])).metadata_props}
    assert meta["nasdeploy_variant"] == "int8" and json.loads(meta["class_names"])[0] == "0"


def test_unknown_variant_fails_in_config_and_api(trained):
    with pytest.raises(ConfigError, match="int4"):
        load_config(overrides={"export": {"variants": ["fp32", "int4"]}})
    with pytest.raises(ExportError, match="int4"):
        build_variants(trained[1], _cfg_with(("int4",)))


def _cfg_with(variants):
    import dataclasses

    return dataclasses.replace(ExportConfig(), variants=variants)  # bypasses validate(), as an API caller could


def test_int8_without_training_images_is_an_error(trained, tmp_path):
    src = tmp_path / "model.onnx"
    src.write_bytes(trained[1].read_bytes())  # no dataset in its metadata
    with pytest.raises(ExportError, match="calibration"):
        build_variants(src, ExportConfig(variants=("int8",)), **FAST)


def test_profile_compares_all_variants_side_by_side(trained, digits, tmp_path):
    export_dir = tmp_path / "run" / "export"
    export_dir.mkdir(parents=True)
    (export_dir / "model.onnx").write_bytes(trained[1].read_bytes())
    build_variants(export_dir / "model.onnx", ExportConfig(variants=("int8", "fp16")), data=digits, **FAST)
    (tmp_path / "run" / "profile").mkdir()
    (tmp_path / "run" / "profile" / "latency.md").write_text("# Latency\n\nfp32 table\n")
    cfg = ProfileConfig(batch_sizes=(1, 4), warmup=1, repeats=3)
    res = profile_variants(export_dir, cfg, out=tmp_path / "run")
    assert res["variants"] == ["fp32", "int8", "fp16"]
    assert set(res["batches"]) == {"1", "4"}
    assert res["batches"]["4"]["fp32"]["ratio_to_fp32"] == 1.0
    md = (tmp_path / "run" / "profile" / "latency.md").read_text()
    assert md.startswith("# Latency") and "## Variants" in md and "| batch | fp32 | int8 | fp16 |" in md
    profile_variants(export_dir, cfg, out=tmp_path / "run")  # re-profiling replaces the section
    assert (tmp_path / "run" / "profile" / "latency.md").read_text().count("## Variants") == 1
    assert json.loads((tmp_path / "run" / "profile" / "variants.json").read_text())["variants"] == res["variants"]


def test_cli_export_variants_triton_and_profile(tmp_path):
    pytest.importorskip("tritonclient.grpc.model_config_pb2")
    run = tmp_path / "run"
    r = CliRunner().invoke(main, ["train", "--genotype", "DARTS_V2", "--preset", "tiny", "--out", str(run), "--quiet"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(
        main,
        [
            "export",
            str(run / "train" / "model.pt"),
            "--variants",
            "ort-basic,int8,fp16",
            "--calibration-samples",
            "64",
            "--triton-repo",
            str(run / "triton"),
            "--model-name",
            "darts",
            "--triton-cpu",
            "--max-batch-size",
            "16",
        ],
    )
    assert r.exit_code == 0, r.output
    assert "variant int8" in r.output and "checked against Triton's model-config schema" in r.output
    doc = json.loads((run / "export" / "export.json").read_text())
    assert set(doc["variants"]) == {"fp32", "ort-basic", "int8", "fp16"}
    assert "accuracy_change" in doc["variants"]["int8"] and "32" in doc["variants"]["int8"]["latency"]
    assert (run / "triton" / "darts" / "1" / "model.onnx").read_bytes() == (run / "export" / "model.onnx").read_bytes()
    assert "max_batch_size: 16" in (run / "triton" / "darts" / "config.pbtxt").read_text()

    r = CliRunner().invoke(main, ["profile", str(run / "export" / "model.onnx"), "--preset", "tiny"])
    assert r.exit_code == 0, r.output
    assert "## Variants" in r.output and (run / "profile" / "variants.json").is_file()

    r = CliRunner().invoke(main, ["export", str(run / "train" / "model.pt"), "--model-name", "x"])
    assert r.exit_code != 0 and "--triton-repo" in r.output
    r = CliRunner().invoke(main, ["export", str(run / "train" / "model.pt"), "--variants", "int4"])
    assert r.exit_code == 1 and "int4" in r.output
