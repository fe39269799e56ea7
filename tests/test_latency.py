"""Latency table (cache keys, reuse), latency model (hand-computed sums, gradients), targets, a constrained search."""

from __future__ import annotations

import json
import math

import pytest
import torch

from nasdeploy.config import SearchConfig, TrainConfig, replace
from nasdeploy.errors import ConfigError, LatencyTargetError, ProfileError
from nasdeploy.latency.measure import LatencyStats, machine_fingerprint
from nasdeploy.latency.model import (
    LatencyCosts,
    achievable_range,
    check_target,
    derived_latency,
    expected_latency,
    genotype_latency,
    penalty,
    straight_through,
)
from nasdeploy.latency.table import CALIBRATION_NETWORKS, DeploySpec, LatencyTable, entry_key, random_genotype
from nasdeploy.space.cell import derive_genotype
from nasdeploy.space.genotype import Genotype
from nasdeploy.space.primitives import PRIMITIVES

TINY = DeploySpec(C=4, layers=3, in_channels=1, H=8, W=8, num_classes=10, steps=2, multiplier=2)


class CountingTimer:
    """A fake ORT timer: latency grows with the module's parameter count; counts calls."""

    def __init__(self):
        self.calls = 0

    def __call__(self, net, spec) -> LatencyStats:
        self.calls += 1
        n = sum(p.numel() for p in net.parameters())
        ms = 0.05 + 1e-6 * n + 0.001 * sum(1 for _ in net.modules())
        return LatencyStats(spec.batch, 0, 1, ms, 0.0, ms, ms, ms, ms, 1000 / ms)


class GroupTimer(CountingTimer):
    """CountingTimer that can time networks together (as OrtTimer.many): records the group sizes."""

    def __init__(self):
        super().__init__()
        self.groups = []

    def many(self, nets, spec):
        self.groups.append(len(nets))
        return [self(n, spec) for n in nets]


# ------------------------------------------------------------------ table: keys and cache

def test_cache_key_changes_with_threads_and_shapes():
    assert machine_fingerprint(threads=1)["id"] != machine_fingerprint(threads=2)["id"]
    fp = machine_fingerprint
    assert fp(threads=1, opt_level="all")["id"] != fp(threads=1, opt_level="basic")["id"]
    assert machine_fingerprint(threads=1)["id"] == machine_fingerprint(threads=1)["id"]
    key = entry_key("sep_conv_3x3", 16, 8, 8, 1, 1, 20)
    assert key != entry_key("sep_conv_3x3", 16, 4, 4, 1, 1, 20)
    assert key != entry_key("sep_conv_3x3", 32, 8, 8, 1, 1, 20)
    assert key != entry_key("sep_conv_3x3", 16, 8, 8, 2, 1, 20)
    assert key != entry_key("sep_conv_3x3", 16, 8, 8, 1, 8, 20)
    assert key != entry_key("sep_conv_3x3", 16, 8, 8, 1, 1, 18)
    wider = DeploySpec(C=8, layers=3, in_channels=1, H=8, W=8, num_classes=10, steps=2, multiplier=2)
    assert TINY.key() != wider.key() and TINY.key() != replace(TINY, opset=18).key()
    assert TINY.shape_classes() != wider.shape_classes()


def test_table_is_measured_once_then_reused_from_disk(tmp_path):
    path = tmp_path / "latency" / "table.json"
    timer = CountingTimer()
    table = LatencyTable.load_or_measure(TINY, path, calibrate=3, timer=timer, progress=False)
    n_ops = len([p for p in PRIMITIVES if p != "none"])
    classes = TINY.shape_classes()
    expected_entries = sum(n_ops - (1 if s == 1 else 0) for *_, s in classes)  # skip at stride 1 is free
    assert len(table.entries) == expected_entries
    assert timer.calls == expected_entries + 2 + 3  # entries, two skeletons, three calibration networks
    saved = json.loads(path.read_text())
    assert saved["fingerprint"]["id"] == machine_fingerprint(threads=1)["id"]

    again = CountingTimer()
    reused = LatencyTable.load_or_measure(TINY, path, calibrate=3, timer=again, progress=False)
    assert again.calls == 0
    assert reused.entries == table.entries

    # A new shape (more channels) measures only what is missing; the first spec's entries stay.
    wider = DeploySpec(C=8, layers=3, in_channels=1, H=8, W=8, num_classes=10, steps=2, multiplier=2)
    third = CountingTimer()
    both = LatencyTable.load_or_measure(wider, path, calibrate=0, timer=third, progress=False)
    assert third.calls == expected_entries + 2
    assert set(table.entries) < set(both.entries)

    # The same file under another thread count is another machine's table: used as it is, never extended.
    other = CountingTimer()
    foreign = LatencyTable.load_or_measure(TINY, path, threads=2, timer=other, progress=False)
    assert other.calls == 0 and foreign.entries == both.entries
    tall = DeploySpec(C=4, layers=5, in_channels=1, H=8, W=8, num_classes=10, steps=2, multiplier=2)
    with pytest.raises(ProfileError, match=r"another deployment \(layers = 3 there, 5 here\)"):
        LatencyTable.load_or_measure(tall, path, threads=2, timer=other, progress=False)


def _save_disjoint_entries(path: str, worker: int, n: int, barrier) -> None:
    """One of two processes sharing a table file: n entries of its own, saved one at a time (as measure_missing)."""
    table = LatencyTable({"id": "shared"})
    barrier.wait()
    for i in range(n):
        table.entries[f"op{worker}|C{i}|8x8|s1|b1|o20"] = {"ms": float(i), "worker": worker}
        table.save(path)


def test_two_processes_saving_one_table_keep_each_others_entries(tmp_path):
    import multiprocessing

    path = tmp_path / "latency" / "shared.json"
    ctx = multiprocessing.get_context("fork")  # the workers only write JSON
    barrier = ctx.Barrier(2)
    procs = [ctx.Process(target=_save_disjoint_entries, args=(str(path), w, 40, barrier)) for w in (0, 1)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    entries = LatencyTable.load(path).entries
    assert len(entries) == 80 and {e["worker"] for e in entries.values()} == {0, 1}
    assert not list(path.parent.glob("*.tmp*"))  # every write went through a temp file that was renamed

    # What forget_untrusted drops is not taken back from the file by the next save.
    table = LatencyTable.load_or_measure(TINY, tmp_path / "t.json", calibrate=3, timer=CountingTimer(),
                                         progress=False)
    bad = next(iter(table.entries))
    table.entries[bad]["ms"] = -1.0
    table.save(table.path)
    table.forget_untrusted(TINY)
    table.save(table.path)
    on_disk = LatencyTable.load(table.path)
    assert bad not in on_disk.entries and TINY.key() not in on_disk.calibration and TINY.key() in on_disk.fixed


def test_a_timer_that_times_together_gets_the_pieces_in_groups_and_the_same_table(tmp_path):
    from nasdeploy.latency.measure import INTERLEAVE

    one = LatencyTable.load_or_measure(TINY, tmp_path / "a.json", calibrate=5, timer=CountingTimer(), progress=False)
    grouped = GroupTimer()
    many = LatencyTable.load_or_measure(TINY, tmp_path / "b.json", calibrate=5, timer=grouped, progress=False)
    n = grouped.calls
    assert sum(grouped.groups) == n and max(grouped.groups) == INTERLEAVE["group"]
    assert len(grouped.groups) == -(-n // INTERLEAVE["group"])
    assert many.entries == one.entries and many.fixed == one.fixed
    assert many.calibration[TINY.key()]["scale"] == pytest.approx(one.calibration[TINY.key()]["scale"])


def test_a_group_whose_anchor_reads_off_its_figure_is_retimed_then_the_closest_attempt_kept():
    from nasdeploy.latency.table import ANCHOR_TRIES, OrtTimer, _skeleton_inputs, deploy_network, skeleton_network

    timer = OrtTimer(interleave={"group": 8, "window": 4, "min_windows": 2, "min_span_s": 0.0}, warmup=2)
    nets = [deploy_network(random_genotype(__import__("random").Random(i), TINY.steps, TINY.multiplier,
                                           TINY.primitives), TINY) for i in range(1)]
    skel = skeleton_network(TINY, _skeleton_inputs(TINY.steps))[0]
    # A known figure 1000x too high: the skeleton always reads ~0.001 of it, every try is spent.
    stats, ratios = timer.many_anchored(nets, TINY, skel, 1e3, tol=0.05)
    assert len(stats) == 1 and len(ratios) == ANCHOR_TRIES and all(r < 0.01 for r in ratios)
    # Any reading is within a tolerance of 1000x: one try.
    stats, ratios = timer.many_anchored(nets, TINY, skel, 1e3, tol=1e3)
    assert len(stats) == 1 and len(ratios) == 1


def test_a_table_of_plain_p50s_is_timed_again(tmp_path):
    path = tmp_path / "t.json"
    LatencyTable.load_or_measure(TINY, path, calibrate=3, timer=CountingTimer(), progress=False)
    d = json.loads(path.read_text())
    assert d["figure"] == "steady_p50"
    del d["figure"]  # as written before the steady figure
    path.write_text(json.dumps(d))
    again = CountingTimer()
    with pytest.warns(RuntimeWarning, match="plain p50s"):
        LatencyTable.load_or_measure(TINY, path, calibrate=3, timer=again, progress=False)
    assert again.calls > 3  # skeletons, entries and calibration, not only what was missing


def test_table_keys_carry_the_opset_and_old_tables_read_as_opset_20(tmp_path, monkeypatch):
    path = tmp_path / "t.json"
    at20 = LatencyTable.load_or_measure(TINY, path, calibrate=3, timer=CountingTimer(), progress=False)
    assert all(k.endswith("|o20") for k in at20.entries) and TINY.key().endswith("-o20")

    # An opset-18 deployment does not use the opset-20 timings: it times its own, at opset 18.
    spec18 = replace(TINY, opset=18)
    seen = []

    class Timer18(CountingTimer):
        def __call__(self, net, spec):
            seen.append(spec.opset)
            return super().__call__(net, spec)

    timer = Timer18()
    both = LatencyTable.load_or_measure(spec18, path, calibrate=3, timer=timer, progress=False)
    assert timer.calls == len(at20.entries) + 2 + 3 and set(seen) == {18}
    assert set(at20.entries) & {k for k in both.entries if k.endswith("|o18")} == set()
    assert spec18.key() in both.fixed and TINY.key() in both.fixed

    # ort_timer exports at the spec's opset.
    import contextlib

    import nasdeploy.latency.table as table_mod

    opsets = []

    @contextlib.contextmanager
    def fake_export(net, x, prefix="", opset=20):
        opsets.append(opset)
        yield "model.onnx"

    monkeypatch.setattr(table_mod, "exported", fake_export)
    monkeypatch.setattr(table_mod, "time_onnx", lambda *a, **k: CountingTimer()(torch.nn.Identity(), spec18))
    table_mod.ort_timer()(torch.nn.Identity(), spec18)
    assert opsets == [18]

    # A table written before keys carried the opset: the same timings, read as opset 20, nothing re-timed.
    d = json.loads(json.dumps(at20.to_dict()).replace("|o20", "").replace("-o20", ""))
    for fx in d["fixed"].values():
        del fx["spec"]["opset"]
    assert not any("o20" in k for k in d["entries"]) and "opset" not in next(iter(d["fixed"].values()))["spec"]
    old, old_copy = tmp_path / "old.json", tmp_path / "old_copy.json"
    old.write_text(json.dumps(d))
    old_copy.write_text(json.dumps(d))
    again = CountingTimer()
    read = LatencyTable.load_or_measure(TINY, old, calibrate=3, timer=again, progress=False)
    assert again.calls == 0 and read.entries == at20.entries and read.probes.keys() == at20.probes.keys()
    g = random_genotype(__import__("random").Random(3), TINY.steps, TINY.multiplier)
    assert read.predict_ms(g, TINY) == pytest.approx(at20.predict_ms(g, TINY))
    assert LatencyTable.load_or_measure(spec18, old, calibrate=3, timer=again, progress=False).missing(spec18) == []
    assert again.calls == len(at20.entries) + 2 + 3  # the opset-18 pieces were timed, the old ones kept
    # Read as another machine's table (another thread count), an opset-18 search is told why it does not fit.
    with pytest.raises(ProfileError, match=r"another deployment \(opset = 20 there, 18 here\)"):
        LatencyTable.open(spec18, old_copy, threads=2)


def test_table_prediction_is_calibrated_sum_of_entries(tmp_path):
    table = LatencyTable.load_or_measure(TINY, tmp_path / "t.json", calibrate=3, timer=CountingTimer(),
                                         progress=False)
    rng = __import__("random").Random(1)
    costs = table.costs(TINY)
    # many genotypes: edges whose input is not their position's (node 1 reading node 0 in a reduction cell,
    # a stride-1 edge) once read the stride-2 entry of the edge at that position
    for _ in range(30):
        g = random_genotype(rng, TINY.steps, TINY.multiplier)
        assert genotype_latency(g, costs) == pytest.approx(table.predict_ms(g, TINY), rel=1e-9)


class CrowdedDil(CountingTimer):
    """A cost the in-context entries cannot see: every DilConv is 3 µs dearer in a network that also has SepConvs
    (in the entry's skeleton it stands among placeholders only)."""

    def __call__(self, net, spec):
        s = super().__call__(net, spec)
        names = [type(m).__name__ for m in net.modules()]
        ms = s.p50_ms + (0.003 * names.count("DilConv") if "SepConv" in names else 0.0)
        return type(s)(**{**s.to_dict(), "p50_ms": ms})


def test_ridge_corrections_fix_what_the_marginal_entries_miss_out_of_sample(tmp_path):
    import random

    from nasdeploy.latency.table import deploy_network, edge_counts

    timer = CrowdedDil()
    table = LatencyTable.load_or_measure(TINY, tmp_path / "t.json", calibrate=30, timer=timer, progress=False)
    cal = table.calibration[TINY.key()]
    assert cal["corrections_ms"] and cal["ridge_lambda"] is not None
    assert cal["loo_median_abs_pct"] < cal["loo_median_abs_pct_linear"]  # kept because it wins out of sample
    dil = [k for k in cal["corrections_ms"] if k.startswith("dil_conv")]
    assert dil and min(cal["corrections_ms"][k] for k in dil) > 0  # the hidden cost lands on the DilConv entries
    rng = random.Random(99)  # networks the fit never saw
    errs_ridge, errs_linear = [], []
    off, scale = table.calibration_of(TINY)
    for _ in range(20):
        g = random_genotype(rng, TINY.steps, TINY.multiplier)
        meas = timer(deploy_network(g, TINY), TINY).p50_ms
        errs_ridge.append(abs(table.predict_ms(g, TINY) / meas - 1))
        errs_linear.append(abs((off + scale * table.raw_ms(g, TINY)) / meas - 1))
        # the search's cost tensors carry the corrections too
        assert genotype_latency(g, table.costs(TINY)) == pytest.approx(table.predict_ms(g, TINY), rel=1e-9)
        assert sum(edge_counts(g, TINY).values()) <= sum(len(c) for _, c in TINY.kept_edges(g))
    assert sorted(errs_ridge)[10] < 0.5 * sorted(errs_linear)[10]


def test_corrections_that_only_fit_noise_are_dropped_by_the_one_standard_error_rule():
    import numpy as np

    from nasdeploy.latency.table import CALIBRATION_RULE, calibration_genotypes, fit_calibration

    rng = np.random.default_rng(0)
    gs = calibration_genotypes(TINY, 24)
    raw = rng.uniform(1.0, 2.0, len(gs))
    # whole networks = a linear function of the table sum, plus 3% noise that no edge count explains
    nets = [{"genotype": g.to_dict(), "raw_ms": float(r), "p50_ms": float((0.1 + 0.9 * r) * (1 + 0.03 * e))}
            for g, r, e in zip(gs, raw, rng.standard_normal(len(gs)))]
    cal = fit_calibration(nets, TINY)
    assert cal["rule"] == CALIBRATION_RULE and cal["ridge_lambda"] is None and cal["corrections_ms"] == {}
    assert cal["loo_median_abs_pct"] == cal["loo_median_abs_pct_linear"]
    assert cal["scale"] == pytest.approx(0.9, rel=0.1)


def test_a_calibration_fitted_by_older_code_is_fitted_again_on_open(tmp_path):
    import json

    path = tmp_path / "t.json"
    table = LatencyTable.load_or_measure(TINY, path, calibrate=14, timer=CrowdedDil(), progress=False)
    good = table.calibration[TINY.key()]
    d = json.loads(path.read_text())
    cal = d["calibration"][TINY.key()]
    for k in ("loo_median_abs_pct", "loo_median_abs_pct_linear", "corrections_ms", "ridge_lambda", "rule"):
        cal.pop(k)
    cal["scale"], cal["offset_ms"] = 5.0, -1.0  # fitted on the sums of the position-priced edges
    for n in cal["networks"]:
        n["raw_ms"] *= 1.3
    path.write_text(json.dumps(d))
    again, _ = LatencyTable.open(TINY, path)
    fresh = again.calibration[TINY.key()]
    assert fresh["scale"] == pytest.approx(good["scale"]) and fresh["loo_median_abs_pct"] is not None
    assert fresh["corrections_ms"] == pytest.approx(good["corrections_ms"])


def test_too_few_calibration_networks_fit_the_linear_part_only(tmp_path):
    table = LatencyTable.load_or_measure(TINY, tmp_path / "t.json", calibrate=5, timer=CrowdedDil(), progress=False)
    cal = table.calibration[TINY.key()]
    assert cal["corrections_ms"] == {} and cal["ridge_lambda"] is None and cal["loo_median_abs_pct"] is not None


# ------------------------------------------------------------------ model: hand-computed numbers

PRIMS = ("none", "max_pool_3x3", "sep_conv_3x3")


def _costs() -> LatencyCosts:
    # steps=2: edges (node 2: inputs 0, 1), (node 3: inputs 0, 1, 2); columns none, pool, sep.
    normal = torch.tensor([[0, 1.0, 10.0], [0, 2.0, 20.0], [0, 3.0, 30.0], [0, 4.0, 40.0], [0, 5.0, 50.0]],
                          dtype=torch.float64)
    reduce = 100 * normal
    return LatencyCosts(normal=normal, reduce=reduce, base_ms=7.0, primitives=PRIMS, steps=2)


def _onehot(choice: list[str | None]) -> torch.Tensor:
    """Rows of -inf except the chosen op; None = the edge is dropped (one-hot on 'none')."""
    a = torch.full((len(choice), len(PRIMS)), -math.inf, dtype=torch.float64)
    for e, op in enumerate(choice):
        a[e, PRIMS.index(op or "none")] = 0.0
    return a


def test_expected_latency_equals_table_sum_for_one_hot_alpha():
    costs = _costs()
    # normal: node 2 = pool(0) + sep(1); node 3 = sep(0) + pool(2), input 1 dropped
    an = _onehot(["max_pool_3x3", "sep_conv_3x3", "sep_conv_3x3", None, "max_pool_3x3"])
    # reduce: node 2 = sep(0) + sep(1); node 3 = pool(1) + sep(2), input 0 dropped
    ar = _onehot(["sep_conv_3x3", "sep_conv_3x3", None, "max_pool_3x3", "sep_conv_3x3"])
    by_hand = 7.0 + (1 + 20 + 30 + 5) + 100 * (10 + 20 + 4 + 50)
    assert float(expected_latency(an, ar, costs)) == pytest.approx(by_hand, rel=1e-12)
    assert derived_latency(an, ar, costs) == pytest.approx(by_hand, rel=1e-12)
    g = derive_genotype(an, ar, PRIMS, steps=2, multiplier=2)
    assert genotype_latency(g, costs) == pytest.approx(by_hand, rel=1e-12)


def test_expected_latency_ignores_none_and_keeps_two_edges_per_node():
    costs = _costs()
    zeros = torch.zeros(5, 3, dtype=torch.float64)
    # Uniform alpha: each op 1/2 among the deployable ones; node 2 keeps both inputs, node 3 two of three.
    per_edge = torch.tensor([5.5, 11.0, 16.5, 22.0, 27.5], dtype=torch.float64)
    by_hand = 7.0 + 101 * (per_edge[:2].sum() + 2 / 3 * per_edge[2:].sum())
    assert float(expected_latency(zeros, zeros, costs)) == pytest.approx(float(by_hand), rel=1e-12)
    # A huge weight on 'none' changes nothing about which deployable op is expected.
    heavy_none = zeros.clone()
    heavy_none[:2, 0] = 5.0
    assert float(expected_latency(heavy_none, zeros, costs)) == pytest.approx(float(by_hand), rel=1e-12)


def test_expected_latency_is_differentiable():
    costs = _costs()
    g = torch.Generator().manual_seed(0)
    an = torch.randn(5, 3, dtype=torch.float64, generator=g, requires_grad=True)
    ar = torch.randn(5, 3, dtype=torch.float64, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: expected_latency(a, b, costs), (an, ar))
    # Straight-through: the derived network's value, the expectation's gradient.
    st = straight_through(an, ar, costs)
    assert float(st.detach()) == pytest.approx(derived_latency(an, ar, costs))
    st.backward()
    soft_grad = torch.autograd.grad(expected_latency(an, ar, costs), an)[0]
    torch.testing.assert_close(an.grad, soft_grad)


def test_penalty_pulls_towards_the_aim_under_the_budget_from_both_sides():
    # r = pred / target; aim 0.95: over it the full slope, under it `under` (default 1) of it.
    assert float(penalty(torch.tensor(3.0), 2.0, 0.5)) == pytest.approx(0.5 * (1.5 - 0.95))
    assert float(penalty(torch.tensor(1.0), 2.0, 0.5)) == pytest.approx(0.5 * (0.95 - 0.5))
    assert float(penalty(torch.tensor(1.0), 2.0, 0.5, under=0.25)) == pytest.approx(0.5 * 0.25 * (0.95 - 0.5))
    assert float(penalty(torch.tensor(1.9), 2.0, 0.5)) == 0.0
    # under 0: the pure hinge (MnasNet's hard constraint); under 1, aim 1: TuNAS's absolute reward.
    assert float(penalty(torch.tensor(1.0), 2.0, 0.5, under=0.0)) == 0.0
    assert float(penalty(torch.tensor(1.0), 2.0, 0.5, under=1.0, aim=1.0)) == pytest.approx(0.25)


def test_achievable_range_by_hand():
    lo, hi = achievable_range(_costs())
    # cheapest: node 2 pools on inputs 0, 1; node 3 pools on the two cheapest inputs (0, 1)
    assert lo == pytest.approx(7 + 101 * (1 + 2 + 3 + 4))
    assert hi == pytest.approx(7 + 101 * (10 + 20 + 40 + 50))


@pytest.mark.parametrize("target", [1.0, 1e6, 0.0, -1.0])
def test_impossible_or_non_positive_target_is_refused_with_the_range(target):
    lo, hi = achievable_range(_costs())
    with pytest.raises(LatencyTargetError) as e:
        check_target(target, _costs())
    assert f"{lo:.4g}" in str(e.value) and f"{hi:.4g}" in str(e.value)


def test_non_positive_target_in_config_is_a_config_error():
    with pytest.raises(ConfigError, match="latency_target"):
        replace(SearchConfig(), latency_target=-2.0)
    with pytest.raises(ConfigError, match="latency_target"):
        replace(SearchConfig(), latency_target=0)


# ------------------------------------------------------------------ search end to end

def _tiny_cfg(tmp_path, target):
    return SearchConfig(epochs=1, batch_size=64, C=4, layers=3, steps=2, multiplier=2, latency_target=target,
                        latency_weight=1.0, latency_table=str(tmp_path / "table.json"), latency_calibration=3)


class FakeFresh:
    """Stands in for ``kit.FreshProcessTimer``: CountingTimer figures, ``factor`` times them in the "fresh" runs."""

    made: list = []  # the constructor arguments of every instance (prepare passes ort_timer's settings)

    def __init__(self, *args, factor=1.0, **kw):
        self.factor, self.timer = factor, CountingTimer()
        FakeFresh.made.append((args, kw))

    def compare(self, net, spec, runs=2):
        here = self.timer(net, spec)
        fresh = LatencyStats(**{**here.to_dict(), "p50_ms": here.p50_ms * self.factor})
        return here, [fresh] * runs


@pytest.fixture
def fake_ort(monkeypatch):
    """Budget measurements (probes, verification) through CountingTimer instead of ONNX Runtime."""
    import nasdeploy.latency.budget as budget

    made = []
    monkeypatch.setattr(budget, "ort_timer", lambda *a, **k: made.append((a, k)) or CountingTimer())
    monkeypatch.setattr(FakeFresh, "made", [])
    monkeypatch.setattr(budget, "FreshProcessTimer", FakeFresh)
    return made


def test_latency_constrained_search_runs_end_to_end(digits, tmp_path, fake_ort):
    from nasdeploy.strategies.darts import search

    deploy = TrainConfig(C=4, layers=3)
    spec = DeploySpec.from_configs(_tiny_cfg(tmp_path, 1.0), deploy, digits.spec.input_shape,
                                   digits.spec.num_classes)
    table = LatencyTable.load_or_measure(spec, tmp_path / "table.json", calibrate=3, timer=CountingTimer(),
                                         progress=False)
    lo, hi = achievable_range(table.costs(spec))

    with pytest.raises(LatencyTargetError, match="below the fastest"):
        search(_tiny_cfg(tmp_path, lo / 2), digits, tmp_path / "bad", progress=False, deploy=deploy)

    target = (lo + hi) / 2
    res = search(_tiny_cfg(tmp_path, target), digits, tmp_path / "run", progress=False, deploy=deploy)
    rec = res.metrics[-1]
    assert rec["penalty"] is not None and rec["penalty"] >= 0
    assert lo <= rec["predicted_latency_ms"] <= hi
    assert isinstance(res.genotype, Genotype)
    budget = json.loads((tmp_path / "run" / "search" / "latency_budget.json").read_text())
    assert budget["verdict"] == "within" and budget["measured_p50_ms"] <= target
    # verified by the fresh-process timer, made with the settings of the search's own timer
    assert FakeFresh.made and all(m == fake_ort[-1] for m in FakeFresh.made)
    assert budget["rounds"][-1]["fresh_p50_ms"] and budget["noise_margin"] >= 0.02
    assert budget["deployed_predicted_ms"] == pytest.approx(table.predict_ms(res.genotype, spec))


def test_cli_refuses_impossible_target_in_one_line(digits, tmp_path, fake_ort):
    from click.testing import CliRunner

    from nasdeploy.cli import main
    from nasdeploy.config import load_config

    cfg = load_config(preset="tiny")
    spec = DeploySpec.from_configs(cfg.search, cfg.train, digits.spec.input_shape, digits.spec.num_classes)
    path = tmp_path / "table.json"
    table = LatencyTable.load_or_measure(spec, path, calibrate=CALIBRATION_NETWORKS, timer=CountingTimer(),
                                         progress=False)
    lo, hi = achievable_range(table.costs(spec))
    res = CliRunner().invoke(main, ["search", "--preset", "tiny", "--out", str(tmp_path / "run"), "--quiet",
                                    "--latency-target", str(hi * 3), "--latency-table", str(path)])
    assert res.exit_code == 1
    err = [line for line in res.output.splitlines() if line.startswith("Error:")]
    probes = LatencyTable.load(path).probes[spec.key()]
    slowest = max(p["p50_ms"] for p in probes.values())
    assert len(err) == 1 and "above the slowest" in err[0] and f"{slowest:.4g}" in err[0]

    # `latency-table` on a complete cached table times nothing and prints the range.
    res = CliRunner().invoke(main, ["latency-table", "--preset", "tiny", "--table", str(path), "--quiet"])
    assert res.exit_code == 0, res.output
    assert f"{lo:.4f}–{hi:.4f} ms" in res.output


@pytest.mark.slow
def test_real_ort_table_predicts_a_tiny_network(tmp_path):
    """The real path: dynamo export + ORT timing of every piece (minutes)."""
    from nasdeploy.latency.table import deploy_network, ort_timer

    table = LatencyTable.load_or_measure(TINY, tmp_path / "t.json", calibrate=3, progress=False)
    assert all(e["stats"]["repeats"] >= 300 for e in table.entries.values())
    g = random_genotype(__import__("random").Random(7), TINY.steps, TINY.multiplier)
    measured = ort_timer()(deploy_network(g, TINY), TINY).p50_ms
    assert table.predict_ms(g, TINY) == pytest.approx(measured, rel=0.3)
