"""OpenVINO as a second runtime: f32 forced, same predictions as ONNX Runtime and PyTorch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from nasdeploy.deploy.quantize import optimize_basic
from nasdeploy.errors import ExportError
from nasdeploy.space.genotype import GENOTYPES
from nasdeploy.space.network import Network

ov = pytest.importorskip("openvino", reason="needs openvino (nasdeploy[openvino])")

from nasdeploy.deploy.openvino import compare, compile_model, predict  # noqa: E402


@pytest.fixture(scope="module")
def exported(tmp_path_factory, export_onnx):
    """A DARTS_V2 network (C=8, 3 cells) in eval mode with non-trivial BN statistics, exported to one ONNX file."""
    torch.manual_seed(0)
    net = Network(GENOTYPES["DARTS_V2"], C=8, num_classes=10, layers=3, in_channels=1)
    with torch.no_grad():
        for _ in range(3):
            net(torch.randn(16, 1, 8, 8) * 1.5 + 0.3)
    path = export_onnx(net, tmp_path_factory.mktemp("openvino") / "model.onnx")
    return net, Path(path)


def test_openvino_f32_matches_onnxruntime_and_pytorch_on_test_images(exported, digits):
    net, path = exported
    x = digits.x_test[:64].numpy()
    r = compare(path, x, torch_model=net)
    assert r["inference_precision"] == "f32" and r["batch"] == 64
    assert r["max_abs_diff_openvino_vs_ort"] < 1e-4
    assert r["max_abs_diff_openvino_vs_torch"] < 1e-4
    assert r["argmax_agreement_openvino_vs_ort"] == 1.0
    assert r["argmax_agreement_openvino_vs_torch"] == 1.0


def test_inference_precision_is_forced_to_f32(exported):
    compiled = compile_model(exported[1])
    assert compiled.get_property("INFERENCE_PRECISION_HINT") == ov.Type.f32


def test_dynamic_batch_and_the_ort_basic_variant_run_in_openvino(exported, tmp_path):
    net, path = exported
    basic = optimize_basic(path, tmp_path / "model.ort-basic.onnx")
    compiled = compile_model(basic)
    x = torch.randn(7, 1, 8, 8)
    with torch.no_grad():
        ref = net(x).numpy()
    for n in (1, 7):
        np.testing.assert_allclose(predict(compiled, x[:n].numpy()), ref[:n], atol=1e-4)


def test_unknown_precision_and_foreign_files_are_clear_errors(exported, tmp_path):
    with pytest.raises(ExportError, match="precision"):
        compile_model(exported[1], precision="int4")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    with pytest.raises(ExportError, match="not an ONNX model"):
        compile_model(junk)
