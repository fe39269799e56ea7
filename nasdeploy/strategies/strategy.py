"""One interface for every search strategy, and the shared-weight evaluator the black-box ones use.

``run_strategy(cfg, data, out)`` is what callers use: ``cfg.strategy`` picks
DARTS (``search/darts.py``) or a black-box strategy, and every strategy writes
the same files under ``search/``: ``genotype.json``, ``metrics.jsonl``,
``supernet.pt``, ``alphas.jsonl`` (alphas for DARTS, op probabilities or
frequencies otherwise), ``summary.json`` and the pictures of ``viz.py``; the
black-box ones add ``candidates.jsonl`` (one record per scored architecture).

A black-box strategy is two methods (the ask/tell protocol of NNI, Optuna, nevergrad)::

    g = strategy.ask()          # a Genotype to try
    strategy.tell(g, score)     # its score (higher is better), before the next ask

Scores come from ``SharedSupernet``: one DARTS supernet whose weights are
trained along single paths (a genotype selects one op per chosen edge; Guo
et al. 2020 "SPOS", Li & Talwalkar 2019 "random search with weight sharing",
Pham et al. 2018 "ENAS"), and a candidate's score is its accuracy on the
architecture half of the training split with the inherited weights. The
reported ``val_acc`` of the winner is measured on the validation split, which
no strategy ranks on.

Budget (the same options for all): ``epochs`` of weight training,
``candidates`` scored architectures, and ``max_seconds`` of wall time checked
at epoch and candidate boundaries. With a wall-time budget, random search and
evolution stop weight training at half of it so that candidates still get
scored; every strategy scores at least one candidate.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
import torch.nn.functional as F

from ..artifacts import RunDir, append_jsonl, ensure_dir, read_jsonl, save_checkpoint, write_json
from ..checkpoint import resume_checkpoint
from ..config import SearchConfig
from ..data import Dataset, batches
from ..errors import GenotypeError
from ..space.cell import candidate_ops, node_offset, op_frequencies, sample_genotype  # noqa: F401 (re-exported)
from ..space.genotype import Genotype
from ..space.search_network import SearchNetwork

STRATEGIES = ("darts", "random", "evolution", "rl")


class Strategy(Protocol):
    """A black-box search strategy: propose a genotype, learn from its score."""

    def ask(self) -> Genotype: ...

    def tell(self, genotype: Genotype, score: float) -> None: ...


# ----------------------------------------------------------------- shared weights

class SharedSupernet:
    """A DARTS supernet trained and evaluated along single paths picked by genotypes.

    Args:
        cfg: the search settings (supernet size, weight optimizer, seed).
        data: the dataset; its training split is cut into a weight half and a scoring half
            exactly as DARTS cuts it (``split_for_search``).
    """

    def __init__(self, cfg: SearchConfig, data: Dataset):
        from .darts import build_supernet, split_for_search

        self.cfg = cfg
        self.device = torch.device(cfg.device)
        torch.manual_seed(cfg.seed)
        (self.xw, self.yw), (self.xa, self.ya) = split_for_search(data, cfg.train_portion, cfg.seed)
        self.x_val, self.y_val = data.x_val, data.y_val
        self.model: SearchNetwork = build_supernet(cfg, data).to(self.device)
        self.ops = candidate_ops(self.model.primitives)
        self.w_opt = torch.optim.SGD(self.model.weight_parameters(), lr=cfg.w_lr, momentum=cfg.w_momentum,
                                     weight_decay=cfg.w_weight_decay)
        self.sched = torch.optim.lr_scheduler.CosineAnnealingLR(self.w_opt, cfg.epochs, eta_min=cfg.w_lr_min)
        self.g_batches = torch.Generator().manual_seed(cfg.seed + 1)

    def _plan(self, genotype: Genotype):
        """Per cell kind: ``[(edge row, op column, input node)]`` of the chosen edges; checks the fit."""
        m = self.model
        if genotype.steps != m.steps:
            raise GenotypeError(f"genotype has {genotype.steps} nodes per cell, the supernet {m.steps}",
                                "sample genotypes with the search's steps")
        plan = {}
        for reduction in (False, True):
            edges, concat = genotype.cell(reduction)
            if len(concat) != m.multiplier:
                raise GenotypeError(f"concat of {len(concat)} nodes, the supernet concatenates {m.multiplier}",
                                    "use the search's multiplier")
            rows = []
            for k, (op, j) in enumerate(edges):
                if op not in m.primitives:
                    raise GenotypeError(f"op {op!r} is not a search candidate", f"use one of {m.primitives}")
                rows.append((node_offset(k // 2) + j, m.primitives.index(op), j))
            plan[reduction] = (rows, concat)
        return plan

    def forward(self, genotype: Genotype, x: torch.Tensor, plan=None) -> torch.Tensor:
        """Logits of the single path ``genotype`` through the supernet (only the chosen ops run)."""
        m = self.model
        plan = plan or self._plan(genotype)
        s0 = s1 = m.stem(x)
        for cell in m.cells:
            rows, concat = plan[cell.reduction]
            states = [cell.preprocess0(s0), cell.preprocess1(s1)]
            for i in range(cell.steps):
                (e1, o1, j1), (e2, o2, j2) = rows[2 * i], rows[2 * i + 1]
                states.append(cell.edges[e1].ops[o1](states[j1]) + cell.edges[e2].ops[o2](states[j2]))
            s0, s1 = s1, torch.cat([states[n] for n in concat], dim=1)
        return m.classifier(m.global_pooling(s1).flatten(1))

    def train_epoch(self, sample: Callable[[], Genotype]) -> dict:
        """One pass over the weight half; every mini-batch trains the path ``sample()`` returns."""
        cfg, m = self.cfg, self.model
        lr = self.sched.get_last_lr()[0]
        m.train()
        loss_sum, correct, seen = 0.0, 0, 0
        for xb, yb in batches(self.xw, self.yw, cfg.batch_size, generator=self.g_batches):
            xb, yb = xb.to(self.device), yb.to(self.device)
            logits = self.forward(sample(), xb)
            loss = F.cross_entropy(logits, yb)
            self.w_opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(m.weight_parameters(), cfg.grad_clip)
            self.w_opt.step()
            loss_sum += loss.item() * len(yb)
            correct += (logits.argmax(1) == yb).sum().item()
            seen += len(yb)
        self.sched.step()
        return {"train_loss": loss_sum / seen, "train_acc": correct / seen, "lr": lr}

    @torch.no_grad()
    def evaluate(self, genotype: Genotype, x: torch.Tensor, y: torch.Tensor, batch_size: int = 256):
        """(mean cross-entropy, accuracy) of one path with the inherited weights.

        BatchNorm uses the statistics of the evaluated batch (train mode, as ENAS and random
        search with weight sharing do): the running statistics mix every path trained so far.
        """
        m = self.model
        was_training = m.training
        m.train()
        plan = self._plan(genotype)
        loss_sum, correct = 0.0, 0
        for xb, yb in batches(x, y, batch_size):
            xb, yb = xb.to(self.device), yb.to(self.device)
            logits = self.forward(genotype, xb, plan)
            loss_sum += F.cross_entropy(logits, yb, reduction="sum").item()
            correct += (logits.argmax(1) == yb).sum().item()
        m.train(was_training)
        return loss_sum / len(y), correct / len(y)

    def score(self, genotype: Genotype) -> float:
        """The ranking score: accuracy on the scoring (architecture) half of the training split."""
        return self.evaluate(genotype, self.xa, self.ya)[1]

    def state(self) -> dict:
        return {
            "network": self.model.config(),
            "state_dict": {k: v.cpu() for k, v in self.model.state_dict().items()},
            "w_optimizer": self.w_opt.state_dict(),
            "scheduler": self.sched.state_dict(),
            "rng": {"torch": torch.get_rng_state(), "weights": self.g_batches.get_state()},
        }

    def load_state(self, ck: dict) -> None:
        self.model.load_state_dict(ck["state_dict"])
        self.w_opt.load_state_dict(ck["w_optimizer"])
        self.sched.load_state_dict(ck["scheduler"])
        self.sched.T_max = self.cfg.epochs
        torch.set_rng_state(ck["rng"]["torch"])
        self.g_batches.set_state(ck["rng"]["weights"])


# ----------------------------------------------------------------- run bookkeeping

class Budget:
    """Wall-time bookkeeping of one search call (epochs and candidates are counted by the loops)."""

    def __init__(self, max_seconds: float | None):
        self.t0 = time.perf_counter()
        self.max_seconds = max_seconds

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def out_of_time(self, share: float = 1.0) -> bool:
        return self.max_seconds is not None and self.elapsed >= share * self.max_seconds


def config_record(cfg: SearchConfig) -> dict:
    """The settings a resumed run must share with the checkpoint (DARTS's rule)."""
    from .darts import RESUMABLE, _cfg_dict

    return _cfg_dict(cfg, ignore=RESUMABLE)


def start_or_resume(run: RunDir, cfg: SearchConfig, net: SharedSupernet, resume: bool) -> tuple[int, dict | None]:
    """Load ``supernet.pt`` when resuming (returns the next epoch and the checkpoint), else clear old records."""
    from .darts import supernet_mismatch

    ck = resume_checkpoint(run.supernet, "supernet", resume, lambda ck: supernet_mismatch(ck, cfg),
                           f"{cfg.strategy} search")
    if ck is not None:
        net.load_state(ck)
        start = int(ck["epoch"]) + 1
        from ..artifacts import write_jsonl

        for path in (run.search_metrics, run.alphas):
            write_jsonl(path, [r for r in read_jsonl(path) if r.get("epoch", -1) < start])
        return start, ck
    for path in (run.search_metrics, run.alphas, candidates_path(run)):
        if path.exists():
            path.unlink()
    return 0, None


def candidates_path(run: RunDir) -> Path:
    return run.search / "candidates.jsonl"


def save_supernet(run: RunDir, cfg: SearchConfig, net: SharedSupernet, data: Dataset, epoch: int,
                  rng: dict | None = None, extra: dict | None = None) -> None:
    """The shared weights, optimizer, scheduler and RNG states after ``epoch`` (what resume needs)."""
    payload = {"epoch": epoch, "strategy": cfg.strategy, "config": config_record(cfg), "data": data.spec.to_dict()}
    payload.update(net.state())
    payload["rng"].update(rng or {})
    payload.update(extra or {})
    save_checkpoint(run.supernet, payload, "supernet")


def probe_paths(cfg: SearchConfig, ops, n: int = 4) -> list[Genotype]:
    """Fixed random paths whose mean validation accuracy tracks the supernet's quality per epoch."""
    g = torch.Generator().manual_seed(cfg.seed + 4)
    return [sample_genotype(g, ops, cfg.steps, cfg.multiplier) for _ in range(n)]


def probe_record(net: SharedSupernet, probes: list[Genotype]) -> dict:
    evals = [net.evaluate(p, net.x_val, net.y_val) for p in probes]
    return {"val_loss": sum(e[0] for e in evals) / len(evals), "val_acc": sum(e[1] for e in evals) / len(evals)}


# ----------------------------------------------------------------- the loops

@dataclass
class Scored:
    genotype: Genotype
    score: float


def score_candidates(strategy: Strategy, net: SharedSupernet, run: RunDir, n: int, budget: Budget,
                     on_record: Callable[[dict], None] | None = None, first_index: int = 0,
                     extra: dict | None = None, best: float = -math.inf) -> list[Scored]:
    """``n`` rounds of ask → score → tell (fewer when the wall time runs out; always at least one).

    ``best`` is the best score of earlier rounds, so ``best_score`` in the records is a running maximum.
    """
    from .darts import parameter_free_share

    scored: list[Scored] = []
    for k in range(n):
        if k > 0 and budget.out_of_time():
            break
        t0 = time.perf_counter()
        g = strategy.ask()
        s = net.score(g)
        strategy.tell(g, s)
        scored.append(Scored(g, s))
        best = max(best, s)
        rec = {"index": first_index + k, **(extra or {}), "score": s, "best_score": best,
               "param_free_share": parameter_free_share(g), "seconds": time.perf_counter() - t0,
               "genotype": g.to_dict()}
        append_jsonl(candidates_path(run), rec)
        if on_record is not None:
            on_record(rec)
    return scored


def two_phase_search(cfg: SearchConfig, data: Dataset, out: str | Path, strategy_factory, progress: bool = True,
                     resume: bool = False, log: Callable[[dict], None] | None = None):
    """Random search and evolution: train the shared weights along uniform paths, then rank candidates.

    ``strategy_factory(cfg, ops, generator)`` builds the ask/tell strategy of the second phase.
    """
    from tqdm.auto import tqdm

    from .darts import SearchResult, parameter_free_share

    run = RunDir(out)
    ensure_dir(run.search)
    budget = Budget(cfg.max_seconds)
    net = SharedSupernet(cfg, data)
    start, ck = start_or_resume(run, cfg, net, resume)
    g_paths = torch.Generator().manual_seed(cfg.seed + 2)
    if ck is not None:  # continue the path sampler where an uninterrupted run would be
        g_paths.set_state(ck["rng"]["paths"])
    probes = probe_paths(cfg, net.ops)
    metrics = read_jsonl(run.search_metrics)
    stopped_by = "budget"

    def uniform() -> Genotype:
        return sample_genotype(g_paths, net.ops, cfg.steps, cfg.multiplier)

    bar = tqdm(total=cfg.epochs + cfg.candidates, initial=start, disable=not progress, desc=f"search:{cfg.strategy}",
               leave=False, dynamic_ncols=True)
    for epoch in range(start, cfg.epochs):
        if budget.out_of_time(0.5):
            stopped_by = "max_seconds"
            break
        t0 = time.perf_counter()
        rec = {"epoch": epoch, "phase": "weights", **net.train_epoch(uniform), **probe_record(net, probes),
               "seconds": time.perf_counter() - t0}
        if log is not None:
            log(rec)
        append_jsonl(run.search_metrics, rec)
        metrics.append(rec)
        save_supernet(run, cfg, net, data, epoch, rng={"paths": g_paths.get_state()})
        bar.update(1)
        bar.set_postfix(loss=f"{rec['train_loss']:.3f}", probe_acc=f"{rec['val_acc']:.3f}")

    if candidates_path(run).exists():
        candidates_path(run).unlink()
    strategy = strategy_factory(cfg, net.ops, torch.Generator().manual_seed(cfg.seed + 3))
    scored = score_candidates(strategy, net, run, cfg.candidates, budget, on_record=lambda r: bar.update(1))
    bar.close()
    if len(scored) < cfg.candidates:
        stopped_by = "max_seconds"
    best = max(scored, key=lambda s: s.score)  # first of equals: the earliest found
    top = sorted(scored, key=lambda s: -s.score)[: max(1, len(scored) // 10)]
    weights = op_frequencies([s.genotype for s in top], net.ops, cfg.steps)
    append_jsonl(run.alphas, {"epoch": len(metrics) - 1, "ops": list(net.ops), "weights_normal": weights[0],
                              "weights_reduce": weights[1], "what": f"op frequency in the top {len(top)} candidates",
                              "genotype": best.genotype.to_dict()})
    val_loss, val_acc = net.evaluate(best.genotype, net.x_val, net.y_val)
    return finish(run, cfg, best.genotype, metrics, val_acc, budget, stopped_by,
                  {"candidates_scored": len(scored), "best_score": best.score, "val_loss": val_loss,
                   "param_free_share": parameter_free_share(best.genotype)}, SearchResult)


def finish(run: RunDir, cfg: SearchConfig, genotype: Genotype, metrics: list[dict], val_acc: float, budget: Budget,
           stopped_by: str, extra: dict, result_cls):
    """Write ``genotype.json`` and ``summary.json``; return the SearchResult."""
    genotype.save(run.genotype)
    write_json(run.search / "summary.json", {
        "strategy": cfg.strategy, "val_acc": val_acc, "seconds": budget.elapsed, "stopped_by": stopped_by,
        "epochs": sum(1 for m in metrics if "train_loss" in m), **extra, "genotype": genotype.to_dict(),
    })
    return result_cls(genotype, metrics, val_acc, budget.elapsed, run.root)
