"""Does search earn its cost on Fashion-MNIST? Every strategy, one budget, one retrain recipe, 3 seeds.

Rows (each retrained from scratch with the same recipe, scored once on the 10,000 test images):

- ``darts``: first-order DARTS with the quick preset's alpha schedule, derived with the plain rule;
- ``darts + skip guard``: the same final alphas derived with the P-DARTS skip limit (2) — the collapse
  guard costs no extra search, so it shares the search of ``darts``;
- ``random-ws``, ``evolution``, ``rl``: the black-box strategies on a weight-sharing supernet, same
  weight epochs, same number of scored candidates;
- ``DARTS_V2``: the published cell; ``random architecture``: uniform samples of the space (≥10).

Beside the table: the ranking correlation (Kendall tau) between each supernet's score of the random
architectures (inherited weights) and their stand-alone test accuracy, which says whether a one-shot
supernet can rank this space at all at this budget; and a latency-budget comparison at a budget T
(the median measured p50 of the random architectures): budgeted DARTS search, the best of k random
architectures that measure ≤T (k chosen so that k retrains cost what search + retrain cost), and
DARTS_V2 shrunk (C, cells) until it measures ≤T.

Every job writes one JSON record under ``--work``/records; a re-run skips finished jobs, so an
interrupted benchmark continues where it stopped. Results: ``benchmarks/results/search_quality.{md,json,png}``.

    nice python benchmarks/search_quality.py                # ~60-90 min on 2 cores (2 workers x 1 thread)
    python benchmarks/search_quality.py --smoke              # a few minutes: checks the script end to end
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"
STRATEGIES = ("darts", "random", "evolution", "rl")
LABEL = {"darts": "darts", "random": "random-ws", "evolution": "evolution", "rl": "rl"}
DATASET = "fashion-mnist"
# Fashion-MNIST cut so that the whole benchmark fits one working session on 2 cores: the quick
# preset's stratified 2,000-image training split (1,000 for the weights, 1,000 for the architecture
# during search), 1,000 validation images (best retrain epoch), the full 10,000-image test set.
MAX_TRAIN, MAX_VAL = 2000, 1000
N_RANDOM = 10


def budgets(smoke: bool):
    from nasdeploy.config import PRESETS, SearchConfig, TrainConfig

    # The search budget every strategy shares: the quick preset's supernet and alpha schedule (DARTS
    # derives with the plain rule here; the skip guard is its own row), 50 scored candidates.
    quick = {k: v for k, v in PRESETS["quick"]["search"].items() if k != "skip_limit"}
    search = SearchConfig(**quick, candidates=50, population=10, sample_size=3, controller_lr=0.05,
                          baseline_decay=0.9, kernel="auto", threads=1)
    # One retraining recipe for every genotype (and the deployed network of the latency rows):
    # C=8, 5 cells, 8 epochs, a 2-pixel random shift at 28x28.
    train = TrainConfig(epochs=8, batch_size=64, C=8, layers=5, lr=0.05, auxiliary=False, cutout=False,
                        drop_path_prob=0.0, shift=2, threads=1)
    if smoke:
        search = dataclasses.replace(search, epochs=2, warmup_epochs=1, candidates=4, population=2, sample_size=2)
        train = dataclasses.replace(train, epochs=1, C=4, layers=3)
    return search, train


def load(max_train: int = MAX_TRAIN, max_val: int = MAX_VAL):
    from nasdeploy.data import load_dataset

    data = load_dataset(DATASET, seed=0, max_train=max_train)
    g = torch.Generator().manual_seed(0)
    keep = torch.randperm(len(data.y_val), generator=g)[:max_val]
    return dataclasses.replace(data, x_val=data.x_val[keep], y_val=data.y_val[keep])


# ----------------------------------------------------------------- jobs (one process, one thread each)

def _search_job(strategy: str, seed: int, work: str, cfg_d: dict, size: tuple[int, int], tag: str = "",
                deploy_d: dict | None = None) -> dict:
    from nasdeploy.artifacts import read_jsonl
    from nasdeploy.config import SearchConfig, TrainConfig
    from nasdeploy.strategies.darts import limit_skips
    from nasdeploy.strategies.dispatch import run_strategy

    torch.set_num_threads(1)
    data = load(*size)
    cfg = dataclasses.replace(SearchConfig(**cfg_d), strategy=strategy, seed=seed)
    out = Path(work) / f"{strategy}{tag}-s{seed}"
    t0 = time.perf_counter()
    deploy = {"deploy": TrainConfig(**deploy_d)} if deploy_d else {}
    res = run_strategy(cfg, data, out, progress=False, pictures=True,
                       resume=(out / "search" / "supernet.pt").is_file(), **deploy)
    rec = {"strategy": strategy, "seed": seed, "seconds": time.perf_counter() - t0, "search_val_acc": res.val_acc,
           "genotype": res.genotype.to_dict(), "out": str(out)}
    summary = json.loads((out / "search" / "summary.json").read_text())
    rec["signal"] = summary.get("signal", {})
    rec["latency"] = summary.get("latency")
    if strategy == "darts" and not deploy_d:  # the collapse guard is derivation only: same final alphas
        last = read_jsonl(out / "search" / "alphas.jsonl")[-1]
        g = limit_skips(torch.tensor(last["alphas_normal"]), torch.tensor(last["alphas_reduce"]), cfg.primitives,
                        cfg.steps, cfg.multiplier, 2)
        rec["skip_guarded"] = g.to_dict()
    return rec


def _train_job(method: str, seed: int, genotype: dict, work: str, train_d: dict, size: tuple[int, int],
               name: str) -> dict:
    from nasdeploy.config import TrainConfig
    from nasdeploy.space.genotype import Genotype
    from nasdeploy.training import train

    torch.set_num_threads(1)
    data = load(*size)
    cfg = dataclasses.replace(TrainConfig(**train_d), seed=seed)
    out = Path(work) / "train" / name
    t0 = time.perf_counter()
    resume = (out / "train" / "last.pt").is_file()
    res = train(Genotype.from_dict(genotype), cfg, data, out, progress=False, resume=resume)
    return {"method": method, "seed": seed, "name": name, "test_acc": res.test_acc, "val_acc": res.best_val_acc,
            "n_params": res.n_params, "seconds": time.perf_counter() - t0, "genotype": genotype,
            "C": cfg.C, "layers": cfg.layers}


def _score_job(strategy: str, seed: int, work: str, cfg_d: dict, size: tuple[int, int], genotypes: list) -> dict:
    """Scores of ``genotypes`` on the architecture half with the inherited weights of one search's supernet."""
    from nasdeploy.artifacts import load_checkpoint
    from nasdeploy.config import SearchConfig
    from nasdeploy.space.genotype import Genotype
    from nasdeploy.strategies.strategy import SharedSupernet

    torch.set_num_threads(1)
    data = load(*size)
    cfg = dataclasses.replace(SearchConfig(**cfg_d), strategy=strategy, seed=seed)
    shared = SharedSupernet(cfg, data)
    ck = load_checkpoint(Path(work) / f"{strategy}-s{seed}" / "search" / "supernet.pt", "supernet")
    shared.model.load_state_dict(ck["state_dict"])
    return {"strategy": strategy, "seed": seed, "scores": [shared.score(Genotype.from_dict(g)) for g in genotypes]}


def _p50(genotype, spec, C: int | None = None, layers: int | None = None) -> float:
    """The served network's p50 as the budget verifier judges it: exported, timed by a fresh process
    that imports only numpy and onnxruntime (kit.FreshProcessTimer), batch 1, one thread."""
    from nasdeploy.latency.kit import FreshProcessTimer
    from nasdeploy.latency.table import deploy_network
    from nasdeploy.space.genotype import Genotype

    spec = dataclasses.replace(spec, C=C or spec.C, layers=layers or spec.layers)
    g = Genotype.from_dict(genotype) if isinstance(genotype, dict) else genotype
    return FreshProcessTimer(1, "all", warmup=30, repeats=300, min_time_s=0.3)(deploy_network(g, spec), spec).p50_ms


# ----------------------------------------------------------------- driver

class Records:
    """One JSON file per finished job: a re-run skips what exists (resumable per method and seed)."""

    def __init__(self, root: Path):
        self.root = root / "records"
        self.root.mkdir(parents=True, exist_ok=True)

    def get(self, key: str):
        p = self.root / f"{key}.json"
        return json.loads(p.read_text()) if p.is_file() else None

    def put(self, key: str, value) -> None:
        p = self.root / f"{key}.json"
        tmp = p.with_suffix(".tmp")
        tmp.write_text(json.dumps(value, indent=1, default=str))
        os.replace(tmp, p)


def run_jobs(pool, records: Records, jobs: dict) -> dict:
    """``jobs``: key -> (fn, args). Runs the missing ones in ``pool``; returns every key's record."""
    futures = {k: pool.submit(fn, *args) for k, (fn, args) in jobs.items() if records.get(k) is None}
    for k, f in futures.items():
        records.put(k, f.result())
        print(f"  done {k}", flush=True)
    return {k: records.get(k) for k in jobs}


def main() -> None:
    from nasdeploy.space.cell import candidate_ops, sample_genotype
    from nasdeploy.space.genotype import GENOTYPES

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2, help="processes, one torch thread each")
    ap.add_argument("--work", default="runs/search_quality")
    ap.add_argument("--smoke", action="store_true", help="tiny budget and data: checks the script end to end")
    ap.add_argument("--no-latency", action="store_true", help="skip the latency-budget comparison")
    args = ap.parse_args()
    search_cfg, train_cfg = budgets(args.smoke)
    size = (200, 100) if args.smoke else (MAX_TRAIN, MAX_VAL)
    n_random = 3 if args.smoke else N_RANDOM
    tag = "search_quality_smoke" if args.smoke else "search_quality"
    work = Path(args.work + ("_smoke" if args.smoke else ""))
    records = Records(work)
    seeds = list(range(args.seeds))
    s_d, t_d = dataclasses.asdict(search_cfg), dataclasses.asdict(train_cfg)
    t0 = time.perf_counter()
    ops = candidate_ops(search_cfg.primitives)
    randoms = [sample_genotype(torch.Generator().manual_seed(1000 + i), ops, search_cfg.steps,
                               search_cfg.multiplier).to_dict() for i in range(n_random)]
    with ProcessPoolExecutor(args.workers) as pool:
        print(f"[1/4] searches: {', '.join(STRATEGIES)} x {len(seeds)} seeds", flush=True)
        found = run_jobs(pool, records, {f"search-{s}-s{seed}": (_search_job, (s, seed, str(work), s_d, size))
                                         for s in STRATEGIES for seed in seeds})
        print("[2/4] retrains (one recipe)", flush=True)
        jobs = {}
        for seed in seeds:
            jobs[f"train-DARTS_V2-s{seed}"] = ("DARTS_V2", seed, GENOTYPES["DARTS_V2"].to_dict())
            for s in STRATEGIES:
                r = found[f"search-{s}-s{seed}"]
                jobs[f"train-{LABEL[s]}-s{seed}"] = (LABEL[s], seed, r["genotype"])
                if s == "darts":
                    jobs[f"train-darts + skip guard-s{seed}"] = ("darts + skip guard", seed, r["skip_guarded"])
        for i, g in enumerate(randoms):
            jobs[f"train-random architecture-{i}"] = ("random architecture", 0, g)
        trained = run_jobs(pool, records, {k: (_train_job, (m, s, g, str(work), t_d, size, k.removeprefix("train-")))
                                           for k, (m, s, g) in jobs.items()})
        print("[3/4] supernet ranking of the random architectures", flush=True)
        scored = run_jobs(pool, records, {f"score-{s}-s{seed}": (_score_job, (s, seed, str(work), s_d, size, randoms))
                                          for s in ("darts", "random") for seed in seeds})
    latency = None
    if not args.no_latency:
        print("[4/4] latency budget (one process: timings need quiet cores)", flush=True)
        latency = latency_rows(records, work, search_cfg, train_cfg, size, randoms, trained, found, seeds[:1])
    report(found, trained, scored, latency, search_cfg, train_cfg, size, time.perf_counter() - t0, tag, seeds)


def latency_rows(records, work, search_cfg, train_cfg, size, randoms, trained, found, seeds) -> dict:
    """Three ways to a model at ≤T ms, T = the median measured p50 of the random architectures."""
    from nasdeploy.latency.table import DeploySpec
    from nasdeploy.space.genotype import GENOTYPES

    data = load(*size)
    spec = DeploySpec.from_configs(search_cfg, train_cfg, data.spec.input_shape, data.spec.num_classes)
    torch.set_num_threads(1)
    rand_ms = records.get("latency-random") or [_p50(g, spec) for g in randoms]
    records.put("latency-random", rand_ms)
    target = round(statistics.median(rand_ms), 3)
    out = {"target_ms": target, "spec": spec.key(), "random_p50_ms": rand_ms, "rows": []}
    # (1) the budgeted search, retrained with the recipe, its export measured
    s_d = dataclasses.asdict(dataclasses.replace(search_cfg, latency_target=target))
    with ProcessPoolExecutor(1) as pool:
        budgeted = run_jobs(pool, records, {f"search-darts-T-s{seed}": (
            _search_job, ("darts", seed, str(work), s_d, size, "-T", dataclasses.asdict(train_cfg))) for seed in seeds})
        retr = run_jobs(pool, records, {f"train-budgeted-s{seed}": (
            _train_job, ("budgeted darts", seed, budgeted[f"search-darts-T-s{seed}"]["genotype"], str(work),
                         dataclasses.asdict(train_cfg), size, f"budgeted-s{seed}")) for seed in seeds})
    for seed in seeds:
        r, b = retr[f"train-budgeted-s{seed}"], budgeted[f"search-darts-T-s{seed}"]
        key = f"latency-budgeted-s{seed}"
        ms = records.get(key) or _p50(r["genotype"], spec)
        records.put(key, ms)
        cost = b["seconds"] + r["seconds"]
        out["rows"].append({"method": "budgeted DARTS search", "seed": seed, "test_acc": r["test_acc"], "p50_ms": ms,
                            "within": ms <= target, "compute_s": cost, "search_record": b.get("latency")})
    # (2) best (by validation accuracy) of the first k random architectures that measure <= T
    rand_train = [trained[f"train-random architecture-{i}"] for i in range(len(randoms))]
    per_train = statistics.mean(t["seconds"] for t in rand_train)
    k = max(1, round(statistics.mean(row["compute_s"] for row in out["rows"]) / per_train))
    fits = [i for i, ms in enumerate(rand_ms) if ms <= target][:k]
    if fits:
        best = max(fits, key=lambda i: rand_train[i]["val_acc"])
        out["rows"].append({"method": f"best of k={k} random archs ≤T", "seed": 0,
                            "test_acc": rand_train[best]["test_acc"], "p50_ms": rand_ms[best], "within": True,
                            "compute_s": per_train * len(fits), "candidates": fits})
    # (3) DARTS_V2 shrunk: the largest (C, cells) of a grid that measures <= T
    v2 = GENOTYPES["DARTS_V2"]
    shrink = records.get("latency-v2-shrink") or []
    if not shrink:
        for C, L in [(8, 5), (8, 4), (6, 5), (6, 4), (4, 5), (4, 4), (4, 3), (2, 3)]:
            ms = _p50(v2, spec, C, L)
            shrink.append({"C": C, "layers": L, "p50_ms": ms})
            if ms <= target:
                break
        records.put("latency-v2-shrink", shrink)
    fit = shrink[-1]
    if fit["p50_ms"] <= target:
        cfg = dataclasses.asdict(dataclasses.replace(train_cfg, C=fit["C"], layers=fit["layers"]))
        with ProcessPoolExecutor(1) as pool:
            v2r = run_jobs(pool, records, {f"train-v2-shrunk-s{seed}": (
                _train_job, ("DARTS_V2 shrunk", seed, v2.to_dict(), str(work), cfg, size, f"v2-shrunk-s{seed}"))
                for seed in seeds})
        for seed in seeds:
            r = v2r[f"train-v2-shrunk-s{seed}"]
            out["rows"].append({"method": f"DARTS_V2 shrunk to C={fit['C']}, {fit['layers']} cells", "seed": seed,
                                "test_acc": r["test_acc"], "p50_ms": fit["p50_ms"], "within": True,
                                "compute_s": r["seconds"]})
    out["v2_shrink"] = shrink
    return out


# ----------------------------------------------------------------- statistics and report

def _mean_std(xs):
    return statistics.mean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def welch_ci(a, b, level: float = 0.95):
    """Confidence interval of mean(a) - mean(b) (Welch's t; unequal variances)."""
    from scipy import stats

    ma, mb = statistics.mean(a), statistics.mean(b)
    va = statistics.variance(a) / len(a) if len(a) > 1 else 0.0
    vb = statistics.variance(b) / len(b) if len(b) > 1 else 0.0
    se = math.sqrt(va + vb)
    if se == 0:
        return ma - mb, ma - mb, ma - mb
    num = (va + vb) ** 2
    den = (va ** 2 / (len(a) - 1) if len(a) > 1 else 0) + (vb ** 2 / (len(b) - 1) if len(b) > 1 else 0)
    t = stats.t.ppf(0.5 + level / 2, num / den)
    return ma - mb, ma - mb - t * se, ma - mb + t * se


def _pairwise(gs) -> list[float]:
    from nasdeploy.space.cell import genotype_agreement

    return [genotype_agreement(gs[i], gs[j]) for i in range(len(gs)) for j in range(i + 1, len(gs))]


def report(found, trained, scored, latency, search_cfg, train_cfg, size, total, tag, seeds) -> None:
    from scipy import stats

    from nasdeploy.artifacts import atomic_write

    n_test = len(load(*size).y_test)

    from nasdeploy.space.genotype import Genotype

    methods = ["darts", "darts + skip guard", "random-ws", "evolution", "rl", "DARTS_V2", "random architecture"]
    rand = [t["test_acc"] for t in trained.values() if t["method"] == "random architecture"]
    rows = []
    for m in methods:
        accs = [t["test_acc"] for t in trained.values() if t["method"] == m]
        if not accs:
            continue
        mean, std = _mean_std(accs)
        diff = welch_ci(accs, rand) if m != "random architecture" else None
        rows.append({"method": m, "n": len(accs), "mean": mean, "std": std, "accs": accs, "diff_ci": diff,
                     "params": statistics.mean(t["n_params"] for t in trained.values() if t["method"] == m)})
    standalone = [trained[f"train-random architecture-{i}"]["test_acc"] for i in range(len(rand))]
    taus = []
    for s in scored.values():
        tau, p = stats.kendalltau(s["scores"], standalone)
        taus.append({"supernet": f"{LABEL[s['strategy']]} seed {s['seed']}", "tau": float(tau), "p": float(p)})
    stab = []
    for seed in seeds:
        sig = found[f"search-darts-s{seed}"].get("signal", {})
        stab.append({"seed": seed, **sig})
    darts_g = [Genotype.from_dict(found[f"search-darts-s{seed}"]["genotype"]) for seed in seeds]
    rand_g = [Genotype.from_dict(t["genotype"]) for t in trained.values() if t["method"] == "random architecture"]
    cross, chance = _pairwise(darts_g), _pairwise(rand_g)

    n_train, n_val = size
    lines = [
        "# Does search earn its cost? Fashion-MNIST, one budget, one retrain recipe",
        "",
        f"Data: Fashion-MNIST (Debian `dataset-fashion-mnist`), a stratified {n_train:,}-image training split "
        f"(search: {int(n_train * search_cfg.train_portion):,} for the weights, the rest for the architecture), "
        f"{n_val:,} validation images (best retrain epoch), the full test set ({n_test:,} images; one error = "
        f"{100 / n_test:.2f} pt). Subsampled so that the benchmark fits one working session on 2 cores.",
        f"Search budget (every strategy): {search_cfg.epochs} epochs over the same weight half "
        f"(DARTS: {search_cfg.warmup_epochs} warm-up epochs with frozen alphas, Adam lr {search_cfg.a_lr}), supernet "
        f"C={search_cfg.C}, {search_cfg.layers} cells, batch {search_cfg.batch_size}; black-box strategies score "
        f"{search_cfg.candidates} candidates with inherited weights (evolution P={search_cfg.population}, "
        f"S={search_cfg.sample_size}; REINFORCE lr {search_cfg.controller_lr}).",
        f"Retrain recipe (every row): {train_cfg.epochs} epochs, C={train_cfg.C}, {train_cfg.layers} cells, "
        f"batch {train_cfg.batch_size}, lr {train_cfg.lr}, auxiliary={train_cfg.auxiliary}, "
        f"cutout={train_cfg.cutout}, drop-path {train_cfg.drop_path_prob}.",
        f"Seeds: {len(seeds)} per method (search seed = retrain seed); {len(rand)} random architectures. "
        f"Whole benchmark: {total / 60:.1f} min this invocation (resumed jobs not counted), 2 workers x 1 thread, "
        f"{os.cpu_count()} cores, {platform.machine()}.",
        "",
        "| method | test acc mean ± std | per seed | Δ vs random archs [95% CI] | params |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        per = ", ".join(f"{a:.4f}" for a in r["accs"]) if r["n"] <= 3 else f"{min(r['accs']):.4f}–{max(r['accs']):.4f}"
        d = r["diff_ci"]
        dtxt = f"{100 * d[0]:+.2f} pt [{100 * d[1]:+.2f}, {100 * d[2]:+.2f}]" if d else "–"
        lines.append(f"| {r['method']} | {r['mean']:.4f} ± {r['std']:.4f} | {per} | {dtxt} | {r['params']:,.0f} |")
    lines += ["", "## Can a supernet rank this space? (Kendall tau, supernet score vs stand-alone test accuracy, "
              f"{len(standalone)} random architectures)", "", "| supernet | tau | p |", "|---|---|---|"]
    lines += [f"| {t['supernet']} | {t['tau']:+.3f} | {t['p']:.2f} |" for t in taus]
    lines += ["", "## A signal in the alphas (DARTS)", "",
              "| seed | softmax range | median margin | last epochs agree with final | stable |",
              "|---|---|---|---|---|"]
    for s in stab:
        if s.get("weight_min") is None:
            continue
        lines.append(f"| {s['seed']} | {s['weight_min']:.3f}–{s['weight_max']:.3f} | {s['margin_median']:.3f} | "
                     f"{', '.join(f'{a:.2f}' for a in s['agreement_last_epochs'])} | {s['stable']} |")
    if cross:
        lines += ["", f"Across seeds, DARTS genotypes agree on {statistics.mean(cross):.2f} of their edges "
                      f"(pairwise mean); two random architectures agree on {statistics.mean(chance):.2f} (chance)."]
    if latency:
        lines += ["", f"## Under a latency budget: T = {latency['target_ms']:.3f} ms (median p50 of the random "
                      f"architectures; ORT, batch 1, 1 thread, {latency['spec']})", "",
                  "| method | seed | test acc | measured p50 ms | ≤T | compute s |", "|---|---|---|---|---|---|"]
        for r in latency["rows"]:
            lines.append(f"| {r['method']} | {r['seed']} | {r['test_acc']:.4f} | {r['p50_ms']:.3f} | "
                         f"{'yes' if r['within'] else 'NO'} | {r['compute_s']:.0f} |")
        lines += ["", "DARTS_V2 shrink grid: " + ", ".join(f"C={s['C']}/{s['layers']} cells {s['p50_ms']:.3f} ms"
                                                         for s in latency["v2_shrink"])]
    lines += ["", "Found genotypes (normal cell):", ""]
    for k, r in found.items():
        g = Genotype.from_dict(r["genotype"])
        lines.append(f"- {k.removeprefix('search-')}: " + ", ".join(f"{op}({j})" for op, j in g.normal)
                     + f" — search val acc {r['search_val_acc']:.3f}, {r['seconds']:.0f} s")
    md = "\n".join(lines) + "\n"
    RESULTS.mkdir(parents=True, exist_ok=True)
    atomic_write(RESULTS / f"{tag}.md", md)
    atomic_write(RESULTS / f"{tag}.json", json.dumps(
        {"rows": rows, "kendall_tau": taus, "stability": stab, "cross_seed_agreement": cross,
         "chance_agreement": chance, "latency": latency, "searches": found, "trained": trained,
         "search_config": dataclasses.asdict(search_cfg), "train_config": dataclasses.asdict(train_cfg),
         "size": size, "seconds": total}, indent=1, default=str))
    _plot(rows, latency, RESULTS / f"{tag}.png")
    print(md)


def _plot(rows, latency, path: Path) -> None:
    from matplotlib.figure import Figure

    from nasdeploy.viz import save_figure

    fig = Figure(figsize=(11, 4))
    ax = fig.add_subplot(1, 2 if latency else 1, 1)
    for i, r in enumerate(rows):
        baseline = r["method"] in ("DARTS_V2", "random architecture")
        ax.errorbar(i, r["mean"], yerr=r["std"], fmt="o", capsize=5, color="C1" if baseline else "C0")
        ax.scatter([i] * len(r["accs"]), r["accs"], s=12, color="gray", zorder=3)
    ax.set_xticks(range(len(rows)), [r["method"] for r in rows], rotation=25, ha="right")
    ax.set_ylabel("test accuracy (retrained)")
    ax.set_title("Fashion-MNIST: searched (blue) vs baselines (orange)", fontsize=9)
    ax.grid(alpha=0.3)
    if latency:
        ax2 = fig.add_subplot(1, 2, 2)
        rand = [r for r in rows if r["method"] == "random architecture"]
        if rand and len(rand[0]["accs"]) == len(latency["random_p50_ms"]):
            ax2.scatter(latency["random_p50_ms"], rand[0]["accs"], color="lightgray", label="random architectures")
        for j, r in enumerate(latency["rows"]):
            ax2.scatter(r["p50_ms"], r["test_acc"], label=f"{r['method']} s{r['seed']}", color=f"C{j}")
        ax2.axvline(latency["target_ms"], color="k", ls="--", lw=1, label="T")
        ax2.set_xlabel("measured p50 (ms, ORT batch 1, 1 thread)")
        ax2.set_ylabel("test accuracy")
        ax2.legend(fontsize=7)
        ax2.grid(alpha=0.3)
    save_figure(fig, Path(path))


if __name__ == "__main__":
    main()
