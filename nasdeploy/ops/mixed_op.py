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

import functools
import logging

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ..errors import KernelError
from ..space.primitives import DilConv, FactorizedReduce, Identity, SepConv, Zero
from . import _import_backend, load_backend

_LOG = logging.getLogger("nasdeploy.ops")


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


def _call(fn, *args) -> None:
    """Run one backend entry point; its std::runtime_error (a CUDA error) becomes a KernelError."""
    try:
        fn(*args)
    except RuntimeError as err:
        raise KernelError(f"the fused mixed-op kernel failed in {fn.__name__}: {err}",
                          "check the device and its driver, or use --kernel reference") from err


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


def _check_mixed(x: Tensor, weights: Tensor, ext: list[Tensor], codes: list[int], eps: list[float], stride: int,
                 fixed: list[bool]):
    if x.dim() != 4 or stride not in (1, 2):
        raise KernelError(
            f"mixed op needs NCHW x and stride 1 or 2, got {tuple(x.shape)}, stride {stride}", "fix the caller"
        )
    n_ext = sum(c in (EXT, EXT_BN) for c in codes)
    sizes = (len(codes), len(eps), len(fixed), weights.numel())
    if len(set(sizes)) != 1 or len(codes) > MAX_CANDIDATES or n_ext != len(ext):
        raise KernelError(
            f"mixed op got {weights.numel()} weights, {len(codes)} codes, {len(eps)} eps, {len(fixed)} fixed flags, "
            f"{len(ext)}/{n_ext} branches",
            "pass one weight, code, eps and fixed flag per candidate (at most 16)",
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


def _edge(x: Tensor, stride: int, codes: list[int], fixed: list[bool], eps: list[float], ext: list[Tensor]) -> tuple:
    """The candidates of one edge as the backend takes them: shape, stride, codes, fixed flags, eps, pointers."""
    return list(x.shape), stride, codes, [int(f) for f in fixed], eps, _ptrs(codes, ext)


def _all_reduce(t: Tensor, sync: bool) -> None:
    """Sum ``t`` over the ranks (SyncBatchNorm: the statistics of the global batch)."""
    if sync:
        torch.distributed.all_reduce(t)


@torch.library.custom_op("nasdeploy::mixed_op", mutates_args=())
def mixed_op(
    x: Tensor, weights: Tensor, ext: list[Tensor], codes: list[int], eps: list[float], stride: int,
    fixed: list[bool], running: Tensor | None, sync: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:  # fmt: skip
    """``(sum_p w_p * branch_p, bn_mean (P, C), bn_var (P, C), count)``; var is biased, zero where no BN.

    ``fixed[p]``: candidate p's BN normalizes with ``running[0, p]``, ``running[1, p]`` (eval mode)
    instead of batch statistics. ``sync``: batch statistics (and their gradient terms) are summed
    over the ranks of the default process group, as SyncBatchNorm does; ``count`` is the number
    of elements per channel they cover (float64, one element).
    """
    _check_mixed(x, weights, ext, codes, eps, stride, fixed)
    x, weights, ext = x.contiguous(), weights.contiguous(), [t.contiguous() for t in ext]
    N, C, H, W = x.shape
    P = len(codes)
    out = x.new_empty(N, C, _pool_size(H, stride), _pool_size(W, stride))
    mean, var = x.new_zeros(P, C), x.new_zeros(P, C)
    if running is not None and any(fixed):
        mean.copy_(running[0])
        var.copy_(running[1])
    sums = torch.empty(1 + 2 * P * C, dtype=torch.float64, device=x.device)
    edge = _edge(x, stride, codes, fixed, eps, ext)
    backend, dbl, ctx = _launch(x)
    _call(backend.mixed_stats, edge, x.data_ptr(), sums.data_ptr(), dbl, ctx)
    _all_reduce(sums, sync)
    _call(backend.mixed_apply, edge, x.data_ptr(), weights.data_ptr(), sums.data_ptr(), mean.data_ptr(),
          var.data_ptr(), out.data_ptr(), dbl, ctx)
    return out, mean, var, sums[:1].clone()


@mixed_op.register_fake
def _(x, weights, ext, codes, eps, stride, fixed, running, sync):
    N, C, H, W = x.shape
    out = x.new_empty(N, C, (H - 1) // stride + 1, (W - 1) // stride + 1)
    count = x.new_empty(1, dtype=torch.float64)
    return out, x.new_empty(len(codes), C), x.new_empty(len(codes), C), count


@torch.library.custom_op("nasdeploy::mixed_op_backward", mutates_args=())
def mixed_op_backward(
    grad: Tensor, x: Tensor, weights: Tensor, ext: list[Tensor], mean: Tensor, var: Tensor, count: Tensor,
    codes: list[int], eps: list[float], stride: int, fixed: list[bool], sync: bool,
) -> tuple[Tensor, Tensor, list[Tensor]]:  # fmt: skip
    """Gradients w.r.t. x, weights and each external branch of ``mixed_op``."""
    _check_mixed(x, weights, ext, codes, eps, stride, fixed)
    grad, x, weights = grad.contiguous(), x.contiguous(), weights.contiguous()
    ext, mean, var = [t.contiguous() for t in ext], mean.contiguous(), var.contiguous()
    _check_same(x, grad, mean, var)
    gx, gw, gext = torch.empty_like(x), torch.empty_like(weights), [torch.empty_like(t) for t in ext]
    C, P = x.shape[1], len(codes)
    gsums = torch.empty(C + P * C, dtype=torch.float64, device=x.device)
    edge = _edge(x, stride, codes, fixed, eps, ext)
    backend, dbl, ctx = _launch(x)
    _call(backend.mixed_grad_stats, edge, grad.data_ptr(), x.data_ptr(), mean.data_ptr(), var.data_ptr(),
          gsums.data_ptr(), gw.data_ptr(), dbl, ctx)
    _all_reduce(gsums, sync)  # gw stays local: the gradient of this rank's loss
    _call(backend.mixed_grad_apply, edge, grad.data_ptr(), x.data_ptr(), weights.data_ptr(), mean.data_ptr(),
          var.data_ptr(), gsums.data_ptr(), count.data_ptr(), gx.data_ptr(), _ptrs(codes, gext), dbl, ctx)
    return gx, gw, gext


@mixed_op_backward.register_fake
def _(grad, x, weights, ext, mean, var, count, codes, eps, stride, fixed, sync):
    return torch.empty_like(x), torch.empty_like(weights), [torch.empty_like(t) for t in ext]


def _mixed_setup(ctx, inputs, output):
    x, weights, ext, codes, eps, stride, fixed, _running, sync = inputs
    _, mean, var, count = output
    ctx.save_for_backward(x, weights, mean, var, count, *ext)
    ctx.args = (codes, eps, stride, fixed, sync)


def _mixed_backward(ctx, grad, _grad_mean, _grad_var, _grad_count):
    x, weights, mean, var, count, *ext = ctx.saved_tensors
    gx, gw, gext = mixed_op_backward(grad, x, weights, ext, mean, var, count, *ctx.args)
    return gx, gw, gext, None, None, None, None, None, None


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
    _call(
        backend.sep_forward, x.data_ptr(), w_dw.data_ptr(), w_pw.data_ptr(),
        _sep_sizes(x, w_dw, w_pw, stride, padding, dilation), prologue, eps, y.data_ptr(), mean.data_ptr(),
        var.data_ptr(), dbl, ctx,
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
    _call(
        backend.sep_backward, grad.data_ptr(), x.data_ptr(), w_dw.data_ptr(), w_pw.data_ptr(),
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


# ---- nasdeploy::dw_conv (CPU, native conv path) ------------------------------
# oneDNN's depthwise forward is fast, its backward is not: for 5x5 and dilated kernels it
# takes 10-50x its forward on this CPU (docs/kernel.md). Forward stays oneDNN's; the input
# gradient is a forward conv of the (stride-spread) output gradient with the flipped kernel,
# the weight gradient the backend's ``dw_grad_weight`` (NHWC, channels innermost).
# Looked up once here, not at the call (torch.compile traces the call, not an import).
_CPU_DW_GRAD = hasattr(_import_backend("cpu")[0], "dw_grad_weight")


def _dw_geometry(x: Tensor, w: Tensor, stride: int, padding: int, dilation: int) -> tuple[int, int, int]:
    C, K = x.shape[1], w.shape[-1]
    if x.dim() != 4 or tuple(w.shape) != (C, 1, K, K) or min(stride, dilation) < 1 or padding < 0:
        raise KernelError(f"dw_conv got x {tuple(x.shape)}, w {tuple(w.shape)}, stride {stride}, "
                          f"padding {padding}, dilation {dilation}", "w must be (C, 1, K, K) for x (N, C, H, W)")
    return C, K, dilation * (K - 1) - padding  # the input gradient's padding (>= 0: checked by the caller)


@torch.library.custom_op("nasdeploy::dw_conv", mutates_args=())
def dw_conv(x: Tensor, w: Tensor, stride: int, padding: int, dilation: int) -> Tensor:
    """Depthwise conv (groups = channels, no bias): oneDNN's forward, the backward below."""
    C, _, _ = _dw_geometry(x, w, stride, padding, dilation)
    return F.conv2d(x, w, None, stride, padding, dilation, C)


@dw_conv.register_fake
def _(x, w, stride, padding, dilation):
    return F.conv2d(x, w, None, stride, padding, dilation, x.shape[1])


@torch.library.custom_op("nasdeploy::dw_conv_backward", mutates_args=())
def dw_conv_backward(grad: Tensor, x: Tensor, w: Tensor, stride: int, padding: int,
                     dilation: int) -> tuple[Tensor, Tensor]:
    """(d/dx, d/dw) of ``dw_conv``: a forward conv for x, ``dw_grad_weight`` for w."""
    C, K, back_pad = _dw_geometry(x, w, stride, padding, dilation)
    N, _, H, W = x.shape
    Ho, Wo = grad.shape[-2:]
    cl = torch.channels_last
    if stride == 1:
        spread = grad
    else:  # the output gradient at its input positions (oh * stride), zeros between (filled below)
        span = 2 * padding - dilation * (K - 1)
        spread = torch.empty(N, C, H + span, W + span, dtype=grad.dtype, device=grad.device, memory_format=cl).zero_()
    xc, gc = x.contiguous(memory_format=cl), grad.contiguous(memory_format=cl)
    if stride != 1:
        spread[:, :, : stride * Ho : stride, : stride * Wo : stride] = gc
    gx = F.conv2d(spread, w.flip(2, 3), None, 1, back_pad, dilation, C)
    gw = torch.empty_like(w, memory_format=torch.contiguous_format)
    backend, dbl, ctx = _launch(xc)
    _call(backend.dw_grad_weight, xc.data_ptr(), gc.data_ptr(), [N, C, H, W, Ho, Wo, K, stride, padding, dilation],
          gw.data_ptr(), dbl, ctx)
    return gx, gw


@dw_conv_backward.register_fake
def _(grad, x, w, stride, padding, dilation):
    return torch.empty_like(x), torch.empty_like(w, memory_format=torch.contiguous_format)


def _dw_setup(ctx, inputs, output):
    x, w, *args = inputs
    ctx.save_for_backward(x, w)
    ctx.args = args


def _dw_backward(ctx, grad):
    x, w = ctx.saved_tensors
    gx, gw = dw_conv_backward(grad, x, w, *ctx.args)
    return gx, gw, None, None, None


dw_conv.register_autograd(_dw_backward, setup_context=_dw_setup)


def depthwise(h: Tensor, w: Tensor, stride: int, padding: int, dilation: int) -> Tensor:
    """The native path's depthwise conv: ``nasdeploy::dw_conv`` on the CPU, torch's own elsewhere.

    Where the backend lacks ``dw_grad_weight`` (an older build) or the padding exceeds the
    kernel's reach, torch's own conv runs.
    """
    K = w.shape[-1]
    if h.device.type == "cpu" and padding <= dilation * (K - 1) and _CPU_DW_GRAD:
        return dw_conv(h, w, stride, padding, dilation)
    return F.conv2d(h, w, None, stride, padding, dilation, w.shape[0])


# ---- MixedOp through the custom ops ----------------------------------------


@torch.no_grad()
def _update_running_stats(bn: nn.BatchNorm2d, mean: Tensor, var: Tensor, count: Tensor) -> None:
    """What nn.BatchNorm2d does in training mode: EMA of the mean and the unbiased variance.

    ``count`` (float64, on the device) is the number of elements per channel the statistics
    cover: the global batch under SyncBatchNorm. Kept as a tensor: no device synchronization.
    """
    if bn.running_mean is None:
        return
    bn.num_batches_tracked.add_(1)
    momentum = bn.momentum if bn.momentum is not None else 1.0 / bn.num_batches_tracked.item()
    bn.running_mean.mul_(1 - momentum).add_(mean.to(bn.running_mean.dtype), alpha=momentum)
    unbiased = var.to(bn.running_var.dtype) * (count / (count - 1).clamp_min(1)).to(bn.running_var.dtype)
    bn.running_var.mul_(1 - momentum).add_(unbiased, alpha=momentum)


def _dw_pw(dw: nn.Conv2d, pw: nn.Conv2d) -> tuple[int, int, int] | None:
    """(stride, padding, dilation) if dw -> pw is a plain square depthwise-then-pointwise pair."""
    square = all(len(set(v)) == 1 for v in (dw.kernel_size, dw.stride, dw.padding, dw.dilation))
    plain = dw.bias is None and pw.bias is None and dw.padding_mode == "zeros" and pw.kernel_size == (1, 1)
    if square and plain and dw.groups == dw.in_channels == dw.out_channels and pw.stride == (1, 1) and pw.groups == 1:
        return dw.stride[0], dw.padding[0], dw.dilation[0]
    return None


# How the kernel runs a candidate's BatchNorm: with this batch's statistics, with the running
# statistics (eval mode), or with the statistics of the global batch (SyncBatchNorm under torchrun).
BATCH, RUNNING, SYNC = "batch", "running", "sync"


def _sync_classes() -> tuple[type, ...]:
    from ..distributed import GlooSyncBatchNorm

    return nn.SyncBatchNorm, GlooSyncBatchNorm


def _distributed() -> bool:
    dist = torch.distributed
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def bn_mode(bn: nn.Module) -> str | None:
    """``batch``, ``running`` or ``sync``: how the fused kernel normalizes like ``bn``; None if it cannot.

    Follows torch's rule: batch statistics in training mode or without running statistics;
    SyncBatchNorm (``torch.nn`` or the gloo one of nasdeploy.distributed, default group) reduces
    them over the ranks when a process group of more than one rank is up.
    """
    sync_types = _sync_classes()
    if type(bn) not in (nn.BatchNorm2d, *sync_types) or bn.affine:
        return None
    if not bn.training and bn.running_mean is not None:
        return RUNNING
    if type(bn) in sync_types and _distributed():
        return SYNC if getattr(bn, "process_group", None) is None else None
    return BATCH


@functools.cache
def _log_unfused(what: str, why: str) -> None:
    # functools.cache: one line per process and reason.
    _LOG.warning("fused mixed op: %s runs unfused (its own module, output summed in the kernel): %s", what, why)


def conv_path(path: str = "native") -> str:
    """Check how the conv candidates run (``[search] conv_path``, ``--conv-path``): ``native`` or ``kernel``.

    ``native``: torch's own convolutions (oneDNN on CPU) on one shared ReLU(x)
    in channels_last, recomputed in backward (only the last BN's input is kept), with their BNs
    (the middle one as the module's ``nn.BatchNorm2d``, the last one inside ``nasdeploy::mixed_op``).
    ``kernel``: ``nasdeploy::sep_conv``, which recomputes the prologue and the depthwise output in
    backward (least memory, slower on CPU: see docs/kernel.md).
    """
    if path not in CONV_PATHS:
        raise KernelError(f"conv_path = {path!r}: unknown", f"use one of {', '.join(CONV_PATHS)}")
    return path


def _dw_pw_conv(h: Tensor, w_dw: Tensor, w_pw: Tensor, geom: tuple[int, int, int]) -> Tensor:
    return F.conv2d(depthwise(h, w_dw, *geom), w_pw)


def _native_conv(op: nn.Module, relu_x: Tensor, geoms: list[tuple[int, int, int]]) -> Tensor:
    """A SepConv (two geoms) or DilConv (one) on oneDNN up to its last BN, from the shared ReLU(x).

    With gradients, the branch is recomputed in backward (torch.utils.checkpoint) instead of
    keeping its dw/pw/BN-ReLU intermediates: autograd keeps only ReLU(x) and the branch output.
    The middle BN's running statistics are updated by the first pass only (both passes normalize
    with ``torch.native_batch_norm`` without running buffers, so they save the same tensors). The weights are passed
    in, so a recomputation under torch.func.functional_call sees the same (virtual) weights.
    """
    seq = op.op
    convs = [seq[1].weight, seq[2].weight] + ([seq[5].weight, seq[6].weight] if len(geoms) == 2 else [])
    mid = seq[3] if len(geoms) == 2 else None
    mode = bn_mode(mid) if mid is not None else None
    first = [True]

    def branch(r: Tensor, *w: Tensor) -> Tensor:
        h = _dw_pw_conv(r, w[0], w[1], geoms[0])
        if mid is None:
            return h
        if mode != BATCH:  # running or global-batch statistics: the module itself (never recomputed)
            h = mid(h)
        else:
            # torch.native_batch_norm is what F.batch_norm runs here, with the batch statistics it
            # computed returned (torch.var_mean on a channels-last tensor cost 6-14x as much).
            h, mean, invstd = torch.native_batch_norm(h, None, None, None, None, True, 0.0, mid.eps)
            if first[0]:  # the running statistics, once: the recomputation must not update them again
                first[0] = False
                with torch.no_grad():
                    var = (invstd.double().pow(-2) - mid.eps).clamp_min(0).to(h.dtype)  # biased
                    _update_running_stats(mid, mean, var, h.new_full((1,), h.numel() // h.shape[1],
                                                                     dtype=torch.float64))
        return _dw_pw_conv(F.relu(h, inplace=True), w[2], w[3], geoms[1])

    grad = torch.is_grad_enabled() and (relu_x.requires_grad or any(w.requires_grad for w in convs))
    # A sync/eval middle BN is not recomputed (run once); under torch.compile the compiler's own
    # rematerialization decides (a checkpoint that updates buffers is a side effect it refuses).
    if grad and (mid is None or mode == BATCH) and not torch.compiler.is_compiling():
        return checkpoint(branch, relu_x, *convs, use_reentrant=False)
    return branch(relu_x, *convs)


def _candidate(op: nn.Module, x: Tensor, stride: int, relu_x, path: str):
    """(code, branch tensor or None, final BN or None) for one candidate module.

    ``relu_x()`` gives the edge's one shared ReLU(x) (computed on first use).
    """
    if isinstance(op, Zero):
        return NONE, None, None
    if isinstance(op, Identity):
        return (IDENTITY, None, None) if stride == 1 else (EXT, op(x), None)
    if isinstance(op, nn.Sequential) and len(op) == 2 and bn_mode(op[1]) is not None:
        pool = op[0]
        if (pool.kernel_size, pool.stride, pool.padding, pool.ceil_mode) in (
            (3, stride, 1, False),
            ((3, 3), (stride, stride), (1, 1), False),
        ):
            if isinstance(pool, nn.MaxPool2d) and pool.dilation in (1, (1, 1)) and not pool.return_indices:
                return MAX_POOL, None, op[1]
            if isinstance(pool, nn.AvgPool2d) and not pool.count_include_pad and pool.divisor_override is None:
                return AVG_POOL, None, op[1]
    if isinstance(op, SepConv) and bn_mode(op.op[3]) is not None and bn_mode(op.op[7]) is not None:
        a, b = _dw_pw(op.op[1], op.op[2]), _dw_pw(op.op[5], op.op[6])
        if a and b and path == "native":
            return EXT_BN, _native_conv(op, relu_x(), [a, b]).contiguous(), op.op[7]
        if a and b:
            mid = op.op[3]
            h, _, _ = sep_conv(x, op.op[1].weight, op.op[2].weight, *a, RELU, 0.0)
            if bn_mode(mid) == BATCH:  # the middle BN inside the kernel, batch statistics
                y, mean, var = sep_conv(h, op.op[5].weight, op.op[6].weight, *b, BN_RELU, mid.eps)
                _update_running_stats(mid, mean, var, h.new_full((1,), h.numel() // h.shape[1], dtype=torch.float64))
            else:  # running or global-batch statistics: the module's own BN, then a plain sep_conv
                y, _, _ = sep_conv(F.relu(mid(h)), op.op[5].weight, op.op[6].weight, *b, PLAIN, 0.0)
            return EXT_BN, y, op.op[7]
    if isinstance(op, DilConv) and bn_mode(op.op[3]) is not None:
        a = _dw_pw(op.op[1], op.op[2])
        if a and path == "native":
            return EXT_BN, _native_conv(op, relu_x(), [a]).contiguous(), op.op[3]
        if a:
            y, _, _ = sep_conv(x, op.op[1].weight, op.op[2].weight, *a, RELU, 0.0)
            return EXT_BN, y, op.op[3]
    # Anything else (FactorizedReduce, affine BN, ...): run as is, summed in the kernel.
    if not (isinstance(op, Identity) or isinstance(op, FactorizedReduce) and stride == 2):
        _log_unfused(type(op).__name__, "not a candidate the kernel recognizes (unaffine BatchNorm2d / "
                     "SyncBatchNorm, DARTS pools, plain depthwise-separable convs)")
    return EXT, op(x), None


def fused_mixed_op_forward(module: nn.Module, x: Tensor, weights: Tensor) -> Tensor:
    """``MixedOp.forward`` on the fused kernels, with the module's own parameters and buffers.

    Every BN mode of torch runs fused: training (batch statistics, running statistics updated
    once), eval (running statistics) and SyncBatchNorm under torchrun (statistics and their
    gradient terms all-reduced inside ``nasdeploy::mixed_op``).
    """
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
        bns.append(bn)
        if branch is not None:
            ext.append(branch)
    modes = [bn_mode(bn) if bn is not None else None for bn in bns]
    sync = SYNC in modes
    for p, mode in enumerate(modes):
        if mode == BATCH and sync:  # one edge, one reduction: a local-statistics BN beside synced ones
            raise KernelError(f"edge mixes SyncBatchNorm and BatchNorm2d (candidate {p})",
                              "convert every BatchNorm of the network (distributed.sync_batchnorm)")
    fixed = [m == RUNNING for m in modes]
    eps = [bn.eps if bn is not None else 0.0 for bn in bns]
    running = None
    if any(fixed):
        zeros = x.new_zeros(x.shape[1])
        running = torch.stack([
            torch.stack([bn.running_mean if f else zeros for bn, f in zip(bns, fixed)]),
            torch.stack([bn.running_var if f else zeros for bn, f in zip(bns, fixed)]),
        ]).to(x.dtype)  # fmt: skip
    out, mean, var, count = mixed_op(x, weights, ext, codes, eps, module.stride, fixed, running, sync)
    for p, (bn, mode) in enumerate(zip(bns, modes)):
        if mode in (BATCH, SYNC):
            _update_running_stats(bn, mean[p], var[p], count)
    return out
