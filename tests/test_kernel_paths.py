"""Which mixed-op path runs where: proven by the ops the profiler records, not only by numbers."""

from __future__ import annotations

import copy
import logging

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import nasdeploy.ops as kernels
from nasdeploy.errors import KernelError
from nasdeploy.ops import kernel_status, resolve_kernel
from nasdeploy.space.mixed_op import MixedOp
from nasdeploy.space.primitives import PRIMITIVES
from nasdeploy.space.search_network import SearchNetwork
from nasdeploy.strategies.architect import Architect

ops = pytest.importorskip("nasdeploy.ops.mixed_op")
if not kernel_status()["cpu"]["available"]:
    pytest.skip("the fused CPU kernel is not built", allow_module_level=True)

FUSED, FUSED_BACKWARD = "nasdeploy::mixed_op", "nasdeploy::mixed_op_backward"
POOL = "aten::max_pool2d_with_indices"  # the reference max-pool candidate; the kernel pools inside


def _profiled(fn) -> list[str]:
    with torch.profiler.profile() as prof:
        fn()
    return [e.name for e in prof.events()]


def _net(kernel: str, **kw) -> SearchNetwork:
    torch.manual_seed(0)
    return SearchNetwork(4, 3, 3, in_channels=1, steps=2, multiplier=2, kernel=kernel,
                         primitives=("none", "max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3",
                                     "dil_conv_3x3"), **kw)


def _edges(net: SearchNetwork) -> int:
    return sum(isinstance(m, MixedOp) for m in net.modules())


@pytest.mark.parametrize("conv", ["native", "kernel"])
def test_search_network_runs_one_fused_op_per_edge_in_training_and_eval(conv):
    net = _net("auto", conv_path=conv)
    x, y = torch.randn(4, 1, 8, 8), torch.randint(0, 3, (4,))
    names = _profiled(lambda: F.cross_entropy(net(x), y).backward())
    assert names.count(FUSED) == names.count(FUSED_BACKWARD) == _edges(net)
    assert POOL not in names
    net.eval()
    with torch.no_grad():
        names = _profiled(lambda: net(x))
    assert names.count(FUSED) == _edges(net) and POOL not in names


def test_reference_kernel_runs_no_fused_op():
    net = _net("reference")
    names = _profiled(lambda: net(torch.randn(2, 1, 8, 8)).sum().backward())
    assert FUSED not in names and POOL in names


def test_second_order_architect_step_runs_fused_and_matches_reference():
    nets = {k: _net(k).double() for k in ("reference", "fused")}
    nets["fused"].load_state_dict(nets["reference"].state_dict())
    g = torch.Generator().manual_seed(1)
    xt, yt = torch.randn(6, 1, 8, 8, generator=g, dtype=torch.float64), torch.randint(0, 3, (6,), generator=g)
    xv, yv = torch.randn(6, 1, 8, 8, generator=g, dtype=torch.float64), torch.randint(0, 3, (6,), generator=g)
    grads = {}
    for k, net in nets.items():
        w_opt = torch.optim.SGD(net.weight_parameters(), lr=0.1, momentum=0.9, weight_decay=3e-4)
        arch = Architect(net, lr=3e-4, betas=(0.5, 0.999), weight_decay=1e-3, order=2)
        names = _profiled(lambda: arch.step(xt, yt, xv, yv, 0.1, w_opt))  # noqa: B023 - called at once
        # w' (1 forward), L_val(w') (1), the two shifted HVP losses (2): 4 forwards and backwards
        assert names.count(FUSED) == (4 * _edges(net) if k == "fused" else 0)
        assert names.count(FUSED_BACKWARD) == (4 * _edges(net) if k == "fused" else 0)
        grads[k] = [a.grad.clone() for a in net.arch_parameters()]
        if k == "fused":
            assert POOL not in names
    for a, b in zip(grads["fused"], grads["reference"]):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-10)
    for name, t in nets["reference"].state_dict().items():  # running statistics updated alike
        torch.testing.assert_close(nets["fused"].state_dict()[name], t, rtol=1e-9, atol=1e-12, msg=name)


def test_auto_falls_back_per_device_with_one_warning(monkeypatch):
    real = kernels._import_backend

    def fake(device_type):
        if device_type == "cuda":
            return None, "nasdeploy._mixedop_cuda is not importable (test: not built)"
        return real(device_type)

    monkeypatch.setattr(kernels, "_import_backend", fake)
    with pytest.warns(RuntimeWarning, match=r"using the reference mixed op: .*_mixedop_cuda.*test: not built"):
        assert resolve_kernel("auto", "cuda") == "reference"
    assert resolve_kernel("auto", "cpu") == "fused"  # the same name resolves per device
    with pytest.raises(KernelError, match="not built"):
        resolve_kernel("fused", "cuda")  # asked for explicitly: refused, not silently replaced
    net = _net("auto")
    assert all(m.kernel == "auto" for m in net.modules() if isinstance(m, MixedOp))  # resolved at the forward
    with pytest.raises(KernelError, match="unknown kernel"):
        _net("fast")


def test_backend_runtime_error_is_a_kernel_error(monkeypatch):
    class Broken:
        backend = "cuda"

        def mixed_stats(self, *args):
            raise RuntimeError("mixed_stats: an illegal memory access was encountered")

    monkeypatch.setattr(ops, "load_backend", lambda device_type: Broken())
    _, fused = _pair()
    with pytest.raises(KernelError, match="failed in mixed_stats: .*illegal memory access"):
        fused(torch.randn(2, 4, 6, 6), torch.softmax(torch.randn(len(PRIMITIVES)), 0))


def _pair():
    torch.manual_seed(0)
    ref = MixedOp(4, 1, PRIMITIVES, "reference")
    fused = copy.deepcopy(ref)
    fused.kernel = "fused"
    return ref, fused


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def test_unrecognized_candidate_runs_unfused_with_one_log_line():
    ref, fused = _pair()
    for m in (ref, fused):  # an affine BN after the max pool: not a candidate the kernel fuses
        m.ops[1] = nn.Sequential(nn.MaxPool2d(3, 1, 1), nn.BatchNorm2d(4, affine=True))
    fused.load_state_dict(ref.state_dict())
    x, w = torch.randn(2, 4, 6, 6), torch.softmax(torch.randn(len(PRIMITIVES)), 0)
    records, logger = _Records(), logging.getLogger("nasdeploy.ops")
    logger.addHandler(records)
    try:
        got = fused(x, w)
        fused(x, w)
    finally:
        logger.removeHandler(records)
    lines = [line for line in records.lines if "runs unfused" in line]
    assert len(lines) == 1 and "Sequential" in lines[0]
    fused.load_state_dict(ref.state_dict())
    torch.testing.assert_close(got, ref(x, w), rtol=1e-5, atol=1e-5)


def test_recomputed_conv_branches_update_running_statistics_once():
    ref, fused = _pair()
    x, w = torch.randn(3, 4, 6, 6), torch.softmax(torch.randn(len(PRIMITIVES)), 0)
    for m in (ref, fused):
        m(x, w).sum().backward()  # the backward recomputes the conv branches
    for name, t in ref.state_dict().items():
        torch.testing.assert_close(fused.state_dict()[name], t, rtol=1e-5, atol=1e-6, msg=name)
    assert all(int(b) == 1 for n, b in fused.state_dict().items() if n.endswith("num_batches_tracked"))


HAS_GPU = torch.cuda.is_available() and kernel_status()["cuda"]["available"]


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_GPU, reason="no GPU/CUDA kernel")
def test_cuda_search_step_runs_fused_without_synchronizing():
    net = _net("auto").cuda()
    x, y = torch.randn(4, 1, 8, 8, device="cuda"), torch.randint(0, 3, (4,), device="cuda")
    F.cross_entropy(net(x), y).backward()  # warm-up: allocator, cuDNN plans
    names = _profiled(lambda: F.cross_entropy(net(x), y).backward())
    assert names.count(FUSED) == names.count(FUSED_BACKWARD) == _edges(net)
    torch.cuda.set_sync_debug_mode("error")  # any host-device synchronization raises
    try:
        F.cross_entropy(net(x), y).backward()
    finally:
        torch.cuda.set_sync_debug_mode(0)
