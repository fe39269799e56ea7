"""The fused DARTS mixed op: ``nasdeploy::`` custom ops over the compiled kernels.

Two ops, each with a fake kernel and autograd registered right beside it:

* ``nasdeploy::mixed_op`` -- ``sum_p w_p * branch_p``: the parameter-free
  candidates (none, skip, 3x3 max/avg pool + affine-free batch-stat BN) are
  computed from x inside the kernel and recomputed in backward; the conv
  candidates arrive as their last BN's input and are normalized here.
* the conv candidates run by default as torch's own convolutions (oneDNN, in
  channels_last) on one shared ReLU(x), their last BN done in ``mixed_op``;
  ``conv_path="kernel"`` (``--conv-path kernel``) runs them through
  ``nasdeploy::sep_conv`` -- ``pw(dw(prologue(x)))``, one DilConv/SepConv half
  without its BN: the ReLU (or BN + ReLU) prologue and the depthwise output are
  recomputed in backward, never stored, so one ReLU(x) serves every conv candidate.

``fused_mixed_op_forward(module, x, w)`` runs a MixedOp through them with the
module's own parameters and buffers (same state_dict as the reference).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import KernelError
from ..space.primitives import DilConv, Identity, SepConv, Zero
from . import load_backend


def reference_mixed_op(ops, x: Tensor, weights: Tensor) -> Tensor:
    """``sum_i weights[i] * ops[i](x)``: every candidate output is kept by autograd (the oracle and fallback)."""
    return sum(w * op(x) for w, op in zip(weights, ops))

# Branch codes and prologues: the enums of csrc/mixed_op_math.h.
NONE, MAX_POOL, AVG_POOL, IDENTITY, EXT_BN, EXT = range(6)
PLAIN, RELU, BN_RELU = range(3)
MAX_CANDIDATES = 16  # the CUDA kernel's fixed bound
CONV_PATHS = ("native", "kernel")


def _pool_size(n: int, stride: int) -> int:
    return (n - 1) // stride + 1  # 3x3, padding 1


def _conv_size(n: int, k: int, stride: int, pad: int, dil: int) -> int:
    return (n + 2 * pad - dil * (k - 1) - 1) // stride + 1


def _launch(x: Tensor) -> tuple:
    """(backend module, is_double, ctx): ctx is the thread count (CPU) or the stream (CUDA)."""
    if x.dtype not in (torch.float32, torch.float64):
        raise KernelError(f"the fused mixed op got {x.dtype}", "use float32 or float64 tensors")
    backend = load_backend(x.device.type)
    if x.device.type == "cuda":
        return backend, x.dtype == torch.float64, torch.cuda.current_stream(x.device).cuda_stream
    return backend, x.dtype == torch.float64, torch.get_num_threads()


def _check_same(x: Tensor, *others: Tensor) -> None:
    for t in others:
        if t.dtype != x.dtype or t.device != x.device:
            raise KernelError(
                f"mixed-op tensors disagree: {t.dtype} on {t.device} vs {x.dtype} on {x.device}",
                "put the module and its input on one device and dtype",
            )


def _ptrs(codes: list[int], ext: list[Tensor]) -> list[int]:
    """One pointer per candidate: the next external tensor for EXT/EXT_BN, else 0."""
    it = iter(ext)
    return [next(it).data_ptr() if c in (EXT, EXT_BN) else 0 for c in codes]


def _check_mixed(x: Tensor, weights: Tensor, ext: list[Tensor], codes: list[int], eps: list[float], stride: int):
    if x.dim() != 4 or stride not in (1, 2):
        raise KernelError(
            f"mixed op needs NCHW x and stride 1 or 2, got {tuple(x.shape)}, stride {stride}", "fix the caller"
        )
    n_ext = sum(c in (EXT, EXT_BN) for c in codes)
    if not (len(codes) == len(eps) == weights.numel()) or len(codes) > MAX_CANDIDATES or n_ext != len(ext):
        raise KernelError(
            f"mixed op got {weights.numel()} weights, {len(codes)} codes, {len(eps)} eps, {len(ext)}/{n_ext} branches",
            "pass one weight, code and eps per candidate (at most 16)",
        )
    if stride != 1 and IDENTITY in codes:
        raise KernelError("identity candidate at stride 2", "use a FactorizedReduce branch (EXT) at stride 2")
    N, C, H, W = x.shape
    shape = (N, C, _pool_size(H, stride), _pool_size(W, stride))
    for t in ext:
        if tuple(t.shape) != shape:
            raise KernelError(f"mixed-op branch of shape {tuple(t.shape)}", f"branches must be {shape}")
    _check_same(x, weights, *ext)


# ---- nasdeploy::mixed_op ----------------------------------------------------


@torch.library.custom_op("nasdeploy::mixed_op", mutates_args=())
def mixed_op(
    x: Tensor, weights: Tensor, ext: list[Tensor], codes: list[int], eps: list[float], stride: int
) -> tuple[Tensor, Tensor, Tensor]:
    """``(sum_p w_p * branch_p, bn_mean (P, C), bn_var (P, C))``; var is biased, zero where no BN."""
    _check_mixed(x, weights, ext, codes, eps, stride)
    x, weights, ext = x.contiguous(), weights.contiguous(), [t.contiguous() for t in ext]
    N, C, H, W = x.shape
    out = x.new_empty(N, C, _pool_size(H, stride), _pool_size(W, stride))
    mean, var = x.new_empty(len(codes), C), x.new_empty(len(codes), C)
    backend, dbl, ctx = _launch(x)
    backend.mixed_forward(
        x.data_ptr(), [N, C, H, W], stride, codes, eps, _ptrs(codes, ext), weights.data_ptr(),
        out.data_ptr(), mean.data_ptr(), var.data_ptr(), dbl, ctx,
    )  # fmt: skip
    return out, mean, var


@mixed_op.register_fake
def _(x, weights, ext, codes, eps, stride):
    N, C, H, W = x.shape
    out = x.new_empty(N, C, (H - 1) // stride + 1, (W - 1) // stride + 1)
    return out, x.new_empty(len(codes), C), x.new_empty(len(codes), C)


@torch.library.custom_op("nasdeploy::mixed_op_backward", mutates_args=())
def mixed_op_backward(
    grad: Tensor, x: Tensor, weights: Tensor, ext: list[Tensor], mean: Tensor, var: Tensor,
    codes: list[int], eps: list[float], stride: int,
) -> tuple[Tensor, Tensor, list[Tensor]]:  # fmt: skip
    """Gradients w.r.t. x, weights and each external branch of ``mixed_op``."""
    _check_mixed(x, weights, ext, codes, eps, stride)
    grad, x, weights = grad.contiguous(), x.contiguous(), weights.contiguous()
    ext, mean, var = [t.contiguous() for t in ext], mean.contiguous(), var.contiguous()
    _check_same(x, grad, mean, var)
    gx, gw, gext = torch.empty_like(x), torch.empty_like(weights), [torch.empty_like(t) for t in ext]
    backend, dbl, ctx = _launch(x)
    backend.mixed_backward(
        grad.data_ptr(), x.data_ptr(), list(x.shape), stride, codes, eps, _ptrs(codes, ext), weights.data_ptr(),
        mean.data_ptr(), var.data_ptr(), gx.data_ptr(), gw.data_ptr(), _ptrs(codes, gext), dbl, ctx,
    )  # fmt: skip
    return gx, gw, gext


@mixed_op_backward.register_fake
def _(grad, x, weights, ext, mean, var, codes, eps, stride):
    return torch.empty_like(x), torch.empty_like(weights), [torch.empty_like(t) for t in ext]


def _mixed_setup(ctx, inputs, output):
    x, weights, ext, codes, eps, stride = inputs
    _, mean, var = output
    ctx.save_for_backward(x, weights, mean, var, *ext)
    ctx.args = (codes, eps, stride)


def _mixed_backward(ctx, grad, _grad_mean, _grad_var):
    x, weights, mean, var, *ext = ctx.saved_tensors
    gx, gw, gext = mixed_op_backward(grad, x, weights, ext, mean, var, *ctx.args)
    return gx, gw, gext, None, None, None


mixed_op.register_autograd(_mixed_backward, setup_context=_mixed_setup)


# ---- nasdeploy::sep_conv ----------------------------------------------------


def _check_sep(x: Tensor, w_dw: Tensor, w_pw: Tensor, stride: int, padding: int, dilation: int, prologue: int):
    C, K = x.shape[1], w_dw.shape[-1]
    if x.dim() != 4 or tuple(w_dw.shape) != (C, 1, K, K) or w_pw.dim() != 4 or tuple(w_pw.shape[1:]) != (C, 1, 1):
        raise KernelError(
            f"sep_conv got x {tuple(x.shape)}, dw {tuple(w_dw.shape)}, pw {tuple(w_pw.shape)}",
            "dw must be (C, 1, K, K) and pw (C_out, C, 1, 1) for x (N, C, H, W)",
        )
    if prologue not in (PLAIN, RELU, BN_RELU) or min(stride, dilation) < 1 or padding < 0:
        raise KernelError(f"sep_conv got prologue {prologue}, stride {stride}, padding {padding}", "fix the caller")
    _check_same(x, w_dw, w_pw)


def _sep_sizes(x: Tensor, w_dw: Tensor, w_pw: Tensor, stride: int, padding: int, dilation: int) -> list[int]:
    N, C, H, W = x.shape
    return [N, C, H, W, w_pw.shape[0], w_dw.shape[-1], stride, padding, dilation]


@torch.library.custom_op("nasdeploy::sep_conv", mutates_args=())
def sep_conv(
    x: Tensor, w_dw: Tensor, w_pw: Tensor, stride: int, padding: int, dilation: int, prologue: int, eps: float
) -> tuple[Tensor, Tensor, Tensor]:
    """``(pw(dw(prologue(x))), mean, var)``; mean/var are x's batch stats for BN_RELU, else empty."""
    _check_sep(x, w_dw, w_pw, stride, padding, dilation, prologue)
    x, w_dw, w_pw = x.contiguous(), w_dw.contiguous(), w_pw.contiguous()
    N, C, H, W = x.shape
    K = w_dw.shape[-1]
    y = x.new_empty(
        N, w_pw.shape[0], _conv_size(H, K, stride, padding, dilation), _conv_size(W, K, stride, padding, dilation)
    )
    n_stats = C if prologue == BN_RELU else 0
    mean, var = x.new_empty(n_stats), x.new_empty(n_stats)
    backend, dbl, ctx = _launch(x)
    backend.sep_forward(
        x.data_ptr(), w_dw.data_ptr(), w_pw.data_ptr(), _sep_sizes(x, w_dw, w_pw, stride, padding, dilation),
        prologue, eps, y.data_ptr(), mean.data_ptr(), var.data_ptr(), dbl, ctx,
    )  # fmt: skip
    return y, mean, var


@sep_conv.register_fake
def _(x, w_dw, w_pw, stride, padding, dilation, prologue, eps):
    N, C, H, W = x.shape
    K = w_dw.shape[-1]
    Ho, Wo = (
        (H + 2 * padding - dilation * (K - 1) - 1) // stride + 1,
        (W + 2 * padding - dilation * (K - 1) - 1) // stride + 1,
    )
    n_stats = C if prologue == BN_RELU else 0
    return x.new_empty(N, w_pw.shape[0], Ho, Wo), x.new_empty(n_stats), x.new_empty(n_stats)


@torch.library.custom_op("nasdeploy::sep_conv_backward", mutates_args=())
def sep_conv_backward(
    grad: Tensor, x: Tensor, w_dw: Tensor, w_pw: Tensor, mean: Tensor, var: Tensor,
    stride: int, padding: int, dilation: int, prologue: int, eps: float,
) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    """Gradients w.r.t. x, w_dw and w_pw of ``sep_conv``."""
    _check_sep(x, w_dw, w_pw, stride, padding, dilation, prologue)
    grad, x, w_dw, w_pw = grad.contiguous(), x.contiguous(), w_dw.contiguous(), w_pw.contiguous()
    mean, var = mean.contiguous(), var.contiguous()
    _check_same(x, grad, mean, var)
    gx, g_dw, g_pw = torch.empty_like(x), torch.empty_like(w_dw), torch.empty_like(w_pw)
    backend, dbl, ctx = _launch(x)
    backend.sep_backward(
        grad.data_ptr(), x.data_ptr(), w_dw.data_ptr(), w_pw.data_ptr(),
        _sep_sizes(x, w_dw, w_pw, stride, padding, dilation), prologue, eps, mean.data_ptr(), var.data_ptr(),
        gx.data_ptr(), g_dw.data_ptr(), g_pw.data_ptr(), dbl, ctx,
    )  # fmt: skip
    return gx, g_dw, g_pw


@sep_conv_backward.register_fake
def _(grad, x, w_dw, w_pw, mean, var, stride, padding, dilation, prologue, eps):
    return torch.empty_like(x), torch.empty_like(w_dw), torch.empty_like(w_pw)


def _sep_setup(ctx, inputs, output):
    x, w_dw, w_pw, *args = inputs
    _, mean, var = output
    ctx.save_for_backward(x, w_dw, w_pw, mean, var)
    ctx.args = args


def _sep_backward(ctx, grad, _grad_mean, _grad_var):
    x, w_dw, w_pw, mean, var = ctx.saved_tensors
    gx, g_dw, g_pw = sep_conv_backward(grad, x, w_dw, w_pw, mean, var, *ctx.args)
    return gx, g_dw, g_pw, None, None, None, None, None


sep_conv.register_autograd(_sep_backward, setup_context=_sep_setup)


# ---- MixedOp through the custom ops ----------------------------------------


@torch.no_grad()
def _update_running_stats(bn: nn.BatchNorm2d, mean: Tensor, var: Tensor, count: int) -> None:
    """What nn.BatchNorm2d does in training mode: EMA of the mean and the unbiased variance."""
    if bn.running_mean is None:
        return
    bn.num_batches_tracked.add_(1)
    momentum = bn.momentum if bn.momentum is not None else 1.0 / bn.num_batches_tracked.item()
    bn.running_mean.mul_(1 - momentum).add_(mean.to(bn.running_mean.dtype), alpha=momentum)
    unbiased = var.to(bn.running_var.dtype) * (count / max(count - 1, 1))
    bn.running_var.mul_(1 - momentum).add_(unbiased, alpha=momentum)


def _dw_pw(dw: nn.Conv2d, pw: nn.Conv2d) -> tuple[int, int, int] | None:
    """(stride, padding, dilation) if dw -> pw is a plain square depthwise-then-pointwise pair."""
    square = all(len(set(v)) == 1 for v in (dw.kernel_size, dw.stride, dw.padding, dw.dilation))
    plain = dw.bias is None and pw.bias is None and dw.padding_mode == "zeros" and pw.kernel_size == (1, 1)
    if square and plain and dw.groups == dw.in_channels == dw.out_channels and pw.stride == (1, 1) and pw.groups == 1:
        return dw.stride[0], dw.padding[0], dw.dilation[0]
    return None


def _affine_free(bn: nn.Module) -> bool:
    return type(bn) is nn.BatchNorm2d and not bn.affine


def conv_path(path: str = "native") -> str:
    """Check how the conv candidates run (``[search] conv_path``, ``--conv-path``): ``native`` or ``kernel``.

    ``native``: torch's own convolutions (oneDNN on CPU) on one shared ReLU(x)
    in channels_last, with their BNs (the middle one as the module's ``nn.BatchNorm2d``, the last
    one inside ``nasdeploy::mixed_op``). ``kernel``: ``nasdeploy::sep_conv``,
    which recomputes the prologue and the depthwise output in backward (less
    memory, slower on CPU: see docs/kernel.md).
    """
    if path not in CONV_PATHS:
        raise KernelError(f"conv_path = {path!r}: unknown", f"use one of {', '.join(CONV_PATHS)}")
    return path


def _candidate(op: nn.Module, x: Tensor, stride: int, relu_x, path: str):
    """(code, branch tensor or None, final BN or None) for one candidate module.

    ``relu_x()`` gives the edge's one shared ReLU(x) (computed on first use).
    """
    if isinstance(op, Zero):
        return NONE, None, None
    if isinstance(op, Identity):
        return (IDENTITY, None, None) if stride == 1 else (EXT, op(x), None)
    if isinstance(op, nn.Sequential) and len(op) == 2 and _affine_free(op[1]):
        pool = op[0]
        if (pool.kernel_size, pool.stride, pool.padding, pool.ceil_mode) in (
            (3, stride, 1, False),
            ((3, 3), (stride, stride), (1, 1), False),
        ):
            if isinstance(pool, nn.MaxPool2d) and pool.dilation in (1, (1, 1)) and not pool.return_indices:
                return MAX_POOL, None, op[1]
            if isinstance(pool, nn.AvgPool2d) and not pool.count_include_pad and pool.divisor_override is None:
                return AVG_POOL, None, op[1]
    if isinstance(op, SepConv) and _affine_free(op.op[3]) and _affine_free(op.op[7]):
        a, b = _dw_pw(op.op[1], op.op[2]), _dw_pw(op.op[5], op.op[6])
        if a and b and path == "native":
            seq = op.op
            h = F.relu(seq[3](seq[2](seq[1](relu_x()))), inplace=True)  # BN's backward needs its input only
            return EXT_BN, seq[6](seq[5](h)).contiguous(), seq[7]
        if a and b:
            h, _, _ = sep_conv(x, op.op[1].weight, op.op[2].weight, *a, RELU, 0.0)
            y, mean, var = sep_conv(h, op.op[5].weight, op.op[6].weight, *b, BN_RELU, op.op[3].eps)
            _update_running_stats(op.op[3], mean, var, h.numel() // h.shape[1])
            return EXT_BN, y, op.op[7]
    if isinstance(op, DilConv) and _affine_free(op.op[3]):
        a = _dw_pw(op.op[1], op.op[2])
        if a and path == "native":
            return EXT_BN, op.op[2](op.op[1](relu_x())).contiguous(), op.op[3]
        if a:
            y, _, _ = sep_conv(x, op.op[1].weight, op.op[2].weight, *a, RELU, 0.0)
            return EXT_BN, y, op.op[3]
    return EXT, op(x), None  # anything else (FactorizedReduce, ...): run as is, summed in the kernel


def fused_mixed_op_forward(module: nn.Module, x: Tensor, weights: Tensor) -> Tensor:
    """``MixedOp.forward`` on the fused kernels, with the module's own parameters and buffers.

    Training-mode only: BN in eval mode uses running statistics, so an eval-mode
    module (or any eval-mode child) runs the reference instead.
    """
    if not all(m.training for m in module.modules()):
        return reference_mixed_op(module.ops, x, weights)
    codes, ext, eps, bns = [], [], [], []
    path, shared = conv_path(getattr(module, "conv_path", "native")), []

    def relu_x() -> Tensor:
        if not shared:
            # channels_last: oneDNN's depthwise convs are ~3x faster in NHWC than NCHW on CPU
            shared.append(F.relu(x).contiguous(memory_format=torch.channels_last))
        return shared[0]

    for op in module.ops:
        code, branch, bn = _candidate(op, x, module.stride, relu_x, path)
        codes.append(code)
        eps.append(bn.eps if bn is not None else 0.0)
        bns.append(bn)
        if branch is not None:
            ext.append(branch)
    out, mean, var = mixed_op(x, weights, ext, codes, eps, module.stride)
    count = out.numel() // out.shape[1]
    for p, bn in enumerate(bns):
        if bn is not None:
            _update_running_stats(bn, mean[p], var[p], count)
    return out
