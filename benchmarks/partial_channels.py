"""PC-DARTS (``--partial-channels 4``) beside full DARTS at equal budget: test accuracy of the derived genotypes.

Same search (epochs, data, alpha schedule, seed), same retrain recipe, only ``partial_channels`` differs:

- digits: the quick preset's search and retrain (what ``nasdeploy pipeline --preset quick`` runs), seeds 0-2;
- Fashion-MNIST: ``search_quality.py``'s budget (its search and retrain configs, data cut), K=4 seeds, set
  beside that benchmark's full-DARTS rows when its recorded configs equal today's (checked, else it says so).

Step time and memory at K=4 vs full come from ``benchmarks/mixed_op.py --partial-channels 4``.
One JSON record per job under ``--work``/records (a re-run skips finished jobs). Results:
``benchmarks/results/partial_channels.{md,json}``.

    nice python benchmarks/partial_channels.py                    # digits 3 + 3 jobs, Fashion 2 seeds, 1 thread
    python benchmarks/partial_channels.py --datasets digits --seeds 1   # a few minutes
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import search_quality as sq  # noqa: E402  (the Fashion budget, its jobs and its records)

RESULTS = Path(__file__).resolve().parent / "results"
K = 4


def _digits_job(K: int, seed: int, work: str) -> dict:
    from nasdeploy.config import PRESETS, SearchConfig, TrainConfig
    from nasdeploy.data import load_dataset
    from nasdeploy.strategies.darts import search
    from nasdeploy.training import train

    torch.set_num_threads(1)
    quick = PRESETS["quick"]
    data = load_dataset("digits", seed=0)
    out = Path(work) / f"digits-K{K}-s{seed}"
    t0 = time.perf_counter()
    res = search(SearchConfig(**{**quick["search"], "partial_channels": K, "seed": seed, "threads": 1}), data, out,
                 progress=False)
    t_search = time.perf_counter() - t0
    tr = train(res.genotype, TrainConfig(**{**quick["train"], "seed": seed, "threads": 1}), data, out, progress=False)
    return {"dataset": "digits", "K": K, "seed": seed, "test_acc": tr.test_acc, "search_s": t_search,
            "train_s": time.perf_counter() - t0 - t_search, "genotype": res.genotype.to_dict(),
            "search_val_acc": res.val_acc}


def _fashion_job(K: int, seed: int, work: str) -> dict:
    search_cfg, train_cfg = sq.budgets(False)
    s_d = dataclasses.asdict(dataclasses.replace(search_cfg, partial_channels=K))
    size = (sq.MAX_TRAIN, sq.MAX_VAL)
    found = sq._search_job("darts", seed, work, s_d, size, tag=f"-K{K}")
    tr = sq._train_job(f"pc-darts K={K}", seed, found["genotype"], work, dataclasses.asdict(train_cfg), size,
                       f"pc{K}-s{seed}")
    return {"dataset": "fashion-mnist", "K": K, "seed": seed, "test_acc": tr["test_acc"], "search_s": found["seconds"],
            "train_s": tr["seconds"], "genotype": found["genotype"], "search_val_acc": found["search_val_acc"]}


def _fashion_full_darts() -> tuple[list[float], str]:
    """search_quality's full-DARTS accuracies, and whether its recorded configs are today's."""
    path = RESULTS / "search_quality.json"
    if not path.is_file():
        return [], "no search_quality.json"
    sqr = json.loads(path.read_text())
    search_cfg, train_cfg = sq.budgets(False)
    same = (sqr["search_config"] == json.loads(json.dumps(dataclasses.asdict(search_cfg), default=str))
            and sqr["train_config"] == json.loads(json.dumps(dataclasses.asdict(train_cfg), default=str)))
    row = next(r for r in sqr["rows"] if r["method"] == "darts")
    return row["accs"], "same configs" if same else "**configs differ from today's** (compare with care)"


def _row(name: str, recs: list[dict]) -> str:
    accs = [r["test_acc"] for r in recs]
    sd = statistics.stdev(accs) if len(accs) > 1 else float("nan")
    secs = statistics.mean(r["search_s"] for r in recs)
    return (f"| {name} | {len(accs)} | {statistics.mean(accs):.4f} ± {sd:.4f} | "
            f"{', '.join(f'{a:.4f}' for a in accs)} | {secs:.0f} |")


def report(recs: dict) -> None:
    lines = ["# PC-DARTS (K=4) beside full DARTS, equal budget", "",
             "Same search epochs, data, alpha schedule and seeds; same retrain recipe; 1 torch thread per job.", ""]
    for ds in ("digits", "fashion-mnist"):
        rows = [r for r in recs.values() if r["dataset"] == ds]
        if not rows:
            continue
        lines += [f"## {ds}", "", "| search | seeds | test acc (mean ± std) | per seed | search s (mean) |",
                  "|---|---:|---|---|---:|"]
        for k in sorted({r["K"] for r in rows}):
            name = "full DARTS (fused)" if k == 1 else f"PC-DARTS K={k} (fused)"
            lines.append(_row(name, sorted((r for r in rows if r["K"] == k), key=lambda r: r["seed"])))
        if ds == "fashion-mnist":
            accs, how = _fashion_full_darts()
            if accs:
                lines.append(f"| full DARTS, `search_quality.py` ({how}) | {len(accs)} | "
                             f"{statistics.mean(accs):.4f} ± {statistics.stdev(accs):.4f} | "
                             f"{', '.join(f'{a:.4f}' for a in accs)} | – |")
        lines.append("")
    out = {"records": recs}
    from nasdeploy.artifacts import atomic_write, write_json

    write_json(RESULTS / "partial_channels.json", out)
    atomic_write(RESULTS / "partial_channels.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", default="digits,fashion-mnist")
    ap.add_argument("--seeds", type=int, default=3, help="digits seeds (0..N-1)")
    ap.add_argument("--fashion-seeds", type=int, default=2, help="Fashion-MNIST PC-DARTS seeds (0..N-1)")
    ap.add_argument("--work", default="runs/partial_channels")
    args = ap.parse_args()
    records = sq.Records(Path(args.work))
    jobs = {}
    if "digits" in args.datasets:
        jobs |= {f"digits-K{k}-s{s}": (_digits_job, (k, s, args.work)) for s in range(args.seeds) for k in (1, K)}
    if "fashion-mnist" in args.datasets:
        jobs |= {f"fashion-K{K}-s{s}": (_fashion_job, (K, s, args.work)) for s in range(args.fashion_seeds)}
    done = {}
    for i, (key, (fn, a)) in enumerate(jobs.items(), 1):
        rec = records.get(key)
        if rec is None:
            print(f"[{i}/{len(jobs)}] {key} ...", flush=True)
            rec = fn(*a)
            records.put(key, rec)
        print(f"[{i}/{len(jobs)}] {key}: test acc {rec['test_acc']:.4f} (search {rec['search_s']:.0f} s)", flush=True)
        done[key] = rec
        report(done)


if __name__ == "__main__":
    main()
