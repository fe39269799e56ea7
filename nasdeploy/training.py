"""Retrain a genotype from scratch: the DARTS evaluation recipe (Liu et al., 2019, sec. 3.2).

SGD with momentum and weight decay, cosine learning rate per epoch down to
``lr_min``, cutout, drop-path raised linearly from 0 to ``drop_path_prob``,
the auxiliary head's loss weighted by ``auxiliary_weight``, gradient-norm
clipping. Files (DESIGN.md, ``train/``):

- ``metrics.jsonl``: one record per epoch (train/val loss and accuracy, lr,
  drop-path, seconds);
- ``last.pt`` (kind ``train_state``): everything ``resume=True`` needs to
  continue exactly — weights, optimizer, scheduler, epoch, RNG states, best;
- ``best.pt`` (kind ``model``): the weights with the best validation accuracy;
- ``model.pt`` (kind ``model``): those best weights with the final test
  accuracy on the held-out split; what ``export`` reads.

BatchNorm keeps running statistics, and evaluation runs in eval mode, so a
sample's prediction never depends on the rest of its batch.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from . import distributed as dist
from .artifacts import RunDir, append_jsonl, ensure_dir, load_checkpoint, read_jsonl, save_checkpoint, write_jsonl
from .checkpoint import load_network, model_payload, resume_checkpoint  # noqa: F401  (load_network: re-exported)
from .config import TrainConfig
from .data import Dataset, DataSpec, batches, shard
from .errors import ConfigError, DataError
from .space.genotype import Genotype
from .space.network import Network, count_weights

# Run settings that may change between a run and its resumption without changing the result.
_RESUMABLE_CHANGES = ("device", "threads")


@dataclass(frozen=True)
class TrainResult:
    """What ``train`` produced: file paths and headline figures."""

    checkpoint: Path  # train/model.pt
    best: Path  # train/best.pt
    test_acc: float
    best_val_acc: float
    epochs: int
    seconds: float  # wall time of this call (a resumed run counts only its own epochs)
    n_params: int  # served weights (auxiliary head excluded)


def stem_for(input_shape: tuple[int, ...], stem: str) -> str:
    """Resolve ``"auto"``: the ImageNet stem (three stride-2 convs) for inputs of 128 px or more."""
    if stem != "auto":
        return stem
    return "imagenet" if input_shape[1] >= 128 else "cifar"


def random_shift(x: torch.Tensor, pad: int, generator: torch.Generator) -> torch.Tensor:
    """Translate each image by up to ``pad`` pixels in each direction, edges replicated.

    The "random crop with padding" of the DARTS CIFAR recipe (pad 4 at 32x32), with the border
    pixels repeated instead of zeros so that the background stays the background after normalization.
    """
    if pad <= 0:
        return x
    n, c, h, w = x.shape
    xp = F.pad(x, (pad, pad, pad, pad), mode="replicate")
    dy = torch.randint(2 * pad + 1, (n, 1), generator=generator).to(x.device)
    dx = torch.randint(2 * pad + 1, (n, 1), generator=generator).to(x.device)
    rows = dy + torch.arange(h, device=x.device)[None]  # n x h
    cols = dx + torch.arange(w, device=x.device)[None]  # n x w
    idx_n = torch.arange(n, device=x.device)[:, None, None, None]
    idx_c = torch.arange(c, device=x.device)[None, :, None, None]
    return xp[idx_n, idx_c, rows[:, None, :, None], cols[:, None, None, :]]


def cutout(x: torch.Tensor, length: int, generator: torch.Generator) -> torch.Tensor:
    """Zero one ``length`` x ``length`` square per image, centred anywhere and clipped (DeVries & Taylor 2017).

    Applied after normalization as in the DARTS reference, so the hole is the mean pixel.
    """
    n, _, h, w = x.shape
    cy = torch.randint(h, (n, 1), generator=generator)
    cx = torch.randint(w, (n, 1), generator=generator)
    rows, cols = torch.arange(h)[None], torch.arange(w)[None]
    in_y = (rows >= (cy - length // 2).clamp(0, h)) & (rows < (cy + length // 2).clamp(0, h))
    in_x = (cols >= (cx - length // 2).clamp(0, w)) & (cols < (cx + length // 2).clamp(0, w))
    keep = ~(in_y[:, :, None] & in_x[:, None, :])  # n x h x w
    return x * keep[:, None].to(device=x.device, dtype=x.dtype)


@torch.no_grad()
def is_better_epoch(val_acc: float, val_loss: float, best_acc: float, best_loss: float) -> bool:
    """Whether an epoch beats the best so far: higher validation accuracy, or the same with lower loss."""
    return val_acc > best_acc or (val_acc == best_acc and val_loss < best_loss)


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 256) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` in eval mode (its mode is restored after)."""
    if len(y) == 0:
        raise DataError("cannot evaluate on an empty split", "use a dataset with validation and test samples")
    if batch_size < 1:
        raise ConfigError(f"batch_size = {batch_size!r}: must be positive", "give batch_size >= 1")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    loss_sum, correct = 0.0, 0
    try:
        for xb, yb in batches(x, y, batch_size):
            xb, yb = xb.to(device), yb.to(device)
            logits = model(xb)
            loss_sum += F.cross_entropy(logits, yb, reduction="sum").item()
            correct += (logits.argmax(1) == yb).sum().item()
    finally:
        model.train(was_training)
    return loss_sum / len(y), correct / len(y)


def _device(name: str) -> torch.device:
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"train.device = {name!r}: not a torch device", "use cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device = {name!r}: CUDA is not available here", "use --device cpu")
    return dev


def _cpu_state(model: nn.Module) -> dict:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


@dist.interruptible
def train(
    genotype: Genotype,
    cfg: TrainConfig,
    data: Dataset,
    out: str | Path,
    progress: bool = True,
    resume: bool = False,
    stop: dist.StopFlag | None = None,
) -> TrainResult:
    """Train the final network of ``genotype`` on ``data`` and write ``<out>/train/``.

    Args:
        genotype: the architecture (e.g. ``Genotype.load("DARTS_V2")``).
        cfg: the recipe; defaults are the DARTS CIFAR-10 evaluation settings.
        data: normalized splits; the validation split picks the best epoch,
            the test split is scored once at the end.
        out: the run directory (``train/`` is created inside it).
        progress: show a tqdm bar over epochs on stderr.
        resume: continue from ``train/last.pt`` exactly where it stopped
            (same weights as an uninterrupted run); the recipe must match.
        stop: polled before every step; set by SIGINT/SIGTERM while ``train`` runs. When set,
            ``last.pt`` gets a mid-epoch checkpoint and ``distributed.Interrupted`` is raised.

    Under ``torchrun`` (docs/distributed.md) ``cfg.batch_size`` is the global batch: every rank
    draws the same shuffled batch and cutout, keeps its shard, gradients are averaged, and
    rank 0 alone writes files; other ranks return NaN accuracies.

    Returns:
        TrainResult with the paths of ``model.pt``/``best.pt`` and the accuracies.

    Raises:
        ConfigError: bad device. DataError: data whose shape does not fit.
        CheckpointError: ``resume`` without a usable ``last.pt``, or one from another run.

    Example:
        >>> data = load_dataset("digits")  # doctest: +SKIP
        >>> train(GENOTYPES["DARTS_V2"], TrainConfig(epochs=2, C=4, layers=3), data, "runs/x")  # doctest: +SKIP
    """
    from tqdm.auto import tqdm

    t_start = time.perf_counter()
    run = RunDir(out)
    ctx = dist.init_from_env(device=_device(cfg.device))  # under torchrun: this process's rank; else a single process
    device = ctx.device
    if cfg.batch_size % ctx.world_size:
        raise ConfigError(f"train.batch_size = {cfg.batch_size} (the global batch) does not split among "
                          f"{ctx.world_size} processes", f"use a multiple of {ctx.world_size}")
    progress = progress and ctx.is_main
    if ctx.is_main:
        ensure_dir(run.train)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    spec = data.spec
    c_in, h, w = spec.input_shape
    if tuple(data.x_train.shape[1:]) != tuple(spec.input_shape):
        raise DataError(
            f"training images are {tuple(data.x_train.shape[1:])}, spec says {spec.input_shape}",
            "load the data with nasdeploy.data.load_dataset",
        )
    stem = stem_for(spec.input_shape, cfg.stem)
    if stem == "imagenet" and min(h, w) < 16:
        raise ConfigError(
            f"train.stem = {cfg.stem!r}: the ImageNet stem needs inputs of 16 px or more, got {h}x{w}",
            "use stem = cifar for small images",
        )
    cut_len = cfg.cutout_length or max(1, min(h, w) // 2)
    if cfg.shift >= min(h, w):
        raise ConfigError(f"train.shift = {cfg.shift}: a shift must be smaller than the {h}x{w} images",
                          f"use shift < {min(h, w)} (about an eighth of the side: 1 at 8x8, 4 at 32x32)")

    # The only process-wide effect: seed the global RNG (weight init, drop-path masks).
    torch.manual_seed(cfg.seed)
    shuffle_gen = torch.Generator().manual_seed(cfg.seed)
    cutout_gen = torch.Generator().manual_seed(cfg.seed + 1)
    shift_gen = torch.Generator().manual_seed(cfg.seed + 2)

    model = Network(
        genotype, cfg.C, spec.num_classes, cfg.layers, auxiliary=cfg.auxiliary, in_channels=c_in, stem=stem
    ).to(device)
    dist.broadcast_module(model, ctx)
    dist.sync_batchnorm(model, ctx)  # several ranks: BatchNorm statistics of the global batch
    if ctx.enabled:  # drop-path masks: an independent stream per rank (weights are already initialized)
        torch.manual_seed(cfg.seed + 7919 * (ctx.rank + 1))
    n_params = count_weights(model, exclude_prefix="auxiliary_head")
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs, eta_min=cfg.lr_min)

    start_epoch, best_val_acc, best_epoch, skip, sums = 0, -1.0, -1, 0, [0.0, 0, 0]
    best_val_loss = math.inf
    if resume:
        state = _load_train_state(run.train_state, model, genotype, cfg, spec)
        model.load_state_dict(state["state_dict"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        ranks = state["rng"].get("torch_ranks", [])
        torch.set_rng_state(ranks[ctx.rank] if len(ranks) == ctx.world_size else state["rng"]["torch"])
        shuffle_gen.set_state(state["rng"]["shuffle"])
        cutout_gen.set_state(state["rng"]["cutout"])
        if "shift" in state["rng"]:
            shift_gen.set_state(state["rng"]["shift"])
        start_epoch, best_val_acc, best_epoch = state["epoch"], state["best_val_acc"], state["best_epoch"]
        best_val_loss = state.get("best_val_loss", math.inf)  # states written before the tie-break
        partial = state.get("partial")
        if partial is not None:  # stopped by a signal mid-epoch: replay that epoch's order up to its step
            skip = int(partial["step"])
            shuffle_gen.set_state(partial["rng_start"]["shuffle"])
            sums = list(partial["sums"]) if ctx.is_main else sums  # global sums: counted once, on rank 0
        # A kill between the metrics append and last.pt leaves a record too many.
        if ctx.is_main:
            write_jsonl(run.train_metrics,
                        [r for r in read_jsonl(run.train_metrics) if r.get("epoch", 0) <= start_epoch])
    elif ctx.is_main:
        write_jsonl(run.train_metrics, [])

    def state_payload(epochs_done: int) -> dict:
        return {
            "genotype": genotype.to_dict(),
            "network": model.config(),
            "data": spec.to_dict(),
            "train_config": dataclasses.asdict(cfg),
            "state_dict": _cpu_state(model),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "epoch": epochs_done,
            "best_val_acc": best_val_acc,
            "best_val_loss": best_val_loss,
            "best_epoch": best_epoch,
            "rng": {
                "torch": torch.get_rng_state(),
                "torch_ranks": dist.gather_rng(ctx),  # per-rank drop-path streams under torchrun
                "shuffle": shuffle_gen.get_state(),
                "cutout": cutout_gen.get_state(),
                "shift": shift_gen.get_state(),
            },
        }

    # BatchNorm cannot train on a last batch of one sample per rank (1x1 maps in the auxiliary head).
    drop_last = 0 < len(data.y_train) % cfg.batch_size < 2 * ctx.world_size
    bar = tqdm(
        range(start_epoch, cfg.epochs),
        desc="train",
        unit="epoch",
        file=sys.stderr,
        disable=not progress,
        initial=start_epoch,
        total=cfg.epochs,
        dynamic_ncols=True,
    )
    for epoch in bar:
        t0 = time.perf_counter()
        lr = optimizer.param_groups[0]["lr"]
        # Drop-path probability grows linearly over the epochs (DARTS train.py).
        model.drop_path_prob = cfg.drop_path_prob * epoch / cfg.epochs
        model.train()
        loss_sum = torch.full((), float(sums[0]), device=device)
        correct = torch.full((), int(sums[1]), device=device, dtype=torch.long)
        seen, sums = int(sums[2]), [0.0, 0, 0]
        rng_start = {"shuffle": shuffle_gen.get_state()}  # this epoch's data order
        for step, (xb, yb) in enumerate(
                batches(data.x_train, data.y_train, cfg.batch_size, generator=shuffle_gen, drop_last=drop_last)):
            if step < skip:
                continue  # resumed mid-epoch: the checkpoint's weights already include this step
            if dist.any_rank(stop is not None and stop.requested, ctx):  # every rank stops at this same step
                dist.average_buffers(model, ctx)  # EMA updates are linear: averaging now or at the epoch end agree
                acc = dist.all_sum([loss_sum.item(), correct.item(), seen], ctx)
                payload = {**state_payload(epoch), "partial": {"step": step, "rng_start": rng_start, "sums": acc}}
                if ctx.is_main:
                    save_checkpoint(run.train_state, payload, "train_state")
                bar.close()
                raise dist.interrupted(stop, f"epoch {epoch + 1} step {step}", run.train_state)
            if cfg.shift:  # like cutout, drawn on the global batch
                xb = random_shift(xb, cfg.shift, shift_gen)
            if cfg.cutout:  # drawn on the global batch, so any number of ranks sees the same holes
                xb = cutout(xb, cut_len, cutout_gen)
            if ctx.enabled:
                part = shard(len(yb), ctx.rank, ctx.world_size)
                xb, yb = xb[part], yb[part]
            xb, yb = xb.to(device), yb.to(device)
            logits, aux = model.forward_train(xb)
            loss = F.cross_entropy(logits, yb)
            if aux is not None:
                loss = loss + cfg.auxiliary_weight * F.cross_entropy(aux, yb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            dist.average_gradients(model.parameters(), ctx, weight=len(yb))  # = the global batch's gradient
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            loss_sum += loss.detach() * len(yb)
            correct += (logits.detach().argmax(1) == yb).sum()
            seen += len(yb)
        skip = 0
        scheduler.step()
        if ctx.enabled:
            loss_total, correct_total, seen = dist.all_sum([loss_sum.item(), correct.item(), seen], ctx)
            loss_sum, correct = torch.tensor(loss_total), torch.tensor(correct_total)
        dist.average_buffers(model, ctx)  # BatchNorm running statistics: one model on every rank

        val_loss, val_acc = evaluate(model, data.x_val, data.y_val, max(cfg.batch_size, 256))
        record = {
            "epoch": epoch + 1,
            "train_loss": loss_sum.item() / max(seen, 1),
            "train_acc": correct.item() / max(seen, 1),
            "val_loss": val_loss,
            "val_acc": val_acc,
            "lr": lr,
            "drop_path": model.drop_path_prob,
            "seconds": time.perf_counter() - t0,
        }
        # Best by validation accuracy; a tie (common on a small split: 180 digits, one image = 0.56 pt)
        # goes to the lower validation loss, which under the cosine schedule is usually the later,
        # better-converged epoch, not the first one that reached that count.
        if is_better_epoch(val_acc, val_loss, best_val_acc, best_val_loss):
            best_val_acc, best_val_loss, best_epoch = val_acc, val_loss, epoch + 1
            best_metrics = {"val_acc": val_acc, "val_loss": val_loss, "epoch": epoch + 1, "epochs": cfg.epochs,
                            "n_params": n_params}
            if ctx.is_main:
                save_checkpoint(run.best, model_payload(model, _cpu_state(model), spec, cfg, best_metrics), "model")
        payload = state_payload(epoch + 1)  # collective (per-rank RNG states): every rank builds it
        if ctx.is_main:
            append_jsonl(run.train_metrics, record)
            save_checkpoint(run.train_state, payload, "train_state")
        bar.set_postfix(
            loss=f"{record['train_loss']:.3f}", acc=f"{record['train_acc']:.3f}", val=f"{val_acc:.3f}", refresh=False
        )
    bar.close()
    if not ctx.is_main:  # rank 0 alone reads best.pt back and scores the test split
        return TrainResult(run.model, run.best, float("nan"), best_val_acc, cfg.epochs,
                           time.perf_counter() - t_start, n_params)

    # model.pt = the best-by-validation weights, scored once on the held-out test split.
    best = load_checkpoint(run.best, "model")
    final = copy.deepcopy(model)
    final.load_state_dict(best["state_dict"])
    test_loss, test_acc = evaluate(final, data.x_test, data.y_test, max(cfg.batch_size, 256))
    metrics = {
        "test_acc": test_acc,
        "test_loss": test_loss,
        "val_acc": best_val_acc,
        "best_epoch": best_epoch,
        "epochs": cfg.epochs,
        "n_params": n_params,
        "n_params_with_aux": count_weights(model),
        "n_test": len(data.y_test),
    }
    save_checkpoint(run.model, model_payload(model, best["state_dict"], spec, cfg, metrics), "model")
    return TrainResult(run.model, run.best, test_acc, best_val_acc, cfg.epochs, time.perf_counter() - t_start, n_params)


def _load_train_state(path: Path, model: Network, genotype: Genotype, cfg: TrainConfig, spec: DataSpec) -> dict:
    """``last.pt``, checked to belong to this genotype, network, data and recipe."""
    want = {"genotype": genotype.to_dict(), "network": model.config(), "data": spec.to_dict()}
    now = dataclasses.asdict(cfg)

    def mismatch(state: dict) -> str | None:
        for key, value in want.items():
            if state.get(key) != value:
                return f"its {key} differs from this run's"
        saved = state.get("train_config", {})
        changed = [k for k in now if k not in _RESUMABLE_CHANGES and saved.get(k) != now[k]]
        if changed:
            k = changed[0]
            return f"train.{k} was {saved.get(k)!r}, now {now[k]!r}"
        return None

    return resume_checkpoint(path, "train_state", True, mismatch, "training", epochs_done=lambda ck: int(ck["epoch"]))
