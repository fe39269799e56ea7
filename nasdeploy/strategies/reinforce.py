"""REINFORCE over the genotype encoding with ENAS-style shared weights (Pham et al., 2018).

The policy is factorized over the genotype's decisions (ENAS uses an LSTM;
a table of logits is its simplest form and keeps the log-probability pinned
by hand-computable numbers). Per cell and intermediate node ``i``:

- two distinct inputs: ``j1 ~ softmax(in_logits[i, :2+i])``, then ``j2`` from the same
  logits with ``j1`` masked out;
- one op per chosen edge: ``o ~ softmax(op_logits[edge])`` over the non-``none`` ops.

Training alternates as in ENAS: each epoch trains the shared weights on the
weight half along paths the policy samples, then takes controller steps: ask
a genotype, score it with the inherited weights (``SharedSupernet.score``),
and tell it, which takes one Adam step on ``-(R - b) * log p(actions)`` and
then moves the baseline ``b <- decay * b + (1 - decay) * R`` (the first reward
initializes it). The last tenth of the candidate budget (at least one) ranks
the policy's mode and fresh samples; the best of them is the result.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from ..artifacts import RunDir, append_jsonl, ensure_dir, read_jsonl
from ..config import SearchConfig
from ..data import Dataset
from ..space.cell import concat_nodes, node_offset, num_edges
from ..space.genotype import Genotype
from .strategy import Budget, SharedSupernet, probe_paths, probe_record, save_supernet, score_candidates

# One decision of one node: (cell 0 normal / 1 reduce, node i, input j1, input j2, op of j1, op of j2).
Action = tuple[int, int, int, int, int, int]


class Controller(nn.Module):
    """The factorized policy. Zero logits: the uniform distribution of random search."""

    def __init__(self, steps: int, n_ops: int):
        super().__init__()
        self.steps, self.n_ops = steps, n_ops
        self.in_logits = nn.Parameter(torch.zeros(2, steps, steps + 1))  # node i uses columns :2+i
        self.op_logits = nn.Parameter(torch.zeros(2, num_edges(steps), n_ops))

    def _input_logits(self, c: int, i: int, exclude: int | None = None) -> torch.Tensor:
        logits = self.in_logits[c, i, : 2 + i]
        if exclude is not None:
            logits = logits.masked_fill(torch.arange(2 + i) == exclude, float("-inf"))
        return logits

    @torch.no_grad()
    def sample(self, generator: torch.Generator) -> list[Action]:
        actions = []
        for c in range(2):
            for i in range(self.steps):
                j1 = int(torch.multinomial(self._input_logits(c, i).softmax(0), 1, generator=generator))
                j2 = int(torch.multinomial(self._input_logits(c, i, j1).softmax(0), 1, generator=generator))
                o1, o2 = (int(torch.multinomial(self.op_logits[c, node_offset(i) + j].softmax(0), 1,
                                                generator=generator)) for j in (j1, j2))
                actions.append((c, i, j1, j2, o1, o2))
        return actions

    @torch.no_grad()
    def mode(self) -> list[Action]:
        """The most likely decision at every step (greedy, in sampling order)."""
        actions = []
        for c in range(2):
            for i in range(self.steps):
                j1 = int(self._input_logits(c, i).argmax())
                j2 = int(self._input_logits(c, i, j1).argmax())
                o1, o2 = (int(self.op_logits[c, node_offset(i) + j].argmax()) for j in (j1, j2))
                actions.append((c, i, j1, j2, o1, o2))
        return actions

    def log_prob(self, actions: list[Action]) -> torch.Tensor:
        """``log p(actions)``: a sum of log-softmax terms, differentiable in the logits."""
        total = self.in_logits.new_zeros(())
        for c, i, j1, j2, o1, o2 in actions:
            total = total + self._input_logits(c, i).log_softmax(0)[j1]
            total = total + self._input_logits(c, i, j1).log_softmax(0)[j2]
            total = total + self.op_logits[c, node_offset(i) + j1].log_softmax(0)[o1]
            total = total + self.op_logits[c, node_offset(i) + j2].log_softmax(0)[o2]
        return total

    def op_probabilities(self) -> torch.Tensor:
        """(2, edges, ops): the op distribution of each edge, should the edge be chosen."""
        return self.op_logits.detach().softmax(-1)


def decode(actions: list[Action], ops, steps: int, multiplier: int) -> Genotype:
    """The genotype of an action sequence (edges in sampling order)."""
    cells: list[list] = [[], []]
    for c, _i, j1, j2, o1, o2 in actions:
        cells[c] += [(ops[o1], j1), (ops[o2], j2)]
    concat = concat_nodes(steps, multiplier)
    return Genotype(tuple(cells[0]), concat, tuple(cells[1]), concat)


class Reinforce:
    """REINFORCE with a moving-average baseline behind ask/tell.

    Args:
        ops: candidate ops (no ``none``).
        steps, multiplier: cell shape.
        lr: Adam learning rate of the controller (ENAS: 3.5e-4).
        baseline_decay: ``b <- decay * b + (1 - decay) * R`` (ENAS: 0.99).
        generator: seeded torch generator of the samples.
    """

    def __init__(self, ops, steps: int, multiplier: int, lr: float, baseline_decay: float,
                 generator: torch.Generator):
        self.ops, self.steps, self.multiplier = tuple(ops), steps, multiplier
        self.controller = Controller(steps, len(self.ops))
        self.optimizer = torch.optim.Adam(self.controller.parameters(), lr=lr)
        self.baseline_decay = baseline_decay
        self.baseline: float | None = None
        self.generator = generator
        self.history: list[tuple[Genotype, float]] = []
        self._pending: tuple[Genotype, list[Action]] | None = None

    @classmethod
    def from_config(cls, cfg: SearchConfig, ops, generator: torch.Generator) -> Reinforce:
        return cls(ops, cfg.steps, cfg.multiplier, cfg.controller_lr, cfg.baseline_decay, generator)

    def sample(self) -> Genotype:
        """A policy sample that is not learned from (paths for the weight training)."""
        return decode(self.controller.sample(self.generator), self.ops, self.steps, self.multiplier)

    def mode(self) -> Genotype:
        return decode(self.controller.mode(), self.ops, self.steps, self.multiplier)

    def ask(self) -> Genotype:
        actions = self.controller.sample(self.generator)
        g = decode(actions, self.ops, self.steps, self.multiplier)
        self._pending = (g, actions)
        return g

    def loss(self, actions: list[Action], reward: float, baseline: float) -> torch.Tensor:
        """The REINFORCE surrogate ``-(R - b) * log p(actions)`` (Williams, 1992)."""
        return -(reward - baseline) * self.controller.log_prob(actions)

    def tell(self, genotype: Genotype, score: float) -> None:
        if self._pending is None or self._pending[0] != genotype:
            raise ValueError("tell() takes the genotype of the last ask(), once")
        actions = self._pending[1]
        self._pending = None
        self.history.append((genotype, score))
        if self.baseline is None:  # the first reward sets the baseline: a zero first step, no outsized one
            self.baseline = score
        self.optimizer.zero_grad(set_to_none=True)
        self.loss(actions, score, self.baseline).backward()  # advantage against the baseline *before* R
        self.optimizer.step()
        self.baseline = self.baseline_decay * self.baseline + (1 - self.baseline_decay) * score

    def entropy(self) -> float:
        """Entropy of the factorized op and first-input choices (a convergence gauge, nats)."""
        h = 0.0
        for c in range(2):
            for i in range(self.steps):
                p = self.controller._input_logits(c, i).detach().softmax(0)
                h -= float((p * p.clamp_min(1e-12).log()).sum())
        p = self.controller.op_probabilities()
        return h - float((p * p.clamp_min(1e-12).log()).sum())

    def state(self) -> dict:
        return {"controller": {k: v.clone() for k, v in self.controller.state_dict().items()},
                "c_optimizer": self.optimizer.state_dict(),
                "baseline": self.baseline if self.baseline is not None else float("nan")}

    def load_state(self, ck: dict) -> None:
        self.controller.load_state_dict(ck["controller"])
        self.optimizer.load_state_dict(ck["c_optimizer"])
        b = ck["baseline"]
        self.baseline = None if b is None or math.isnan(b) else float(b)


def search(cfg: SearchConfig, data: Dataset, out: str | Path, progress: bool = True, resume: bool = False,
           log: Callable[[dict], None] | None = None):
    """ENAS-style search; writes the common search artifacts (see ``dispatch.run_strategy``)."""
    from tqdm.auto import tqdm

    from .darts import SearchResult, parameter_free_share
    from .strategy import candidates_path, finish, start_or_resume

    run = RunDir(out)
    ensure_dir(run.search)
    budget = Budget(cfg.max_seconds)
    net = SharedSupernet(cfg, data)
    start, ck = start_or_resume(run, cfg, net, resume)
    agent = Reinforce.from_config(cfg, net.ops, torch.Generator().manual_seed(cfg.seed + 2))
    if ck is not None:
        agent.load_state(ck)
        agent.generator.set_state(ck["rng"]["policy"])
        kept = [r for r in read_jsonl(candidates_path(run)) if r["epoch"] != "final" and r["epoch"] < start]
        from ..artifacts import write_jsonl

        write_jsonl(candidates_path(run), kept)
    n_final = max(1, cfg.candidates // 10)
    per_epoch = math.ceil((cfg.candidates - n_final) / cfg.epochs) if cfg.candidates > n_final else 0
    probes = probe_paths(cfg, net.ops)
    metrics = read_jsonl(run.search_metrics)
    told_records = read_jsonl(candidates_path(run))
    told = len(told_records)
    best_score = max((r["score"] for r in told_records), default=-math.inf)
    stopped_by = "budget"
    bar = tqdm(total=cfg.epochs, initial=start, disable=not progress, desc="search:rl", leave=False,
               dynamic_ncols=True)
    for epoch in range(start, cfg.epochs):
        if budget.out_of_time():
            stopped_by = "max_seconds"
            break
        t0 = time.perf_counter()
        rec = {"epoch": epoch, "phase": "weights+controller", **net.train_epoch(agent.sample)}
        n = min(per_epoch, cfg.candidates - n_final - told)
        scored = score_candidates(agent, net, run, n, budget, first_index=told, extra={"epoch": epoch},
                                  best=best_score) if n > 0 else []
        told += len(scored)
        best_score = max([best_score] + [s.score for s in scored])
        mode = agent.mode()
        rec.update(probe_record(net, probes))
        rec.update({
            "reward_mean": sum(s.score for s in scored) / len(scored) if scored else None,
            "baseline": agent.baseline,
            "policy_entropy": agent.entropy(),
            "param_free_share": parameter_free_share(mode),
            "seconds": time.perf_counter() - t0,
        })
        if log is not None:
            log(rec)
        append_jsonl(run.search_metrics, rec)
        probs = agent.controller.op_probabilities()
        append_jsonl(run.alphas, {"epoch": epoch, "ops": list(net.ops), "weights_normal": probs[0],
                                  "weights_reduce": probs[1], "what": "policy op probabilities per edge",
                                  "genotype": mode.to_dict()})
        metrics.append(rec)
        save_supernet(run, cfg, net, data, epoch, rng={"policy": agent.generator.get_state()}, extra=agent.state())
        bar.update(1)
        bar.set_postfix(reward=f"{rec['reward_mean'] or 0:.3f}", entropy=f"{rec['policy_entropy']:.2f}")
    bar.close()

    # Final choice: the policy's mode and fresh samples, ranked by the same score.
    finalists = [agent.mode()] + [agent.sample() for _ in range(n_final - 1)]
    ranked = []
    for k, g in enumerate(finalists):
        if k > 0 and budget.out_of_time():
            stopped_by = "max_seconds"
            break
        s = net.score(g)
        ranked.append((g, s))
        best_score = max(best_score, s)
        append_jsonl(candidates_path(run), {"index": told + k, "epoch": "final", "score": s,
                                            "best_score": best_score,
                                            "param_free_share": parameter_free_share(g), "genotype": g.to_dict()})
    best, final_score = max(ranked, key=lambda gs: gs[1])
    val_loss, val_acc = net.evaluate(best, net.x_val, net.y_val)
    return finish(run, cfg, best, metrics, val_acc, budget, stopped_by,
                  {"candidates_scored": told + len(ranked), "best_score": final_score, "val_loss": val_loss,
                   "baseline": agent.baseline, "param_free_share": parameter_free_share(best)}, SearchResult)
