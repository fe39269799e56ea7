"""Triton model repository: config.pbtxt parsed with Triton's own schema and cross-checked against the ONNX graph."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
import torch

from nasdeploy.deploy.triton import check_repository, render_config, write_repository
from nasdeploy.errors import ExportError
from nasdeploy.space.genotype import GENOTYPES
from nasdeploy.space.network import Network

mc = pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="needs tritonclient[grpc] (nasdeploy[serve])")
text_format = pytest.importorskip("google.protobuf.text_format")

ONNX_TO_TRITON = {onnx.TensorProto.FLOAT: mc.TYPE_FP32, onnx.TensorProto.FLOAT16: mc.TYPE_FP16}


def small_net(classes: int = 10) -> Network:
    """A DARTS_V2 network (C=8, 3 cells, 1x8x8 input) with BN statistics from a few train-mode batches."""
    torch.manual_seed(0)
    net = Network(GENOTYPES["DARTS_V2"], C=8, num_classes=classes, layers=3, in_channels=1)
    with torch.no_grad():
        for _ in range(3):
            net(torch.randn(8, 1, 8, 8))
    return net


def export_small(export_onnx, path: Path, dynamic: bool = True, classes: int = 10) -> Path:
    return export_onnx(small_net(classes), path, dynamic=dynamic, class_names=[f"digit {i}" for i in range(classes)])


@pytest.fixture(scope="module")
def onnx_path(tmp_path_factory, export_onnx):
    return export_small(export_onnx, tmp_path_factory.mktemp("triton") / "model.onnx")


def _parse(path: Path):
    return text_format.Parse(path.read_text(), mc.ModelConfig())


def _graph(values):
    """(name, elem_type, dims) straight from the ONNX protobuf; symbolic dims as None."""
    out = []
    for v in values:
        dims = [d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim]
        out.append((v.name, v.type.tensor_type.elem_type, dims))
    return out


@pytest.mark.parametrize("gpu", [False, True])
def test_repository_layout_and_config_match_the_onnx_graph(onnx_path, tmp_path, gpu):
    folder = write_repository(onnx_path, tmp_path / "repo", "darts_digits", max_batch_size=32, gpu=gpu)
    assert folder == tmp_path / "repo" / "darts_digits"
    assert (folder / "1" / "model.onnx").read_bytes() == onnx_path.read_bytes()
    cfg = _parse(folder / "config.pbtxt")
    assert cfg.name == "darts_digits"
    assert cfg.platform == "onnxruntime_onnx"
    assert cfg.max_batch_size == 32
    assert cfg.HasField("dynamic_batching")
    assert [(g.kind, g.count) for g in cfg.instance_group] == [
        (mc.ModelInstanceGroup.KIND_GPU if gpu else mc.ModelInstanceGroup.KIND_CPU, 1)
    ]
    # Cross-check against the graph, computed here independently of the writer.
    model = onnx.load(str(onnx_path))
    for declared, graph in ((cfg.input, _graph(model.graph.input)), (cfg.output, _graph(model.graph.output))):
        assert [t.name for t in declared] == [name for name, _, _ in graph]
        for t, (_, elem, dims) in zip(declared, graph, strict=True):
            assert dims[0] is None  # the dynamic batch axis, which Triton's dims leave out
            assert list(t.dims) == dims[1:]
            assert t.data_type == ONNX_TO_TRITON[elem]
    assert [t.name for t in cfg.input] == ["input"] and list(cfg.input[0].dims) == [1, 8, 8]
    assert list(cfg.output[0].dims) == [10] and cfg.output[0].label_filename == "labels.txt"
    assert (folder / "labels.txt").read_text().splitlines() == [f"digit {i}" for i in range(10)]
    assert check_repository(folder, onnx_path) == []


WRONG = {
    "dims": ("dims: [ 1, 8, 8 ]", "dims: [ 8, 8, 1 ]"),
    "dims with batch": ("dims: [ 1, 8, 8 ]", "dims: [ -1, 1, 8, 8 ]"),
    "input type": ("data_type: TYPE_FP32\n    dims: [ 1, 8, 8 ]", "data_type: TYPE_FP16\n    dims: [ 1, 8, 8 ]"),
    "input name": ('name: "input"', 'name: "image"'),
    "output dims": ("dims: [ 10 ]", "dims: [ 11 ]"),
    "platform": ('platform: "onnxruntime_onnx"', 'platform: "tensorrt_plan"'),
    "no batching": ("max_batch_size: 32", "max_batch_size: 0"),
    "no dynamic batching": ("dynamic_batching {\n  max_queue_delay_microseconds: 100\n}", ""),
    "model name": ('name: "darts_digits"', 'name: "other"'),
}


@pytest.mark.parametrize("field", list(WRONG))
def test_a_wrong_field_fails_the_cross_check(onnx_path, tmp_path, field):
    folder = write_repository(onnx_path, tmp_path / "repo", "darts_digits", max_batch_size=32)
    config = folder / "config.pbtxt"
    old, new = WRONG[field]
    assert old in config.read_text()
    config.write_text(config.read_text().replace(old, new, 1))
    assert check_repository(folder, onnx_path) != []


def test_a_field_outside_tritons_schema_fails_to_parse(onnx_path, tmp_path):
    folder = write_repository(onnx_path, tmp_path / "repo", "m")
    config = folder / "config.pbtxt"
    config.write_text(config.read_text().replace("max_batch_size", "max_batch"))
    with pytest.raises(ExportError, match="not a valid Triton model config"):
        check_repository(folder)


def test_a_changed_model_file_fails_the_cross_check(onnx_path, tmp_path, export_onnx):
    folder = write_repository(onnx_path, tmp_path / "repo", "m")
    other = export_small(export_onnx, tmp_path / "other.onnx", classes=5)
    (folder / "1" / "model.onnx").write_bytes(other.read_bytes())
    problems = check_repository(folder, onnx_path)
    assert any("not a copy" in p for p in problems) and any("dims" in p for p in problems)


def test_fixed_batch_model_and_bad_names_are_rejected(tmp_path, export_onnx):
    fixed = export_small(export_onnx, tmp_path / "fixed.onnx", dynamic=False)
    with pytest.raises(ExportError, match="fixed batch size"):
        render_config(fixed, "m", max_batch_size=8)
    dynamic = export_small(export_onnx, tmp_path / "dyn.onnx")
    with pytest.raises(ExportError, match="folder name"):
        write_repository(dynamic, tmp_path / "repo", "bad name/..")
    with pytest.raises(ExportError, match="max_batch_size"):
        render_config(dynamic, "m", max_batch_size=0)
    with pytest.raises(ExportError, match="not found"):
        write_repository(tmp_path / "missing.onnx", tmp_path / "repo", "m")
