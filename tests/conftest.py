"""Shared fixtures: small seeded data, temporary run directories, one torch thread."""

from __future__ import annotations

import numpy as np
import pytest
import torch


@pytest.fixture(autouse=True)
def _torch_threads():
    # Tests are small: one thread is fastest and keeps runs comparable on 2 cores.
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="session")
def digits():
    from nasdeploy.data import load_dataset

    return load_dataset("digits", seed=0)


@pytest.fixture
def tiny_npz(tmp_path):
    """A learnable 3-class 2x6x6 dataset: class k has a bright pixel block at row 2k."""
    rng = np.random.default_rng(0)
    n = 90
    y = np.arange(n) % 3
    x = rng.normal(0, 0.1, size=(n, 2, 6, 6)).astype(np.float32)
    for i, k in enumerate(y):
        x[i, :, 2 * k : 2 * k + 2, :] += 1.0
    path = tmp_path / "tiny.npz"
    np.savez(path, x=x, y=y)
    return path


@pytest.fixture(scope="session")
def export_onnx():
    """A function: export an eval-mode network to one ONNX file the way ``nasdeploy export`` does.

    dynamo exporter, no side ``.data`` file, input ``input`` / output ``logits``, dynamic batch
    (unless ``dynamic=False``); ``class_names`` are added as metadata_props like the real export.
    """
    import json

    import onnx

    def export(net, path, dynamic=True, class_names=None, shape=(1, 8, 8)):
        kw = {"dynamic_shapes": {"x": {0: torch.export.Dim("batch", min=1, max=1024)}}} if dynamic else {}
        torch.onnx.export(net.eval(), (torch.randn(2, *shape),), str(path), dynamo=True, external_data=False,
                          input_names=["input"], output_names=["logits"], verbose=False, **kw)
        if class_names is not None:
            model = onnx.load(str(path))
            model.metadata_props.add(key="class_names", value=json.dumps(list(class_names)))
            onnx.save(model, str(path))
        return path

    return export
