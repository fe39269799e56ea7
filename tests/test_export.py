"""ONNX export: every op and both cells survive with parity, dynamic batch, metadata, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import nasdeploy.deploy.export as export_mod
from nasdeploy import __version__
from nasdeploy.artifacts import save_checkpoint
from nasdeploy.config import ExportConfig
from nasdeploy.data import Dataset, DataSpec
from nasdeploy.deploy.export import export
from nasdeploy.errors import CheckpointError, ExportError
from nasdeploy.space.genotype import FINAL_OPS, GENOTYPES, Genotype
from nasdeploy.space.network import Network

# Every final op in the normal cell (stride 1) and in the reduction cell on the
# cell inputs (stride 2, where skip_connect is a FactorizedReduce); concat of a subset.
assert len(FINAL_OPS) == 8
ALL_OPS = Genotype.from_dict(
    {
        "normal": [[op, j] for op, j in zip(FINAL_OPS, [0, 1, 2, 0, 3, 1, 4, 2], strict=True)],
        "normal_concat": [2, 3, 4, 5],
        "reduce": [[op, j] for op, j in zip(reversed(FINAL_OPS), [0, 1, 1, 0, 0, 1, 1, 0], strict=True)],
        "reduce_concat": [3, 4, 5],
    }
)
CFG = ExportConfig(parity_batch=8)


def make_checkpoint(path: Path, genotype: Genotype, shape=(1, 9, 9), classes=3, stem="cifar", auxiliary=True) -> Path:
    """A random-init model.pt whose BatchNorms have trained (non-trivial) running statistics."""
    torch.manual_seed(0)
    net = Network(genotype, C=4, num_classes=classes, layers=3, auxiliary=auxiliary, in_channels=shape[0], stem=stem)
    net.train()
    with torch.no_grad():
        for _ in range(3):
            net(torch.randn(8, *shape) * 1.5 + 0.3)
    spec = DataSpec(
        "synthetic",
        tuple(shape),
        classes,
        tuple(f"class {i}" for i in range(classes)),
        tuple(0.1 * (c + 1) for c in range(shape[0])),
        tuple(0.2 * (c + 1) for c in range(shape[0])),
    )
    payload = {
        "genotype": genotype.to_dict(),
        "network": net.config(),
        "state_dict": net.state_dict(),
        "data": spec.to_dict(),
        "metrics": {"test_acc": 0.5},
        "train_config": {},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_checkpoint(path, payload, "model")


def dataset_for(shape, classes=3, n=20) -> Dataset:
    g = torch.Generator().manual_seed(5)
    x, y = torch.randn(n, *shape, generator=g), torch.randint(classes, (n,), generator=g)
    spec = DataSpec("synthetic", tuple(shape), classes, tuple(str(i) for i in range(classes)), (0.0,), (1.0,))
    return Dataset(spec, x, y, x, y, x, y)


@pytest.fixture(scope="module")
def all_ops(tmp_path_factory):
    """Every primitive, both cells, odd spatial sizes, auxiliary head in the checkpoint; real images given."""
    root = tmp_path_factory.mktemp("allops")
    ckpt = make_checkpoint(root / "train" / "model.pt", ALL_OPS)
    report = export(ckpt, CFG, data=dataset_for((1, 9, 9)))
    return ckpt, report


@pytest.fixture(scope="module")
def imagenet(tmp_path_factory):
    """The ImageNet stem on 3x32x32, DARTS_V2 cells, no data: random parity inputs."""
    root = tmp_path_factory.mktemp("imagenet")
    ckpt = make_checkpoint(
        root / "model.pt", GENOTYPES["DARTS_V2"], shape=(3, 32, 32), classes=4, stem="imagenet", auxiliary=False
    )
    return ckpt, export(ckpt, CFG)


def _torch_logits(ckpt, x):
    from nasdeploy.training import load_network

    net, _ = load_network(ckpt)
    with torch.no_grad():
        return net(torch.from_numpy(x)).numpy()


@pytest.mark.parametrize("case", ["all_ops", "imagenet"])
def test_every_op_and_both_cells_export_with_parity(case, request):
    ckpt, report = request.getfixturevalue(case)
    assert report.exporter == "dynamo"
    assert report.checker_ok
    assert [p["batch"] for p in report.parity] == [1, CFG.parity_batch]
    for p in report.parity:
        assert p["max_abs_diff"] <= CFG.parity_atol and p["argmax_agreement"] == 1.0
    assert report.batch_independence_max_abs_diff <= CFG.parity_atol
    # independently of export's own checks: ORT vs PyTorch on fresh inputs
    shape = json.loads(onnx_metadata(report.onnx)["input_shape"])
    x = np.random.default_rng(1).standard_normal((5, *shape)).astype(np.float32)
    got = ort.InferenceSession(str(report.onnx), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    np.testing.assert_allclose(got, _torch_logits(ckpt, x), rtol=0, atol=1e-4)


def test_default_output_dir_is_the_run_export_dir(all_ops, imagenet):
    ckpt, report = all_ops
    assert report.onnx == ckpt.parent.parent / "export" / "model.onnx"
    assert report.report == ckpt.parent.parent / "export" / "export.json"
    ckpt, report = imagenet  # not inside train/: export/ beside the checkpoint
    assert report.onnx == ckpt.parent / "export" / "model.onnx"


@pytest.mark.parametrize("batch", [1, 7, 64])
def test_dynamic_batch_runs_in_onnxruntime(all_ops, batch):
    ckpt, report = all_ops
    sess = ort.InferenceSession(str(report.onnx), providers=["CPUExecutionProvider"])
    (inp,), (out,) = sess.get_inputs(), sess.get_outputs()
    assert inp.name == "input" and out.name == "logits"
    assert isinstance(inp.shape[0], str) and inp.shape[1:] == [1, 9, 9]
    x = np.random.default_rng(batch).standard_normal((batch, 1, 9, 9)).astype(np.float32)
    got = sess.run(None, {"input": x})[0]
    assert got.shape == (batch, 3)
    np.testing.assert_allclose(got, _torch_logits(ckpt, x), rtol=0, atol=1e-4)


def onnx_metadata(path) -> dict:
    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}


def test_one_file_served_output_only_and_checker_passes(all_ops):
    _, report = all_ops
    assert sorted(p.name for p in report.onnx.parent.iterdir()) == ["export.json", "model.onnx"]  # no .data
    model = onnx.load(str(report.onnx))
    onnx.checker.check_model(model, full_check=True)
    assert [o.name for o in model.graph.output] == ["logits"]
    assert not any("auxiliary" in t.name for t in model.graph.initializer)
    assert {o.domain for o in model.opset_import} <= {"", "ai.onnx"}
    assert next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) == CFG.opset
    assert not any(n.metadata_props for n in model.graph.node)  # no local paths / stack traces shipped


def test_metadata_props_carry_what_a_server_needs(all_ops):
    ckpt, report = all_ops
    meta = onnx_metadata(report.onnx)
    payload = torch.load(ckpt, weights_only=True)
    assert Genotype.from_dict(json.loads(meta["genotype"])) == ALL_OPS
    assert json.loads(meta["input_shape"]) == [1, 9, 9]
    assert int(meta["num_classes"]) == 3
    assert json.loads(meta["class_names"]) == payload["data"]["class_names"]
    assert json.loads(meta["mean"]) == pytest.approx(payload["data"]["mean"])
    assert json.loads(meta["std"]) == pytest.approx(payload["data"]["std"])
    assert meta["nasdeploy_version"] == __version__
    assert "mean" in meta["normalization"] and "std" in meta["normalization"]


def test_export_json_has_every_field(all_ops, imagenet):
    _, report = all_ops
    rec = json.loads(report.report.read_text())
    for key in (
        "opset",
        "exporter",
        "versions",
        "inputs",
        "outputs",
        "parity",
        "batch_independence",
        "dynamic_batch",
        "checker",
        "file",
        "n_params",
    ):
        assert key in rec, key
    assert set(rec["versions"]) == {"nasdeploy", "torch", "onnx", "onnxruntime"}
    assert rec["inputs"] == [{"name": "input", "shape": [rec["inputs"][0]["shape"][0], 1, 9, 9], "dtype": "float32"}]
    assert rec["outputs"][0]["name"] == "logits" and rec["outputs"][0]["shape"][1] == 3
    assert rec["parity"]["inputs"].startswith("test split of synthetic")
    assert rec["parity"]["max_abs_diff"] == report.max_abs_diff <= rec["parity"]["atol"]
    assert rec["dynamic_batch"]["batches"] == [1, 7, 64] and rec["dynamic_batch"]["ok"]
    assert rec["checker"] == {"ok": True, "full_check": True}
    assert rec["file"]["size_bytes"] == report.onnx.stat().st_size
    assert rec["file"]["sha256"] == export_mod.file_sha256(report.onnx) == report.sha256
    assert rec["n_params"] == report.n_params > 0
    rec = json.loads(imagenet[1].report.read_text())
    assert rec["parity"]["inputs"].startswith("random normal")  # no data: recorded as such


def test_not_a_checkpoint_is_a_checkpoint_error(tmp_path):
    text = tmp_path / "notes.pt"
    text.write_text("this is not a checkpoint\n")
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.randn(3), "epoch": 4}, foreign)
    for bad, match in [
        (text, "not a readable nasdeploy checkpoint"),
        (foreign, "not a model checkpoint"),
        (tmp_path / "missing.pt", "not found"),
    ]:
        with pytest.raises(CheckpointError, match=match):
            export(bad, CFG)
    assert not (tmp_path / "export" / "model.onnx").exists()


def test_truncated_or_mismatched_model_pt_is_a_checkpoint_error(all_ops, tmp_path):
    ckpt, _ = all_ops
    raw = ckpt.read_bytes()
    (tmp_path / "truncated.pt").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CheckpointError, match="truncated or foreign"):
        export(tmp_path / "truncated.pt", CFG)
    payload = torch.load(ckpt, weights_only=True)
    payload["genotype"] = GENOTYPES["DARTS_V1"].to_dict()
    save_checkpoint(tmp_path / "swapped.pt", payload, "model")
    with pytest.raises(CheckpointError, match="state_dict does not match the genotype/network"):
        export(tmp_path / "swapped.pt", CFG)


def test_parity_failure_is_an_export_error_and_leaves_no_model(all_ops, tmp_path, monkeypatch):
    ckpt, _ = all_ops
    real_session = export_mod._session

    class Off:
        """ORT session whose logits are off by 1e-2."""

        def __init__(self, sess):
            self.sess = sess

        def run(self, names, feeds):
            return [o + 1e-2 for o in self.sess.run(names, feeds)]

    monkeypatch.setattr(export_mod, "_session", lambda p: Off(real_session(p)))
    with pytest.raises(ExportError, match="differ from PyTorch by 0.01 at batch 1"):
        export(ckpt, CFG, out=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_torchscript_fallback_only_when_dynamo_fails_and_recorded(all_ops, tmp_path, monkeypatch):
    ckpt, _ = all_ops
    real_export = torch.onnx.export

    def dynamo_broken(*args, **kwargs):
        if kwargs.get("dynamo"):
            raise RuntimeError("unsupported op in dynamo\nlong traceback")
        return real_export(*args, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", dynamo_broken)
    report = export(ckpt, CFG, out=tmp_path)
    assert report.exporter == "torchscript" and report.max_abs_diff <= CFG.parity_atol
    rec = json.loads(report.report.read_text())
    assert rec["exporter"] == "torchscript" and rec["dynamo_error"] == "unsupported op in dynamo"
    assert rec["dynamic_batch"]["ok"]
