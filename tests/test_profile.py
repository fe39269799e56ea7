"""profile stage and the ORT timing loop: report fields, sane figures, clear errors."""

from __future__ import annotations

import json
import time

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from nasdeploy.deploy.profile import LatencyReport, ProfileConfig, op_breakdown, profile
from nasdeploy.errors import ProfileError
from nasdeploy.latency.measure import (
    LatencyStats,
    machine_fingerprint,
    make_session,
    measure,
    measure_many,
    steady_ms,
)
from nasdeploy.onnxio import graph_inputs, load_onnx

FAST = dict(warmup=2, repeats=15, trace_runs=3)


def _tiny_cnn_onnx(path, batch="batch"):
    """Conv → Relu → MaxPool → GlobalAveragePool → Flatten → Gemm, [batch, 3, 16, 16] → [batch, 10]."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w"),
        numpy_helper.from_array(np.zeros(8, np.float32), "b"),
        numpy_helper.from_array(rng.standard_normal((10, 8)).astype(np.float32), "fc_w"),
        numpy_helper.from_array(np.zeros(10, np.float32), "fc_b"),
    ]
    nodes = [
        helper.make_node("Conv", ["input", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("GlobalAveragePool", ["p"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["logits"], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, 16, 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, 10])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path


def _tiny_cnn_torch():
    import torch

    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(8, 10),
    ).eval()


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory):
    return _tiny_cnn_onnx(tmp_path_factory.mktemp("model") / "model.onnx")


@pytest.fixture(scope="module")
def profiled(tiny_onnx, tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    cfg = ProfileConfig(batch_sizes=(1, 4), top_ops=3, **FAST)
    return profile(tiny_onnx, cfg, out=run, torch_model=_tiny_cnn_torch()), run


def _check_stats(s: LatencyStats, batch: int):
    assert s.batch_size == batch and s.warmup == FAST["warmup"] and s.repeats >= FAST["repeats"]
    assert 0 < s.min_ms <= s.p50_ms <= s.p90_ms <= s.p99_ms
    assert s.mean_ms > 0 and s.std_ms >= 0
    assert s.throughput_per_s == pytest.approx(batch / (s.mean_ms / 1e3), rel=1e-9)


def test_report_has_every_field_with_sane_values(profiled):
    report, _ = profiled
    assert [b.batch_size for b in report.batches] == [1, 4]
    for b in report.batches:
        _check_stats(b.ort, b.batch_size)
        _check_stats(b.eager, b.batch_size)
        assert b.ort_over_eager_p50 == pytest.approx(b.ort.p50_ms / b.eager.p50_ms)
    assert report.stats(4) is report.batches[1].ort
    assert len(report.model_sha256) == 64
    assert report.inputs == [{"name": "input", "shape": ["batch", 3, 16, 16], "dtype": "float32"}]
    fp = report.fingerprint
    assert {"cpu", "logical_cores", "onnxruntime", "numpy", "threads", "opt_level", "provider", "id"} <= fp.keys()
    assert fp["threads"] == 1 and fp["opt_level"] == "all"


def test_operator_shares_sum_to_100_percent(profiled):
    ops = profiled[0].ops
    assert ops.batch_size == 1 and ops.runs == FAST["trace_runs"]
    assert len(ops.table) <= 3 + 1  # top 3 plus "(other)"
    assert sum(r.share_pct for r in ops.table) == pytest.approx(100.0, abs=1e-6)
    assert all(r.total_ms >= 0 and r.count > 0 for r in ops.table)
    assert ops.node_ms_per_run == pytest.approx(sum(r.ms_per_run for r in ops.table))
    assert 0 < ops.node_ms_per_run <= ops.run_ms_per_run


def test_files_are_written_and_load(profiled):
    report, run = profiled
    d = json.loads((run / "profile" / "latency.json").read_text())
    for key in ("fingerprint", "threads", "opt_level", "provider", "warmup", "repeats", "batches", "ops", "model"):
        assert key in d
    assert d["model"]["sha256"] == report.model_sha256
    assert d["batches"][0]["ort"]["p50_ms"] == report.batches[0].ort.p50_ms  # floats, not strings
    assert LatencyReport.from_dict(d).to_dict() == d
    md = (run / "profile" / "latency.md").read_text()
    for b in (1, 4):
        assert any(line.startswith(f"| {b} |") for line in md.splitlines())
    trace = json.loads((run / "profile" / "ort_trace.json").read_text())
    assert any(e.get("cat") == "Node" for e in trace)
    assert sorted(p.name for p in (run / "profile").iterdir()) == ["latency.json", "latency.md", "ort_trace.json"]


def test_out_none_writes_nothing(tiny_onnx, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # ORT's default trace folder is the working directory
    before = sorted(p.name for p in tiny_onnx.parent.iterdir())
    report = profile(tiny_onnx, ProfileConfig(batch_sizes=(2,), **FAST))
    assert report.files == {} and report.ops.batch_size == 2
    assert list(tmp_path.iterdir()) == []
    assert sorted(p.name for p in tiny_onnx.parent.iterdir()) == before


def test_measure_callable_sleep_gives_its_duration():
    stats = measure(lambda: time.sleep(0.005), warmup=1, repeats=10, batch_size=2)
    assert 5.0 <= stats.p50_ms < 8.0
    assert stats.throughput_per_s == pytest.approx(2 / (stats.mean_ms / 1e3))


def test_measure_min_and_max_time():
    assert measure(lambda: None, warmup=0, repeats=1, min_time_s=0.02).repeats > 1
    capped = measure(lambda: time.sleep(0.002), warmup=0, repeats=1000, max_time_s=0.02)
    assert 1 <= capped.repeats < 1000


def test_measure_session_infers_batch(tiny_onnx):
    sess = make_session(tiny_onnx, threads=1, opt_level="basic")
    stats = measure(sess, {"input": np.zeros((3, 3, 16, 16), np.float32)}, warmup=1, repeats=3)
    assert stats.batch_size == 3 and stats.repeats == 3
    assert LatencyStats.from_dict(json.loads(json.dumps(stats.to_dict()))) == stats


def test_steady_p50_is_the_quietest_window_median_and_ignores_a_load_episode():
    # 6 windows of 4 calls: a load episode (windows 0-2 at 2 ms, one 5 ms spike), then quiet ones near 1 ms
    ms = [2, 2, 2, 2] * 3 + [1.0, 1.1, 1.0, 0.9] + [1.2, 1.1, 1.2, 5.0] + [1.3, 1.4, 1.2, 1.3]
    stats = LatencyStats.from_times_ns(np.array(ms) * 1e6, batch_size=1, warmup=0, window=4)
    assert stats.steady_p50_ms == pytest.approx(1.0)  # median of window 3, the quietest
    assert stats.p50_ms == pytest.approx(np.median(ms)) and stats.p50_ms > 1.5
    assert steady_ms(stats) == stats.steady_p50_ms and steady_ms(stats.to_dict()) == stats.steady_p50_ms
    short = LatencyStats.from_times_ns(np.array(ms[:7]) * 1e6, batch_size=1, warmup=0, window=4)
    assert short.steady_p50_ms is None and steady_ms(short) == short.p50_ms  # one window: no steady figure
    old = {k: v for k, v in stats.to_dict().items() if k != "steady_p50_ms"}  # a record from before the field
    assert LatencyStats.from_dict(old).steady_p50_ms is None and steady_ms(old) == stats.p50_ms


def test_measure_many_interleaves_whole_windows_and_times_each_target():
    order = []
    calls = [lambda k=k: order.append(k) for k in range(3)]
    out = measure_many([(c, None) for c in calls], warmup=2, window=5, min_windows=4, min_span_s=0.0)
    timed = order[6:]  # after 2 warm-up calls each
    assert timed == [k for _ in range(4) for k in range(3) for _ in range(5)]
    assert [s.repeats for s in out] == [20, 20, 20] and all(s.steady_p50_ms is not None for s in out)
    slow = measure_many([(lambda: time.sleep(0.002), None), (lambda: None, None)], warmup=0, window=2,
                        min_windows=2, min_span_s=0.05)
    assert slow[0].repeats >= 2 * 10 and slow[0].repeats == slow[1].repeats  # kept going for the span
    assert slow[0].steady_p50_ms >= 2.0 > slow[1].steady_p50_ms
    with pytest.raises(ProfileError, match="min_windows"):
        measure_many([(lambda: None, None)], min_windows=1)


def test_fingerprint_id_is_stable_and_depends_on_settings():
    a, b = machine_fingerprint(1, "all"), machine_fingerprint(1, "all")
    assert a == b and len(a["id"]) == 12
    assert machine_fingerprint(2, "all")["id"] != a["id"]
    assert machine_fingerprint(1, "basic")["id"] != a["id"]


def test_op_breakdown_drops_warmup_runs_and_groups_the_tail():
    def node(ts, dur, op):
        return {"cat": "Node", "name": f"n{ts}_kernel_time", "ts": ts, "dur": dur, "args": {"op_name": op}}

    events = [
        {"cat": "Session", "name": "model_run", "ts": 0, "dur": 100},  # warm-up: dropped
        node(10, 1000, "Conv"),
        {"cat": "Session", "name": "model_run", "ts": 200, "dur": 100},
        node(210, 30, "Conv"),
        node(240, 10, "Relu"),
        node(250, 10, "Gemm"),
        {"cat": "Node", "name": "n_fence_before", "ts": 260, "dur": 5, "args": {"op_name": "Relu"}},
        {"cat": "Session", "name": "model_run", "ts": 400, "dur": 100},
        node(410, 50, "Conv"),
        node(440, 10, "Relu"),
    ]
    ops = op_breakdown(events, runs=2, top=2, batch_size=1)
    assert ops.runs == 2 and ops.node_ms_per_run == pytest.approx(0.055)
    assert ops.run_ms_per_run == pytest.approx(0.1)
    conv, relu, other = ops.table
    assert (conv.op_type, conv.count, conv.total_ms, conv.ms_per_run) == (
        "Conv",
        2,
        pytest.approx(0.08),
        pytest.approx(0.04),
    )
    assert conv.share_pct == pytest.approx(100 * 80 / 110)
    assert (relu.op_type, relu.count) == ("Relu", 2)
    assert other.op_type == "(other: 1 types)" and other.count == 1
    assert sum(r.share_pct for r in ops.table) == pytest.approx(100)


# ---- bad input: one ProfileError naming the problem -------------------------


def test_missing_file(tmp_path):
    with pytest.raises(ProfileError, match="not found"):
        profile(tmp_path / "nope.onnx", ProfileConfig(**FAST))


def test_text_file_is_not_onnx(tmp_path):
    p = tmp_path / "model.onnx"
    p.write_text("this is not a model\n" * 10)
    with pytest.raises(ProfileError, match="not an ONNX model"):
        profile(p, ProfileConfig(**FAST))


def test_checkpoint_is_not_onnx(tmp_path):
    import torch

    p = tmp_path / "model.pt"
    torch.save({"state_dict": _tiny_cnn_torch().state_dict()}, p)
    with pytest.raises(ProfileError, match="not an ONNX model"):
        profile(p, ProfileConfig(**FAST))


def test_directory_is_not_onnx(tmp_path):
    with pytest.raises(ProfileError, match="directory"):
        load_onnx(tmp_path)


@pytest.mark.parametrize("sizes", [(0,), (1, -2), ()])
def test_bad_batch_size(tiny_onnx, sizes):
    with pytest.raises(ProfileError, match="batch size"):
        profile(tiny_onnx, ProfileConfig(batch_sizes=sizes, **FAST))


def test_unknown_provider_names_the_available_ones(tiny_onnx):
    with pytest.raises(ProfileError, match="CUDAExecutionProvider.*not available.*CPUExecutionProvider"):
        profile(tiny_onnx, ProfileConfig(provider="CUDAExecutionProvider", **FAST))


def test_zero_threads(tiny_onnx):
    with pytest.raises(ProfileError, match="threads"):
        profile(tiny_onnx, ProfileConfig(threads=0, **FAST))
    with pytest.raises(ProfileError, match="thread count"):
        make_session(tiny_onnx, threads=0)


def test_unknown_opt_level(tiny_onnx):
    with pytest.raises(ProfileError, match="optimization level 'max'"):
        make_session(tiny_onnx, opt_level="max")


def test_fixed_batch_axis_rejects_other_batch_sizes(tmp_path):
    p = _tiny_cnn_onnx(tmp_path / "fixed.onnx", batch=1)
    assert graph_inputs(load_onnx(p))[0].shape == (1, 3, 16, 16)
    with pytest.raises(ProfileError, match="fixed batch size of 1, cannot run batch 8"):
        profile(p, ProfileConfig(batch_sizes=(1, 8), **FAST))


def test_training_mode_module_is_refused(tiny_onnx):
    with pytest.raises(ProfileError, match="training mode"):
        profile(tiny_onnx, ProfileConfig(batch_sizes=(1,), **FAST), torch_model=_tiny_cnn_torch().train())


def test_measure_rejects_bad_counts():
    with pytest.raises(ProfileError, match="repeat count"):
        measure(lambda: None, repeats=0)
    with pytest.raises(ProfileError, match="warm-up"):
        measure(lambda: None, warmup=-1)
