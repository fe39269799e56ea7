"""``run_strategy``: the one entry point of every search strategy (``cfg.strategy`` picks it).

DARTS lives in ``darts.py``; the black-box strategies (``random_search.py``, ``evolution.py``,
``reinforce.py``) share the evaluator and bookkeeping of ``strategy.py``. This module only
dispatches, so no strategy module imports it back.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..artifacts import RunDir, load_checkpoint, read_jsonl, write_json
from ..config import SearchConfig
from ..data import Dataset
from ..distributed import main_only
from ..errors import ConfigError
from ..space.cell import genotype_agreement, op_margins
from ..space.genotype import Genotype
from ..space.primitives import PRIMITIVES
from .strategy import STRATEGIES, two_phase_search

# ----------------------------------------------------------------- dispatcher

def check_world(cfg: SearchConfig) -> None:
    """Only DARTS is data-parallel: a black-box strategy under torchrun would run whole on every rank."""
    from ..distributed import env_ranks

    world = env_ranks()[1]
    if cfg.strategy != "darts" and world > 1:
        raise ConfigError(f"strategy {cfg.strategy!r} runs in one process, but this is a {world}-process torchrun "
                          "job", "use --strategy darts under torchrun (data-parallel), or run without torchrun")


def alpha_signal(run: RunDir, final: Genotype, last: int = 3) -> dict:
    """How firmly the alphas decided: softmax range and per-edge op margins at the end, and whether
    the derived genotype had settled (agreement of each of the last epochs' genotypes with the final)."""
    records = read_jsonl(run.alphas)
    if not records:
        return {}
    ops = load_checkpoint(run.supernet, "supernet")["network"]["primitives"] if run.supernet.exists() else PRIMITIVES
    weights = [torch.softmax(torch.as_tensor(records[-1][k]).float(), -1) for k in ("alphas_normal", "alphas_reduce")]
    margins = torch.cat([op_margins(w, ops) for w in weights])
    agree = [genotype_agreement(Genotype.from_dict(r["genotype"]), final) for r in records[-1 - last:-1]]
    return {"weight_min": float(min(w.min() for w in weights)), "weight_max": float(max(w.max() for w in weights)),
            "margin_median": float(margins.median()), "margin_min": float(margins.min()),
            "agreement_last_epochs": agree, "stable": bool(agree) and min(agree) == 1.0}


def _budget_record(run: RunDir) -> dict:
    """``{"latency": ...}``: the budget verification ``darts.search`` wrote (empty without a budget)."""
    from ..artifacts import read_json

    path = run.search / "latency_budget.json"
    return {"latency": read_json(path, "latency budget record")} if path.is_file() else {}


def run_strategy(cfg: SearchConfig, data: Dataset, out: str | Path, pictures: bool = True, **options):
    """Run the search ``cfg.strategy`` names and write the search artifacts and pictures under ``out/search``.

    Args:
        cfg: search settings; ``strategy`` is darts | random | evolution | rl, and ``epochs``,
            ``candidates`` and ``max_seconds`` bound every strategy.
        data: a loaded Dataset.
        out: the run directory.
        options: keyword arguments of ``darts.search`` (progress, resume, log, penalty, deploy, stop);
            the black-box strategies take progress, resume and log.
        pictures: draw the cells, the alpha heat map and the curves (``viz.render_search``).

    Returns:
        SearchResult(genotype, metrics, val_acc, seconds, out).

    Example:
        >>> cfg = SearchConfig(strategy="evolution", epochs=5, candidates=200, C=8, layers=5)
        >>> run_strategy(cfg, load_dataset("digits"), "runs/evo").genotype  # doctest: +SKIP
    """
    if cfg.strategy not in STRATEGIES:
        raise ConfigError(f"strategy = {cfg.strategy!r}: unknown", f"use one of {', '.join(STRATEGIES)}")
    check_world(cfg)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.strategy == "darts":
        from .darts import search

        res = search(cfg, data, out, **options)
        if main_only():  # under torchrun rank 0 alone writes (distributed.py)
            write_json(RunDir(out).search / "summary.json", {
                "strategy": "darts", "val_acc": res.val_acc, "seconds": res.seconds, "epochs": len(res.metrics),
                "stopped_by": "max_seconds" if len(res.metrics) < cfg.epochs else "budget",
                "genotype": res.genotype.to_dict(), "signal": alpha_signal(RunDir(out), res.genotype),
                **_budget_record(RunDir(out))})
    else:
        if options.pop("penalty", None) is not None or cfg.latency_target is not None:
            raise ConfigError(f"a latency target needs the differentiable strategy, not {cfg.strategy!r}",
                              "use --strategy darts with a latency target, or drop the target")
        options.pop("deploy", None)  # the served network's settings matter only to a latency target
        unknown = sorted(set(options) - {"progress", "resume", "log"})
        if unknown:
            raise TypeError(f"run_strategy: {cfg.strategy!r} takes no option {', '.join(unknown)}")
        if cfg.strategy == "rl":
            from .reinforce import search as rl_search

            res = rl_search(cfg, data, out, **options)
        else:
            if cfg.strategy == "random":
                from .random_search import RandomSearch as factory
            else:
                from .evolution import AgingEvolution as factory
            res = two_phase_search(cfg, data, out, factory.from_config, **options)
    if pictures and main_only():
        from ..viz import render_search

        render_search(out)
    return res
