"""How well the latency table predicts, and how well a latency target steers the search (issue 5).

Prediction: N random genotypes of the search space, each exported as deployed
(``Network`` at the deployment config, dynamo exporter) and timed with
``latency.measure``; predicted (calibrated table sum, and the raw sum) vs
measured ORT p50: median absolute % error, share within ±10%, Spearman rho.
The random genotypes are disjoint from the table's calibration networks.

Steering: on digits, DARTS with three latency targets spanning >= 2x plus one
unconstrained search; each genotype is retrained, exported with
``deploy.export`` and profiled with ``deploy.profile``: measured p50 at batch 1
and test accuracy. A PNG plots accuracy vs measured latency.

Writes ``benchmarks/results/latency_validation.{md,json,png}``. Never part of
the test run. Run it niced; ~25 minutes on 2 busy shared cores:

    nice python benchmarks/latency_validation.py
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch

from nasdeploy.artifacts import atomic_write, write_json
from nasdeploy.config import PRESETS, ProfileConfig, SearchConfig, TrainConfig
from nasdeploy.latency.measure import machine_fingerprint
from nasdeploy.latency.model import achievable_range, genotype_latency
from nasdeploy.latency.table import DeploySpec, LatencyTable, deploy_network, ort_timer, random_genotype


def spearman(a, b) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def summarize(pred, meas) -> dict:
    pred, meas = np.asarray(pred), np.asarray(meas)
    err = 100 * (pred / meas - 1)
    return {
        "median_abs_pct": float(np.median(np.abs(err))),
        "mean_pct": float(err.mean()),
        "max_abs_pct": float(np.abs(err).max()),
        "within_10pct": float(np.mean(np.abs(err) <= 10)),
        "spearman": spearman(pred, meas),
    }


def prediction(table: LatencyTable, spec: DeploySpec, n: int, seed: int, timer, log) -> dict:
    rng = random.Random(f"validation-{seed}")
    rows = []
    for i in range(n):
        g = random_genotype(rng, spec.steps, spec.multiplier, spec.primitives)
        stats = timer(deploy_network(g, spec), spec)
        rows.append({"genotype": g.to_dict(), "measured_ms": stats.p50_ms, "predicted_ms": table.predict_ms(g, spec),
                     "raw_sum_ms": table.raw_ms(g, spec)})
        log(f"  net {i + 1}/{n}: measured {stats.p50_ms:.4f} ms  predicted {rows[-1]['predicted_ms']:.4f}  "
            f"raw {rows[-1]['raw_sum_ms']:.4f}")
    meas = [r["measured_ms"] for r in rows]
    return {"networks": rows, "calibrated": summarize([r["predicted_ms"] for r in rows], meas),
            "raw_sum": summarize([r["raw_sum_ms"] for r in rows], meas),
            "measured_range_ms": [min(meas), max(meas)]}


def steering(spec: DeploySpec, table_path: Path, targets: list[float | None], args, log, on_row=None) -> list[dict]:
    from nasdeploy.data import load_dataset
    from nasdeploy.deploy.export import export
    from nasdeploy.deploy.profile import profile
    from nasdeploy.strategies.darts import search
    from nasdeploy.training import train

    data = load_dataset("digits", seed=0)
    quick = PRESETS["quick"]
    train_cfg = TrainConfig(**{**quick["train"], "C": spec.C, "layers": spec.layers, "epochs": args.train_epochs,
                               "seed": 0})
    out = []
    for t in targets:
        name = "unconstrained" if t is None else f"target_{t:.3f}ms"
        run = Path(args.work) / name
        search_cfg = SearchConfig(**{**quick["search"], "epochs": args.search_epochs, "seed": args.seed,
                                     "latency_target": t, "latency_weight": args.weight,
                                     "latency_table": str(table_path), "latency_calibration": args.calibrate})
        t0 = time.perf_counter()
        res = search(search_cfg, data, run, progress=False, deploy=train_cfg)
        t_search = time.perf_counter() - t0
        costs = LatencyTable.load(table_path).costs(spec)
        pred = genotype_latency(res.genotype, costs)
        tr = train(res.genotype, train_cfg, data, run, progress=False)
        rep = export(tr.checkpoint, out=run / "export", data=data)
        prof = profile(rep.onnx, ProfileConfig(batch_sizes=(1,), threads=1, warmup=50, repeats=500, min_time_s=0.3),
                       out=run)
        p50 = prof.stats(1).p50_ms
        row = {"target_ms": t, "genotype": res.genotype.to_dict(), "predicted_ms": pred, "measured_p50_ms": p50,
               "test_acc": tr.test_acc, "supernet_val_acc": res.val_acc,
               "epoch_predicted_ms": [m.get("predicted_latency_ms") for m in res.metrics],
               "met": None if t is None else bool(p50 <= 1.1 * t),
               "within_10pct": None if t is None else bool(abs(p50 / t - 1) <= 0.1),
               "search_s": t_search, "run_dir": str(run)}
        log(f"  {name}: predicted {pred:.4f} ms  measured {p50:.4f} ms  test acc {tr.test_acc:.4f}")
        out.append(row)
        if on_row is not None:
            on_row(out)
    return out


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for r in rows:
        label = "unconstrained" if r["target_ms"] is None else f"target {r['target_ms']:.3f} ms"
        ax.scatter(r["measured_p50_ms"], 100 * r["test_acc"], s=50, label=label)
        if r["target_ms"] is not None:
            ax.axvline(r["target_ms"], ls=":", lw=0.8, color=ax.collections[-1].get_facecolor()[0])
    ax.set_xlabel("measured ORT p50 at batch 1, 1 thread (ms)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("digits: latency-targeted DARTS (dotted: targets)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=120)
    os.replace(tmp, path)


def markdown(report: dict) -> str:
    fp, spec = report["fingerprint"], report["spec"]
    lines = [
        "# Latency model validation",
        "",
        f"- machine: {fp['cpu']}, {fp['logical_cores']} logical cores, onnxruntime {fp['onnxruntime']}, "
        f"{fp['threads']} thread, opt level `{fp['opt_level']}` (fingerprint `{fp['id']}`); "
        f"load average at start {report['load_avg']}",
        f"- deployment network: C={spec['C']}, layers={spec['layers']}, input {spec['in_channels']}x{spec['H']}x"
        f"{spec['W']}, batch {spec['batch']}, stem {spec['stem']}",
        f"- achievable range (predicted): {report['range_ms'][0]:.4f}–{report['range_ms'][1]:.4f} ms",
        "",
    ]
    p = report.get("prediction")
    if p:
        c, r = p["calibrated"], p["raw_sum"]
        lines += [
            f"## Prediction ({len(p['networks'])} random genotypes, not used for calibration)",
            "",
            f"Measured p50 spans {p['measured_range_ms'][0]:.4f}–{p['measured_range_ms'][1]:.4f} ms.",
            "",
            "| predictor | median abs err % | within ±10% | max abs err % | mean err % | Spearman |",
            "|---|---:|---:|---:|---:|---:|",
            f"| calibrated in-context table | {c['median_abs_pct']:.1f} | {100 * c['within_10pct']:.0f}% "
            f"| {c['max_abs_pct']:.1f} | {c['mean_pct']:+.1f} | {c['spearman']:.3f} |",
            f"| raw in-context table sum | {r['median_abs_pct']:.1f} | {100 * r['within_10pct']:.0f}% "
            f"| {r['max_abs_pct']:.1f} | {r['mean_pct']:+.1f} | {r['spearman']:.3f} |",
            "",
        ]
    s = report.get("steering")
    if s:
        lines += [
            "## Steering (digits)",
            "",
            "| target ms | predicted ms | measured p50 ms | within ±10% or below | test acc |",
            "|---:|---:|---:|---|---:|",
        ]
        for row in s:
            t = "unconstrained" if row["target_ms"] is None else f"{row['target_ms']:.4f}"
            met = "–" if row["met"] is None else ("yes" if row["met"] else "no")
            lines.append(f"| {t} | {row['predicted_ms']:.4f} | {row['measured_p50_ms']:.4f} | {met} "
                         f"| {row['test_acc']:.4f} |")
        lines += ["", "Predicted latency of the derived genotype after each search epoch (ms):", ""]
        for row in s:
            t = "unconstrained" if row["target_ms"] is None else f"target {row['target_ms']:.4f}"
            traj = ", ".join(f"{x:.4f}" for x in row["epoch_predicted_ms"] if x is not None) or "– (no latency term)"
            err = 100 * (row["predicted_ms"] / row["measured_p50_ms"] - 1)
            lines.append(f"- {t}: {traj} (final network: prediction {err:+.1f}% vs measured)")
        lines += ["", f"Settings: {report['steering_settings']}", "", "![accuracy vs latency](latency_validation.png)",
                  ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--work", default="runs/latency_validation", help="run directories of the steering searches")
    ap.add_argument("--table", default=None, help="table JSON (default: the per-fingerprint cache)")
    ap.add_argument("--C", type=int, default=16, help="deployment channels (issue 5: the quick digits config, 16)")
    ap.add_argument("--layers", type=int, default=8, help="deployment cells (8)")
    ap.add_argument("--networks", type=int, default=30)
    ap.add_argument("--calibrate", type=int, default=8)
    ap.add_argument("--targets", default=None, help="comma-separated ms; default: 3 spanning >= 2x inside the range")
    ap.add_argument("--weight", type=float, default=1.0, help="latency weight of the steering searches")
    ap.add_argument("--search-epochs", type=int, default=6)
    ap.add_argument("--train-epochs", type=int, default=10)
    ap.add_argument("--seed", type=int, default=2)
    ap.add_argument("--skip", choices=["prediction", "steering"], action="append", default=[])
    args = ap.parse_args(argv)
    torch.set_num_threads(1)

    def log(s):
        print(s, file=sys.stderr, flush=True)

    spec = DeploySpec(C=args.C, layers=args.layers, in_channels=1, H=8, W=8, num_classes=10)
    fp = machine_fingerprint(1, "all")
    table_path = Path(args.table) if args.table else None
    load = [round(x, 2) for x in os.getloadavg()]
    log(f"table for {spec.key()} ...")
    table = LatencyTable.load_or_measure(spec, table_path, calibrate=args.calibrate, progress=True)
    costs = table.costs(spec)
    lo, hi = achievable_range(costs)
    report = {"fingerprint": fp, "spec": spec.__dict__ | {"primitives": list(spec.primitives)}, "load_avg": load,
              "table": str(table.path), "range_ms": [lo, hi],
              "calibration": {k: v for k, v in table.calibration.get(spec.key(), {}).items() if k != "networks"}}
    out = Path(args.out)
    json_path, md_path = out / "latency_validation.json", out / "latency_validation.md"
    if json_path.exists():  # keep the part not re-run
        old = json.loads(json_path.read_text())
        for k in ("prediction", "steering", "steering_settings"):
            if k in old and k.split("_")[0] in args.skip:
                report[k] = old[k]

    if "prediction" not in args.skip:
        log(f"prediction on {args.networks} random genotypes ...")
        report["prediction"] = prediction(table, spec, args.networks, args.seed, ort_timer(1, "all"), log)
        write_json(json_path, report)
    if "steering" not in args.skip:
        if args.targets:
            targets = [float(t) for t in args.targets.split(",")]
        else:  # three targets spanning 2.2x inside the range (geometric middle)
            t1 = lo + 0.12 * (hi - lo)
            t3 = min(2.2 * t1, lo + 0.9 * (hi - lo))
            targets = [t1, math.sqrt(t1 * t3), t3]
        report["steering_settings"] = {"search": f"quick preset search, epochs {args.search_epochs}, seed {args.seed}, "
                                                 f"latency weight {args.weight:g}",
                                       "train": f"quick preset train at C={spec.C}, layers={spec.layers}, "
                                                f"{args.train_epochs} epochs",
                                       "profile": "batch 1, 1 thread, opt level all, 50 warm-up, >=500 repeats"}
        log(f"steering: targets {[round(t, 4) for t in targets]} + unconstrained ...")
        def partial(rows):
            report["steering"] = rows
            write_json(json_path, report)

        report["steering"] = steering(spec, table.path, [*targets, None], args, log, partial)
        plot(report["steering"], out / "latency_validation.png")
    write_json(json_path, report)
    atomic_write(md_path, markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
