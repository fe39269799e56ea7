"""The latency budget of a search: refuse early, steer, verify by measurement, repair.

``--latency-target T`` means: the exported network's measured ONNX Runtime p50 (batch,
threads, opt level, provider as configured) is at most ``T`` ms. This module holds the
parts of that promise that are not alpha arithmetic (``latency.model``):

1. :func:`prepare` measures the fastest and slowest *probe* networks first (seconds, even on
   an empty cache) and refuses a budget outside their measured range before any table is
   built; then builds (or reads) the table, refuses a table it cannot trust
   (:func:`check_table`) and checks the budget against the predicted range too.
2. :meth:`Budget.verify` exports the genotype that will be deployed to a temporary ONNX file
   and times it as a new ``nasdeploy profile`` process would: in :data:`FRESH_RUNS` fresh
   processes that import only numpy and onnxruntime and run ``latency.measure``'s loop
   (``kit.FreshProcessTimer``), and once in this process for comparison. The verdict figure is
   the median fresh-process p50; while it is over ``T·(1 − noise margin)`` (the margin: the
   fresh figures' half-range relative to their median, between :data:`NOISE_FLOOR` and
   :data:`MAX_MARGIN`; a wider spread is measured again and pooled, not repaired against) the
   genotype is repaired by :func:`repair_step` (the kept op whose loss of alpha strength per
   predicted ms saved is smallest is replaced by a cheaper op on the same edge) and measured
   again, a bounded number of rounds. The record goes to ``search/latency_budget.json``.

A table from another machine (the latency kit's, ``latency.kit``) is steered by but not
verified here: this machine is not the one that serves; the verdict says so.
"""

from __future__ import annotations

import os
import statistics
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import LatencyTargetError, ProfileError
from ..space.cell import alpha_rows
from ..space.genotype import Genotype
from ..space.primitives import candidate_ops
from .kit import FreshProcessTimer
from .measure import load_avg, steady_ms
from .model import LatencyCosts, achievable_range, genotype_latency
from .table import DeploySpec, LatencyTable, Timer, deploy_network, ort_timer, probe_genotypes

MAX_ROUNDS = 6  # measure → repair rounds before giving up
AIM = 0.98  # a repair aims this far under the limit so that one more measurement lands inside
FRESH_RUNS = 3  # fresh-process timings per round; the verdict figure is the median of their p50s
# The least noise margin: the verdict figure must be at most (1 - margin)·T. Issue 12 measured the same export's
# fresh-process figure 2.8% and 5% higher minutes after the verdict (2 shared cores), so 2% was not enough.
NOISE_FLOOR = 0.05
MAX_MARGIN = 0.10  # the most: a wider spread is measured again (pooled), not repaired away
MAX_CAL_ERR_PCT = 10.0  # calibration fits worse than this (median abs % over its networks) are not trusted
SCALE_RANGE = (0.5, 2.0)  # a calibrated scale outside this says the table and whole networks disagree


def _half_range(xs: Sequence[float]) -> float:
    """Half the range of ``xs`` relative to their median: the ± a figure of them is good to."""
    return 0.5 * (max(xs) - min(xs)) / statistics.median(xs)


def _busy() -> str:
    la = load_avg()
    if la is None:
        return f"{os.cpu_count()} cores"
    return (f"load average {la[0]:.2f}, {la[1]:.2f}, {la[2]:.2f} on {os.cpu_count()} cores"
            + (" (a busy machine)" if la[0] > (os.cpu_count() or 1) * 0.75 else ""))


# ------------------------------------------------------------------ probes: the measured range


def measured_range(table: LatencyTable, spec: DeploySpec, timer: Timer | None, progress: bool = False,
                   target: float | None = None) -> tuple[float, float, dict]:
    """(fastest, slowest) measured p50 of the probe networks; measures the ones the table lacks (timer None: none).

    With ``target``, a budget below the fast probe is refused before the slow one is measured.
    """
    probes = table.probes.setdefault(spec.key(), {})
    todo = [(side, name, g) for side, gs in probe_genotypes(spec).items() for name, g in gs.items()
            if name not in probes]
    if todo and timer is None:
        raise ProfileError(f"latency table {table.path} has no probe networks for {spec.key()}",
                           "run the latency kit's runner on the serving machine again (it times them first)")
    for side, name, g in todo:
        stats = timer(deploy_network(g, spec), spec)
        ms = steady_ms(stats)
        probes[name] = {"side": side, "genotype": g.to_dict(), "p50_ms": ms, "stats": stats.to_dict(),
                        "load_avg": load_avg()}
        if progress:
            print(f"probe {name}: {ms:.4f} ms", flush=True)
        if table.path is not None:
            table.save(table.path)
        if side == "fast" and target is not None and target < ms:
            check_budget(target, ms, float("inf"), "measured p50 of its fastest probe network")
    fast = min(p["p50_ms"] for p in probes.values() if p["side"] == "fast")
    slow = max(p["p50_ms"] for p in probes.values() if p["side"] == "slow")
    return fast, slow, probes


def check_budget(target: float, lo: float, hi: float, what: str) -> None:
    """Refuse a budget outside ``[lo, hi]`` (``what`` says how the range was obtained)."""
    if target is None or not target > 0:
        raise LatencyTargetError(f"latency target {target!r} ms is not positive",
                                 f"give a budget in ms between {lo:.4g} and {hi:.4g}")
    if target < lo:
        span = f"{lo:.4g}–{hi:.4g} ms" if hi < float("inf") else f"{lo:.4g} ms"
        raise LatencyTargetError(
            f"latency budget {target:.4g} ms is below the fastest derivable network ({what}: {span}, {_busy()})",
            f"choose a budget of at least {lo:.4g} ms, or fewer channels/cells")
    if target > hi:
        raise LatencyTargetError(
            f"latency budget {target:.4g} ms is above the slowest derivable network ({what}: {lo:.4g}–{hi:.4g} ms): "
            "every network fits", f"drop --latency-target, or choose a budget between {lo:.4g} and {hi:.4g} ms")


# ------------------------------------------------------------------ trusting a table


def _cal_err(cal: dict) -> float | None:
    """The calibration's error figure: leave-one-out where it was computed (tables from before: in-sample)."""
    loo = cal.get("loo_median_abs_pct")
    return loo if loo is not None else cal.get("fit_median_abs_pct")


def _calibration_holds(table: LatencyTable, spec: DeploySpec) -> bool:
    cal = table.calibration.get(spec.key(), {})
    err, scale = _cal_err(cal), cal.get("scale")
    return (err is not None and err <= MAX_CAL_ERR_PCT and scale is not None
            and SCALE_RANGE[0] <= scale <= SCALE_RANGE[1])


def confirmed_negative(table: LatencyTable, spec: DeploySpec) -> list[str]:
    """Negative entries that a re-measurement reproduced (``"confirmed_negative"``) while whole networks fit.

    An op can be cheaper than the placeholder it replaces (a pool that ORT runs faster than the
    strided Slice of the skeleton, or a layout change that saves a reorder): a cost below 0
    measured twice, with the calibration on whole networks within :data:`MAX_CAL_ERR_PCT`, is
    a fact of this runtime, not noise. Such a table is used, with one warning naming the entries.
    """
    if not _calibration_holds(table, spec):
        return []
    return [k for k in table.entry_keys(spec)
            if table.entries[k]["ms"] < 0 and table.entries[k].get("confirmed_negative")]


def table_problems(table: LatencyTable, spec: DeploySpec) -> list[str]:
    """Why the table's numbers for ``spec`` cannot be used (empty: they can)."""
    out = []
    ok = set(confirmed_negative(table, spec))
    neg = [k for k in table.entry_keys(spec) if table.entries[k]["ms"] < 0 and k not in ok]
    if neg:
        out.append(f"{len(neg)} negative per-op costs ({', '.join(neg[:3])}{', ...' if len(neg) > 3 else ''})")
    fx = table.fixed.get(spec.key())
    if fx is not None and fx["ms"] <= 0:
        out.append(f"a non-positive fixed part ({fx['ms']:.4g} ms)")
    cal = table.calibration.get(spec.key(), {})
    err, scale = _cal_err(cal), cal.get("scale")
    if err is not None and err > MAX_CAL_ERR_PCT:
        how = "left out of the fit in turn" if cal.get("loo_median_abs_pct") is not None else "in the fit"
        out.append(f"a calibration {err:.1f}% off its own networks ({how}; > {MAX_CAL_ERR_PCT:g}%)")
    if scale is not None and not SCALE_RANGE[0] <= scale <= SCALE_RANGE[1]:
        out.append(f"a calibration scale {scale:.3f} outside {SCALE_RANGE[0]}–{SCALE_RANGE[1]}")
    return out


def check_table(table: LatencyTable, spec: DeploySpec, timer: Timer | None, calibrate: int, progress: bool = True,
                retries: int = 2) -> None:
    """Re-measure the untrusted parts of a local table (``retries`` times); fail naming the reason otherwise.

    A negative entry that the re-measurement reproduces is marked ``confirmed_negative`` (and kept
    by later re-measurements); with a calibration that holds it is used (:func:`confirmed_negative`).
    """
    for _ in range(retries if timer is not None else 0):
        if not table_problems(table, spec):
            break
        negative = {k for k in table.entry_keys(spec) if table.entries[k]["ms"] < 0}
        cal_bad = any("calibration" in p for p in table_problems(table, spec))
        table.forget_untrusted(spec, calibration=cal_bad)  # a calibration that held is refitted, not re-timed
        table.measure_missing(spec, timer, calibrate, progress)
        table.refit_calibration(spec)
        for k in negative & set(table.entry_keys(spec)):
            if table.entries[k]["ms"] < 0:
                table.entries[k]["confirmed_negative"] = True
        if table.path is not None:
            table.save(table.path)
    problems = table_problems(table, spec)
    if problems:
        where = "measured here" if timer is not None else f"measured on {table.fingerprint.get('cpu')}"
        raise ProfileError(f"latency table {table.path} ({where}) has {'; '.join(problems)} — {_busy()}",
                           "re-measure on a quieter machine (delete the table, or re-run the kit's runner)")
    neg = confirmed_negative(table, spec)
    if neg:
        cal = table.calibration[spec.key()]
        warnings.warn(f"latency table {table.path}: {len(neg)} per-op costs are below 0 on two measurements "
                      f"({', '.join(neg[:3])}{', ...' if len(neg) > 3 else ''}: the op runs faster than the "
                      f"placeholder it replaces); used, since whole networks fit within "
                      f"{_cal_err(cal):.1f}%", RuntimeWarning, stacklevel=2)


# ------------------------------------------------------------------ repair


def repair_step(genotype: Genotype, costs: LatencyCosts, weights: Sequence[torch.Tensor] | None = None,
                skip_limit: int | None = None) -> tuple[Genotype, dict] | None:
    """Replace the one kept op whose alpha strength lost per predicted ms saved is smallest by a cheaper op.

    ``weights``: ``softmax(alpha)`` of (normal, reduce) (``space.cell.derivation_weights``); None:
    every op equally strong (the largest saving goes first). Returns None when no op can get cheaper.
    """
    col = {p: i for i, p in enumerate(costs.primitives)}
    ops = candidate_ops(costs.primitives)
    best = None
    for reduction, edges, cost in ((False, genotype.normal, costs.normal), (True, genotype.reduce, costs.reduce)):
        w = None if weights is None else weights[int(reduction)]
        skips = sum(op == "skip_connect" for op, _ in edges)
        for k, (r, (op, j)) in enumerate(zip(alpha_rows(edges), edges)):
            for alt in ops:
                saved = float(cost[r, col[op]] - cost[r, col[alt]])
                if alt == op or saved <= 0:
                    continue
                if not reduction and alt == "skip_connect" and skip_limit is not None and skips >= skip_limit:
                    continue
                lost = 0.0 if w is None else max(0.0, float(w[r, col[op]] - w[r, col[alt]]))
                key = (lost / saved, -saved)
                if best is None or key < best[0]:
                    best = (key, reduction, k, alt, {"cell": "reduce" if reduction else "normal", "node": 2 + k // 2,
                                                     "input": j, "from": op, "to": alt, "ms_saved": saved,
                                                     "strength_lost": lost})
    if best is None:
        return None
    _, reduction, k, alt, change = best
    edges = list(genotype.reduce if reduction else genotype.normal)
    edges[k] = (alt, edges[k][1])
    if reduction:
        return Genotype(genotype.normal, genotype.normal_concat, tuple(edges), genotype.reduce_concat), change
    return Genotype(tuple(edges), genotype.normal_concat, genotype.reduce, genotype.reduce_concat), change


# ------------------------------------------------------------------ the budget of one search


@dataclass
class Budget:
    """What a budgeted search steers by and checks against: the table, its costs and how to measure here."""

    target: float
    spec: DeploySpec
    table: LatencyTable
    costs: LatencyCosts
    timer: Timer | None  # None: the table is another machine's; nothing is measured here
    settings: dict
    range_measured: tuple[float, float] | None = None
    range_predicted: tuple[float, float] | None = None
    record: dict = field(default_factory=dict)
    fresh: FreshProcessTimer | None = None  # None: the search's timer stands in for the fresh processes

    def predict(self, genotype: Genotype) -> float:
        return genotype_latency(genotype, self.costs)

    def measure(self, genotype: Genotype) -> tuple[float, list[float]]:
        """(in-process p50, the :data:`FRESH_RUNS` fresh-process p50s) of the served network, in ms."""
        net = deploy_network(genotype, self.spec)
        if self.fresh is None:
            return steady_ms(self.timer(net, self.spec)), [steady_ms(self.timer(net, self.spec))
                                                           for _ in range(FRESH_RUNS)]
        here, fresh = self.fresh.compare(net, self.spec, FRESH_RUNS)
        return steady_ms(here), [steady_ms(s) for s in fresh]

    def verify(self, genotype: Genotype, weights: Sequence[torch.Tensor] | None = None,
               skip_limit: int | None = None, max_rounds: int = MAX_ROUNDS) -> tuple[Genotype, dict]:
        """Measure the deployed network in fresh processes; repair and re-measure while it is over the budget.

        Each round: the in-process p50 and :data:`FRESH_RUNS` fresh-process p50s of one export. The
        verdict figure ``measured_p50_ms`` is the median of the fresh ones; the noise margin their
        half-range relative to it, at least :data:`NOISE_FLOOR` and at most :data:`MAX_MARGIN` — a
        wider spread is one busy moment, so the network is measured again and the figures pooled
        instead of repaired against the outlier. The network is within when the verdict figure is at
        most ``limit_ms = T·(1 − margin)``.

        Returns the genotype to deploy and the record (predicted, measured, repairs, verdict).

        Raises:
            LatencyTargetError: still over the budget after ``max_rounds``, or no op left to make cheaper.
        """
        rec = {"target_ms": self.target, **self.settings, "spec": self.spec.key(),
               "fingerprint": self.table.fingerprint.get("id"), "table": str(self.table.path),
               "range_measured_ms": self.range_measured, "range_predicted_ms": self.range_predicted,
               "predicted_ms": self.predict(genotype), "repairs": [], "rounds": []}
        if self.timer is None:  # another machine's table: steer by it, verify there
            rec.update(verdict="predicted-only", within_budget=None, deployed_predicted_ms=rec["predicted_ms"],
                       note=f"the table was measured on {self.table.fingerprint.get('cpu')} "
                            f"({self.table.fingerprint.get('threads')} threads); measure the export there")
            self.record = rec
            return genotype, rec
        rec["verified_by"] = (f"the median p50 of {FRESH_RUNS} fresh processes (numpy + onnxruntime; 2x that when "
                              f"they spread by more than {MAX_MARGIN:g}) against T·(1 − noise margin), margin = "
                              f"their half-range, {NOISE_FLOOR:g}–{MAX_MARGIN:g}"
                              + ("" if self.fresh is not None else "; the search's timer stood in for them"))
        over = "no measurement was made"
        for _ in range(max_rounds):
            pred = self.predict(genotype)
            here, fresh = self.measure(genotype)
            remeasured = _half_range(fresh) > MAX_MARGIN
            if remeasured:  # a busy moment: pool a second set rather than repair against it
                fresh = fresh + self.measure(genotype)[1]
            p50 = statistics.median(fresh)
            spread = _half_range(fresh)
            margin = min(MAX_MARGIN, max(NOISE_FLOOR, spread))
            limit = self.target * (1 - margin)
            rec["rounds"].append({"predicted_ms": pred, "measured_p50_ms": p50, "in_process_p50_ms": here,
                                  "fresh_p50_ms": fresh, "spread": spread, "remeasured": remeasured,
                                  "noise_margin": margin, "limit_ms": limit, "load_avg": load_avg(),
                                  "genotype": genotype.to_dict()})
            if p50 <= limit:
                rec.update(verdict="within", within_budget=True, measured_p50_ms=p50, in_process_p50_ms=here,
                           fresh_p50_ms=fresh, noise_margin=margin, limit_ms=limit, deployed_predicted_ms=pred,
                           under_pct=100 * (1 - p50 / self.target))
                self.record = rec
                return genotype, rec
            over = (f"the deployed network measures {p50:.4g} ms (median of {len(fresh)} fresh processes; "
                    f"{here:.4g} ms in the search's) > {limit:.4g} ms (budget {self.target:.4g} ms less a noise "
                    f"margin of {100 * margin:.1f}%)")
            scale = p50 / pred  # what a fresh process on this machine does now relative to the table
            while self.predict(genotype) * scale > AIM * limit:
                step = repair_step(genotype, self.costs, weights, skip_limit)
                if step is None:
                    raise LatencyTargetError(f"{over} and no kept op can get cheaper ({_busy()})",
                                             "raise the budget, or re-measure on a quieter machine")
                genotype, change = step
                rec["repairs"].append(change)
        raise LatencyTargetError(f"{over.replace('measures', 'still measures', 1)} after {max_rounds} "
                                 f"measure-and-repair rounds ({_busy()})",
                                 "raise the budget, or re-measure on a quieter machine")

    def save(self, path: str | os.PathLike) -> Path:
        from ..artifacts import write_json

        return write_json(Path(path), self.record)


def prepare(search_cfg, deploy_cfg, input_shape: Sequence[int], num_classes: int, progress: bool = True,
            profile_cfg=None, opset: int = 20) -> Budget:
    """The :class:`Budget` of a search: probes first (refusing an impossible budget), then the trusted table.

    ``deploy_cfg`` is the TrainConfig of the served network; ``profile_cfg`` (ProfileConfig) the
    warm-up/repeats of the measurements (``profile``'s defaults when None); ``opset`` the run's
    ``[export] opset``, at which every piece is exported.
    """
    from ..config import ProfileConfig

    s = search_cfg
    spec = DeploySpec.from_configs(s, deploy_cfg, input_shape, num_classes, opset=opset)
    table, local = LatencyTable.open(spec, s.latency_table, threads=s.latency_threads, opt_level=s.latency_opt_level)
    p = profile_cfg or ProfileConfig()
    how = (s.latency_threads, s.latency_opt_level, p.provider, max(p.warmup, 30), max(p.repeats, 300),
           max(p.min_time_s, 0.2))
    timer = ort_timer(*how) if local else None
    fresh = FreshProcessTimer(*how) if local else None  # the verdict: the same loop and settings, a new process
    lo, hi, _ = measured_range(table, spec, timer, progress, target=s.latency_target)
    fp = table.fingerprint
    check_budget(s.latency_target, lo, hi, "measured p50 of its fastest and slowest probe networks"
                 + ("" if local else f" on {fp.get('cpu')}"))
    if local and table.missing(spec, s.latency_calibration):
        table.measure_missing(spec, timer, s.latency_calibration, progress)
    elif table.missing(spec, 0):
        raise ProfileError(f"latency table {table.path} lacks {table.missing(spec, 0)[0]} for {spec.key()}",
                           "build the kit for this deployment (`nasdeploy latency-kit`) and run it again")
    check_table(table, spec, timer, s.latency_calibration, progress)
    costs = table.costs(spec)
    plo, phi = achievable_range(costs)
    settings = {"batch": spec.batch, "threads": fp.get("threads"), "opt_level": fp.get("opt_level"),
                "provider": fp.get("provider"), "cpu": fp.get("cpu")}
    return Budget(s.latency_target, spec, table, costs, timer, settings, (lo, hi), (plo, phi), fresh=fresh)

