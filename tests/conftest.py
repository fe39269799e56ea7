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
