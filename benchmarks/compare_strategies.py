"""Was search worth it? Every strategy under one budget on digits, each result retrained the same way.

For each seed (default 0, 1, 2) and each strategy (darts, random, evolution,
rl) a search runs with the same budget (search epochs over the same weight
half, scored candidates for the black-box strategies); the found genotype is
retrained from scratch with one recipe and scored once on the test split.
Baselines under the same recipe: the published DARTS_V2 cell and uniformly
random cells of the space (one per seed). DARTS's final alphas are also
derived with the P-DARTS skip limit (``skip_limit=2``, derivation only, no
extra search) and retrained where that changes the genotype.

Writes ``benchmarks/results/compare_strategies.{md,png,json}``; the search and
train run directories go to ``--work`` (default ``runs/compare_strategies``).
Not part of the test run.

    nice python benchmarks/compare_strategies.py            # about 15-25 min on 2 busy cores
    python benchmarks/compare_strategies.py --smoke         # a minute: checks the script end to end
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

from nasdeploy.artifacts import read_jsonl
from nasdeploy.config import SearchConfig, TrainConfig
from nasdeploy.data import load_dataset
from nasdeploy.space.cell import candidate_ops, sample_genotype
from nasdeploy.space.genotype import GENOTYPES, Genotype
from nasdeploy.strategies.darts import limit_skips, parameter_free_share
from nasdeploy.strategies.dispatch import run_strategy
from nasdeploy.viz import save_figure

RESULTS = Path(__file__).resolve().parent / "results"
STRATEGIES = ("darts", "random", "evolution", "rl")

# The shared search budget: the supernet and weight optimizer of DARTS at digits size, the same epochs over
# the same weight half for everyone, and the same number of scored candidates for the black-box strategies.
SEARCH = SearchConfig(epochs=8, batch_size=64, C=4, layers=3, steps=4, multiplier=4, candidates=100,
                      # strategy settings scaled to a 100-candidate budget (papers: P=100, S=25 over 20k;
                      # ENAS: lr 3.5e-4, decay 0.99 over ~300k controller steps of an LSTM)
                      population=20, sample_size=5, controller_lr=0.05, baseline_decay=0.9,
                      kernel="auto", threads=1)
# One retraining recipe for every genotype: the "quick" preset's network, fewer epochs.
TRAIN = TrainConfig(epochs=10, batch_size=64, C=8, layers=5, drop_path_prob=0.1, threads=1)


def _search_job(strategy: str, seed: int, work: str, cfg_d: dict) -> dict:
    torch.set_num_threads(1)
    data = load_dataset("digits", seed=0)
    cfg = dataclasses.replace(SearchConfig(**cfg_d), strategy=strategy, seed=seed)
    out = Path(work) / f"{strategy}-s{seed}"
    res = run_strategy(cfg, data, out, progress=False, pictures=True)
    rec = {"strategy": strategy, "seed": seed, "search_seconds": res.seconds, "search_val_acc": res.val_acc,
           "genotype": res.genotype.to_dict(), "param_free_share": parameter_free_share(res.genotype),
           "out": str(out)}
    if strategy == "darts":  # the P-DARTS remedy is derivation only: apply it to the same final alphas
        last = read_jsonl(out / "search" / "alphas.jsonl")[-1]
        g = limit_skips(torch.tensor(last["alphas_normal"]), torch.tensor(last["alphas_reduce"]), cfg.primitives,
                        cfg.steps, cfg.multiplier, 2)
        rec["skip_limited"] = g.to_dict()
        rec["raw_skips"] = sum(op == "skip_connect" for op, _ in res.genotype.normal)
    return rec


def _train_job(method: str, seed: int, genotype: dict, work: str, train_d: dict) -> dict:
    from nasdeploy.training import train

    torch.set_num_threads(1)
    data = load_dataset("digits", seed=0)
    cfg = dataclasses.replace(TrainConfig(**train_d), seed=seed)
    g = Genotype.from_dict(genotype)
    out = Path(work) / "train" / f"{method}-s{seed}"
    t0 = time.perf_counter()
    res = train(g, cfg, data, out, progress=False)
    return {"method": method, "seed": seed, "test_acc": res.test_acc, "n_params": res.n_params,
            "train_seconds": time.perf_counter() - t0, "param_free_share": parameter_free_share(g),
            "genotype": genotype}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2, help="processes, one torch thread each")
    ap.add_argument("--work", default="runs/compare_strategies")
    ap.add_argument("--smoke", action="store_true", help="1 search epoch, 10 candidates, 1 train epoch")
    ap.add_argument("--strategies", default=",".join(STRATEGIES), help="comma-separated subset")
    ap.add_argument("--search-epochs", type=int, default=None, help=f"override the budget's {SEARCH.epochs} epochs")
    ap.add_argument("--no-baselines", action="store_true", help="skip DARTS_V2 and random-architecture rows")
    ap.add_argument("--tag", default="compare_strategies", help="results file name")
    args = ap.parse_args()
    strategies = [s for s in args.strategies.split(",") if s]
    search_cfg, train_cfg, tag = SEARCH, TRAIN, args.tag
    if args.search_epochs:
        search_cfg = dataclasses.replace(SEARCH, epochs=args.search_epochs)
    if args.smoke:
        search_cfg = dataclasses.replace(SEARCH, epochs=1, candidates=10, population=4, sample_size=2)
        train_cfg = dataclasses.replace(TRAIN, epochs=1)
        tag = "compare_strategies_smoke"
    seeds = list(range(args.seeds))
    t0 = time.perf_counter()
    s_d, t_d = dataclasses.asdict(search_cfg), dataclasses.asdict(train_cfg)
    with ProcessPoolExecutor(args.workers) as pool:
        # DARTS first: its searches are the longest
        searches = [pool.submit(_search_job, s, seed, args.work, s_d) for s in strategies for seed in seeds]
        found = [f.result() for f in searches]
        t_search = time.perf_counter() - t0
        print(f"searches done in {t_search:.0f}s", flush=True)
        ops = candidate_ops(search_cfg.primitives)
        jobs = [("DARTS_V2 (published)", seed, GENOTYPES["DARTS_V2"].to_dict()) for seed in seeds]
        for seed in seeds:  # a uniform random cell of the space per seed
            if args.no_baselines:
                jobs = []
                break
            g = sample_genotype(torch.Generator().manual_seed(1000 + seed), ops, search_cfg.steps,
                                search_cfg.multiplier)
            jobs.append(("random architecture", seed, g.to_dict()))
        for r in found:
            jobs.append((r["strategy"], r["seed"], r["genotype"]))
            if r["strategy"] == "darts":
                jobs.append(("darts + skip_limit=2", r["seed"], r["skip_limited"]))
        trained = [f.result() for f in [pool.submit(_train_job, m, s, g, args.work, t_d) for m, s, g in jobs]]
    total = time.perf_counter() - t0
    report(found, trained, search_cfg, train_cfg, total, t_search, tag)


def report(found, trained, search_cfg, train_cfg, total, t_search, tag) -> None:
    methods = ["darts", "darts + skip_limit=2", "random", "evolution", "rl", "DARTS_V2 (published)",
               "random architecture"]
    by_search = {(r["strategy"], r["seed"]): r for r in found}
    rows = []
    for m in methods:
        runs = [t for t in trained if t["method"] == m]
        if not runs:
            continue
        accs = [t["test_acc"] for t in runs]
        key = "darts" if m.startswith("darts +") else m
        secs = [by_search[(key, t["seed"])]["search_seconds"] for t in runs if (key, t["seed"]) in by_search]
        rows.append({
            "method": m, "n": len(accs), "mean": statistics.mean(accs),
            "std": statistics.stdev(accs) if len(accs) > 1 else 0.0, "accs": accs,
            "params": statistics.mean(t["n_params"] for t in runs),
            "param_free": statistics.mean(t["param_free_share"] for t in runs),
            "search_s": statistics.mean(secs) if secs else None,
        })
    lines = [
        "# Was search worth it? Strategies on digits under one budget",
        "",
        f"Search budget (every strategy): {search_cfg.epochs} epochs over the same weight half, supernet "
        f"C={search_cfg.C}, layers={search_cfg.layers}, {search_cfg.steps} nodes, batch {search_cfg.batch_size}; "
        f"black-box strategies score {search_cfg.candidates} candidates with inherited weights "
        f"(evolution P={search_cfg.population}, S={search_cfg.sample_size}; REINFORCE lr "
        f"{search_cfg.controller_lr}, baseline decay {search_cfg.baseline_decay}). No wall-time cap.",
        f"Retraining recipe (every row): {train_cfg.epochs} epochs, C={train_cfg.C}, layers={train_cfg.layers}, "
        f"batch {train_cfg.batch_size}, auxiliary={train_cfg.auxiliary}, cutout={train_cfg.cutout}, "
        f"drop-path {train_cfg.drop_path_prob}; test accuracy on the held-out digits test split (360 images).",
        f"Seeds: {len(rows[0]['accs'])} per row (search seed = retrain seed). Whole benchmark: {total / 60:.1f} min "
        f"({t_search / 60:.1f} min of searches), 2 worker processes x 1 thread on {platform.processor() or 'cpu'} "
        f"({os.cpu_count()} cores, shared).",
        "",
        "| method | test acc mean ± std | per seed | params | param-free share (normal) | search s |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        per = ", ".join(f"{a:.3f}" for a in r["accs"])
        s = f"{r['search_s']:.0f}" if r["search_s"] is not None else "–"
        lines.append(f"| {r['method']} | {r['mean']:.4f} ± {r['std']:.4f} | {per} | {r['params']:,.0f} | "
                     f"{r['param_free']:.2f} | {s} |")
    lines += ["", "Found genotypes (normal cell) per search:", ""]
    for r in found:
        g = Genotype.from_dict(r["genotype"])
        lines.append(f"- {r['strategy']} seed {r['seed']}: " + ", ".join(f"{op}({j})" for op, j in g.normal)
                     + f" — supernet/inherited val acc {r['search_val_acc']:.3f}")
    md = "\n".join(lines) + "\n"
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{tag}.md").write_text(md)
    (RESULTS / f"{tag}.json").write_text(json.dumps({"searches": found, "trained": trained, "rows": rows,
                                                     "search_config": dataclasses.asdict(search_cfg),
                                                     "train_config": dataclasses.asdict(train_cfg),
                                                     "seconds": total}, indent=2, default=str))
    _plot(rows, RESULTS / f"{tag}.png", search_cfg)
    print(md)


def _plot(rows, path: Path, search_cfg) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 4))
    ax = fig.add_subplot()
    for i, r in enumerate(rows):
        baseline = r["method"] in ("DARTS_V2 (published)", "random architecture")
        ax.errorbar(i, r["mean"], yerr=r["std"], fmt="o", capsize=5, color="C1" if baseline else "C0")
        ax.scatter([i] * len(r["accs"]), r["accs"], s=12, color="gray", zorder=3)
    ax.set_xticks(range(len(rows)), [r["method"] for r in rows], rotation=20, ha="right")
    ax.set_ylabel("test accuracy (retrained)")
    ax.set_title(f"digits: searched (blue, {search_cfg.epochs} search epochs) vs baselines (orange); "
                 "mean ± std, dots = seeds", fontsize=9)
    ax.grid(alpha=0.3)
    save_figure(fig, Path(path))


if __name__ == "__main__":
    main()
