"""The latency look-up table: ONNX Runtime p50 per (primitive, C, H, W, stride) at deploy shapes.

What is timed (DESIGN.md, "Latency measurement: what was measured here"): a
plain sum of single-op models mispredicts a whole network by +24..119%
because ORT's NCHWc layout, Conv+BN+ReLU fusion and common-subexpression
elimination span op boundaries. So every entry is timed **inside the deployed
network**:

1. The *skeleton* is the deployment ``Network`` (same C, layers, stem, input,
   head) whose every edge is a free placeholder: ``Identity`` at stride 1, a
   strided slice at stride 2. Its p50 is the fixed part (stem, preprocessing,
   node adds, concats, head) — the part no genotype changes.
2. An entry ``(op, C, H, W, stride)`` is the skeleton with every edge of that
   shape class (in every cell that has it) set to ``op``, minus the skeleton,
   divided by the number of such edges: the op's marginal cost with the
   neighbours that decide layout and fusion around it.
3. Random whole networks are measured too; ``offset + scale * sum`` is fitted
   to them by least squares (``calibration``), and its residuals by ridge
   regression on the per-entry edge counts (``fit_calibration``: corrections
   kept only when they lower the leave-one-out error).

Each piece is exported with the deployment exporter (``deploy.export``'s
dynamo path) and timed by ``latency.measure`` (the loop ``profile`` uses).
The table is a JSON file ``latency/<fingerprint-id>.json`` (by default under
``$NASDEPLOY_CACHE`` or ``~/.cache/nasdeploy``); entries are keyed by shape,
batch and ONNX opset, fixed parts and calibrations by the deployment spec (which
includes the opset; files without it were timed at opset 20), the file by
the machine/runtime fingerprint (CPU, cores, ORT version, threads, opt
level). ``load_or_measure`` measures only what the file lacks.
"""

from __future__ import annotations

import fcntl
import os
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError, ProfileError
from ..onnxio import exported
from ..space.cell import alpha_rows, concat_nodes, edge_inputs, edge_stride, random_genotype, reduction_layers
from ..space.genotype import Genotype
from ..space.network import stem_for
from ..space.primitives import PARAMETER_FREE, PRIMITIVES, Identity, candidate_ops
from .measure import INTERLEAVE, LatencyStats, machine_fingerprint, make_session, measure, measure_many, steady_ms

TABLE_FORMAT = "nasdeploy.latency_table/1"
# What every ms of a table is: LatencyStats.steady_p50_ms (latency.measure). Records of a file without this
# marker were plain p50s, taken under whatever load the host had: dropped on load, so they are timed again.
TABLE_FIGURE = "steady_p50"
CALIBRATION_NETWORKS = 24  # whole networks of a calibration by default (SearchConfig.latency_calibration)
# A group of pieces is re-timed (at most ANCHOR_TRIES times) while the skeleton timed among them reads more than
# ANCHOR_TOL off its own table figure: the host was slower (or faster) for the whole group (OrtTimer.many_anchored).
ANCHOR_TOL = 0.05
ANCHOR_TRIES = 3
DEFAULT_OPSET = 20  # ExportConfig's default; tables written before keys carried the opset were timed at it
# ms per call of a network; the table's timer is swappable (tests count calls).
Timer = Callable[[nn.Module, "DeploySpec"], LatencyStats]


def default_cache_dir() -> Path:
    """``$NASDEPLOY_CACHE`` or ``~/.cache/nasdeploy``."""
    return Path(os.environ.get("NASDEPLOY_CACHE") or Path.home() / ".cache" / "nasdeploy").expanduser()


def default_table_path(fingerprint: dict) -> Path:
    return default_cache_dir() / "latency" / f"{fingerprint['id']}.json"


@dataclass(frozen=True)
class DeploySpec:
    """The network that will be served: the *train* config's C/layers/stem at the data's input, not the supernet."""

    C: int
    layers: int
    in_channels: int
    H: int
    W: int
    num_classes: int
    stem: str = "cifar"  # resolved: cifar | imagenet
    steps: int = 4
    multiplier: int = 4
    batch: int = 1
    primitives: tuple[str, ...] = PRIMITIVES
    opset: int = DEFAULT_OPSET  # the ONNX opset every piece is exported at (the run's [export] opset)

    def __post_init__(self):
        for k in ("C", "layers", "in_channels", "H", "W", "num_classes", "steps", "multiplier", "batch", "opset"):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"deployment spec {k} = {v!r}: must be an integer >= 1", f"give {k} >= 1")
        if self.stem not in ("cifar", "imagenet"):
            raise ConfigError(f"deployment stem {self.stem!r} is not resolved", "use cifar or imagenet")
        object.__setattr__(self, "primitives", tuple(self.primitives))

    @classmethod
    def from_configs(cls, search_cfg, train_cfg, input_shape: Sequence[int], num_classes: int,
                     opset: int = DEFAULT_OPSET) -> DeploySpec:
        """The served network: ``train_cfg``'s C/layers/stem, ``search_cfg``'s cell shape and latency batch.

        ``opset``: the run's ``[export] opset``, at which the served model and every timed piece are exported.
        """
        c, h, w = (int(v) for v in input_shape)
        return cls(
            C=train_cfg.C, layers=train_cfg.layers, in_channels=c, H=h, W=w, num_classes=num_classes,
            stem=stem_for((c, h, w), train_cfg.stem), steps=search_cfg.steps, multiplier=search_cfg.multiplier,
            batch=getattr(search_cfg, "latency_batch", 1), primitives=search_cfg.primitives, opset=opset,
        )

    def key(self) -> str:
        """Identifies fixed parts, calibrations and probes (the primitives do not change those)."""
        return (f"C{self.C}-L{self.layers}-in{self.in_channels}x{self.H}x{self.W}-k{self.num_classes}-{self.stem}"
                f"-n{self.steps}m{self.multiplier}-b{self.batch}-o{self.opset}")

    def entry_key(self, op: str, klass: Sequence[int]) -> str:
        """The table entry of ``op`` on edges of shape class ``klass`` ``(C, H, W, stride)`` in this deployment."""
        return entry_key(op, *klass, self.batch, self.opset)

    def cells(self) -> list[tuple[bool, int, int, int]]:
        """Per cell: ``(reduction, C_curr, H_in, W_in)`` where H_in/W_in is the size of the cell's inputs."""
        h, w = self.H, self.W
        if self.stem == "imagenet":  # three stride-2 3x3 convs (padding 1)
            for _ in range(3):
                h, w = (h + 1) // 2, (w + 1) // 2
        out, c = [], self.C
        reductions = reduction_layers(self.layers)
        for i in range(self.layers):
            red = i in reductions
            if red:
                c *= 2
            out.append((red, c, h, w))
            if red:
                h, w = (h + 1) // 2, (w + 1) // 2
        return out

    def edge_classes(self, reduction: bool) -> list[list[tuple[int, int, int, int]]]:
        """For each edge of a cell type (alpha-row order), the ``(C, H, W, stride)`` of every cell it occurs in."""
        return [[edge_class(red, c, h, w, j) for red, c, h, w in self.cells() if red == reduction]
                for _, j in edge_inputs(self.steps)]

    def kept_edges(self, genotype: Genotype) -> list[tuple[str, list[tuple[int, int, int, int]]]]:
        """``(op, its shape class in every cell of that type)`` for each edge ``genotype`` keeps."""
        out = []
        for red, edges in ((False, genotype.normal), (True, genotype.reduce)):
            classes = self.edge_classes(red)
            out += [(op, classes[r]) for r, (op, _) in zip(alpha_rows(edges), edges)]
        return out

    def shape_classes(self) -> list[tuple[int, int, int, int]]:
        """Every distinct ``(C, H, W, stride)`` an edge of this network has."""
        seen = []
        for red in (False, True):
            for per_cell in self.edge_classes(red):
                for k in per_cell:
                    if k not in seen:
                        seen.append(k)
        return seen


def edge_class(reduction: bool, C: int, H: int, W: int, j: int) -> tuple[int, int, int, int]:
    """``(C, H, W, stride)`` of the edge from node ``j`` in a cell of ``C`` channels whose inputs are H x W."""
    stride = edge_stride(reduction, j)
    if reduction and stride == 1:  # intermediate nodes of a reduction cell are already reduced
        H, W = (H + 1) // 2, (W + 1) // 2
    return C, H, W, stride


def entry_key(op: str, C: int, H: int, W: int, stride: int, batch: int, opset: int) -> str:
    return f"{op}|C{C}|{H}x{W}|s{stride}|b{batch}|o{opset}"


def _with_opset(d: dict) -> dict:
    """A table dict whose keys carry the opset: files written before they did were timed at opset 20."""
    def spec_key(k: str) -> str:
        return k if re.search(r"-o\d+$", k) else f"{k}-o{DEFAULT_OPSET}"

    entries = {}
    for k, e in d.get("entries", {}).items():
        if k.count("|") == 4:
            k = f"{k}|o{DEFAULT_OPSET}"
        entries[k] = {**e, "spec": spec_key(e["spec"])} if isinstance(e.get("spec"), str) else e
    fixed = {}
    for k, fx in d.get("fixed", {}).items():
        fixed[spec_key(k)] = ({**fx, "spec": {"opset": DEFAULT_OPSET, **fx["spec"]}}
                              if isinstance(fx.get("spec"), dict) else fx)
    return {**d, "entries": entries, "fixed": fixed,
            **{part: {spec_key(k): v for k, v in d.get(part, {}).items()} for part in ("calibration", "probes")}}


def is_free(op: str, stride: int) -> bool:
    """Ops that add no node to the served graph: ``none`` is dropped by derivation, skip at stride 1 is Identity."""
    return op == "none" or (op == "skip_connect" and stride == 1)


# ------------------------------------------------------------------ networks timed in context

class _StrideSlice(nn.Module):
    """Stride-2 placeholder edge of the skeleton: one Slice node, output shape of a stride-2 op."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :, ::2, ::2]


# Skeleton topology: the fewest stride-2 edges a reduction cell can have (node 2
# must read both cell inputs) plus one more input edge for nodes 3.., so that the
# cell inputs still feed several edges as in a typical genotype.
def _skeleton_inputs(steps: int) -> list[int]:
    ins = [0, 1]
    for i in range(1, steps):
        node = 2 + i
        ins += [node - 1, i % 2]
    return ins


def _all_input_inputs(steps: int) -> list[int]:
    """Every node reads both cell inputs: the most stride-2 edges."""
    return [0, 1] * steps


def _genotype(op: str, inputs: list[int], steps: int, multiplier: int) -> Genotype:
    edges = tuple((op, j) for j in inputs)
    concat = concat_nodes(steps, multiplier)
    return Genotype(edges, concat, edges, concat)


def deploy_network(genotype: Genotype, spec: DeploySpec) -> nn.Module:
    """The served network of ``genotype`` at ``spec`` (eval mode, no auxiliary head)."""
    from ..space.network import Network

    if genotype.steps != spec.steps:
        raise ConfigError(f"genotype has {genotype.steps} nodes per cell, the spec {spec.steps}",
                          "derive the genotype with the same steps")
    return Network(genotype, spec.C, spec.num_classes, spec.layers, auxiliary=False,
                   in_channels=spec.in_channels, stem=spec.stem).eval()


def skeleton_network(spec: DeploySpec, inputs: list[int] | None = None, op: str = "skip_connect",
                     klass: tuple[int, int, int, int] | None = None) -> tuple[nn.Module, int]:
    """The deploy network with free placeholder edges, except ``op`` on every edge of shape class ``klass``.

    Returns the module and the number of edges that carry ``op``.
    """
    inputs = _skeleton_inputs(spec.steps) if inputs is None else inputs
    net = deploy_network(_genotype(op, inputs, spec.steps, spec.multiplier), spec)
    n = 0
    for (red, c, h, w), cell in zip(spec.cells(), net.cells):
        for k, j in enumerate(cell.indices):
            edge = edge_class(red, c, h, w, j)
            if klass == edge:
                n += 1
            else:
                cell.ops[k] = Identity() if edge[3] == 1 else _StrideSlice()
    return net.eval(), n


def example_input(spec: DeploySpec) -> torch.Tensor:
    """The input every piece is exported and timed with (values do not change a CNN's latency)."""
    return torch.randn(spec.batch, spec.in_channels, spec.H, spec.W, generator=torch.Generator().manual_seed(0))


def time_onnx(path: str | os.PathLike, x: np.ndarray, provider: str = "CPUExecutionProvider", threads: int = 1,
              opt_level: str = "all", warmup: int = 30, repeats: int = 300, min_time_s: float = 0.2) -> LatencyStats:
    """Time an ONNX file with input ``x`` in this process: ``latency.measure``'s session and loop."""
    sess = make_session(path, provider, threads, opt_level)
    return measure(sess, {sess.get_inputs()[0].name: x}, warmup=warmup, repeats=repeats, min_time_s=min_time_s)


class OrtTimer:
    """Export a module as ``deploy.export`` does (dynamo, one file, at ``spec.opset``) and time it in this process.

    ``timer(net, spec)`` times one network (``latency.measure``'s loop); ``timer.many(nets, spec)`` exports them
    all, then times them interleaved (``measure_many``), as the table times its pieces.
    """

    def __init__(self, threads: int = 1, opt_level: str = "all", provider: str = "CPUExecutionProvider",
                 warmup: int = 30, repeats: int = 300, min_time_s: float = 0.2, interleave: dict | None = None):
        self.threads, self.opt_level, self.provider = threads, opt_level, provider
        self.warmup, self.repeats, self.min_time_s = warmup, repeats, min_time_s
        self.interleave = dict(INTERLEAVE if interleave is None else interleave)

    def __call__(self, net: nn.Module, spec: DeploySpec) -> LatencyStats:
        x = example_input(spec)
        with exported(net, x, "nasdeploy-lut-", opset=spec.opset) as path:
            return time_onnx(path, x.numpy(), self.provider, self.threads, self.opt_level, self.warmup,
                             self.repeats, self.min_time_s)

    def many(self, nets: Sequence[nn.Module], spec: DeploySpec) -> list[LatencyStats]:
        return self.many_anchored(nets, spec)[0]

    def many_anchored(self, nets: Sequence[nn.Module], spec: DeploySpec, anchor: nn.Module | None = None,
                      anchor_ms: float | None = None, tol: float = ANCHOR_TOL,
                      tries: int = ANCHOR_TRIES) -> tuple[list[LatencyStats], list[float]]:
        """Time ``nets`` interleaved; with an ``anchor`` (a network whose steady p50 ``anchor_ms`` is known, the
        skeleton) timed among them, re-time the same sessions while the anchor reads more than ``tol`` off it.

        A load episode or a drift of the host's speed that spans a whole group moves every figure of the group
        alike, and the steady p50 cannot see it from inside the group (issue 12: one 32x32 group of eight
        read 9–26% slow, the other three within 10%). The anchor can. Returns the stats of the attempt whose
        anchor read closest and the anchor ratios (measured / known) of every attempt (empty without anchor).
        """
        from contextlib import ExitStack

        x = example_input(spec)
        todo = [*nets, anchor] if anchor is not None else list(nets)
        with ExitStack() as stack:
            paths = [stack.enter_context(exported(n, x, "nasdeploy-lut-", opset=spec.opset)) for n in todo]
            sessions = [make_session(p, self.provider, self.threads, self.opt_level) for p in paths]
            il = self.interleave
            targets = [(s, {s.get_inputs()[0].name: x.numpy()}) for s in sessions]
            best, ratios = None, []
            for _ in range(tries if anchor is not None else 1):
                stats = measure_many(targets, warmup=self.warmup, window=il["window"],
                                     min_windows=il["min_windows"], min_span_s=il["min_span_s"])
                if anchor is None:
                    return stats, []
                ratios.append(steady_ms(stats[-1]) / anchor_ms)
                if best is None or abs(ratios[-1] - 1) < abs(best[1] - 1):
                    best = (stats[:-1], ratios[-1])
                if abs(ratios[-1] - 1) <= tol:
                    break
            return best[0], ratios


def ort_timer(threads: int = 1, opt_level: str = "all", provider: str = "CPUExecutionProvider",
              warmup: int = 30, repeats: int = 300, min_time_s: float = 0.2) -> OrtTimer:
    """The table's default timer (:class:`OrtTimer`)."""
    return OrtTimer(threads, opt_level, provider, warmup, repeats, min_time_s)


def _fewest_strided(steps: int) -> list[int]:
    """Inputs with the fewest stride-2 edges (reduction cell): node 2 reads 0, 1; node 3 reads 2, 1; then i-1, i-2."""
    ins = [0, 1]
    for i in range(1, steps):
        node = 2 + i
        ins += [node - 1, 1 if i == 1 else node - 2]
    return ins


def probe_genotypes(spec: DeploySpec) -> dict[str, dict[str, Genotype]]:
    """Networks at the ends of the space: ``{"fast": {name: g}, "slow": {name: g}}``.

    One each, so that a refusal costs two exports: fast — every normal edge a skip (an Identity),
    the reduction cell's edges a max pool (else the first parameter-free op), on the topology with
    the fewest strided edges; slow — sep_conv_5x5 (else the first convolution) on every edge of
    both cells, every node reading both cell inputs (the most strided edges).
    """
    ops = candidate_ops(spec.primitives)
    concat = concat_nodes(spec.steps, spec.multiplier)
    few, many = _fewest_strided(spec.steps), [0, 1] * spec.steps
    free = [o for o in ops if o in PARAMETER_FREE] or list(ops)
    normal_op = "skip_connect" if "skip_connect" in ops else free[0]
    red = "max_pool_3x3" if "max_pool_3x3" in free else free[0]
    convs = [o for o in ops if o not in PARAMETER_FREE] or list(ops)
    big = "sep_conv_5x5" if "sep_conv_5x5" in convs else convs[0]
    return {"fast": {f"normal {normal_op}, reduce {red}": Genotype(tuple((normal_op, j) for j in few), concat,
                                                                   tuple((red, j) for j in few), concat)},
            "slow": {f"all {big}": Genotype(tuple((big, j) for j in many), concat, tuple((big, j) for j in many),
                                            concat)}}


# ------------------------------------------------------------------ the table

@dataclass
class LatencyTable:
    """Per-op in-context latencies, fixed parts and calibrations for one machine fingerprint.

    ``entries[entry_key(...)]`` = ``{"ms": marginal p50 in ms, "edges": n, "stats": LatencyStats dict of the
    network timed with the op, "base_ms": the skeleton's p50}``; ``fixed[spec.key()]`` = ``{"ms",
    "slice_ms", "stats", ...}``; ``calibration[spec.key()]`` = ``{"offset_ms", "scale", "networks": [...]}``.
    """

    fingerprint: dict
    entries: dict[str, dict] = field(default_factory=dict)
    fixed: dict[str, dict] = field(default_factory=dict)
    calibration: dict[str, dict] = field(default_factory=dict)
    path: Path | None = None
    probes: dict[str, dict] = field(default_factory=dict)  # spec key -> probe name -> measured p50 (latency.budget)
    # (part, key) removed by forget_untrusted since the last save: not taken back from the file on disk
    _dropped: set[tuple[str, str]] = field(default_factory=set, repr=False, compare=False)

    # ---- lookup
    def entry_ms(self, spec: DeploySpec, op: str, klass: Sequence[int]) -> float:
        """The marginal cost of ``op`` on one edge of shape class ``klass`` in ``spec`` (0 for free ops)."""
        if is_free(op, klass[3]):
            return 0.0
        key = spec.entry_key(op, klass)
        if key not in self.entries:
            raise ProfileError(f"latency table {self.path or ''} has no entry {key}",
                               "run `nasdeploy latency-table` for this deployment config")
        return float(self.entries[key]["ms"])

    def missing(self, spec: DeploySpec, calibrate: int = 0) -> list[tuple[str, Any]]:
        """What ``measure_missing`` would time: ("fixed", key), ("entry", (op, klass)), ("calibration", n)."""
        todo: list[tuple[str, Any]] = []
        if spec.key() not in self.fixed:
            todo.append(("fixed", spec.key()))
        for klass in spec.shape_classes():
            for op in spec.primitives:
                if not is_free(op, klass[3]) and spec.entry_key(op, klass) not in self.entries:
                    todo.append(("entry", (op, klass)))
        have = len(self.calibration.get(spec.key(), {}).get("networks", []))
        if calibrate > have:
            todo.append(("calibration", calibrate - have))
        return todo

    def entry_keys(self, spec: DeploySpec) -> list[str]:
        """The table entries ``spec`` reads (every timed op of every shape class)."""
        return [spec.entry_key(op, klass) for klass in spec.shape_classes() for op in spec.primitives
                if not is_free(op, klass[3]) and spec.entry_key(op, klass) in self.entries]

    def forget_untrusted(self, spec: DeploySpec, calibration: bool = True) -> None:
        """Drop negative entries (except ones a re-measurement confirmed), a non-positive fixed part and (with
        ``calibration``) the calibration's networks, so they are timed again. Without it the measured networks
        stay: they are whole-network facts, refitted to the re-measured entries (:meth:`refit_calibration`)."""
        for k in self.entry_keys(spec):
            if self.entries[k]["ms"] < 0 and not self.entries[k].get("confirmed_negative"):
                del self.entries[k]
                self._dropped.add(("entries", k))
        if spec.key() in self.fixed and self.fixed[spec.key()]["ms"] <= 0:
            del self.fixed[spec.key()]
            self._dropped.add(("fixed", spec.key()))
        if calibration:
            self.calibration.pop(spec.key(), None)
            self._dropped.add(("calibration", spec.key()))

    def raw_ms(self, genotype: Genotype, spec: DeploySpec) -> float:
        """Fixed part + sum of in-context entries (uncalibrated)."""
        total = float(self.fixed[spec.key()]["ms"])
        for op, per_cell in spec.kept_edges(genotype):
            total += sum(self.entry_ms(spec, op, k) for k in per_cell)
        return total

    def predict_ms(self, genotype: Genotype, spec: DeploySpec) -> float:
        """Predicted ORT p50 of the served network of ``genotype``: calibrated table sum plus per-entry corrections."""
        off, scale = self.calibration_of(spec)
        corr = self.corrections_of(spec)
        return off + scale * self.raw_ms(genotype, spec) + sum(
            n * corr.get(k, 0.0) for k, n in edge_counts(genotype, spec).items())

    def corrections_of(self, spec: DeploySpec) -> dict[str, float]:
        """Per-entry ms added to ``scale * entry`` by the calibration's ridge fit (empty: none)."""
        return dict(self.calibration.get(spec.key(), {}).get("corrections_ms") or {})

    def calibration_of(self, spec: DeploySpec) -> tuple[float, float]:
        cal = self.calibration.get(spec.key())
        if not cal or cal.get("scale") is None:
            return 0.0, 1.0
        return float(cal["offset_ms"]), float(cal["scale"])

    def costs(self, spec: DeploySpec):
        """The calibrated per-edge cost tensors that ``latency.model`` works on."""
        from .model import LatencyCosts

        off, scale = self.calibration_of(spec)
        corr = self.corrections_of(spec)

        def edge_ms(op: str, k) -> float:
            if is_free(op, k[3]):
                return 0.0
            return scale * self.entry_ms(spec, op, k) + corr.get(spec.entry_key(op, k), 0.0)

        mats = []
        for red in (False, True):
            rows = [[sum(edge_ms(op, k) for k in per_cell) for op in spec.primitives]
                    for per_cell in spec.edge_classes(red)]
            mats.append(torch.tensor(rows, dtype=torch.float64))
        return LatencyCosts(normal=mats[0], reduce=mats[1], base_ms=off + scale * float(self.fixed[spec.key()]["ms"]),
                            primitives=spec.primitives, steps=spec.steps)

    # ---- measuring
    def measure_missing(self, spec: DeploySpec, timer: Timer, calibrate: int = 0, progress: bool = True,
                        seed: int = 0, save: bool = True) -> int:
        """Time what the table lacks for ``spec`` (saving after each piece); returns the number of pieces timed."""
        from tqdm.auto import tqdm

        todo = self.missing(spec, calibrate)
        jobs = self._jobs(spec, todo, seed)
        bar = tqdm(total=len(jobs), disable=not progress or not jobs, desc="latency table", unit="net",
                   dynamic_ncols=True, leave=False)
        many = getattr(timer, "many", None)
        anchored = getattr(timer, "many_anchored", None)
        group = INTERLEAVE["group"] if many is not None else 1
        calibrated = False
        try:
            for g0 in range(0, len(jobs), group):  # a group at a time: interleaved where the timer can
                chunk = jobs[g0:g0 + group]
                bar.set_postfix_str(", ".join(name for name, _, _ in chunk)[:60])
                nets = [net for _, net, _ in chunk]
                fx = self.fixed.get(spec.key())
                if anchored is not None and fx is not None:  # the skeleton is known: check the group against it
                    stats, ratios = anchored(nets, spec, skeleton_network(spec, _skeleton_inputs(spec.steps))[0],
                                             fx["skeleton_ms"])
                    if len(ratios) > 1:
                        bar.write(f"latency table: group re-timed {len(ratios) - 1}x, the skeleton read "
                                  + ", ".join(f"{r:.3f}" for r in ratios) + " of its figure (host load changed)")
                else:
                    stats = many(nets, spec) if many is not None else [timer(net, spec) for net in nets]
                for (_, _, record), st in zip(chunk, stats):
                    calibrated |= record(st) == "calibration"
                if save and self.path is not None:
                    self.save(self.path)
                bar.update(len(chunk))
            if calibrated:
                self.refit_calibration(spec)
                if save and self.path is not None:
                    self.save(self.path)
        finally:
            bar.close()
        return len(jobs)

    def _jobs(self, spec: DeploySpec, todo: list[tuple[str, Any]], seed: int) -> list[tuple[str, nn.Module, Any]]:
        """(name, network, record(stats)) for every network ``todo`` needs, in an order whose records can be made
        as they come (the two skeletons before the entries, the entries before the calibration)."""
        jobs: list[tuple[str, nn.Module, Any]] = []
        key = spec.key()
        for kind, what in todo:
            if kind == "fixed":
                pair: dict[str, LatencyStats] = {}

                def skel(st, which, pair=pair):
                    pair[which] = st
                    if len(pair) == 2:
                        self.fixed[key] = fixed_record(spec, pair["min"], pair["max"])

                jobs.append(("skeleton", skeleton_network(spec, _skeleton_inputs(spec.steps))[0],
                             lambda st, f=skel: f(st, "min")))
                jobs.append(("skeleton (all inputs)", skeleton_network(spec, _all_input_inputs(spec.steps))[0],
                             lambda st, f=skel: f(st, "max")))
            elif kind == "entry":
                op, klass = what
                net, n = skeleton_network(spec, op=op, klass=klass)

                def entry(st, op=op, klass=klass, n=n):
                    self.entries[spec.entry_key(op, klass)] = entry_record(self.fixed[key], klass, n, st, spec)

                jobs.append((spec.entry_key(op, klass), net, entry))
            else:
                cal = self.calibration.setdefault(key, {"networks": []})
                start = len(cal["networks"])
                for i, g in enumerate(calibration_genotypes(spec, what, seed, start)):
                    def network(st, g=g, cal=cal):
                        cal["networks"].append({"genotype": g.to_dict(), "raw_ms": self.raw_ms(g, spec),
                                                "p50_ms": steady_ms(st), "stats": st.to_dict()})
                        return "calibration"

                    jobs.append((f"calibration {start + i + 1}", deploy_network(g, spec), network))
        return jobs

    def refit_calibration(self, spec: DeploySpec, only_stale: bool = False) -> None:
        """Fit the calibration of ``spec`` again from its measured networks, their sums taken from today's entries.

        ``only_stale``: only a calibration fitted by an older rule than :data:`CALIBRATION_RULE` (before the
        leave-one-out fit, whose sums priced reduction edges by position; before the one-standard-error rule).
        """
        cal = self.calibration.get(spec.key())
        if not cal or not cal.get("networks") or (only_stale and cal.get("rule") == CALIBRATION_RULE):
            return
        if spec.key() not in self.fixed:
            return
        try:
            nets = [{**n, "raw_ms": self.raw_ms(Genotype.from_dict(n["genotype"]), spec)} for n in cal["networks"]]
        except ProfileError:  # an entry is missing (dropped as untrusted): refit once it is measured again
            return
        self.calibration[spec.key()] = fit_calibration(nets, spec)

    # ---- files
    def to_dict(self) -> dict:
        return {"format": TABLE_FORMAT, "figure": TABLE_FIGURE, "fingerprint": self.fingerprint,
                "entries": self.entries, "fixed": self.fixed, "calibration": self.calibration, "probes": self.probes}

    def save(self, path: str | os.PathLike) -> Path:
        """Write the table, merged with what another process wrote to ``path`` meanwhile (two searches, one cache).

        Under an exclusive ``fcntl`` lock on ``<path>.lock``: the file on disk is read, its entries, fixed parts,
        calibrations and probes that this table lacks are kept (this table's own win where both have one; the
        ones :meth:`forget_untrusted` dropped stay dropped), and the result is written through a temp file and
        ``os.replace``, so a reader never sees half a file and neither writer loses the other's pieces.
        """
        from ..artifacts import ensure_dir, write_json

        path = Path(path)
        ensure_dir(path.parent)
        with open(path.with_name(path.name + ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                write_json(path, self._merged_with(path))
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
        self._dropped.clear()
        self.path = path
        return path

    def _merged_with(self, path: Path) -> dict:
        """``to_dict()`` plus the records of the table at ``path`` (same fingerprint) that this one lacks."""
        mine = self.to_dict()
        try:
            disk = LatencyTable.load(path) if path.is_file() else None
        except ProfileError:  # unreadable or not a table: replaced, as before
            disk = None
        if disk is None or disk.fingerprint.get("id") != self.fingerprint.get("id"):
            return mine
        theirs = disk.to_dict()
        for part in ("entries", "fixed", "calibration"):
            kept = {k: v for k, v in theirs[part].items() if (part, k) not in self._dropped}
            mine[part] = {**kept, **mine[part]}
        mine["probes"] = {k: {**theirs["probes"].get(k, {}), **mine["probes"].get(k, {})}
                          for k in {**theirs["probes"], **mine["probes"]}}
        return mine

    @classmethod
    def load(cls, path: str | os.PathLike) -> LatencyTable:
        import json

        p = Path(path)
        try:
            d = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ProfileError(f"cannot read latency table {p} ({e})", "delete it and re-run `nasdeploy latency-table`"
                               ) from None
        if not isinstance(d, dict) or d.get("format") != TABLE_FORMAT:
            raise ProfileError(f"{p} is not a {TABLE_FORMAT} file", "delete it and re-run `nasdeploy latency-table`")
        if "timings" in d:  # written by the latency kit's runner: raw timings of the kit's pieces
            return cls.from_timings(d, p)
        if d.get("figure") != TABLE_FIGURE:
            import warnings

            warnings.warn(f"latency table {p} holds plain p50s (written before the steady figure): its records "
                          "are timed again", RuntimeWarning, stacklevel=2)
            d = {**d, "entries": {}, "fixed": {}, "calibration": {}, "probes": {}}
        d = _with_opset(d)
        return cls(d["fingerprint"], d.get("entries", {}), d.get("fixed", {}), d.get("calibration", {}), p,
                   d.get("probes", {}))

    @classmethod
    def from_timings(cls, d: dict, path: Path | None = None) -> LatencyTable:
        """A table from the kit runner's output: the same records ``measure_missing`` makes, from its timings."""
        try:
            spec = DeploySpec(**{**d["spec"], "primitives": tuple(d["spec"]["primitives"])})
            by_kind: dict[str, list] = {}
            for piece in d["timings"]:
                by_kind.setdefault(piece["kind"], []).append(piece)
            table = cls(d["fingerprint"], path=path)
            skel = {pc["name"]: LatencyStats.from_dict(pc["stats"]) for pc in by_kind.get("skeleton", [])}
            table.fixed[spec.key()] = fixed_record(spec, skel["skeleton"], skel["skeleton_all_inputs"])
            twice = all("stats_again" in pc for pc in by_kind.get("skeleton", []) + by_kind.get("entry", []))
            if twice:  # the runner's second pass over skeletons and entries
                skel2 = {pc["name"]: LatencyStats.from_dict(pc["stats_again"]) for pc in by_kind["skeleton"]}
                fixed2 = fixed_record(spec, skel2["skeleton"], skel2["skeleton_all_inputs"])
            for pc in by_kind.get("entry", []):
                rec = entry_record(table.fixed[spec.key()], tuple(pc["klass"]), pc["edges"],
                                   LatencyStats.from_dict(pc["stats"]), spec)
                if twice and rec["ms"] < 0 and entry_record(fixed2, tuple(pc["klass"]), pc["edges"], LatencyStats
                                                            .from_dict(pc["stats_again"]), spec)["ms"] < 0:
                    rec["confirmed_negative"] = True  # below 0 in both passes, as check_table confirms locally
                table.entries[spec.entry_key(pc["op"], pc["klass"])] = rec
            nets = [{"genotype": pc["genotype"], "raw_ms": table.raw_ms(Genotype.from_dict(pc["genotype"]), spec),
                     "p50_ms": steady_ms(pc["stats"]), "stats": pc["stats"]}
                    for pc in by_kind.get("calibration", [])]
            if nets:
                table.calibration[spec.key()] = fit_calibration(nets, spec)
            table.probes[spec.key()] = {pc["name"]: {"side": pc["side"], "genotype": pc["genotype"],
                                                     "p50_ms": steady_ms(pc["stats"]), "stats": pc["stats"],
                                                     "load_avg": d.get("load_avg")} for pc in by_kind.get("probe", [])}
        except (KeyError, TypeError, ValueError) as e:
            raise ProfileError(f"{path} is not a complete latency-kit result ({type(e).__name__}: {e})",
                               "run the kit's runner to the end again") from None
        return table

    def spec_mismatch(self, spec: DeploySpec) -> str | None:
        """Which deployment field differs when the table holds no record of ``spec`` (None: it holds one)."""
        if spec.key() in self.fixed or not self.fixed:
            return None
        want = asdict(spec)
        for other in (fx.get("spec") for fx in self.fixed.values()):
            if not isinstance(other, dict):
                continue
            for k, v in want.items():
                theirs = tuple(other[k]) if isinstance(other.get(k), list) else other.get(k)
                if theirs != v:
                    return f"{k} = {theirs!r} there, {v!r} here"
        return f"it holds {', '.join(self.fixed)}, not {spec.key()}"

    @classmethod
    def open(cls, spec: DeploySpec, path: str | os.PathLike | None = None, *, threads: int = 1,
             opt_level: str = "all", provider: str = "CPUExecutionProvider") -> tuple[LatencyTable, bool]:
        """(table, local): this machine's table (local, may be extended), or the given file of another machine.

        A file given by path whose fingerprint is not this machine's (e.g. the latency kit's result from the
        serving machine) is used as it is, whatever its CPU or thread count — refused only when it describes
        another deployment, naming the differing field.
        """
        fp = machine_fingerprint(threads, opt_level, provider)
        p = Path(path) if path is not None else default_table_path(fp)
        if not p.exists():
            return cls(fp, path=p), True
        table = cls.load(p)
        table.refit_calibration(spec, only_stale=True)
        if table.fingerprint.get("id") == fp["id"]:
            return table, True
        if path is None:  # the default path is named by this fingerprint: another one inside is corrupt
            raise ProfileError(f"latency table {p} holds fingerprint {table.fingerprint.get('id')}, not {fp['id']}",
                               "delete the file")
        why = table.spec_mismatch(spec)
        if why is not None:
            raise ProfileError(f"latency table {p} describes another deployment ({why})",
                               "build the kit with the deployment settings of this search (`nasdeploy latency-kit`)")
        return table, False

    @classmethod
    def load_or_measure(
        cls,
        spec: DeploySpec,
        path: str | os.PathLike | None = None,
        *,
        threads: int = 1,
        opt_level: str = "all",
        provider: str = "CPUExecutionProvider",
        calibrate: int = CALIBRATION_NETWORKS,
        timer: Timer | None = None,
        progress: bool = True,
    ) -> LatencyTable:
        """The table for ``spec`` on this machine: read from disk, timing only what is missing.

        Args:
            spec: the deployment network (see :meth:`DeploySpec.from_configs`).
            path: the JSON file; default ``<cache>/latency/<fingerprint id>.json``.
            threads, opt_level, provider: how ORT runs the served model (part of the fingerprint).
            calibrate: whole random networks to time for the ``offset + scale`` fit (0: none).
            timer: ``timer(module, spec) -> LatencyStats``; default :func:`ort_timer`.
            progress: tqdm bar on stderr while timing.

        Raises:
            ProfileError: the file belongs to another fingerprint (other threads, ORT, CPU...), or is not a table.

        Example:
            >>> spec = DeploySpec(C=16, layers=8, in_channels=1, H=8, W=8, num_classes=10)
            >>> table = LatencyTable.load_or_measure(spec, threads=1)  # doctest: +SKIP
            >>> table.predict_ms(GENOTYPES["DARTS_V2"], spec)  # doctest: +SKIP
        """
        table, local = cls.open(spec, path, threads=threads, opt_level=opt_level, provider=provider)
        if table.missing(spec, calibrate if local else 0):
            if not local:
                raise ProfileError(f"latency table {table.path} (another machine's) lacks "
                                   f"{table.missing(spec, 0)[0]} for {spec.key()}",
                                   "run the latency kit of this deployment on that machine again")
            table.measure_missing(spec, timer or ort_timer(threads, opt_level, provider), calibrate, progress)
        return table


def fixed_record(spec: DeploySpec, s_min: LatencyStats, s_max: LatencyStats) -> dict:
    """The fixed part from the two skeletons (fewest and most stride-2 Slice placeholders)."""
    n_red = sum(r for r, *_ in spec.cells())

    def strided(inputs: list[int]) -> int:  # stride-2 edges of one reduction cell
        return sum(edge_stride(True, j) == 2 for j in inputs)

    ins_min, ins_max = _skeleton_inputs(spec.steps), _all_input_inputs(spec.steps)
    d = n_red * (strided(ins_max) - strided(ins_min))
    # Both skeletons differ only in how many stride-2 edges are Slices; clamp noise at 0.
    lo, hi = steady_ms(s_min), steady_ms(s_max)
    slice_ms = max(0.0, (hi - lo) / d) if d else 0.0
    n_slices = n_red * strided(ins_min)
    return {"ms": lo - n_slices * slice_ms, "skeleton_ms": lo, "slice_ms": slice_ms,
            "stats": s_min.to_dict(), "stats_all_inputs": s_max.to_dict(), "spec": asdict(spec)}


def entry_record(fx: dict, klass: tuple[int, int, int, int], n: int, stats: LatencyStats, spec: DeploySpec) -> dict:
    """An entry from the skeleton with ``n`` edges of ``klass`` set to the op: its marginal cost per edge."""
    base = fx["skeleton_ms"]
    # Replacing n placeholders by op: each stride-2 placeholder (a Slice) cost slice_ms.
    ms = (steady_ms(stats) - base) / n + (fx["slice_ms"] if klass[3] == 2 else 0.0)
    return {"ms": ms, "edges": n, "base_ms": base, "stats": stats.to_dict(), "spec": spec.key()}


def calibration_genotypes(spec: DeploySpec, n: int, seed: int = 0, start: int = 0) -> list[Genotype]:
    """The random whole networks of the calibration (the same ones for a local table and the kit)."""
    rng = random.Random(f"calibration-{seed}-{start}")
    return [random_genotype(rng, spec.steps, spec.multiplier, spec.primitives) for _ in range(n)]


def edge_counts(genotype: Genotype, spec: DeploySpec) -> dict[str, int]:
    """How many edges of the deployed network of ``genotype`` read each table entry (free ops read none)."""
    counts: dict[str, int] = {}
    for op, per_cell in spec.kept_edges(genotype):
        for k in per_cell:
            if not is_free(op, k[3]):
                key = spec.entry_key(op, k)
                counts[key] = counts.get(key, 0) + 1
    return counts


# How fit_calibration decides; a calibration of another rule is fitted again when its table is opened.
CALIBRATION_RULE = "linear+ridge-1se"
MIN_RIDGE_NETWORKS = 12  # fewer calibration networks: the linear fit alone
RIDGE_GRID = (1e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0, 3.0, 10.0, 100.0)  # x mean diagonal of X'X


def _linear(raw: np.ndarray, meas: np.ndarray) -> tuple[float, float]:
    if len(raw) >= 3 and np.ptp(raw) > 0:
        scale, offset = np.polyfit(raw, meas, 1)
        return float(offset), float(scale)
    return 0.0, (float(meas.sum() / raw.sum()) if raw.sum() > 0 else 1.0)


def _ridge(X: np.ndarray, r: np.ndarray, lam: float) -> np.ndarray:
    return np.linalg.solve(X.T @ X + lam * np.eye(X.shape[1]), X.T @ r)


def _fit(raw, meas, X, lam):
    """(offset, scale, corrections): the linear fit, then a ridge fit of its residuals on edge counts."""
    off, scale = _linear(raw, meas)
    corr = _ridge(X, meas - (off + scale * raw), lam) if lam is not None and X.shape[1] else np.zeros(X.shape[1])
    return off, scale, corr


def fit_calibration(networks: list[dict], spec: DeploySpec | None = None) -> dict:
    """``p50 ≈ offset + scale * raw + sum_k count_k * correction_k`` over measured whole networks.

    ``offset``, ``scale``: least squares (scale only below 3 networks). With ``spec`` and at least
    :data:`MIN_RIDGE_NETWORKS` networks, the residuals are fitted by ridge regression on the
    per-entry edge counts (``correction_k``: ms per edge added to ``scale * entry_k``, shrunk
    towards 0), its strength chosen by leave-one-out error over :data:`RIDGE_GRID`; the
    corrections are kept only when they beat the linear fit out of sample by more than one standard
    error of the per-network gain (the one-standard-error rule). The in-context
    entries stay the prior: a few dozen networks cannot pin ~40 costs alone, but they correct
    what the marginal measurement gets wrong about whole networks (fusions and layouts that
    span several edges). ``loo_median_abs_pct`` is the honest error figure; trust checks read it.
    """
    raw = np.array([n["raw_ms"] for n in networks], dtype=np.float64)
    meas = np.array([n["p50_ms"] for n in networks], dtype=np.float64)
    keys: list[str] = []
    if spec is not None and len(networks) >= MIN_RIDGE_NETWORKS:
        counts = [edge_counts(Genotype.from_dict(n["genotype"]), spec) for n in networks]
        keys = sorted({k for c in counts for k in c})
        X = np.array([[c.get(k, 0) for k in keys] for c in counts], dtype=np.float64)
    else:
        X = np.zeros((len(networks), 0))

    def loo(lam) -> np.ndarray:  # each network's abs relative error, fitted without it
        errs = []
        for i in range(len(meas)):
            m = np.arange(len(meas)) != i
            off, scale, corr = _fit(raw[m], meas[m], X[m], lam)
            errs.append(abs((off + scale * raw[i] + X[i] @ corr) / meas[i] - 1))
        return np.array(errs)

    lam, loo_pct, loo_linear = None, None, None
    if len(networks) >= 4:
        e_lin = loo(None)
        loo_linear = loo_pct = float(100 * np.median(e_lin))
        if keys:
            unit = float(np.mean(np.diag(X.T @ X))) or 1.0
            scored = [(float(100 * np.median(e)), g * unit, e) for g in RIDGE_GRID for e in [loo(g * unit)]]
            best_pct, best_lam, e_best = min(scored, key=lambda t: t[0])
            # One-standard-error rule: ~30 corrections from ~24 networks are kept only when they beat the linear
            # fit by more than the noise of that comparison (the per-network gain's standard error). Issue 12's
            # 32x32 table: ridge LOO 2.7% vs 3.2% linear, within the noise, and on 30 other networks it was
            # worse than the linear fit (Spearman 0.89 vs 0.94).
            gain = e_lin - e_best
            if best_pct < loo_linear and gain.mean() > gain.std(ddof=1) / np.sqrt(len(gain)):
                loo_pct, lam = best_pct, best_lam
    off, scale, corr = _fit(raw, meas, X, lam)
    pred = off + scale * raw + X @ corr
    err = np.abs(pred / meas - 1) if len(meas) else np.array([])
    return {"offset_ms": off, "scale": scale, "networks": networks, "rule": CALIBRATION_RULE,
            "corrections_ms": {k: float(v) for k, v in zip(keys, corr)} if lam is not None else {},
            "ridge_lambda": lam, "fit_median_abs_pct": float(100 * np.median(err)) if len(err) else None,
            "loo_median_abs_pct": loo_pct, "loo_median_abs_pct_linear": loo_linear}
