"""The latency kit: the table's pieces as ONNX files, timed on the machine that serves the model.

``write_kit(spec, DIR)`` exports every network the table is computed from (probes, the two
skeletons, one network per table entry, the calibration networks) into ``DIR/onnx/``, writes
``DIR/manifest.json`` and one runner script, ``DIR/run_latency_kit.py``, that needs only Python,
numpy and onnxruntime. Its timing loop is not a copy: the runner is assembled from the source
of ``latency.measure`` (``inspect.getsource``), the loop ``profile`` and the table use. It writes
the raw timings as a table file that ``LatencyTable.load`` turns into entries with the table's
own arithmetic (``fixed_record``, ``entry_record``, ``fit_calibration``), so
``nasdeploy search --latency-table THAT.json`` steers by the serving machine's numbers.

The same embedded code times one file in a fresh process here (:class:`FreshProcessTimer`): the
budget's verdict is what a new process that loads the exported model measures, not the search's.
"""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..errors import ConfigError, ProfileError
from ..onnxio import Logits, exported, first_line, torch_export
from . import measure
from .measure import LatencyStats
from .table import (
    CALIBRATION_NETWORKS,
    TABLE_FORMAT,
    DeploySpec,
    _all_input_inputs,
    _skeleton_inputs,
    calibration_genotypes,
    deploy_network,
    example_input,
    is_free,
    probe_genotypes,
    skeleton_network,
    time_onnx,
)

KIT_FORMAT = "nasdeploy.latency_kit/1"
RUNNER = "run_latency_kit.py"

# The runner's own code around the embedded timing loop (no torch, no nasdeploy).
_DOC = '''#!/usr/bin/env python3
"""Time the pieces of a nasdeploy latency kit on this machine; write a latency table JSON.

Needs only Python 3.9+, numpy and onnxruntime:

    python {runner} [--threads N] [--provider P] [--opt-level all] [--out table.json]

Then, on the machine that searches: nasdeploy search --latency-table table.json ...
The functions below are nasdeploy.latency.measure's own (the loop `nasdeploy profile` uses).
"""
'''

_HEADER = '''from __future__ import annotations

import argparse
import functools
import gc
import hashlib
import json
import os
import platform
import sys
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np


class ProfileError(Exception):
    def __init__(self, problem, fix=None):
        super().__init__(f"{problem} — {fix}" if fix else problem)

'''

_MAIN = '''

def main(argv=None) -> int:
    here = Path(__file__).resolve().parent
    manifest = json.loads((here / "manifest.json").read_text(encoding="utf-8"))
    ap = argparse.ArgumentParser(description="Time this latency kit; write a nasdeploy latency table.")
    ap.add_argument("--threads", type=int, default=manifest["threads"], help="ORT intra-op threads")
    ap.add_argument("--provider", default="CPUExecutionProvider", help="ORT execution provider")
    ap.add_argument("--opt-level", default=manifest["opt_level"], choices=list(OPT_LEVELS))
    ap.add_argument("--out", default=None, help="table JSON (default: DIR/table-<fingerprint>.json)")
    args = ap.parse_args(argv)
    t = manifest["timing"]
    fp = machine_fingerprint(args.threads, args.opt_level, args.provider)
    out = Path(args.out) if args.out else here / f"table-{fp['id']}.json"
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    pieces, il = manifest["pieces"], t.get("interleave", INTERLEAVE)
    timings = [{k2: v for k2, v in piece.items() if k2 != "file"} for piece in pieces]

    def timed(idx, key):  # the pieces idx, a group at a time, interleaved (measure_many)
        for g0 in range(0, len(idx), il["group"]):
            group = idx[g0:g0 + il["group"]]
            targets = []
            for k in group:
                sess = make_session(str(here / pieces[k]["file"]), args.provider, args.threads, args.opt_level)
                targets.append((sess, {sess.get_inputs()[0].name:
                                       rng.standard_normal(manifest["input_shape"]).astype(np.float32)}))
            all_stats = measure_many(targets, warmup=t["warmup"], window=il["window"],
                                     min_windows=il["min_windows"], min_span_s=il["min_span_s"])
            for k, stats in zip(group, all_stats):
                timings[k][key] = stats.to_dict()
                print(f"[{k + 1}/{len(pieces)}{'' if key == 'stats' else ', again'}] {pieces[k]['name']}: steady "
                      f"p50 {steady_ms(stats):.4f} ms (p50 {stats.p50_ms:.4f})", file=sys.stderr)

    timed(list(range(len(pieces))), "stats")
    # The skeletons and the entries once more: a per-op cost below 0 in both passes is a fact of this runtime
    # (an op faster than the placeholder it replaces), not noise, as a local table confirms by re-measuring.
    timed([k for k, p in enumerate(pieces) if p["kind"] in ("skeleton", "entry")], "stats_again")
    table = {"format": manifest["table_format"], "fingerprint": fp, "spec": manifest["spec"],
             "timings": timings, "load_avg": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg")
             else None, "seconds": time.perf_counter() - start, "kit": manifest["format"]}
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(table, indent=1), encoding="utf-8")
    os.replace(tmp, out)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
'''

# The fresh-process timer's main: one file, the settings as JSON in argv, the LatencyStats as JSON out.
_TIME_ONE = '''

def time_one(path: str, shape: list, timing: dict) -> dict:
    sess = make_session(path, timing["provider"], timing["threads"], timing["opt_level"])
    feeds = {sess.get_inputs()[0].name: np.random.default_rng(0).standard_normal(shape).astype(np.float32)}
    return measure(sess, feeds, warmup=timing["warmup"], repeats=timing["repeats"],
                   min_time_s=timing["min_time_s"]).to_dict()


print(json.dumps(time_one(sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3]))))
'''

# What the runner embeds from latency.measure, in dependency order.
_EMBEDDED = ("STEADY_WINDOW", "INTERLEAVE", "OPT_LEVELS", "_check_opt_level", "_check_threads", "_check_provider",
             "_cpu_model", "machine_fingerprint", "make_session", "LatencyStats", "steady_ms", "_batch_of",
             "_as_call", "measure", "measure_many")


def _embedded_source() -> str:
    """Imports, a stand-in ProfileError and ``latency.measure``'s functions (their own source): numpy + ORT only."""
    parts = [_HEADER]
    src = inspect.getsource(measure)
    for name in _EMBEDDED:
        if name == "OPT_LEVELS":  # a constant: its assignment, as written in measure.py
            start = src.index("OPT_LEVELS = {")
            parts.append(src[start:src.index("}\n", start) + 2])
        elif name.isupper():  # a plain constant: its value
            parts.append(f"{name} = {getattr(measure, name)!r}")
        else:
            parts.append(inspect.getsource(getattr(measure, name)))
    return "\n\n".join(parts)


def runner_source() -> str:
    """The runner script: docstring, the embedded ``latency.measure`` functions, ``main``."""
    return _DOC.format(runner=RUNNER) + _embedded_source() + _MAIN


def fresh_source() -> str:
    """The fresh-process timer's script (``python -c``): the embedded functions and one timing of one file."""
    return _embedded_source() + _TIME_ONE


@dataclass(frozen=True)
class FreshProcessTimer:
    """Time exported networks in fresh Python processes that import only numpy and onnxruntime.

    What a new ``nasdeploy profile`` process measures, without the search process's state (its
    allocator, threads, caches): each call starts ``python -c`` on :func:`fresh_source`, which makes
    the session and runs ``latency.measure``'s loop with these settings (the ones the search's
    ``ort_timer`` uses). As a :data:`~nasdeploy.latency.table.Timer` it measures one fresh process.
    """

    threads: int = 1
    opt_level: str = "all"
    provider: str = "CPUExecutionProvider"
    warmup: int = 30
    repeats: int = 300
    min_time_s: float = 2.0  # long enough for quiet stretches between a shared host's load episodes
    python: str = sys.executable
    timeout_s: float = 600.0

    def timing(self) -> dict:
        return {"threads": self.threads, "opt_level": self.opt_level, "provider": self.provider,
                "warmup": self.warmup, "repeats": self.repeats, "min_time_s": self.min_time_s}

    def time_file(self, path: str | os.PathLike, shape: tuple[int, ...]) -> LatencyStats:
        """One fresh process's figures for the ONNX file at ``path`` fed an input of ``shape``."""
        cmd = [self.python, "-c", fresh_source(), str(path), json.dumps(list(shape)), json.dumps(self.timing())]
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=self.timeout_s, check=False)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise ProfileError(f"the fresh-process timing of {path} did not finish ({first_line(e)})",
                               "check that this Python has onnxruntime and numpy") from None
        if out.returncode != 0:
            err = (out.stderr.strip().splitlines() or ["no output"])[-1]
            raise ProfileError(f"the fresh-process timing of {path} failed: {err[:300]}",
                               "check that this Python has onnxruntime and numpy")
        return LatencyStats.from_dict(json.loads(out.stdout.strip().splitlines()[-1]))

    def __call__(self, net: torch.nn.Module, spec: DeploySpec) -> LatencyStats:
        return self.compare(net, spec, 1, in_process=False)[1][0]

    def compare(self, net: torch.nn.Module, spec: DeploySpec, runs: int = 2,
                in_process: bool = True) -> tuple[LatencyStats | None, list[LatencyStats]]:
        """Export ``net`` once (at ``spec.opset``); its in-process figure (this process, ``time_onnx``, the
        search's loop; None without ``in_process``) and ``runs`` fresh-process figures of that same file."""
        x = example_input(spec)
        with exported(net, x, "nasdeploy-verify-", opset=spec.opset) as path:
            here = (time_onnx(path, x.numpy(), self.provider, self.threads, self.opt_level, self.warmup,
                              self.repeats, self.min_time_s) if in_process else None)
            return here, [self.time_file(path, tuple(x.shape)) for _ in range(runs)]


def kit_pieces(spec: DeploySpec, calibrate: int = CALIBRATION_NETWORKS,
               seed: int = 0) -> list[tuple[dict, torch.nn.Module]]:
    """(manifest entry, module) of every network the table of ``spec`` is computed from; probes first."""

    pieces = []
    for side, gs in probe_genotypes(spec).items():
        for name, g in gs.items():
            pieces.append(({"kind": "probe", "name": name, "side": side, "genotype": g.to_dict()},
                           deploy_network(g, spec)))
    pieces.append(({"kind": "skeleton", "name": "skeleton"}, skeleton_network(spec, _skeleton_inputs(spec.steps))[0]))
    pieces.append(({"kind": "skeleton", "name": "skeleton_all_inputs"},
                   skeleton_network(spec, _all_input_inputs(spec.steps))[0]))
    for klass in spec.shape_classes():
        for op in spec.primitives:
            if not is_free(op, klass[3]):
                net, n = skeleton_network(spec, op=op, klass=klass)
                pieces.append(({"kind": "entry", "name": f"{op} {klass}", "op": op, "klass": list(klass), "edges": n},
                               net))
    for k, g in enumerate(calibration_genotypes(spec, calibrate, seed)):
        pieces.append(({"kind": "calibration", "name": f"calibration {k}", "genotype": g.to_dict()},
                       deploy_network(g, spec)))
    return pieces


def write_kit(spec: DeploySpec, out: str | os.PathLike, *, calibrate: int = CALIBRATION_NETWORKS, threads: int = 1,
              opt_level: str = "all", opset: int | None = None, warmup: int = 30, repeats: int = 300,
              min_time_s: float = 0.2, progress: bool = True) -> Path:
    """Write the kit of ``spec`` into ``out``; returns the runner's path.

    Args:
        spec: the deployment network (``DeploySpec.from_configs``).
        out: the kit folder (created; an existing kit there is replaced).
        calibrate: random whole networks for the calibration fit.
        threads, opt_level: the runner's defaults (``--threads``, ``--opt-level`` override them).
        opset: ONNX opset of the exported pieces; None: ``spec.opset`` (the ``[export] opset``; the table's
            keys carry it, so another value is refused).
        warmup, repeats, min_time_s: the timing loop's settings (as the table's ``ort_timer``).

    Example:
        >>> write_kit(DeploySpec(C=16, layers=8, in_channels=1, H=8, W=8, num_classes=10), "kit")  # doctest: +SKIP
    """
    from tqdm.auto import tqdm

    from ..artifacts import atomic_write, ensure_dir, write_json

    root = Path(out)
    if opset is not None and opset != spec.opset:
        raise ConfigError(f"kit opset {opset} differs from the deployment's opset {spec.opset}",
                          "build the DeploySpec with opset=... (DeploySpec.from_configs(..., opset=))")
    opset = spec.opset
    if root.exists() and not root.is_dir():
        raise ConfigError(f"--out {root} is a file", "give a folder for the kit")
    ensure_dir(root / "onnx")
    x = example_input(spec)
    manifest = {"format": KIT_FORMAT, "table_format": TABLE_FORMAT, "spec": {**asdict(spec),
                "primitives": list(spec.primitives)}, "key": spec.key(), "input_shape": list(x.shape),
                "threads": threads, "opt_level": opt_level, "opset": opset,
                "timing": {"warmup": warmup, "repeats": repeats, "min_time_s": min_time_s,
                           "interleave": dict(measure.INTERLEAVE)}, "pieces": []}
    pieces = kit_pieces(spec, calibrate)
    for k, (entry, net) in tqdm(list(enumerate(pieces)), disable=not progress, desc="latency kit", unit="net",
                                leave=False):
        rel = f"onnx/{k:03d}.onnx"
        with torch.no_grad():
            torch_export(Logits(net.eval()).eval(), x, root / rel, opset)
        manifest["pieces"].append({**entry, "file": rel})
    write_json(root / "manifest.json", manifest)
    runner = root / RUNNER
    atomic_write(runner, runner_source())
    return runner
