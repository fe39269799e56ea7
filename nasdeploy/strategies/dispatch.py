"""``run_strategy``: the one entry point of every search strategy (``cfg.strategy`` picks it).

DARTS lives in ``darts.py``; the black-box strategies (``random_search.py``, ``evolution.py``,
``reinforce.py``) share the evaluator and bookkeeping of ``strategy.py``. This module only
dispatches, so no strategy module imports it back.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from ..artifacts import RunDir, write_json
from ..config import SearchConfig
from ..data import Dataset
from ..distributed import main_only
from ..errors import ConfigError
from ..space.search_network import SearchNetwork
from .strategy import STRATEGIES, two_phase_search

# ----------------------------------------------------------------- dispatcher

def check_world(cfg: SearchConfig) -> None:
    """Only DARTS is data-parallel: a black-box strategy under torchrun would run whole on every rank."""
    from ..distributed import env_ranks

    world = env_ranks()[1]
    if cfg.strategy != "darts" and world > 1:
        raise ConfigError(f"strategy {cfg.strategy!r} runs in one process, but this is a {world}-process torchrun "
                          "job", "use --strategy darts under torchrun (data-parallel), or run without torchrun")


def run_strategy(
    cfg: SearchConfig,
    data: Dataset,
    out: str | Path,
    progress: bool = True,
    resume: bool = False,
    penalty: Callable[[SearchNetwork], torch.Tensor] | None = None,
    log: Callable[[dict], None] | None = None,
    pictures: bool = True,
    deploy=None,
):
    """Run the search ``cfg.strategy`` names and write the search artifacts and pictures under ``out/search``.

    Args:
        cfg: search settings; ``strategy`` is darts | random | evolution | rl, and ``epochs``,
            ``candidates`` and ``max_seconds`` bound every strategy.
        data: a loaded Dataset.
        out: the run directory.
        progress: progress bars on stderr.
        resume: continue from ``search/supernet.pt`` (weight training; candidates are re-scored).
        penalty: extra architecture loss on alpha (the latency term); DARTS only.
        deploy: the served network's TrainConfig, for DARTS's latency target (see ``darts.search``).
        log: called with each epoch's metrics record.
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

        kw = {"deploy": deploy} if deploy is not None else {}
        res = search(cfg, data, out, progress=progress, resume=resume, penalty=penalty, log=log, **kw)
        if main_only():  # under torchrun rank 0 alone writes (distributed.py)
            write_json(RunDir(out).search / "summary.json", {
                "strategy": "darts", "val_acc": res.val_acc, "seconds": res.seconds, "epochs": len(res.metrics),
                "stopped_by": "max_seconds" if len(res.metrics) < cfg.epochs else "budget",
                "genotype": res.genotype.to_dict()})
    else:
        if penalty is not None or cfg.latency_target is not None:
            raise ConfigError(f"a latency target needs the differentiable strategy, not {cfg.strategy!r}",
                              "use --strategy darts with a latency target, or drop the target")
        if cfg.strategy == "rl":
            from .reinforce import search as rl_search

            res = rl_search(cfg, data, out, progress=progress, resume=resume, log=log)
        else:
            if cfg.strategy == "random":
                from .random_search import RandomSearch as factory
            else:
                from .evolution import AgingEvolution as factory
            res = two_phase_search(cfg, data, out, factory.from_config, progress=progress, resume=resume, log=log)
    if pictures and main_only():
        from ..viz import render_search

        render_search(out)
    return res
