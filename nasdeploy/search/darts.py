"""DARTS search: bi-level optimization of weights and alphas (Liu et al., 2019, Alg. 1).

Files (DESIGN.md): ``search/genotype.json``, ``alphas.jsonl``, ``metrics.jsonl``
and ``supernet.pt`` (weights, alphas, both optimizers, scheduler, RNG states,
epoch, config) written at the end of every epoch, so ``resume=True``
continues exactly where the last finished epoch left off.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..artifacts import RunDir, append_jsonl, ensure_dir, load_checkpoint, read_jsonl, save_checkpoint, write_jsonl
from ..config import SearchConfig
from ..data import Dataset, batches, num_batches
from ..errors import CheckpointError
from ..space.genotype import Genotype
from ..space.primitives import PARAMETER_FREE
from ..space.search_network import SearchNetwork
from .architect import Architect


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


def build_supernet(cfg: SearchConfig, data: Dataset) -> SearchNetwork:
    c, _, _ = data.spec.input_shape
    return SearchNetwork(
        cfg.C, data.spec.num_classes, cfg.layers, in_channels=c, steps=cfg.steps, multiplier=cfg.multiplier,
        stem_multiplier=cfg.stem_multiplier, primitives=cfg.primitives, kernel=cfg.kernel,
    )


def search(
    cfg: SearchConfig,
    data: Dataset,
    out: str | Path,
    progress: bool = True,
    resume: bool = False,
    penalty: Callable[[SearchNetwork], torch.Tensor] | None = None,
    log: Callable[[dict], None] | None = None,
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

    Example:
        >>> res = search(SearchConfig(epochs=1, C=4, layers=3), load_dataset("digits"), "runs/demo")
        >>> res.genotype.save("genotype.json")
    """
    from tqdm.auto import tqdm

    run = RunDir(out)
    ensure_dir(run.search)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    device = torch.device(cfg.device)

    (xw, yw), (xa, ya) = split_for_search(data, cfg.train_portion, cfg.seed)
    model = build_supernet(cfg, data).to(device)
    w_opt = torch.optim.SGD(model.weight_parameters(), lr=cfg.w_lr, momentum=cfg.w_momentum,
                            weight_decay=cfg.w_weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(w_opt, cfg.epochs, eta_min=cfg.w_lr_min)
    architect = Architect(model, cfg.a_lr, (cfg.a_beta1, cfg.a_beta2), cfg.a_weight_decay, cfg.order, penalty)
    g_w = torch.Generator().manual_seed(cfg.seed + 1)
    g_a = torch.Generator().manual_seed(cfg.seed + 2)

    start_epoch = 0
    if resume and run.supernet.exists():
        ck = load_checkpoint(run.supernet, "supernet")
        if ck["config"] != _cfg_dict(cfg, ignore=("epochs", "threads", "device", "kernel")):
            raise CheckpointError(
                f"{run.supernet} was written with a different search configuration",
                "resume with the same settings, or use a new --out directory",
            )
        model.load_state_dict(ck["state_dict"])
        w_opt.load_state_dict(ck["w_optimizer"])
        architect.optimizer.load_state_dict(ck["a_optimizer"])
        sched.load_state_dict(ck["scheduler"])
        sched.T_max = cfg.epochs  # a resume may extend the run: anneal over the new total
        torch.set_rng_state(ck["rng"]["torch"])
        g_w.set_state(ck["rng"]["weights"])
        g_a.set_state(ck["rng"]["arch"])
        start_epoch = int(ck["epoch"]) + 1
        # drop records of an epoch that finished writing metrics but not its checkpoint
        for path in (run.search_metrics, run.alphas):
            write_jsonl(path, [r for r in read_jsonl(path) if r["epoch"] < start_epoch])
    else:
        for path in (run.search_metrics, run.alphas):
            if path.exists():
                path.unlink()

    steps = num_batches(len(yw), cfg.batch_size)
    metrics = read_jsonl(run.search_metrics)
    t_start = time.perf_counter()
    bar = tqdm(total=(cfg.epochs - start_epoch) * steps, disable=not progress, desc="search", unit="step",
               dynamic_ncols=True, leave=False)
    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.perf_counter()
        lr = sched.get_last_lr()[0]
        model.train()
        loss_sum, correct, seen, arch_loss, pen = 0.0, 0, 0, 0.0, None
        arch_iter = _cycle(xa, ya, cfg.batch_size, g_a)
        for xb, yb in batches(xw, yw, cfg.batch_size, generator=g_w):
            xb, yb = xb.to(device), yb.to(device)
            xv, yv = (t.to(device) for t in next(arch_iter))
            arch = architect.step(xb, yb, xv, yv, lr, w_opt)
            arch_loss += arch["arch_loss"]
            pen = arch["penalty"]
            w_opt.zero_grad(set_to_none=True)
            logits = model(xb)
            loss = F.cross_entropy(logits, yb)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.weight_parameters(), cfg.grad_clip)
            w_opt.step()
            loss_sum += loss.item() * len(yb)
            correct += (logits.argmax(1) == yb).sum().item()
            seen += len(yb)
            bar.update(1)
            bar.set_postfix(epoch=f"{epoch + 1}/{cfg.epochs}", loss=f"{loss.item():.3f}")
        sched.step()
        val_loss, val_acc = evaluate(model, data.x_val.to(device), data.y_val.to(device))
        genotype = model.genotype()
        record = {
            "epoch": epoch,
            "train_loss": loss_sum / seen,
            "train_acc": correct / seen,
            "arch_loss": arch_loss / steps,
            "val_loss": val_loss,
            "val_acc": val_acc,
            "lr": lr,
            "param_free_share": parameter_free_share(genotype),
            "seconds": time.perf_counter() - t0,
        }
        if pen is not None:
            record["penalty"] = pen
        if log is not None:
            log(record)
        append_jsonl(run.search_metrics, record)
        append_jsonl(run.alphas, {
            "epoch": epoch,
            "alphas_normal": model.alphas_normal.detach().cpu(),
            "alphas_reduce": model.alphas_reduce.detach().cpu(),
            "genotype": genotype.to_dict(),
        })
        metrics.append(record)
        save_checkpoint(run.supernet, {
            "epoch": epoch,
            "config": _cfg_dict(cfg, ignore=("epochs", "threads", "device", "kernel")),
            "network": model.config(),
            "data": data.spec.to_dict(),
            "state_dict": {k: v.cpu() for k, v in model.state_dict().items()},
            "w_optimizer": w_opt.state_dict(),
            "a_optimizer": architect.optimizer.state_dict(),
            "scheduler": sched.state_dict(),
            "rng": {"torch": torch.get_rng_state(), "weights": g_w.get_state(), "arch": g_a.get_state()},
            "genotype": genotype.to_dict(),
        }, "supernet")
        if progress:
            bar.write(f"epoch {epoch + 1}/{cfg.epochs}  train_acc {record['train_acc']:.3f}  "
                      f"val_acc {val_acc:.3f}  param-free {record['param_free_share']:.2f}  "
                      f"{record['seconds']:.1f}s")
    bar.close()
    genotype = model.genotype()
    genotype.save(run.genotype)
    return SearchResult(genotype, metrics, metrics[-1]["val_acc"] if metrics else float("nan"),
                        time.perf_counter() - t_start, run.root)


def _cycle(x, y, batch_size, generator):
    """Endless shuffled batches of the architecture half."""
    while True:
        yield from batches(x, y, batch_size, generator=generator)


def _cfg_dict(cfg: SearchConfig, ignore=()) -> dict:
    d = dataclasses.asdict(cfg)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items() if k not in ignore}
