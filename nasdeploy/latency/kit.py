"""The latency kit: the table's pieces as ONNX files, timed on the machine that serves the model.

``write_kit(spec, DIR)`` exports every network the table is computed from (probes, the two
skeletons, one network per table entry, the calibration networks) into ``DIR/onnx/``, writes
``DIR/manifest.json`` and one runner script, ``DIR/run_latency_kit.py``, that needs only Python,
numpy and onnxruntime. Its timing loop is not a copy: the runner is assembled from the source
of ``latency.measure`` (``inspect.getsource``), the loop ``profile`` and the table use. It writes
the raw timings as a table file that ``LatencyTable.load`` turns into entries with the table's
own arithmetic (``fixed_record``, ``entry_record``, ``fit_calibration``), so
``nasdeploy search --latency-table THAT.json`` steers by the serving machine's numbers.
"""

from __future__ import annotations

import inspect
import os
from dataclasses import asdict
from pathlib import Path

import torch

from ..errors import ConfigError
from ..onnxio import Logits, torch_export
from . import measure
from .budget import probe_genotypes
from .table import (
    TABLE_FORMAT,
    DeploySpec,
    _all_input_inputs,
    _skeleton_inputs,
    calibration_genotypes,
    deploy_network,
    example_input,
    is_free,
    skeleton_network,
)

KIT_FORMAT = "nasdeploy.latency_kit/1"
RUNNER = "run_latency_kit.py"

# The runner's own code around the embedded timing loop (no torch, no nasdeploy).
_HEADER = '''#!/usr/bin/env python3
"""Time the pieces of a nasdeploy latency kit on this machine; write a latency table JSON.

Needs only Python 3.9+, numpy and onnxruntime:

    python {runner} [--threads N] [--provider P] [--opt-level all] [--out table.json]

Then, on the machine that searches: nasdeploy search --latency-table table.json ...
The functions below are nasdeploy.latency.measure's own (the loop `nasdeploy profile` uses).
"""
from __future__ import annotations

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
        super().__init__(f"{{problem}} — {{fix}}" if fix else problem)

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
    timings = []
    start = time.perf_counter()
    for k, piece in enumerate(manifest["pieces"]):
        sess = make_session(str(here / piece["file"]), args.provider, args.threads, args.opt_level)
        feeds = {sess.get_inputs()[0].name: rng.standard_normal(manifest["input_shape"]).astype(np.float32)}
        stats = measure(sess, feeds, warmup=t["warmup"], repeats=t["repeats"], min_time_s=t["min_time_s"])
        timings.append({**{k2: v for k2, v in piece.items() if k2 != "file"}, "stats": stats.to_dict()})
        print(f"[{k + 1}/{len(manifest['pieces'])}] {piece['name']}: p50 {stats.p50_ms:.4f} ms", file=sys.stderr)
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

# What the runner embeds from latency.measure, in dependency order.
_EMBEDDED = ("OPT_LEVELS", "_check_opt_level", "_check_threads", "_check_provider", "_cpu_model",
             "machine_fingerprint", "make_session", "LatencyStats", "_batch_of", "measure")


def runner_source() -> str:
    """The runner script: header, ``latency.measure``'s functions (their own source), ``main``."""
    parts = [_HEADER.format(runner=RUNNER)]
    src = inspect.getsource(measure)
    for name in _EMBEDDED:
        if name == "OPT_LEVELS":  # a constant: its assignment, as written in measure.py
            start = src.index("OPT_LEVELS = {")
            parts.append(src[start:src.index("}\n", start) + 2])
        else:
            parts.append(inspect.getsource(getattr(measure, name)))
    return "\n\n".join(parts) + _MAIN


def kit_pieces(spec: DeploySpec, calibrate: int = 8, seed: int = 0) -> list[tuple[dict, torch.nn.Module]]:
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


def write_kit(spec: DeploySpec, out: str | os.PathLike, *, calibrate: int = 8, threads: int = 1,
              opt_level: str = "all", opset: int = 20, warmup: int = 30, repeats: int = 300,
              min_time_s: float = 0.2, progress: bool = True) -> Path:
    """Write the kit of ``spec`` into ``out``; returns the runner's path.

    Args:
        spec: the deployment network (``DeploySpec.from_configs``).
        out: the kit folder (created; an existing kit there is replaced).
        calibrate: random whole networks for the calibration fit.
        threads, opt_level: the runner's defaults (``--threads``, ``--opt-level`` override them).
        opset: ONNX opset of the exported pieces (``[export] opset``).
        warmup, repeats, min_time_s: the timing loop's settings (as the table's ``ort_timer``).

    Example:
        >>> write_kit(DeploySpec(C=16, layers=8, in_channels=1, H=8, W=8, num_classes=10), "kit")  # doctest: +SKIP
    """
    from tqdm.auto import tqdm

    from ..artifacts import atomic_write, ensure_dir, write_json

    root = Path(out)
    if root.exists() and not root.is_dir():
        raise ConfigError(f"--out {root} is a file", "give a folder for the kit")
    ensure_dir(root / "onnx")
    x = example_input(spec)
    manifest = {"format": KIT_FORMAT, "table_format": TABLE_FORMAT, "spec": {**asdict(spec),
                "primitives": list(spec.primitives)}, "key": spec.key(), "input_shape": list(x.shape),
                "threads": threads, "opt_level": opt_level, "opset": opset,
                "timing": {"warmup": warmup, "repeats": repeats, "min_time_s": min_time_s}, "pieces": []}
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
