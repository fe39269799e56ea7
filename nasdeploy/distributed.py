"""torch.distributed for search and retrain: torchrun env → rank/world, rank-0 I/O, gradient averaging.

Launched with ``torchrun`` (docs/distributed.md) every process runs the same
loop on its shard of each global batch; after ``backward`` the gradients of
the weights and of the architecture parameters are averaged across ranks
(weighted by each rank's sample count, so the result is the gradient of the
global batch's mean loss), which keeps weights and alphas identical on every
rank without wrapping the model in DDP — the architect's
``torch.func.functional_call`` sees the plain module.

BatchNorm uses per-rank batch statistics (DDP's default; ``SyncBatchNorm``
needs CUDA tensors), and the running statistics are averaged across ranks at
every epoch end so that every rank evaluates and saves the same model.

Signals: ``stop_on_signals`` turns SIGINT/SIGTERM into a flag the training
loops poll at step boundaries (agreed across ranks, so all stop at the same
step), save a mid-epoch checkpoint and raise ``Interrupted``.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import os
import signal
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .errors import ConfigError


@dataclass(frozen=True)
class DistContext:
    """Where this process sits in the job: ``rank`` of ``world_size``, ``local_rank`` on its node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that writes artifacts and shows progress."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"environment variable {name}={raw!r} is not an integer",
                          "launch with torchrun, which sets RANK, WORLD_SIZE and LOCAL_RANK") from None


def env_ranks() -> tuple[int, int, int]:
    """``(rank, world_size, local_rank)`` from torchrun's environment; ``(0, 1, 0)`` outside torchrun."""
    rank, world, local = _env_int("RANK", 0), _env_int("WORLD_SIZE", 1), _env_int("LOCAL_RANK", 0)
    if world < 1 or not 0 <= rank < world or local < 0:
        raise ConfigError(f"RANK={rank} WORLD_SIZE={world} LOCAL_RANK={local} is not a valid torchrun layout",
                          "launch with torchrun, or unset RANK/WORLD_SIZE for a single process")
    return rank, world, local


# How long a rank waits at exit for the others to reach theirs before tearing down regardless.
EXIT_BARRIER_S = 30.0


def _shutdown() -> None:
    """Tear the default group down at interpreter exit, after the ranks meet (gloo).

    The ranks first meet at a barrier, so that none closes its connections while a peer is
    still communicating (a gloo rank whose peer vanished mid-operation can abort with
    "terminate called without an active exception", seen once in CI at a 2-rank train's exit).
    A peer that never comes (it crashed) costs at most EXIT_BARRIER_S, then the teardown goes on.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    if dist.get_backend() == "gloo" and dist.get_world_size() > 1:
        from datetime import timedelta

        with contextlib.suppress(RuntimeError):
            dist.monitored_barrier(timeout=timedelta(seconds=EXIT_BARRIER_S))
    dist.destroy_process_group()


def init_from_env(backend: str = "auto", device: str | torch.device = "cpu") -> DistContext:
    """Join the process group torchrun describes (idempotent); a single-process context outside torchrun.

    Args:
        backend: ``auto`` (nccl for a CUDA ``device``, else gloo), ``nccl`` or ``gloo``.
        device: the configured device; ``cuda`` becomes ``cuda:LOCAL_RANK`` under torchrun.
    """
    rank, world, local = env_ranks()
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None and world > 1:
        dev = torch.device("cuda", local)
    if world == 1:
        return DistContext(0, 1, 0, dev)
    if backend == "auto":
        backend = "nccl" if dev.type == "cuda" else "gloo"
    if backend not in ("nccl", "gloo"):
        raise ConfigError(f"backend {backend!r} is not supported", "use auto, nccl or gloo")
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        for var in ("MASTER_ADDR", "MASTER_PORT"):
            if var not in os.environ:
                raise ConfigError(f"WORLD_SIZE={world} but {var} is not set", "launch with torchrun")
        dist.init_process_group(backend, rank=rank, world_size=world)
        # Tear the group down before interpreter exit: a rank that exits with gloo's threads still
        # alive can abort ("terminate called without an active exception").
        atexit.register(_shutdown)
    elif dist.get_rank() != rank or dist.get_world_size() != world:
        raise ConfigError(f"the process group (rank {dist.get_rank()} of {dist.get_world_size()}) disagrees with "
                          f"RANK={rank} WORLD_SIZE={world}", "launch with torchrun")
    return DistContext(rank, world, local, dev)


def main_only() -> bool:
    """True on rank 0 (or outside a distributed job): gate file writes and printing with it."""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def average_gradients(params: Iterable[torch.nn.Parameter], ctx: DistContext, weight: float = 1.0) -> None:
    """Replace each ``p.grad`` by the ``weight``-weighted average over ranks, in one all-reduce.

    With ``weight`` = this rank's sample count and per-rank mean losses, the result is
    the gradient of the mean loss over the global batch (exact also for an uneven last batch).
    A parameter without a gradient counts as zero.
    """
    if not ctx.enabled:
        return
    params = list(params)
    flat = [(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) * weight for p in params]
    dtype = flat[0].dtype if flat else torch.float32
    buf = torch.cat(flat + [torch.tensor([float(weight)], device=flat[0].device if flat else ctx.device, dtype=dtype)])
    dist.all_reduce(buf)
    total = buf[-1]
    offset = 0
    for p in params:
        n = p.numel()
        g = (buf[offset:offset + n] / total).to(p.dtype).view_as(p)
        if p.grad is None:
            p.grad = g
        else:
            p.grad.copy_(g)
        offset += n


def average_buffers(module: torch.nn.Module, ctx: DistContext) -> None:
    """Average floating-point buffers (BatchNorm running statistics) across ranks."""
    if not ctx.enabled:
        return
    for b in module.buffers():
        if b.is_floating_point():
            dist.all_reduce(b)
            b.div_(ctx.world_size)


def broadcast_module(module: torch.nn.Module, ctx: DistContext) -> None:
    """Copy rank 0's parameters and buffers to every rank (identical starting point)."""
    if not ctx.enabled:
        return
    for t in list(module.parameters()) + list(module.buffers()):
        dist.broadcast(t.data, src=0)


class GlooSyncBatchNorm(torch.nn.BatchNorm2d):
    """BatchNorm2d whose training statistics cover the global batch: a differentiable all-reduce of
    (sum, sum of squares, count), so the backward pass carries the cross-rank terms too.
    For CPU/gloo, where ``torch.nn.SyncBatchNorm`` refuses to run; same parameters and buffers."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce

        c = x.shape[1]
        count = torch.full((1,), x.numel() / c, dtype=x.dtype, device=x.device)
        stats = all_reduce(torch.cat([x.sum((0, 2, 3)), (x * x).sum((0, 2, 3)), count]))
        n = stats[-1]
        mean = stats[:c] / n
        var = (stats[c: 2 * c] / n - mean * mean).clamp_min(0)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(m * mean.detach())
                self.running_var.mul_(1 - m).add_(m * var.detach() * n / (n - 1).clamp_min(1))
        y = (x - mean[None, :, None, None]) * torch.rsqrt(var + self.eps)[None, :, None, None]
        if self.affine:
            y = y * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return y


def sync_batchnorm(module: torch.nn.Module, ctx: DistContext) -> torch.nn.Module:
    """Make every BatchNorm2d normalize with global-batch statistics (in place; same state_dict keys).

    CUDA: ``torch.nn.SyncBatchNorm``; CPU/gloo: a differentiable all-reduce of the moments.
    A single process gets the module back unchanged.
    """
    if not ctx.enabled:
        return module
    if ctx.device.type == "cuda":
        return torch.nn.SyncBatchNorm.convert_sync_batchnorm(module)
    for name, child in module.named_children():
        if type(child) is torch.nn.BatchNorm2d:
            new = GlooSyncBatchNorm(child.num_features, child.eps, child.momentum, child.affine,
                                     child.track_running_stats)
            new.load_state_dict(child.state_dict())
            new.to(next(child.buffers(), torch.empty(0)).device)
            setattr(module, name, new)
        else:
            sync_batchnorm(child, ctx)
    return module


def all_sum(values: list[float], ctx: DistContext) -> list[float]:
    """Element-wise sum of a few numbers over ranks (epoch metrics)."""
    if not ctx.enabled:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=ctx.device)
    dist.all_reduce(t)
    return t.tolist()


def any_rank(flag: bool, ctx: DistContext) -> bool:
    """True on every rank when ``flag`` is true on any rank (stop at the same step everywhere)."""
    if not ctx.enabled:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=ctx.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def gather_rng(ctx: DistContext) -> list[torch.Tensor]:
    """Every rank's CPU torch RNG state (rank order); a one-element list outside a distributed job."""
    state = torch.get_rng_state()
    if not ctx.enabled:
        return [state]
    t = state.to(ctx.device)
    out = [torch.empty_like(t) for _ in range(ctx.world_size)]
    dist.all_gather(out, t)
    return [o.cpu() for o in out]


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()


# ----------------------------------------------------------------- signals


class Interrupted(KeyboardInterrupt):
    """A run stopped by SIGINT/SIGTERM after saving a checkpoint; ``str`` says how to resume."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum


class StopFlag:
    """Set by the signal handler; polled by the loops at step boundaries."""

    def __init__(self):
        self.signum: int | None = None

    @property
    def requested(self) -> bool:
        return self.signum is not None


@contextlib.contextmanager
def stop_on_signals(signals=(signal.SIGINT, signal.SIGTERM)) -> Iterator[StopFlag]:
    """Within the block SIGINT/SIGTERM only set the yielded flag; the old handlers come back after.

    A second signal while the flag is set raises KeyboardInterrupt at once (the impatient
    user's escape). Outside the main thread signals cannot be caught: the flag stays unset.
    """
    flag = StopFlag()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum, frame):
        if flag.requested:
            raise KeyboardInterrupt
        flag.signum = signum

    old = {s: signal.signal(s, handler) for s in signals}
    try:
        yield flag
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def interruptible(fn):
    """Give ``fn`` a ``stop`` flag set by SIGINT/SIGTERM while it runs (unless the caller passes one)."""

    @functools.wraps(fn)
    def wrapper(*args, stop: StopFlag | None = None, **kwargs):
        if stop is not None:
            return fn(*args, stop=stop, **kwargs)
        with stop_on_signals() as flag:
            return fn(*args, stop=flag, **kwargs)

    return wrapper


def interrupted(stop: StopFlag, where: str, checkpoint) -> Interrupted:
    """The exception a loop raises after saving its mid-epoch checkpoint."""
    name = signal.Signals(stop.signum).name
    return Interrupted(f"stopped by {name} at {where}; checkpoint saved to {checkpoint} — "
                       "re-run the same command with --resume to continue", stop.signum)
