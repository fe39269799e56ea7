"""Latency budget validation (issues 5, 12): prediction, budgets held by measurement, refusal, kit round trip.

Per deployment shape (1x8x8 digits; 3x32x32 = digits upsampled to CIFAR size, C=16, 8 cells):

- prediction: N random genotypes (not the calibration's), exported as deployed and timed with
  ``latency.measure``: predicted vs measured ORT p50 — share within ±10%, Spearman rho;
- budgets: DARTS with K budgets spread over the measured range plus one unconstrained search;
  the search verifies and repairs its network (``latency.budget``); each genotype is retrained,
  exported with ``deploy.export`` and measured again **in a fresh process**; test accuracy beside it;
- refusal (8x8): ``nasdeploy search --latency-target 1e-5`` on an empty cache, wall time and the error;
- kit (8x8): ``nasdeploy latency-kit``, its runner at 2 threads, the resulting table's range.

Every figure carries ``os.getloadavg()``. Resumable: finished rows are kept in the JSON and
skipped on a re-run (``--redo SECTION`` to measure a section again, e.g. on a quiet machine).
Writes ``benchmarks/results/latency_validation.{md,json,png}``. Never part of the test run:

    nohup nice python benchmarks/latency_validation.py > /tmp/latval.log 2>&1 &
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from nasdeploy.artifacts import atomic_write, write_json
from nasdeploy.config import PRESETS, SearchConfig, TrainConfig
from nasdeploy.errors import NasdeployError
from nasdeploy.latency.budget import FRESH_RUNS
from nasdeploy.latency.kit import FreshProcessTimer
from nasdeploy.latency.measure import INTERLEAVE, load_avg, machine_fingerprint, steady_ms
from nasdeploy.latency.model import achievable_range, genotype_latency
from nasdeploy.latency.table import (
    DeploySpec,
    LatencyTable,
    _skeleton_inputs,
    deploy_network,
    ort_timer,
    random_genotype,
    skeleton_network,
)
from nasdeploy.viz import save_figure


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


def prediction(table: LatencyTable, spec: DeploySpec, n: int, seed: int, timer, log, rows=None,
               on_row=None) -> dict:
    rng = random.Random(f"validation-{seed}")
    rows = list(rows or [])
    gs = [random_genotype(rng, spec.steps, spec.multiplier, spec.primitives) for _ in range(n)]
    group = INTERLEAVE["group"]
    # The skeleton, timed among every group, is the anchor: a group is re-timed while it reads more than 5% off
    # its table figure (the table's own rule, OrtTimer.many_anchored), so a slow stretch of the host that spans
    # one group does not pass for a prediction error. The ratios are kept per row.
    skeleton = skeleton_network(spec, _skeleton_inputs(spec.steps))[0]
    for g0 in range(len(rows), n, group):  # rows timed by an earlier, interrupted run: the same seeded draw
        chunk = gs[g0:g0 + group]
        la = load_avg()
        stats, ratios = timer.many_anchored([deploy_network(g, spec) for g in chunk], spec, skeleton,
                                            table.fixed[spec.key()]["skeleton_ms"])
        for k, (g, st) in enumerate(zip(chunk, stats), g0):
            rows.append({"genotype": g.to_dict(), "measured_ms": steady_ms(st), "plain_p50_ms": st.p50_ms,
                         "predicted_ms": table.predict_ms(g, spec), "raw_sum_ms": table.raw_ms(g, spec),
                         "load_avg": la, "anchor_ratios": ratios})
            log(f"  net {k + 1}/{n}: measured (steady p50) {steady_ms(st):.4f} ms (p50 {st.p50_ms:.4f})  "
                f"predicted {rows[-1]['predicted_ms']:.4f}  raw {rows[-1]['raw_sum_ms']:.4f}")
        if on_row is not None:
            on_row(rows)
    return scored(table, spec, rows)


def scored(table: LatencyTable, spec: DeploySpec, rows: list[dict]) -> dict:
    """The rows' predictions by today's table (its calibration refitted by today's rule), against their timings."""
    from nasdeploy.space.genotype import Genotype

    for row in rows:
        g = Genotype.from_dict(row["genotype"])
        row["predicted_ms"], row["raw_sum_ms"] = table.predict_ms(g, spec), table.raw_ms(g, spec)
    meas = [r["measured_ms"] for r in rows]
    return {"networks": rows, "calibrated": summarize([r["predicted_ms"] for r in rows], meas),
            "raw_sum": summarize([r["raw_sum_ms"] for r in rows], meas),
            "measured_range_ms": [min(meas), max(meas)]}


_FT = FreshProcessTimer().timing()
FRESH_HOW = f"{_FT['warmup']} warm-up, >={_FT['repeats']} runs and >={_FT['min_time_s']:g} s"


def fresh_p50(onnx: Path, threads: int = 1, runs: int = FRESH_RUNS) -> dict:
    """The exported model's steady p50 measured by new Python processes (numpy and onnxruntime only): the
    verifier's own fresh-process timer and settings (``kit.FreshProcessTimer``), not the search's figure;
    the median of ``runs`` processes, as the search's verdict."""
    shape = [1, *ort.InferenceSession(str(onnx), providers=["CPUExecutionProvider"]).get_inputs()[0].shape[1:]]
    sts = [FreshProcessTimer(threads=threads).time_file(onnx, tuple(shape)) for _ in range(runs)]
    return {"p50_ms": float(np.median([steady_ms(st) for st in sts])), "runs_steady_ms": [steady_ms(st) for st in sts],
            "plain_p50_ms": float(np.median([st.p50_ms for st in sts])), "repeats": [st.repeats for st in sts],
            "load_avg": load_avg()}


def digits32(path: Path) -> Path:
    """Digits at CIFAR size: 8x8 upsampled 4x (nearest), three channels (the latency depends on the shape only)."""
    if not path.is_file():
        from sklearn.datasets import load_digits

        d = load_digits()
        x = np.repeat(np.repeat(d.images[:, None] / 16.0, 4, axis=2), 4, axis=3)
        x = np.repeat(x, 3, axis=1).astype(np.float32)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, x=x, y=d.target.astype(np.int64))
    return path


def budgets(spec: DeploySpec, table_path: Path, dataset: str, targets: list[float | None], args, log, done: dict,
            on_row) -> None:
    """One budgeted search per target (None: unconstrained), retrained, exported, measured in a fresh process."""
    from nasdeploy.data import load_dataset
    from nasdeploy.deploy.export import export
    from nasdeploy.strategies.darts import search
    from nasdeploy.training import train

    data = load_dataset(dataset, seed=0)
    quick = PRESETS["quick"]
    train_cfg = TrainConfig(**{**quick["train"], "C": spec.C, "layers": spec.layers, "epochs": args.train_epochs,
                               "seed": 0})
    for t in targets:
        name = "unconstrained" if t is None else f"budget_{t:.4f}ms"
        if name in done:
            continue
        run = Path(args.work) / f"{spec.in_channels}x{spec.H}x{spec.W}" / name
        search_cfg = SearchConfig(**{**quick["search"], "epochs": args.search_epochs, "seed": args.seed,
                                     "latency_target": t, "latency_weight": args.weight,
                                     "latency_under_weight": args.under,
                                     "latency_table": str(table_path), "latency_calibration": args.calibrate})
        t0 = time.perf_counter()
        res = search(search_cfg, data, run, progress=False, deploy=train_cfg)
        t_search = time.perf_counter() - t0
        rec_path = run / "search" / "latency_budget.json"
        rec = json.loads(rec_path.read_text()) if rec_path.is_file() else {}
        pred = genotype_latency(res.genotype, LatencyTable.load(table_path).costs(spec))
        tr = train(res.genotype, train_cfg, data, run, progress=False)
        rep = export(tr.checkpoint, out=run / "export", data=data)
        fresh = fresh_p50(Path(rep.onnx))
        p50 = fresh["p50_ms"]
        row = {"target_ms": t, "genotype": res.genotype.to_dict(), "predicted_ms": pred,
               "search_measured_ms": rec.get("measured_p50_ms"), "repairs": rec.get("repairs", []),
               "rounds": rec.get("rounds", []), "fresh_p50_ms": p50, "fresh_load_avg": fresh["load_avg"],
               "fresh_runs_ms": fresh["runs_steady_ms"], "fresh_plain_p50_ms": fresh["plain_p50_ms"],
               "test_acc": tr.test_acc, "supernet_val_acc": res.val_acc,
               "epoch_predicted_ms": [m.get("predicted_latency_ms") for m in res.metrics],
               "within_budget": None if t is None else bool(p50 <= t),
               "in_band": None if t is None else bool(0.85 * t <= p50 <= t),
               "search_s": t_search, "run_dir": str(run), "search_epochs": args.search_epochs,
               "train_epochs": args.train_epochs, "under_weight": args.under}
        log(f"  {name}: predicted {pred:.4f} ms  search-measured {row['search_measured_ms']}  fresh {p50:.4f} ms "
            f"(load {fresh['load_avg']})  repairs {len(row['repairs'])}  test acc {tr.test_acc:.4f}")
        done[name] = row
        on_row()


def refusal(args, log) -> dict:
    """``nasdeploy search`` with an impossible budget on an empty cache: seconds to the one-line error."""
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory(prefix="nasdeploy-refusal-") as d:
        env = {**os.environ, "NASDEPLOY_CACHE": d}
        cmd = [str(Path(sys.executable).with_name("nasdeploy")), "search", "--preset", "quick", "--quiet",
               "--deploy-channels", str(args.C), "--deploy-layers", str(args.layers), "--latency-target", "0.00001",
               "--out", str(Path(d) / "run")]
        la = load_avg()
        t0 = time.perf_counter()
        out = subprocess.run(cmd, capture_output=True, text=True, env=env)
        secs = time.perf_counter() - t0
    err = [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error:")]
    log(f"  refusal: exit {out.returncode} after {secs:.1f}s: {err[:1]}")
    return {"exit_code": out.returncode, "seconds": secs, "error": err, "load_avg": la, "command": " ".join(cmd[1:])}


def kit_round_trip(spec: DeploySpec, args, log) -> dict:
    """latency-kit → runner at 2 threads (another process, numpy + onnxruntime only) → a table search accepts."""
    import subprocess
    import tempfile

    from nasdeploy.latency.budget import measured_range, table_problems
    from nasdeploy.latency.kit import RUNNER, write_kit

    with tempfile.TemporaryDirectory(prefix="nasdeploy-kit-") as d:
        t0 = time.perf_counter()
        write_kit(spec, d, calibrate=args.calibrate, progress=False)
        t_kit = time.perf_counter() - t0
        out = Path(d) / "table.json"
        t0 = time.perf_counter()
        subprocess.run([sys.executable, str(Path(d) / RUNNER), "--threads", "2", "--out", str(out)], check=True,
                       capture_output=True)
        t_run = time.perf_counter() - t0
        table, local = LatencyTable.open(spec, out)
        lo, hi, _ = measured_range(table, spec, None)
        plo, phi = achievable_range(table.costs(spec))
        row = {"threads": table.fingerprint["threads"], "local": local, "kit_s": t_kit, "runner_s": t_run,
               "measured_range_ms": [lo, hi], "predicted_range_ms": [plo, phi], "problems": table_problems(table, spec),
               "calibration": {k: v for k, v in table.calibration.get(spec.key(), {}).items()
                               if k not in ("networks", "corrections_ms")}, "load_avg": load_avg()}
    log(f"  kit: 2 threads, measured range {lo:.4f}–{hi:.4f} ms, predicted {plo:.4f}–{phi:.4f}, {row['problems']}")
    return row


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shapes = [k for k, v in report["shapes"].items() if v.get("budgets")]
    if not shapes:
        return
    fig, axes = plt.subplots(1, len(shapes), figsize=(6 * len(shapes), 4), squeeze=False)
    for ax, shape in zip(axes[0], shapes):
        for name, r in report["shapes"][shape]["budgets"].items():
            sc = ax.scatter(r["fresh_p50_ms"], 100 * r["test_acc"], s=50, label=name)
            if r["target_ms"] is not None:
                ax.axvline(r["target_ms"], ls=":", lw=0.8, color=sc.get_facecolor()[0])
        ax.set_xlabel("fresh-process ORT p50 at batch 1, 1 thread (ms)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"{shape}: budgeted DARTS (dotted: budgets)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_figure(fig, path)


def markdown(report: dict) -> str:
    fp = report["fingerprint"]
    lines = ["# Latency budget validation", "",
             f"- machine: {fp['cpu']}, {fp['logical_cores']} logical cores, onnxruntime {fp['onnxruntime']}, "
             f"{fp['threads']} thread, opt level `{fp['opt_level']}` (fingerprint `{fp['id']}`)", ""]
    for shape, r in report["shapes"].items():
        if "table_refused" in r and "spec" not in r:  # nothing measured against a table this run could trust
            cal = r["table_refused"].get("calibration", {})
            lines += [f"## {shape}", "", f"- **table refused**: {r['table_refused']['error']}",
                      "- calibration (24 networks unless said): " + ", ".join(
                          f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in cal.items()), ""]
            continue
        if "spec" not in r:
            continue
        spec = r["spec"]
        lines += [f"## {shape} (C={spec['C']}, {spec['layers']} cells, batch {spec['batch']})", "",
                  *([f"- **table refused**: {r['table_refused']['error']}", ""] if "table_refused" in r else []),
                  f"- table: built in {r.get('table_s', float('nan')):.0f} s (load average {r.get('table_load_avg')});"
                  f" calibration {r.get('calibration')}",
                  f"- measured probe range {r['range_measured_ms'][0]:.4f}–{r['range_measured_ms'][1]:.4f} ms, "
                  f"predicted range {r['range_predicted_ms'][0]:.4f}–{r['range_predicted_ms'][1]:.4f} ms", ""]
        pr = r.get("prediction")
        if pr and pr.get("calibrated"):
            c, raw = pr["calibrated"], pr["raw_sum"]
            las = [x["load_avg"][0] for x in pr["networks"] if x.get("load_avg")]
            retimed = [x["anchor_ratios"] for x in pr["networks"][:: INTERLEAVE["group"]]
                       if len(x.get("anchor_ratios", [])) > 1]
            lines += [f"Groups of {INTERLEAVE['group']} re-timed because the skeleton timed among them read >5% off "
                      f"its table figure: {len(retimed)} (skeleton/table ratios per attempt: "
                      + ("; ".join(", ".join(f"{q:.3f}" for q in rr) for rr in retimed) or "none") + ")", ""]
            lines += [f"Prediction, {len(pr['networks'])} random genotypes (measured "
                      f"{pr['measured_range_ms'][0]:.4f}–{pr['measured_range_ms'][1]:.4f} ms; 1-min load average "
                      f"{min(las):.2f}–{max(las):.2f} while timing):" if las else "Prediction:", "",
                      "| predictor | median abs err % | within ±10% | max abs err % | mean err % | Spearman |",
                      "|---|---:|---:|---:|---:|---:|",
                      f"| calibrated in-context table | {c['median_abs_pct']:.1f} | {100 * c['within_10pct']:.0f}% "
                      f"| {c['max_abs_pct']:.1f} | {c['mean_pct']:+.1f} | {c['spearman']:.3f} |",
                      f"| raw table sum | {raw['median_abs_pct']:.1f} | {100 * raw['within_10pct']:.0f}% "
                      f"| {raw['max_abs_pct']:.1f} | {raw['mean_pct']:+.1f} | {raw['spearman']:.3f} |", ""]
        b = r.get("budgets")
        if b:
            ep = sorted({(row.get("search_epochs"), row.get("train_epochs")) for row in b.values()}, key=str)
            lines += ["Budgets: fresh-process figure = median steady p50 of 3 new processes (numpy + onnxruntime); "
                      "the plain p50 of the same timings beside it. (search, retrain) epochs: "
                      + ", ".join(f"({a}, {t})" for a, t in ep) + ".", "",
                      "| budget ms | predicted ms | search-measured ms | repairs | fresh-process p50 ms | ≤ T | "
                      "in [0.85T, T] | plain p50 ms | test acc | load avg (fresh) |",
                      "|---:|---:|---:|---:|---:|---|---|---:|---:|---|"]
            for _name, row in sorted(b.items(), key=lambda kv: (kv[1]["target_ms"] is None, kv[1]["target_ms"] or 0)):
                t = "unconstrained" if row["target_ms"] is None else f"{row['target_ms']:.4f}"
                sm = "–" if row["search_measured_ms"] is None else f"{row['search_measured_ms']:.4f}"
                yes = {None: "–", True: "yes", False: "**no**"}
                lines.append(f"| {t} | {row['predicted_ms']:.4f} | {sm} | {len(row['repairs'])} "
                             f"| {row['fresh_p50_ms']:.4f} | {yes[row['within_budget']]} | {yes[row['in_band']]} "
                             f"| {row.get('fresh_plain_p50_ms', float('nan')):.4f} "
                             f"| {row['test_acc']:.4f} | {row['fresh_load_avg']} |")
            lines.append("")
    if "refusal" in report:
        f = report["refusal"]
        lines += ["## Out-of-range budget, empty cache", "",
                  f"`{f['command']}`: exit {f['exit_code']} after {f['seconds']:.1f} s (load average {f['load_avg']})",
                  "", f"    {f['error'][0] if f['error'] else '(no error line)'}", ""]
    if "kit" in report:
        k = report["kit"]
        lines += ["## Latency kit round trip", "",
                  f"kit written in {k['kit_s']:.0f} s; runner at {k['threads']} threads in {k['runner_s']:.0f} s; "
                  f"accepted as another machine's table (local: {k['local']}); measured range "
                  f"{k['measured_range_ms'][0]:.4f}–{k['measured_range_ms'][1]:.4f} ms, predicted "
                  f"{k['predicted_range_ms'][0]:.4f}–{k['predicted_range_ms'][1]:.4f} ms; problems: "
                  f"{k['problems'] or 'none'} (load average {k['load_avg']}); calibration {k.get('calibration')}", ""]
    lines += [f"Settings: {report.get('settings')}", "", "![accuracy vs latency](latency_validation.png)", ""]
    return "\n".join(lines)


SHAPES = {"8": (1, 8, "digits"), "32": (3, 32, None)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--work", default="runs/latency_validation", help="run directories of the budgeted searches")
    ap.add_argument("--shapes", default="8,32", help="8 (1x8x8 digits) and/or 32 (3x32x32)")
    ap.add_argument("--C", type=int, default=16, help="deployment channels (16)")
    ap.add_argument("--layers", type=int, default=8, help="deployment cells (8)")
    ap.add_argument("--networks", type=int, default=30)
    ap.add_argument("--calibrate", type=int, default=24)
    ap.add_argument("--budgets8", type=int, default=5)
    ap.add_argument("--budgets32", type=int, default=3)
    ap.add_argument("--weight", type=float, default=1.0, help="latency weight of the budgeted searches")
    ap.add_argument("--under", type=float, default=SearchConfig().latency_under_weight,
                    help="latency_under_weight of the budgeted searches (the config default)")
    ap.add_argument("--search-epochs", type=int, default=6)
    ap.add_argument("--train-epochs", type=int, default=10)
    ap.add_argument("--seed", type=int, default=2)
    ap.add_argument("--sections", default="refusal,prediction,kit,budgets")
    ap.add_argument("--redo", action="append", default=[], help="section to measure again (kept rows dropped)")
    ap.add_argument("--torch-threads", type=int, default=1, help="threads of the searches and retrainings (the "
                    "ORT timings run at 1 thread, in between)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.torch_threads)

    def log(s):
        print(s, file=sys.stderr, flush=True)

    out = Path(args.out)
    json_path, md_path = out / "latency_validation.json", out / "latency_validation.md"
    old = json.loads(json_path.read_text()) if json_path.exists() else {}
    report = {"fingerprint": machine_fingerprint(1, "all"), "shapes": old.get("shapes", {}),
              **{k: old[k] for k in ("refusal", "kit") if k in old and k not in args.redo}}
    report["settings"] = (f"quick preset search, {args.search_epochs} epochs, seed {args.seed}, latency weight "
                          f"{args.weight:g}, under weight {args.under:g}, default margin; train at C={args.C}, "
                          f"{args.layers} cells, "
                          f"{args.train_epochs} epochs; fresh-process p50: kit.FreshProcessTimer (numpy + "
                          f"onnxruntime only), {FRESH_HOW}")
    sections = args.sections.split(",")

    def save():
        write_json(json_path, report)
        atomic_write(md_path, markdown(report))

    if "refusal" in sections and "refusal" not in report:
        log("refusal on an empty cache ...")
        report["refusal"] = refusal(args, log)
        save()
    for key in args.shapes.split(","):
        in_ch, hw, dataset = SHAPES[key]
        dataset = dataset or str(digits32(Path(args.work) / "digits32.npz"))
        spec = DeploySpec(C=args.C, layers=args.layers, in_channels=in_ch, H=hw, W=hw, num_classes=10)
        shape = f"{in_ch}x{hw}x{hw}"
        r = report["shapes"].setdefault(shape, {})
        for sec in args.redo:
            r.pop(sec, None)
        log(f"{shape}: table for {spec.key()} ...")
        t0, la = time.perf_counter(), load_avg()
        table = LatencyTable.load_or_measure(spec, None, calibrate=args.calibrate, progress=True)
        if "table_s" not in r or table.missing(spec, args.calibrate) == []:
            r.setdefault("table_s", time.perf_counter() - t0)
            r.setdefault("table_load_avg", la)
        from nasdeploy.latency.budget import check_table, measured_range

        timer = ort_timer(1, "all")
        try:
            check_table(table, spec, timer, args.calibrate)
        except NasdeployError as e:  # a table measured under too much load: say so, go on with the next shape
            for stale in ("range_measured_ms", "range_predicted_ms", "calibration", "table_s", "table_load_avg"):
                r.pop(stale, None)  # figures of an earlier table: not this one's
            cal = table.calibration.get(spec.key(), {})
            r["table_refused"] = {"error": str(e), "load_avg": load_avg(), "calibration": {
                k: v for k, v in cal.items() if k not in ("networks", "corrections_ms")}}
            log(f"{shape}: table refused: {e}")
            save()
            continue
        r.pop("table_refused", None)
        lo, hi, _ = measured_range(table, spec, timer)
        costs = table.costs(spec)
        r.update(spec=spec.__dict__ | {"primitives": list(spec.primitives)}, table=str(table.path),
                 range_measured_ms=[lo, hi], range_predicted_ms=list(achievable_range(costs)),
                 calibration={k: v for k, v in table.calibration.get(spec.key(), {}).items() if k != "networks"})
        save()
        done_rows = r.get("prediction", {}).get("networks", [])
        if done_rows and len(done_rows) >= args.networks:  # timed earlier: scored by today's table and rule
            r["prediction"] = scored(table, spec, done_rows)
            save()
        if "prediction" in sections and len(r.get("prediction", {}).get("networks", [])) < args.networks:
            log(f"{shape}: prediction on {args.networks} random genotypes ...")
            def partial(rows, r=r):
                r["prediction"] = {"networks": rows}
                save()

            r["prediction"] = prediction(table, spec, args.networks, args.seed, timer, log,
                                         r.get("prediction", {}).get("networks", []), partial)
            save()
        if "kit" in sections and key == "8" and "kit" not in report:
            log("kit round trip ...")
            report["kit"] = kit_round_trip(spec, args, log)
            save()
        if "budgets" in sections:
            k = args.budgets8 if key == "8" else args.budgets32
            # inside both the measured probe range and the predicted range (what the search can reach)
            a, z = max(lo, r["range_predicted_ms"][0]), min(hi, r["range_predicted_ms"][1])
            targets = [a + f * (z - a) for f in np.linspace(0.15, 0.75, k)] if k > 1 else [(a + z) / 2]
            done = r.setdefault("budgets", {})
            log(f"{shape}: budgets {[round(t, 4) for t in targets]} + unconstrained ...")
            budgets(spec, table.path, dataset, [None, *targets], args, log, done, save)
            plot(report, out / "latency_validation.png")
            save()
    save()
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
