"""The fused mixed op against its oracle, the reference MixedOp (and float64 gradcheck)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from nasdeploy.errors import KernelError
from nasdeploy.ops import kernel_status, resolve_kernel
from nasdeploy.space.mixed_op import MixedOp
from nasdeploy.space.primitives import PRIMITIVES
from nasdeploy.space.search_network import SearchNetwork

ops = pytest.importorskip("nasdeploy.ops.mixed_op")
if not kernel_status()["cpu"]["available"]:
    pytest.skip("the fused CPU kernel is not built", allow_module_level=True)

HAS_GPU = torch.cuda.is_available() and kernel_status()["cuda"]["available"]
DEVICES = [
    "cpu",
    pytest.param("cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(not HAS_GPU, reason="no GPU/CUDA kernel")]),
]


@pytest.fixture(autouse=True)
def _threads():
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(old)


def _pair(C, stride, dtype, device):
    torch.manual_seed(0)
    ref = MixedOp(C, stride, PRIMITIVES, "reference").to(device, dtype)
    fused = copy.deepcopy(ref)
    fused.kernel = "fused"
    return ref, fused


def _run(module, x, w, g):
    x = x.detach().clone().requires_grad_()
    w = w.detach().clone().requires_grad_()
    y = module(x, w)
    y.backward(g)
    grads = {n: p.grad for n, p in module.named_parameters()}
    return y.detach(), x.grad, w.grad, grads, module.state_dict()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "stride, shape",
    [(1, (2, 4, 8, 8)), (2, (2, 4, 8, 8)), (1, (3, 4, 7, 9)), (2, (2, 4, 7, 5)), (1, (1, 6, 6, 6)), (2, (1, 4, 5, 5))],
)
def test_forward_and_all_gradients_match_reference(device, stride, shape):
    ref, fused = _pair(shape[1], stride, torch.float64, device)
    x = torch.randn(*shape, dtype=torch.float64, device=device)
    w = torch.softmax(torch.randn(len(PRIMITIVES), dtype=torch.float64, device=device), 0)
    g = torch.randn_like(ref(x, w))
    ref.load_state_dict(fused.state_dict())  # undo the running-stat update of the shape probe
    r, f = _run(ref, x, w, g), _run(fused, x, w, g)
    torch.testing.assert_close(f[0], r[0], rtol=1e-9, atol=1e-9)  # output
    torch.testing.assert_close(f[1], r[1], rtol=1e-9, atol=1e-9)  # d x
    torch.testing.assert_close(f[2], r[2], rtol=1e-9, atol=1e-9)  # d weights
    for name in r[3]:  # d every op parameter
        torch.testing.assert_close(f[3][name], r[3][name], rtol=1e-9, atol=1e-9, msg=name)
    for name in r[4]:  # running stats and num_batches_tracked updated like nn.BatchNorm2d
        torch.testing.assert_close(f[4][name], r[4][name], rtol=1e-9, atol=1e-9, msg=name)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("eval_mode", [False, True], ids=["batch-stats", "running-stats"])
def test_mixed_op_gradcheck_float64(device, stride, eval_mode):
    torch.manual_seed(0)
    kw = dict(dtype=torch.float64, device=device)
    x = torch.randn(2, 3, 5, 6, **kw, requires_grad=True)
    w = torch.softmax(torch.randn(8, **kw), 0).requires_grad_()
    n_ext = 5 if stride == 2 else 4
    Ho, Wo = (5 - 1) // stride + 1, (6 - 1) // stride + 1
    ext = [torch.randn(2, 3, Ho, Wo, **kw, requires_grad=True) for _ in range(n_ext)]
    codes = [ops.NONE, ops.MAX_POOL, ops.AVG_POOL, ops.IDENTITY if stride == 1 else ops.EXT] + [ops.EXT_BN] * 4
    eps = [1e-5] * 8
    fixed = [eval_mode] * 8  # eval: every BN normalizes with given (running) statistics
    running = torch.stack([torch.randn(8, 3, **kw), torch.rand(8, 3, **kw) + 0.5]) if eval_mode else None

    def f(x, w, *ext):
        return ops.mixed_op(x, w, list(ext), codes, eps, stride, fixed, running, False)[0]

    assert torch.autograd.gradcheck(f, (x, w, *ext), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("prologue", [0, 1, 2])
@pytest.mark.parametrize("stride, padding, dilation, K", [(1, 1, 1, 3), (2, 2, 1, 5), (1, 2, 2, 3)])
def test_sep_conv_gradcheck_float64(device, prologue, stride, padding, dilation, K):
    torch.manual_seed(0)
    kw = dict(dtype=torch.float64, device=device)
    x = torch.randn(2, 3, 6, 5, **kw, requires_grad=True)
    w_dw = torch.randn(3, 1, K, K, **kw, requires_grad=True)
    w_pw = torch.randn(4, 3, 1, 1, **kw, requires_grad=True)

    def f(x, w_dw, w_pw):
        return ops.sep_conv(x, w_dw, w_pw, stride, padding, dilation, prologue, 1e-5)[0]

    assert torch.autograd.gradcheck(f, (x, w_dw, w_pw), eps=1e-6, atol=1e-5)


def test_sep_conv_matches_torch_convs():
    torch.manual_seed(0)
    x = torch.randn(2, 4, 7, 7, dtype=torch.float64)
    w_dw, w_pw = torch.randn(4, 1, 5, 5, dtype=torch.float64), torch.randn(6, 4, 1, 1, dtype=torch.float64)
    h = F.relu(F.batch_norm(x, None, None, training=True, eps=1e-5))
    want = F.conv2d(F.conv2d(h, w_dw, stride=2, padding=2, groups=4), w_pw)
    got, mean, var = ops.sep_conv(x, w_dw, w_pw, 2, 2, 1, ops.BN_RELU, 1e-5)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(mean, x.mean((0, 2, 3)))
    torch.testing.assert_close(var, x.var((0, 2, 3), unbiased=False))


# Every depthwise geometry of the DARTS space (3x3/5x5, dilation 1/2, stride 1/2) and two that
# are not (no padding, uneven sizes): the native path's depthwise conv against finite differences.
DW_GEOMS = [(3, 1, 1, 1), (5, 1, 1, 2), (3, 2, 1, 2), (5, 2, 1, 4), (3, 1, 2, 1), (5, 1, 2, 2), (3, 2, 2, 2),
            (5, 2, 2, 4), (3, 1, 1, 0), (3, 1, 2, 0)]  # (K, dilation, stride, padding)


@pytest.mark.parametrize("K, dilation, stride, padding", DW_GEOMS)
@pytest.mark.parametrize("layout", ["channels_last", "nchw"])
def test_dw_conv_gradcheck_float64(K, dilation, stride, padding, layout):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 9, 8, dtype=torch.float64)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    w = torch.randn(3, 1, K, K, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w: ops.dw_conv(x, w, stride, padding, dilation), (x, w))


@pytest.mark.parametrize("K, dilation, stride, padding", DW_GEOMS[:8])
def test_dw_conv_matches_torch_conv_float32(K, dilation, stride, padding):
    # A search-sized tensor (16 channels: the kernel's 8-channel blocks and no remainder; 20: both).
    torch.manual_seed(0)
    for C in (16, 20):
        x = torch.randn(4, C, 12, 12).contiguous(memory_format=torch.channels_last).requires_grad_()
        w = torch.randn(C, 1, K, K, requires_grad=True)
        g = torch.randn_like(F.conv2d(x, w, None, stride, padding, dilation, C))
        want = torch.autograd.grad(F.conv2d(x, w, None, stride, padding, dilation, C), (x, w), g)
        got = torch.autograd.grad(ops.depthwise(x, w, stride, padding, dilation), (x, w), g)
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_native_path_runs_dw_conv_on_cpu():
    net = SearchNetwork(4, 3, 2, in_channels=1, kernel="fused", conv_path="native")
    x = torch.randn(2, 1, 8, 8)
    with torch.profiler.profile() as prof:
        F.cross_entropy(net(x), torch.tensor([0, 1])).backward()
    names = [e.name for e in prof.events()]
    # 4 conv candidates per edge: 2 SepConvs (2 depthwise each) and 2 DilConvs (1): 6 per edge.
    edges = sum(isinstance(m, MixedOp) for m in net.modules())
    assert names.count("nasdeploy::dw_conv") >= 6 * edges  # + the checkpoint's recomputation
    assert names.count("nasdeploy::dw_conv_backward") == 6 * edges


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    torch.manual_seed(0)
    kw = dict(dtype=torch.float32, device=device)
    x = torch.randn(2, 3, 6, 6, **kw, requires_grad=True)
    w = torch.softmax(torch.randn(8, **kw), 0).requires_grad_()
    ext = [torch.randn(2, 3, 6, 6, **kw, requires_grad=True) for _ in range(4)]
    codes = [ops.NONE, ops.MAX_POOL, ops.AVG_POOL, ops.IDENTITY] + [ops.EXT_BN] * 4
    torch.library.opcheck(ops.mixed_op, (x, w, ext, codes, [1e-5] * 8, 1, [False] * 8, None, False))
    running = torch.stack([torch.zeros(8, 3, **kw), torch.ones(8, 3, **kw)])
    torch.library.opcheck(ops.mixed_op, (x, w, ext, codes, [1e-5] * 8, 1, [True] * 8, running, False))
    w_dw = torch.randn(3, 1, 3, 3, **kw, requires_grad=True)
    w_pw = torch.randn(3, 3, 1, 1, **kw, requires_grad=True)
    for prologue in (ops.RELU, ops.BN_RELU):
        torch.library.opcheck(ops.sep_conv, (x, w_dw, w_pw, 1, 2, 2, prologue, 1e-5))
    if device == "cpu":
        for args in ((1, 2, 2), (2, 1, 1)):
            torch.library.opcheck(ops.dw_conv, (x, w_dw, *args))


@pytest.mark.parametrize("conv", ["native", "kernel"])
@pytest.mark.parametrize("stride", [1, 2])
def test_conv_paths_match_reference(conv, stride):
    assert ops.conv_path(conv) == conv
    ref, fused = _pair(4, stride, torch.float64, "cpu")
    fused.conv_path = conv
    x = torch.randn(2, 4, 7, 9, dtype=torch.float64)
    w = torch.softmax(torch.randn(len(PRIMITIVES), dtype=torch.float64), 0)
    g = torch.randn_like(ref(x, w))
    ref.load_state_dict(fused.state_dict())
    r, f = _run(ref, x, w, g), _run(fused, x, w, g)
    for a, b in zip(f[:3], r[:3]):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
    for i in (3, 4):
        for name in r[i]:
            torch.testing.assert_close(f[i][name], r[i][name], rtol=1e-9, atol=1e-9, msg=name)


def test_unknown_conv_path_is_refused():
    _, fused = _pair(4, 1, torch.float32, "cpu")
    fused.conv_path = "fast"
    with pytest.raises(KernelError, match="conv_path = 'fast'"):
        fused(torch.randn(1, 4, 5, 5), torch.softmax(torch.randn(8), 0))


@pytest.mark.parametrize("conv", ["native", "kernel"])
@pytest.mark.parametrize("batch", [1, 3])
def test_search_step_parity_float32(conv, batch):
    torch.manual_seed(0)
    ref = SearchNetwork(4, 5, 3, kernel="reference")
    fused = SearchNetwork(4, 5, 3, kernel="fused", conv_path=conv)
    assert all(m.conv_path == conv for m in fused.modules() if isinstance(m, MixedOp))
    fused.load_state_dict(ref.state_dict())
    x, y = torch.randn(batch, 3, 9, 9), torch.randint(0, 5, (batch,))
    results = []
    for net in (ref, fused):
        opt = torch.optim.SGD(net.weight_parameters(), lr=0.1, momentum=0.9)
        loss = F.cross_entropy(net(x), y)
        loss.backward()
        alpha_grads = [a.grad.clone() for a in net.arch_parameters()]
        weight_grads = {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}
        opt.step()
        results.append((loss.detach(), alpha_grads, weight_grads, net.state_dict()))
    (l0, a0, g0, s0), (l1, a1, g1, s1) = results
    torch.testing.assert_close(l1, l0, rtol=1e-4, atol=1e-5)
    for a, b in zip(a1, a0):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)
    assert g1.keys() == g0.keys()
    for name in g0:
        torch.testing.assert_close(g1[name], g0[name], rtol=1e-3, atol=1e-4, msg=name)
    for name in s0:  # weights after the SGD step, running stats, alphas
        torch.testing.assert_close(s1[name], s0[name], rtol=1e-3, atol=1e-4, msg=name)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("conv", ["native", "kernel"])
@pytest.mark.parametrize("stride", [1, 2])
def test_eval_mode_runs_fused_with_running_statistics(device, conv, stride):
    ref, fused = _pair(4, stride, torch.float64, device)
    fused.conv_path = conv
    for m in ref.modules():  # running statistics far from the batch's, so using them shows
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    fused.load_state_dict(ref.state_dict())
    ref.eval()
    fused.eval()
    kw = dict(dtype=torch.float64, device=device)
    x, w = torch.randn(2, 4, 7, 9, **kw), torch.softmax(torch.randn(8, **kw), 0)
    g = torch.randn_like(ref(x, w))
    with torch.profiler.profile() as prof:
        f = _run(fused, x, w, g)
    assert "nasdeploy::mixed_op" in {e.name for e in prof.events()}  # fused, not the reference
    r = _run(ref, x, w, g)
    for a, b in zip(f[:3], r[:3]):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
    for name in r[3]:
        torch.testing.assert_close(f[3][name], r[3][name], rtol=1e-9, atol=1e-9, msg=name)
    for name in r[4]:  # eval: running statistics untouched
        torch.testing.assert_close(f[4][name], r[4][name], rtol=0, atol=0, msg=name)


def test_torch_compile_of_fused_mixed_op():
    _, fused = _pair(4, 1, torch.float32, "cpu")
    x, w = torch.randn(2, 4, 6, 6, requires_grad=True), torch.softmax(torch.randn(8), 0)
    eager = fused(x, w)
    compiled = torch.compile(fused, backend="aot_eager", fullgraph=True)
    out = compiled(x, w)
    torch.testing.assert_close(out, eager)
    out.sum().backward()
    assert x.grad is not None


def test_kernel_resolution():
    assert resolve_kernel("auto") == "fused"
    assert resolve_kernel("fused") == "fused"
    assert resolve_kernel("reference") == "reference"
    with pytest.raises(KernelError, match="unknown kernel"):
        resolve_kernel("fast")
    status = kernel_status()
    assert status["cpu"]["available"] and status["auto"]["cpu"] == "fused"


def test_bad_arguments_fail_before_the_kernel():
    x = torch.randn(1, 2, 4, 4)
    with pytest.raises(KernelError):
        ops.mixed_op(x, torch.ones(3), [], [0, 1], [1e-5, 1e-5], 1, [False] * 2, None, False)  # 3 weights, 2 codes
    with pytest.raises(KernelError):
        ops.mixed_op(x.int(), torch.ones(1), [], [1], [1e-5], 1, [False], None, False)
