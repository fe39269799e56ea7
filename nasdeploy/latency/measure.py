"""The only ONNX Runtime timing loop: sessions, warm-up, repeats, percentiles.

``profile`` (whole exported models) and the latency look-up table (per-op
timings for the search) both time through :func:`make_session` and
:func:`measure`, so their figures share one schema (:class:`LatencyStats`)
and one method, and :func:`machine_fingerprint` says where they were taken.

Method (DESIGN.md "Measuring"): explicit provider, fixed intra-op threads,
one inter-op thread and sequential execution so that nothing else in the
session competes for the cores; a warm-up that lets ORT allocate its arena
and the CPU reach a steady clock; ``time.perf_counter_ns`` around each call
with the garbage collector off (as ``timeit`` does); percentiles kept as
floats in milliseconds.

Steady figure: on a shared host the neighbours' load comes in episodes of
seconds to tens of seconds that slow every call by 15-60% (measured: the
pooled p50 of the same six networks moved 21-28% between two 12-s halves of
one interleaved run, while the lowest median of 40-call windows moved
0.1-0.9%). :attr:`LatencyStats.steady_p50_ms` is that lowest window median —
the p50 of the quietest stretch of the timing — and is the figure the latency
table, its calibration and the budget's verdict use (:func:`steady_ms`);
:func:`measure_many` spreads several models' windows over the same seconds so
each of them sees quiet stretches. ``p50_ms`` stays the plain p50 of all calls.
"""

from __future__ import annotations

import functools
import gc
import hashlib
import json
import os
import platform
import statistics
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ProfileError

# Names accepted for ``opt_level`` → ORT's enum member names. "all" is what a
# deployment uses (NCHWc layout, Conv+activation fusion into com.microsoft
# ops); "basic" keeps standard ONNX ops; "disable" is ~3× slower here.
STEADY_WINDOW = 16  # consecutive calls per window of LatencyStats.steady_p50_ms
# How the table and the kit time their pieces: groups of `group` models through measure_many.
INTERLEAVE = {"group": 8, "window": STEADY_WINDOW, "min_windows": 20, "min_span_s": 8.0}

OPT_LEVELS = {
    "all": "ORT_ENABLE_ALL",
    "extended": "ORT_ENABLE_EXTENDED",
    "basic": "ORT_ENABLE_BASIC",
    "disable": "ORT_DISABLE_ALL",
}


def _check_opt_level(opt_level: str) -> str:
    if opt_level not in OPT_LEVELS:
        raise ProfileError(
            f"unknown ORT optimization level {opt_level!r}",
            f"use one of {', '.join(OPT_LEVELS)}",
        )
    return OPT_LEVELS[opt_level]


def _check_threads(threads: int) -> int:
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ProfileError(f"thread count must be an integer ≥ 1, got {threads!r}", "pass threads=1 or more")
    return threads


def _check_provider(provider: str) -> str:
    import onnxruntime as ort

    available = ort.get_available_providers()
    if provider not in available:
        raise ProfileError(
            f"execution provider {provider!r} is not available in this onnxruntime build",
            f"use one of {', '.join(available)}",
        )
    return provider


def load_avg() -> list[float] | None:
    """The 1/5/15-min load averages, rounded (None where the OS has none): other processes on the
    cores are the main source of run-to-run drift, so every timing record carries them."""
    return [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None


def runnable_tasks(samples: int = 5, interval_s: float = 0.05) -> int | None:
    """Tasks running or ready to run on the machine now, this process's included (Linux: the
    median of a few reads of /proc/loadavg's fourth field); None where the OS does not say.

    Unlike the load average, which decays over minutes after a job ends, this is the crowd a
    job starting now will share the cores with.
    """
    counts = []
    for i in range(samples):
        try:
            with open("/proc/loadavg") as f:
                counts.append(int(f.read().split()[3].split("/")[0]))
        except (OSError, IndexError, ValueError):
            return None
        if i + 1 < samples:
            time.sleep(interval_s)
    return int(statistics.median(counts))


def _cpu_model() -> str:
    """CPU model string: /proc/cpuinfo on Linux, else what platform knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def machine_fingerprint(threads: int = 1, opt_level: str = "all", provider: str = "CPUExecutionProvider") -> dict:
    """Describe where and how latencies are measured, with a stable short id.

    Timings are only comparable under the same fingerprint; the latency table
    uses ``id`` as its cache key.

    Args:
        threads: ORT intra-op threads used for the timings.
        opt_level: ORT graph optimization level (a key of ``OPT_LEVELS``).
        provider: ORT execution provider.

    Returns:
        ``{"cpu", "logical_cores", "machine", "system", "onnxruntime", "numpy",
        "provider", "threads", "opt_level", "id"}``; ``id`` is the first 12 hex
        digits of the SHA-256 of the other fields.

    Example:
        >>> machine_fingerprint(threads=1)["id"]  # doctest: +SKIP
        '3f9a0c51d2e7'
    """
    import onnxruntime as ort

    _check_threads(threads)
    _check_opt_level(opt_level)
    fp: dict[str, Any] = {
        "cpu": _cpu_model(),
        "logical_cores": os.cpu_count() or 1,
        "machine": platform.machine(),
        "system": platform.system(),
        "onnxruntime": ort.__version__,
        "numpy": np.__version__,
        "provider": provider,
        "threads": threads,
        "opt_level": opt_level,
    }
    fp["id"] = hashlib.sha256(json.dumps(fp, sort_keys=True).encode()).hexdigest()[:12]
    return fp


def make_session(
    model: str | os.PathLike | bytes,
    provider: str = "CPUExecutionProvider",
    threads: int = 1,
    opt_level: str = "all",
    profiling: bool = False,
    profile_prefix: str | os.PathLike | None = None,
):
    """Create an ``onnxruntime.InferenceSession`` configured for timing.

    Args:
        model: path to an .onnx file (external data beside it is found) or
            the serialized model bytes.
        provider: the one execution provider to run on; must be in
            ``ort.get_available_providers()``.
        threads: intra-op threads (inter-op is 1, execution sequential).
        opt_level: "all", "extended", "basic" or "disable".
        profiling: turn ORT's per-node profiler on (slows every run; use a
            separate session for it, never the one being timed).
        profile_prefix: where ORT writes its trace (``<prefix>_<date>.json``);
            ORT's default is the working directory.

    Returns:
        The session.

    Raises:
        ProfileError: unknown provider, threads < 1, bad opt level, or a
            model ORT cannot load.
    """
    import onnxruntime as ort

    _check_provider(provider)
    _check_threads(threads)
    level = getattr(ort.GraphOptimizationLevel, _check_opt_level(opt_level))

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    # One inter-op thread + sequential: nodes never run concurrently, so a
    # timing depends on the intra-op thread count alone.
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = level
    # ORT warns about things like unused initializers on every session; the
    # LUT creates hundreds of sessions, so only errors are logged.
    so.log_severity_level = 3
    if profiling:
        so.enable_profiling = True
        if profile_prefix is not None:
            so.profile_file_prefix = str(profile_prefix)

    where = "serialized model" if isinstance(model, (bytes, bytearray)) else str(model)
    src = bytes(model) if isinstance(model, (bytes, bytearray)) else str(model)
    try:
        sess = ort.InferenceSession(src, sess_options=so, providers=[provider])
    except Exception as e:  # ORT raises Fail/InvalidProtobuf/NotImplemented/...
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ProfileError(
            f"onnxruntime cannot load {where}: {msg[:200]}",
            "pass an ONNX model written by `nasdeploy export`",
        ) from None
    # ORT may silently fall back to CPU when a provider's libraries are missing.
    if sess.get_providers()[0] != provider:
        raise ProfileError(
            f"onnxruntime fell back to {sess.get_providers()[0]} instead of {provider}",
            "install the provider's runtime libraries or choose CPUExecutionProvider",
        )
    return sess


@dataclass(frozen=True)
class LatencyStats:
    """Timing figures of one (model, batch size) under one fingerprint; ms as floats."""

    batch_size: int
    warmup: int  # untimed calls before the timed ones
    repeats: int  # timed calls actually made (≥ the requested count unless max_time_s cut it)
    mean_ms: float
    std_ms: float
    min_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    throughput_per_s: float  # samples per second = batch_size / mean
    # lowest median of STEADY_WINDOW consecutive calls (None: fewer than 2 windows were timed)
    steady_p50_ms: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LatencyStats:
        missing = [f.name for f in fields(cls) if f.name not in d and f.name != "steady_p50_ms"]
        if missing:
            raise ProfileError(
                f"latency record lacks {', '.join(missing)}", "re-measure; the file predates this schema"
            )
        return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})

    @classmethod
    def from_times_ns(cls, times_ns: np.ndarray, batch_size: int, warmup: int,
                      window: int = STEADY_WINDOW) -> LatencyStats:
        """Summarize per-call wall times in nanoseconds (in call order: ``window`` consecutive calls form a
        window of the steady figure)."""
        ms = np.asarray(times_ns, dtype=np.float64) / 1e6
        p50, p90, p99 = np.percentile(ms, [50, 90, 99])
        mean = float(ms.mean())
        n_win = ms.size // window if window > 0 else 0
        steady = (float(np.median(ms[:n_win * window].reshape(n_win, window), axis=1).min()) if n_win >= 2
                  else None)
        return cls(
            batch_size=int(batch_size),
            warmup=int(warmup),
            repeats=int(ms.size),
            mean_ms=mean,
            std_ms=float(ms.std(ddof=1)) if ms.size > 1 else 0.0,
            min_ms=float(ms.min()),
            p50_ms=float(p50),
            p90_ms=float(p90),
            p99_ms=float(p99),
            throughput_per_s=batch_size / (mean / 1e3) if mean > 0 else float("inf"),
            steady_p50_ms=steady,
        )


def steady_ms(stats: LatencyStats | Mapping[str, Any]) -> float:
    """The latency figure of the table, its calibration and the budget: the steady p50 where one was
    timed, else the p50 (records and stand-in timers without windows)."""
    d = stats.to_dict() if isinstance(stats, LatencyStats) else stats
    v = d.get("steady_p50_ms")
    return float(d["p50_ms"] if v is None else v)


def _batch_of(feeds: Mapping[str, Any] | None) -> int:
    """Leading dimension of the first feed, or 1 without feeds."""
    if not feeds:
        return 1
    first = next(iter(feeds.values()))
    shape = getattr(first, "shape", ())
    return int(shape[0]) if len(shape) else 1


def _as_call(target: Any, feeds: Mapping[str, np.ndarray] | None):
    """The zero-argument call that runs ``target`` once (an ORT session with its feeds, or a callable)."""
    if hasattr(target, "run") and hasattr(target, "get_inputs"):
        if feeds is None:
            raise ProfileError("timing an ORT session needs its feeds", "pass feeds={input_name: array}")
        # partial is a C-level call: no Python frame of ours inside the timed region.
        return functools.partial(target.run, None, dict(feeds))
    if callable(target):
        if feeds is not None:
            raise ProfileError("a callable is timed without feeds", "bind the inputs in a closure, pass feeds=None")
        return target
    raise ProfileError(f"cannot time a {type(target).__name__}", "pass an InferenceSession or a callable")


def measure(
    target: Any,
    feeds: Mapping[str, np.ndarray] | None = None,
    *,
    warmup: int = 20,
    repeats: int = 100,
    min_time_s: float = 0.0,
    max_time_s: float | None = None,
    batch_size: int | None = None,
    max_repeats: int = 100_000,
) -> LatencyStats:
    """Time ``target`` after a warm-up and summarize the per-call times.

    Args:
        target: an ``onnxruntime.InferenceSession`` (called as
            ``session.run(None, feeds)``) or any zero-argument callable (e.g. a
            closure running a PyTorch module; then ``feeds`` must be None).
        feeds: the session's inputs, name → array.
        warmup: untimed calls first (arena allocation, caches, CPU clocks).
        repeats: timed calls, at least.
        min_time_s: keep timing until this much wall time has passed too
            (useful for sub-millisecond calls), capped at ``max_repeats``.
        max_time_s: stop after this much timed wall time even if fewer than
            ``repeats`` calls were made (at least one is); None for no cap.
            ``LatencyStats.repeats`` records the count actually made.
        batch_size: samples per call, for throughput; default the leading
            dimension of the first feed, else 1.
        max_repeats: hard bound on timed calls.

    Returns:
        LatencyStats with mean/std/min/p50/p90/p99 in ms and throughput.

    Raises:
        ProfileError: bad counts, or a target that is neither a session nor a
            callable.

    Example:
        >>> sess = make_session("model.onnx", threads=1)  # doctest: +SKIP
        >>> measure(sess, {"input": x}, warmup=20, repeats=100).p50_ms  # doctest: +SKIP
    """
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ProfileError(f"warm-up count must be an integer ≥ 0, got {warmup!r}", "pass warmup=0 or more")
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ProfileError(f"repeat count must be an integer ≥ 1, got {repeats!r}", "pass repeats=1 or more")
    if min_time_s < 0 or (max_time_s is not None and max_time_s <= 0):
        raise ProfileError(
            f"time limits must be min_time_s ≥ 0 and max_time_s > 0, got {min_time_s}, {max_time_s}",
            "fix the time limits",
        )

    call = _as_call(target, feeds)
    n_batch = _batch_of(feeds) if batch_size is None else int(batch_size)

    for _ in range(warmup):
        call()

    cap = max(repeats, max_repeats)
    times = np.empty(cap, dtype=np.int64)
    min_ns = int(min_time_s * 1e9)
    max_ns = None if max_time_s is None else int(max_time_s * 1e9)
    clock = time.perf_counter_ns
    gc_was_on = gc.isenabled()
    gc.disable()  # a collection inside a timed call is noise, not model latency
    try:
        start = clock()
        n = 0
        while n < cap:
            t0 = clock()
            call()
            t1 = clock()
            times[n] = t1 - t0
            n += 1
            elapsed = t1 - start
            if n >= repeats and elapsed >= min_ns:
                break
            if max_ns is not None and elapsed >= max_ns:
                break
    finally:
        if gc_was_on:
            gc.enable()
    return LatencyStats.from_times_ns(times[:n], batch_size=n_batch, warmup=warmup)


def measure_many(
    targets: list[tuple[Any, Mapping[str, np.ndarray] | None]],
    *,
    warmup: int = 30,
    window: int = STEADY_WINDOW,
    min_windows: int = 20,
    min_span_s: float = 8.0,
) -> list[LatencyStats]:
    """Time several models interleaved: round after round, each runs one window of ``window`` timed calls.

    Every model's windows are spread over the same ``min_span_s`` seconds (at least ``min_windows`` each), so
    a load episode of the host hits all of them alike and each one's :attr:`LatencyStats.steady_p50_ms`
    comes from the quiet stretches in between. ``targets``: ``(session, feeds)`` or ``(callable, None)``.
    """
    if not targets:
        return []
    if window < 1 or min_windows < 2:
        raise ProfileError(f"window = {window}, min_windows = {min_windows}", "use window ≥ 1 and min_windows ≥ 2")
    calls = [_as_call(t, f) for t, f in targets]
    for call in calls:
        for _ in range(warmup):
            call()
    times: list[list[int]] = [[] for _ in calls]
    clock = time.perf_counter_ns
    span_ns = int(min_span_s * 1e9)
    gc_was_on = gc.isenabled()
    gc.disable()
    try:
        start, rounds = clock(), 0
        while rounds < min_windows or clock() - start < span_ns:
            for call, out in zip(calls, times):
                for _ in range(window):
                    t0 = clock()
                    call()
                    out.append(clock() - t0)
            rounds += 1
    finally:
        if gc_was_on:
            gc.enable()
    return [LatencyStats.from_times_ns(np.array(t, dtype=np.int64), batch_size=_batch_of(f), warmup=warmup,
                                       window=window) for t, (_, f) in zip(times, targets)]
