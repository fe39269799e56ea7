"""DARTS search: bi-level optimization of weights and alphas (Liu et al., 2019, Alg. 1).

Files (DESIGN.md): ``search/genotype.json``, ``alphas.jsonl``, ``metrics.jsonl``
and ``supernet.pt`` (weights, alphas, both optimizers, scheduler, RNG states,
epoch, config) written at the end of every epoch, so ``resume=True``
continues exactly where the last finished epoch left off; SIGINT/SIGTERM add a
mid-epoch checkpoint (data-order generators at the epoch start + step index).
Under torchrun see docs/distributed.md.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..artifacts import RunDir, append_jsonl, ensure_dir, read_jsonl, save_checkpoint, write_jsonl
from ..checkpoint import resume_checkpoint
from ..config import SearchConfig, TrainConfig
from ..data import Dataset, batches, num_batches
from ..distributed import (
    StopFlag,
    all_sum,
    any_rank,
    average_buffers,
    average_gradients,
    broadcast_module,
    init_from_env,
    interrupted,
    interruptible,
    sync_batchnorm,
)
from ..errors import ConfigError
from ..space.cell import limit_skips
from ..space.genotype import Genotype
from ..space.primitives import PARAMETER_FREE
from ..space.search_network import SearchNetwork
from .architect import Architect

# Settings that may change on resume: they change neither the weights nor the alphas.
RESUMABLE = ("epochs", "threads", "device", "kernel", "conv_path", "max_seconds", "candidates", "collapse_threshold",
             "skip_limit")


@dataclass
class SearchResult:
    genotype: Genotype
    metrics: list[dict]
    val_acc: float
    seconds: float
    out: Path


def split_for_search(data: Dataset, train_portion: float, seed: int):
    """The training split cut into a weight half and an architecture half (DARTS: 50/50)."""
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(data.y_train), generator=g)
    k = int(round(train_portion * len(perm)))
    k = min(max(k, 1), len(perm) - 1)
    w_idx, a_idx = perm[:k], perm[k:]
    return (data.x_train[w_idx], data.y_train[w_idx]), (data.x_train[a_idx], data.y_train[a_idx])


@torch.no_grad()
def evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 256) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) in eval mode."""
    was_training = model.training
    model.eval()
    loss_sum, correct = 0.0, 0
    for xb, yb in batches(x, y, batch_size):
        logits = model(xb)
        loss_sum += F.cross_entropy(logits, yb, reduction="sum").item()
        correct += (logits.argmax(1) == yb).sum().item()
    model.train(was_training)
    return loss_sum / len(y), correct / len(y)


def parameter_free_share(genotype: Genotype) -> float:
    """Share of parameter-free ops in the normal cell (the skip-collapse symptom)."""
    return sum(op in PARAMETER_FREE for op, _ in genotype.normal) / len(genotype.normal)


class CollapseWarning(UserWarning):
    """The derived normal cell drifted toward parameter-free ops (the DARTS skip collapse)."""


def derive(model: SearchNetwork, cfg: SearchConfig) -> Genotype:
    """The genotype of the current alphas, with the P-DARTS skip limit when ``cfg.skip_limit`` is set."""
    if cfg.skip_limit is None:
        return model.genotype()
    return limit_skips(model.alphas_normal, model.alphas_reduce, model.primitives, model.steps, model.multiplier,
                       cfg.skip_limit, *model.betas())


def build_supernet(cfg: SearchConfig, data: Dataset) -> SearchNetwork:
    c, _, _ = data.spec.input_shape
    return SearchNetwork(
        cfg.C, data.spec.num_classes, cfg.layers, in_channels=c, steps=cfg.steps, multiplier=cfg.multiplier,
        stem_multiplier=cfg.stem_multiplier, primitives=cfg.primitives, kernel=cfg.kernel,
        conv_path=cfg.conv_path, partial_channels=cfg.partial_channels,
    )


@interruptible
def search(
    cfg: SearchConfig,
    data: Dataset,
    out: str | Path,
    progress: bool = True,
    resume: bool = False,
    penalty: Callable[[SearchNetwork], torch.Tensor] | None = None,
    log: Callable[[dict], None] | None = None,
    deploy: TrainConfig | None = None,
    stop: StopFlag | None = None,
) -> SearchResult:
    """Run DARTS on ``data`` and write the search artifacts under ``out/search``.

    Args:
        cfg: search settings (paper defaults, see SearchConfig).
        data: a loaded Dataset; the training split is cut into weight/arch halves.
        out: the run directory.
        progress: show a progress bar on stderr.
        resume: continue from ``search/supernet.pt`` if it exists.
        penalty: extra architecture loss (alpha only), e.g. the latency term.
        log: called with each epoch's metrics record.
        deploy: the served network's TrainConfig (C, layers, stem), for ``cfg.latency_target``;
            None: the run's ``config.toml`` ``[train]``. With a target and no ``penalty``
            (``latency.budget``): a budget outside the measured range is refused, the table is
            loaded (or timed), the penalty is ``latency.model.search_penalty`` on the deployed
            derivation, each epoch logs ``predicted_latency_ms``, and the final network is
            measured, repaired while over the budget, and recorded in ``search/latency_budget.json``.
        stop: polled before every step; set by SIGINT/SIGTERM while ``search`` runs. When set, a
            mid-epoch checkpoint (data-order generators at the epoch start + the step index) is
            saved and ``distributed.Interrupted`` raised; ``resume=True`` continues bit-exactly.

    Under ``torchrun`` (docs/distributed.md) ``cfg.batch_size`` is the global batch: each rank
    takes its shard, gradients of weights and alphas are averaged, rank 0 alone writes.

    Example:
        >>> res = search(SearchConfig(epochs=1, C=4, layers=3), load_dataset("digits"), "runs/demo")
        >>> res.genotype.save("genotype.json")
    """
    from tqdm.auto import tqdm

    ctx = init_from_env(device=cfg.device)  # under torchrun: this process's rank; else a single process
    if cfg.batch_size % ctx.world_size:
        raise ConfigError(f"batch_size = {cfg.batch_size} (the global batch) does not split among "
                          f"{ctx.world_size} processes", f"use a multiple of {ctx.world_size}")
    local_bs = cfg.batch_size // ctx.world_size
    progress = progress and ctx.is_main
    run = RunDir(out)
    if ctx.is_main:
        ensure_dir(run.search)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    device = ctx.device

    (xw, yw), (xa, ya) = split_for_search(data, cfg.train_portion, cfg.seed)
    model = build_supernet(cfg, data).to(device)
    broadcast_module(model, ctx)  # the seed already makes ranks agree; this makes it a guarantee
    sync_batchnorm(model, ctx)  # several ranks: BatchNorm statistics of the global batch
    w_opt = torch.optim.SGD(model.weight_parameters(), lr=cfg.w_lr, momentum=cfg.w_momentum,
                            weight_decay=cfg.w_weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(w_opt, cfg.epochs, eta_min=cfg.w_lr_min)
    latency_costs = budget = None
    if penalty is None and cfg.latency_target is not None:
        from ..latency.budget import prepare
        from ..latency.model import search_penalty

        # Measured probes first: an impossible budget is refused in seconds, before any table is built.
        budget = prepare(cfg, deploy if deploy is not None else _run_train_config(run), data.spec.input_shape,
                         data.spec.num_classes, progress, opset=_run_opset(run))
        latency_costs = budget.costs
        # The penalty prices the genotype that will be deployed: derive() applies the skip limit.
        penalty = search_penalty(latency_costs, cfg.latency_target, cfg.latency_weight, derive=lambda m: derive(m, cfg),
                                 under=cfg.latency_under_weight, aim=1 - cfg.latency_margin, check=False)
    architect = Architect(model, cfg.a_lr, (cfg.a_beta1, cfg.a_beta2), cfg.a_weight_decay, cfg.order, penalty)
    g_w = torch.Generator().manual_seed(cfg.seed + 1)
    g_a = torch.Generator().manual_seed(cfg.seed + 2)
    if ctx.enabled:  # alpha grads are averaged (weighted by this rank's arch batch) before every Adam step
        n_val = [0]
        architect.optimizer.register_step_pre_hook(
            lambda opt, args, kwargs: average_gradients(model.arch_parameters(), ctx, weight=n_val[0]))

    def state(last_epoch: int) -> dict:
        return {
            "epoch": last_epoch,
            "config": _cfg_dict(cfg, ignore=RESUMABLE),
            "network": model.config(),
            "data": data.spec.to_dict(),
            "state_dict": {k: v.cpu() for k, v in model.state_dict().items()},
            "w_optimizer": w_opt.state_dict(),
            "a_optimizer": architect.optimizer.state_dict(),
            "scheduler": sched.state_dict(),
            "rng": {"torch": torch.get_rng_state(), "weights": g_w.get_state(), "arch": g_a.get_state()},
        }

    start_epoch, skip, sums = 0, 0, [0.0, 0, 0, 0.0]
    ck = resume_checkpoint(run.supernet, "supernet", resume, lambda ck: supernet_mismatch(ck, cfg), "DARTS search")
    if ck is not None:
        model.load_state_dict(ck["state_dict"])
        w_opt.load_state_dict(ck["w_optimizer"])
        architect.optimizer.load_state_dict(ck["a_optimizer"])
        sched.load_state_dict(ck["scheduler"])
        sched.T_max = cfg.epochs  # a resume may extend the run: anneal over the new total
        torch.set_rng_state(ck["rng"]["torch"])
        g_w.set_state(ck["rng"]["weights"])
        g_a.set_state(ck["rng"]["arch"])
        start_epoch = int(ck["epoch"]) + 1
        partial = ck.get("partial")
        if partial is not None:  # stopped by a signal mid-epoch: replay that epoch's data order up to its step
            start_epoch, skip = int(partial["epoch"]), int(partial["step"])
            g_w.set_state(partial["rng_start"]["weights"])
            g_a.set_state(partial["rng_start"]["arch"])
            sums = list(partial["sums"]) if ctx.is_main else sums  # global sums: counted once, on rank 0
        # drop records of an epoch that finished writing metrics but not its checkpoint
        for path in (run.search_metrics, run.alphas):
            if ctx.is_main:
                write_jsonl(path, [r for r in read_jsonl(path) if r["epoch"] < start_epoch])
    else:
        for path in (run.search_metrics, run.alphas):
            if path.exists() and ctx.is_main:
                path.unlink()

    # Several ranks: a last global batch too small to give every rank a sample is dropped.
    drop_w = ctx.enabled and 0 < len(yw) % cfg.batch_size < ctx.world_size
    drop_a = ctx.enabled and 0 < len(ya) % cfg.batch_size < ctx.world_size
    steps = num_batches(len(yw), cfg.batch_size, drop_w)
    metrics = read_jsonl(run.search_metrics)
    t_start = time.perf_counter()
    bar = tqdm(total=(cfg.epochs - start_epoch) * steps, disable=not progress, desc="search", unit="step",
               dynamic_ncols=True, leave=False)
    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.perf_counter()
        lr = sched.get_last_lr()[0]
        model.train()
        (loss_sum, correct, seen, arch_loss), pen, sums = sums, None, [0.0, 0, 0, 0.0]
        rng_start = {"weights": g_w.get_state(), "arch": g_a.get_state()}  # this epoch's data order
        arch_iter = _cycle(xa, ya, local_bs, g_a, ctx.rank, ctx.world_size, drop_a)
        shards = batches(xw, yw, local_bs, generator=g_w, drop_last=drop_w, rank=ctx.rank, world_size=ctx.world_size)
        for step, (xb, yb) in enumerate(shards):
            xv, yv = (t.to(device) for t in next(arch_iter))
            if step < skip:
                continue  # resumed mid-epoch: the checkpoint's weights already include this step
            if any_rank(stop is not None and stop.requested, ctx):  # every rank stops at this same step
                average_buffers(model, ctx)  # EMA updates are linear: averaging now or at the epoch end agree
                acc = all_sum([loss_sum, correct, seen, arch_loss], ctx)
                if ctx.is_main:
                    save_checkpoint(run.supernet, {**state(epoch - 1), "partial": {
                        "epoch": epoch, "step": step, "rng_start": rng_start, "sums": acc}}, "supernet")
                bar.close()
                raise interrupted(stop, f"epoch {epoch + 1} step {step}/{steps}", run.supernet)
            xb, yb = xb.to(device), yb.to(device)
            if ctx.enabled:
                n_val[0] = len(yv)
            if epoch >= cfg.warmup_epochs:  # warm-up: weights only, alpha frozen (the arch batch is still drawn)
                arch = architect.step(xb, yb, xv, yv, lr, w_opt)
                arch_loss += arch["arch_loss"]
                pen = arch["penalty"]
            w_opt.zero_grad(set_to_none=True)
            logits = model(xb)
            loss = F.cross_entropy(logits, yb)
            loss.backward()
            average_gradients(model.weight_parameters(), ctx, weight=len(yb))  # = the global batch's gradient
            torch.nn.utils.clip_grad_norm_(model.weight_parameters(), cfg.grad_clip)
            w_opt.step()
            loss_sum += loss.item() * len(yb)
            correct += (logits.argmax(1) == yb).sum().item()
            seen += len(yb)
            bar.update(1)
            bar.set_postfix(epoch=f"{epoch + 1}/{cfg.epochs}", loss=f"{loss.item():.3f}")
        skip = 0
        sched.step()
        loss_sum, correct, seen, arch_loss = all_sum([loss_sum, correct, seen, arch_loss], ctx)
        arch_loss /= ctx.world_size  # the mean over ranks of their per-step means
        average_buffers(model, ctx)  # BatchNorm running statistics: one model on every rank
        val_loss, val_acc = evaluate(model, data.x_val.to(device), data.y_val.to(device))
        genotype = derive(model, cfg)
        record = {
            "epoch": epoch,
            "train_loss": loss_sum / seen,
            "train_acc": correct / seen,
            "arch_loss": arch_loss / steps,
            "val_loss": val_loss,
            "val_acc": val_acc,
            "lr": lr,
            "param_free_share": parameter_free_share(model.genotype()),  # the symptom, before any remedy
            "seconds": time.perf_counter() - t0,
        }
        if pen is not None:
            record["penalty"] = pen
        if latency_costs is not None:
            from ..latency.model import genotype_latency

            record["predicted_latency_ms"] = genotype_latency(genotype, latency_costs)
        if log is not None:
            log(record)
        if ctx.is_main:
            append_jsonl(run.search_metrics, record)
            append_jsonl(run.alphas, {
                "epoch": epoch,
                "alphas_normal": model.alphas_normal.detach().cpu(),
                "alphas_reduce": model.alphas_reduce.detach().cpu(),
                "genotype": genotype.to_dict(),
            })
        metrics.append(record)
        if ctx.is_main and record["param_free_share"] >= cfg.collapse_threshold and not any(
                m["param_free_share"] >= cfg.collapse_threshold for m in metrics[:-1]):  # once per run
            warnings.warn(f"epoch {epoch + 1}: {record['param_free_share']:.0%} of the normal cell's edges are "
                          f"parameter-free (>= collapse_threshold {cfg.collapse_threshold}); DARTS may be "
                          "collapsing toward skip connections — consider skip_limit = 2 (P-DARTS) or fewer epochs",
                          CollapseWarning, stacklevel=3)  # 3: past the @interruptible wrapper
        if ctx.is_main:
            save_checkpoint(run.supernet, {**state(epoch), "genotype": genotype.to_dict()}, "supernet")
        if progress:
            bar.write(f"epoch {epoch + 1}/{cfg.epochs}  train_acc {record['train_acc']:.3f}  "
                      f"val_acc {val_acc:.3f}  param-free {record['param_free_share']:.2f}  "
                      f"{record['seconds']:.1f}s")
        if cfg.max_seconds is not None and any_rank(time.perf_counter() - t_start >= cfg.max_seconds, ctx):
            break  # the wall-time budget ends the search at an epoch boundary, on every rank alike
    bar.close()
    genotype = derive(model, cfg)
    if budget is not None and ctx.is_main:  # measured against the budget, repaired while over it
        from ..space.cell import derivation_weights

        genotype, _ = budget.verify(genotype, (derivation_weights(model.alphas_normal),
                                               derivation_weights(model.alphas_reduce)), cfg.skip_limit)
        budget.save(run.search / "latency_budget.json")
    if ctx.is_main:
        genotype.save(run.genotype)
    return SearchResult(genotype, metrics, metrics[-1]["val_acc"] if metrics else float("nan"),
                        time.perf_counter() - t_start, run.root)


def _run_train_config(run: RunDir) -> TrainConfig:
    """The served network of a budgeted search called without ``deploy``: the run's ``[train]``."""
    from ..config import load_config_file

    if not run.config.is_file():
        raise ConfigError(f"a latency target needs the deployed network's C/layers, and {run.config} does not exist",
                          "pass deploy=TrainConfig(C=..., layers=...) or use nasdeploy.search (the run's [train])")
    return load_config_file(run.config).train


def _run_opset(run: RunDir) -> int:
    """The ONNX opset the run exports with (``[export] opset``), which the latency pieces are exported at too."""
    from ..config import ExportConfig, load_config_file

    return (load_config_file(run.config).export if run.config.is_file() else ExportConfig()).opset


def supernet_mismatch(ck: dict, cfg: SearchConfig) -> str | None:
    """Why ``supernet.pt`` cannot continue the search ``cfg`` describes (None: it can)."""
    if ck.get("strategy", "darts") != cfg.strategy:
        return f"it was written by strategy {ck.get('strategy', 'darts')!r}, not {cfg.strategy!r}"
    saved, now = ck["config"], _cfg_dict(cfg, ignore=RESUMABLE)
    changed = [k for k in now if saved.get(k) != now[k]]
    if changed:
        return (f"it was written with a different search configuration "
                f"(search.{changed[0]} = {saved.get(changed[0])!r} there, {now[changed[0]]!r} now)")
    return None


def _cycle(x, y, batch_size, generator, rank=0, world_size=1, drop_last=False):
    """Endless shuffled batches of the architecture half (this rank's shards)."""
    while True:
        yield from batches(x, y, batch_size, generator=generator, drop_last=drop_last, rank=rank,
                           world_size=world_size)


def _cfg_dict(cfg: SearchConfig, ignore=()) -> dict:
    d = dataclasses.asdict(cfg)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items() if k not in ignore}
