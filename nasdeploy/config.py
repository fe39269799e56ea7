"""Typed, strict configuration: dataclass defaults, TOML files, presets, CLI overrides.

Precedence: a command-line flag beats the config file, which beats the preset,
which beats the defaults. Defaults are the papers' values (named per field);
an unknown key fails with a suggestion.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import tomllib
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .space.primitives import PRIMITIVES


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "digits"  # "digits", a CIFAR-10 python dir, an image folder, or a .npz
    split_seed: int = 0  # seed of the train/val/test split (fixed per dataset, not per run)
    val_fraction: float = 0.1
    test_fraction: float = 0.2  # ignored where the source ships a test split
    max_train: int | None = None  # cap the training split (a stratified draw) for quick runs on big sets
    max_val: int | None = None  # cap the validation split likewise (it is scored after every epoch)


@dataclass(frozen=True)
class SearchConfig:
    """DARTS search; defaults from Liu et al. 2019, sec. 3.1.1 (CIFAR-10 search)."""

    strategy: str = "darts"  # darts | random | evolution | rl
    epochs: int = 50
    batch_size: int = 64
    C: int = 16
    layers: int = 8
    steps: int = 4  # intermediate nodes per cell
    multiplier: int = 4  # nodes concatenated into the cell output
    stem_multiplier: int = 3
    primitives: tuple[str, ...] = PRIMITIVES
    order: int = 1  # 1: first-order DARTS; 2: unrolled second-order step (eq. 7)
    train_portion: float = 0.5  # share of the training split for weights; the rest updates alpha
    w_lr: float = 0.025  # SGD, cosine-annealed to w_lr_min
    w_lr_min: float = 0.001
    w_momentum: float = 0.9
    w_weight_decay: float = 3e-4
    grad_clip: float = 5.0
    a_lr: float = 3e-4  # Adam on alpha
    a_beta1: float = 0.5
    a_beta2: float = 0.999
    a_weight_decay: float = 1e-3
    # Epochs that train the weights with alpha frozen before the joint updates (0 in DARTS; PC-DARTS
    # and P-DARTS warm up so that alpha is not steered by untrained candidates, which favours skips).
    warmup_epochs: int = 0
    seed: int = 2
    device: str = "cpu"
    kernel: str = "auto"  # auto | fused | reference
    # Fused kernel only: how the conv candidates run. native: torch's (oneDNN) convs, channels_last;
    # kernel: the hand-written C++ convs of csrc/ (least memory, slower backward). See docs/kernel.md.
    conv_path: str = "native"
    # PC-DARTS (Xu et al., 2020): K > 1 sends 1/K of each edge's channels through the candidates (channel
    # shuffle after) and adds edge normalization betas to the derivation; the paper uses K = 4. 1: DARTS.
    partial_channels: int = 1
    threads: int | None = None  # torch intra-op threads; None keeps torch's default
    latency_target: float | None = None  # ms; None: no latency term
    latency_weight: float = 0.1
    # Budget shape (latency/model.py penalty): full slope above (1 - margin) * target, `under` of it below
    # (MnasNet's soft constraint spends the budget; 0: MnasNet's hard constraint; under 1, margin 0: TuNAS).
    latency_margin: float = 0.05
    latency_under_weight: float = 1.0
    # Latency model (latency/table.py): how the *deployed* network (the [train] C/layers/stem) is served.
    latency_batch: int = 1  # batch size the latency target refers to
    latency_threads: int = 1  # ORT intra-op threads the target refers to (part of the table's fingerprint)
    latency_opt_level: str = "all"  # ORT graph optimization of the served model: all | extended | basic | disable
    latency_table: str | None = None  # table JSON; None: $NASDEPLOY_CACHE/latency/<fingerprint>.json
    latency_calibration: int = 24  # random whole networks timed to calibrate the table sum (0: none)
    # Budget shared by every strategy (search/strategy.py): epochs, scored candidates, wall time.
    candidates: int = 1000  # architectures scored with inherited weights (SPOS, Guo et al. 2020: 20 x 50)
    max_seconds: float | None = None  # wall-time budget of one search call; None: epochs/candidates only
    # Aging evolution (Real et al. 2019, "Regularized evolution"): population P and tournament size S.
    population: int = 100
    sample_size: int = 25
    # REINFORCE controller (ENAS, Pham et al. 2018): Adam lr and moving-average reward baseline decay.
    controller_lr: float = 3.5e-4
    baseline_decay: float = 0.99
    # Collapse guard (DARTS only). Warn once when this share of the derived normal cell's edges is
    # parameter-free (DARTS+, Liang et al. 2019, stops at 2 skips of 8 edges; 0.5 is a looser alarm).
    collapse_threshold: float = 0.5
    # P-DARTS (Chen et al. 2019): keep at most this many skip_connect edges in the derived normal cell
    # (the paper uses 2); None derives as plain DARTS.
    skip_limit: int | None = None


@dataclass(frozen=True)
class TrainConfig:
    """Retraining from scratch; defaults from the DARTS CIFAR-10 evaluation recipe (sec. 3.2)."""

    epochs: int = 600
    batch_size: int = 96
    C: int = 36
    layers: int = 20
    lr: float = 0.025  # SGD, cosine-annealed to lr_min
    lr_min: float = 0.0
    momentum: float = 0.9
    weight_decay: float = 3e-4
    grad_clip: float = 5.0
    auxiliary: bool = True
    auxiliary_weight: float = 0.4
    drop_path_prob: float = 0.2  # raised linearly from 0 over the epochs
    cutout: bool = True
    cutout_length: int | None = None  # None: half the image side (16 at 32x32, as in the paper)
    # Random translation by up to this many pixels, edges replicated: the paper's random crop with
    # padding 4 at 32x32. 0 (off) by default so that existing recipes keep their numbers.
    shift: int = 0
    stem: str = "auto"  # auto | cifar | imagenet ("auto": imagenet for inputs >= 128 px)
    seed: int = 0
    device: str = "cpu"
    threads: int | None = None


# The files `export --variants` can write (deploy/quantize.py builds them).
EXPORT_VARIANTS = ("fp32", "ort-basic", "int8", "fp16")


@dataclass(frozen=True)
class ExportConfig:
    opset: int = 20
    parity_batch: int = 16  # the larger parity batch next to batch 1
    parity_atol: float = 1e-4  # max |onnx - torch| on logits that still passes
    variants: tuple[str, ...] = ("fp32",)
    # deploy/quantize.py: INT8 calibration (ORT static quantization, QDQ, min/max ranges)
    calibration_samples: int = 256  # training images that set the activation ranges
    per_channel: bool = True  # one weight scale per output channel (per-tensor loses accuracy on depthwise convs)
    # 7-bit weights ([-64, 64]). ORT's uint8 x int8 kernels on x86 without VNNI (AVX2 only) add
    # pairs of products in int16 (VPMADDUBSW), which saturates with full-range weights: on such a
    # machine the digits test net lost 18 points of accuracy at 8 bits and 0.6 at 7 (see docs/deploy.md).
    reduce_range: bool = True
    # deploy/triton.py: the Triton model repository written by `export --triton-repo`
    max_batch_size: int = 64  # Triton max_batch_size; requests are batched up to it
    triton_gpu: bool = False  # instance_group KIND_GPU instead of KIND_CPU
    triton_repo: str | None = None  # also write a Triton model repository here (None: none)
    model_name: str = "nasdeploy"  # the Triton model's name: triton_repo/<model_name>/config.pbtxt
    triton_variant: str = "fp32"  # which built variant Triton serves


@dataclass(frozen=True)
class ProfileConfig:
    """How to profile. Defaults: a latency sweep that finishes in seconds for a CIFAR-size model."""

    batch_sizes: tuple[int, ...] = (1, 8, 32)  # one timing per batch size; the model needs a dynamic batch axis
    threads: int = 1  # ORT intra-op threads (and torch threads for the eager comparison)
    warmup: int = 20  # untimed runs per batch size before timing
    repeats: int = 100  # timed runs per batch size (at least)
    min_time_s: float = 0.0  # also keep timing until this much time passed (for sub-ms models)
    max_time_s: float | None = None  # stop a batch size's timing after this long (big models); None = no cap
    provider: str = "CPUExecutionProvider"  # ORT execution provider, explicit, never a fallback list
    opt_level: str = "all"  # ORT graph optimization: all | extended | basic | disable (deployment uses all)
    top_ops: int = 10  # operator types listed in the breakdown; the rest is one "(other)" row
    trace_runs: int = 10  # profiled runs (after 3 untimed ones) that the per-operator breakdown averages


@dataclass(frozen=True)
class RunConfig:
    """The resolved configuration of a whole run, saved as ``config.toml``."""

    data: DataConfig = field(default_factory=DataConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    profile: ProfileConfig = field(default_factory=ProfileConfig)


SECTIONS = {f.name: f.type for f in fields(RunConfig)}
_SECTION_TYPES = {"data": DataConfig, "search": SearchConfig, "train": TrainConfig, "export": ExportConfig,
                  "profile": ProfileConfig}

# Named overrides. "quick" finishes the digits pipeline in minutes on 2 CPU cores.
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "paper": {},
    "quick": {
        # Big sets (Fashion-MNIST: 60k) are cut to a stratified 2,000 training and 1,000 validation
        # images (6,000 scored after every epoch would cost more than the epoch); digits has 1,257/180.
        "data": {"max_train": 2000, "max_val": 1000},
        # The search is overhead-bound at 8x8 (hundreds of tiny candidate ops a step): a 3-cell supernet
        # at batch 128 costs ~1.2 s a step, so 6 epochs (2 warm-up with alpha frozen) take ~55 s. The
        # paper's Adam lr 3e-4 would leave every softmax weight within 0.123-0.127 (a genotype decided
        # by noise); 3e-2 over ~20 alpha steps separates the ops. The P-DARTS skip limit guards against
        # the skip collapse a fast alpha invites.
        "search": {"epochs": 6, "batch_size": 128, "C": 8, "layers": 3, "a_lr": 3e-2, "warmup_epochs": 2,
                   "skip_limit": 2},
        # The retrain recipe: C=16, 8 cells, 12 epochs (~85 s); a 1-pixel random shift on 8x8 digits
        # (one searched cell, 15 epochs: 0.990 mean of 3 seeds with it, 0.981 without); the auxiliary
        # head, cutout and drop-path cost more than they regularize there. Whole pipeline: 122-176 s,
        # test accuracy 0.983-0.986 (mean 0.985) over seeds 0-2 (README).
        "train": {"epochs": 12, "batch_size": 32, "C": 16, "layers": 8, "lr": 0.05, "auxiliary": False,
                  "cutout": False, "drop_path_prob": 0.0, "shift": 1},
        "profile": {"repeats": 50, "warmup": 10},
    },
    "tiny": {  # for tests: seconds, not minutes
        "search": {"epochs": 2, "batch_size": 32, "C": 4, "layers": 3, "steps": 2, "multiplier": 2},
        "train": {"epochs": 2, "batch_size": 64, "C": 4, "layers": 3},
        "profile": {"batch_sizes": (1, 4), "repeats": 5, "warmup": 2},
    },
}


def _suggest(key: str, options) -> str:
    close = difflib.get_close_matches(key, list(options), n=1)
    return f"did you mean {close[0]!r}?" if close else f"known keys: {', '.join(options)}"


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against the annotated type; ints widen to floats, lists to tuples."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(value, args[0], where)
    if origin is tuple:
        (inner, *_rest) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}", f"write {where.split('.')[-1]} = [...]")
        return tuple(_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value))
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float, str, bool) and (type(value) is not tp):
        raise ConfigError(f"{where}: expected {tp.__name__}, got {type(value).__name__} {value!r}",
                          f"give {where.split('.')[-1]} a {tp.__name__} value")
    return value


def replace(section_obj, where: str = "", **overrides):
    """A copy of a section with ``overrides`` applied (``None`` values are ignored) and checked."""
    hints = typing.get_type_hints(type(section_obj))
    names = [f.name for f in fields(section_obj)]
    clean = {}
    for k, v in overrides.items():
        if v is None:
            continue
        if k not in hints:
            raise ConfigError(f"unknown key {where}{k!r}", _suggest(k, names))
        clean[k] = _coerce(v, hints[k], f"{where}{k}")
    obj = dataclasses.replace(section_obj, **clean)
    validate(obj)
    return obj


def validate(obj) -> None:
    """Range checks that every section's values must pass."""
    def need(cond: bool, key: str, problem: str, fix: str):
        if not cond:
            raise ConfigError(f"{key} = {getattr(obj, key)!r}: {problem}", fix)

    for f in fields(obj):  # TOML accepts nan and inf; no setting means either
        v = getattr(obj, f.name)
        need(not isinstance(v, float) or math.isfinite(v), f.name, "must be a finite number", "give a number")

    if isinstance(obj, SearchConfig):
        for k in ("epochs", "batch_size", "C", "layers", "steps", "multiplier", "stem_multiplier"):
            need(getattr(obj, k) > 0, k, "must be positive", f"give {k} >= 1")
        need(obj.multiplier <= obj.steps, "multiplier", "cannot exceed steps", "use multiplier <= steps")
        need(obj.order in (1, 2), "order", "DARTS has first (1) and second (2) order", "use order 1 or 2")
        need(0 < obj.train_portion < 1, "train_portion", "must lie in (0, 1)", "0.5 is the paper's")
        need(0 <= obj.warmup_epochs < obj.epochs, "warmup_epochs", f"must lie in [0, epochs = {obj.epochs})",
             "leave alpha at least one epoch of updates")
        need(obj.strategy in ("darts", "random", "evolution", "rl"), "strategy", "unknown strategy",
             "use darts, random, evolution or rl")
        need(obj.kernel in ("auto", "fused", "reference"), "kernel", "unknown kernel", "use auto, fused or reference")
        need(obj.conv_path in ("native", "kernel"), "conv_path", "unknown conv path", "use native or kernel")
        need(obj.partial_channels >= 1 and obj.C % obj.partial_channels == 0, "partial_channels",
             f"must be a positive divisor of C = {obj.C}", "use 1 (DARTS) or, as PC-DARTS, 4")
        unknown = [p for p in obj.primitives if p not in PRIMITIVES]
        need(not unknown, "primitives", f"unknown op {unknown[0] if unknown else ''!r}", f"choose from {PRIMITIVES}")
        need(len(set(obj.primitives)) == len(obj.primitives) and len([p for p in obj.primitives if p != "none"]) >= 1,
             "primitives", "needs distinct ops and at least one besides 'none'", "list each op once")
        need(obj.threads is None or obj.threads > 0, "threads", "must be positive", "give threads >= 1")
        need(obj.latency_target is None or obj.latency_target > 0, "latency_target", "must be positive (ms)",
             "give a latency target in milliseconds > 0")
        need(obj.latency_weight >= 0, "latency_weight", "must be >= 0", "give a non-negative weight")
        need(0 <= obj.latency_margin < 1, "latency_margin", "must be in [0, 1)", "e.g. 0.05")
        need(obj.latency_under_weight >= 0, "latency_under_weight", "must be >= 0", "e.g. 1.0; 0: pure hinge")
        need(obj.latency_batch > 0, "latency_batch", "must be positive", "give latency_batch >= 1")
        need(obj.latency_threads > 0, "latency_threads", "must be positive", "give latency_threads >= 1")
        need(obj.latency_opt_level in ("all", "extended", "basic", "disable"), "latency_opt_level", "unknown level",
             "use all, extended, basic or disable")
        need(obj.latency_calibration >= 0, "latency_calibration", "must be >= 0", "e.g. 24")
        need(obj.candidates > 0, "candidates", "must be positive", "give candidates >= 1")
        need(obj.max_seconds is None or obj.max_seconds > 0, "max_seconds", "must be positive", "or omit it")
        need(obj.population >= 2, "population", "aging evolution needs at least 2 members", "e.g. 100")
        need(1 <= obj.sample_size <= obj.population, "sample_size", "must lie in [1, population]",
             f"give sample_size <= {obj.population}")
        need(obj.controller_lr > 0, "controller_lr", "must be positive", "3.5e-4 is ENAS's")
        need(0 <= obj.baseline_decay < 1, "baseline_decay", "must lie in [0, 1)", "0.99 is ENAS's")
        need(0 < obj.collapse_threshold <= 1, "collapse_threshold", "must lie in (0, 1]", "e.g. 0.5")
        need(obj.skip_limit is None or obj.skip_limit >= 0, "skip_limit", "must be >= 0", "P-DARTS uses 2")
    elif isinstance(obj, TrainConfig):
        for k in ("epochs", "batch_size", "C", "layers"):
            need(getattr(obj, k) > 0, k, "must be positive", f"give {k} >= 1")
        need(0 <= obj.drop_path_prob < 1, "drop_path_prob", "must lie in [0, 1)", "0.2 is the paper's")
        need(obj.stem in ("auto", "cifar", "imagenet"), "stem", "unknown stem", "use auto, cifar or imagenet")
        need(obj.threads is None or obj.threads > 0, "threads", "must be positive", "give threads >= 1")
        need(obj.cutout_length is None or obj.cutout_length > 0, "cutout_length", "must be positive", "or omit it")
        need(obj.shift >= 0, "shift", "must be >= 0 pixels", "1 for 8x8 digits, 4 at 32x32 (the paper), 0: off")
    elif isinstance(obj, ProfileConfig):
        need(len(obj.batch_sizes) > 0 and all(b > 0 for b in obj.batch_sizes), "batch_sizes",
             "batch sizes must be positive", "e.g. --batch-sizes 1,8,32")
        need(obj.threads > 0, "threads", "must be positive", "give --threads >= 1")
        need(obj.warmup >= 0 and obj.repeats > 0, "repeats", "need warmup >= 0 and repeats >= 1", "e.g. 20 and 100")
        need(obj.opt_level in ("all", "extended", "basic", "disable"), "opt_level", "unknown level",
             "use all, extended, basic or disable")
    elif isinstance(obj, ExportConfig):
        need(obj.parity_batch > 0, "parity_batch", "must be positive", "e.g. 16")
        need(7 <= obj.opset <= 23, "opset", "unsupported opset", "use an opset between 7 and 23 (20 is default)")
        need(obj.calibration_samples > 0, "calibration_samples", "must be positive", "e.g. 256")
        need(obj.max_batch_size > 0, "max_batch_size", "must be positive (Triton batches along the first axis)",
             "e.g. --max-batch-size 64")
        bad = [v for v in obj.variants if v not in EXPORT_VARIANTS]
        need(not bad, "variants", f"unknown variant {bad[0] if bad else ''!r}",
             f"choose from {', '.join(EXPORT_VARIANTS)}")
        need(obj.triton_variant in ("fp32", *obj.variants), "triton_variant", "is not built",
             f"add {obj.triton_variant} to variants (--variants), or serve one of {', '.join(obj.variants)}")
        need(bool(obj.model_name) and "/" not in obj.model_name, "model_name", "must be a plain folder name",
             "e.g. --model-name nasdeploy")
    elif isinstance(obj, DataConfig):
        need(0 < obj.val_fraction < 1, "val_fraction", "must lie in (0, 1)", "e.g. 0.1")
        need(0 <= obj.test_fraction < 1, "test_fraction", "must lie in [0, 1)", "e.g. 0.2")
        need(obj.max_train is None or obj.max_train > 0, "max_train", "must be positive", "or omit it for all images")
        need(obj.max_val is None or obj.max_val > 0, "max_val", "must be positive", "or omit it for all images")


def from_dict(obj: dict, source: str = "config") -> RunConfig:
    """Build a RunConfig from nested sections, rejecting unknown sections/keys."""
    if not isinstance(obj, dict):
        raise ConfigError(f"{source}: expected a table of sections", f"sections: {', '.join(SECTIONS)}")
    cfg = RunConfig()
    for name, values in obj.items():
        if name not in _SECTION_TYPES:
            raise ConfigError(f"{source}: unknown section [{name}]", _suggest(name, SECTIONS))
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: [{name}] must be a table", f"write [{name}] then key = value lines")
        section = replace(getattr(cfg, name), f"{name}.", **values)
        cfg = dataclasses.replace(cfg, **{name: section})
    return cfg


def apply_preset(cfg: RunConfig, preset: str | None) -> RunConfig:
    if preset is None:
        return cfg
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}", _suggest(preset, PRESETS))
    return merge(cfg, PRESETS[preset])


def merge(cfg: RunConfig, overrides: dict[str, dict[str, Any]]) -> RunConfig:
    """Apply nested ``{"section": {"key": value}}`` overrides (None values ignored)."""
    for name, values in overrides.items():
        section = replace(getattr(cfg, name), f"{name}.", **values)
        cfg = dataclasses.replace(cfg, **{name: section})
    return cfg


def load_config(path: str | Path | None = None, preset: str | None = None,
                overrides: dict[str, dict[str, Any]] | None = None, base: RunConfig | None = None) -> RunConfig:
    """Defaults (or ``base``, e.g. a run's saved config) ← preset ← file ← overrides (flags)."""
    cfg = apply_preset(base or RunConfig(), preset)
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}", "check the --config path")
        try:
            raw = tomllib.loads(p.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"{p} is not valid TOML ({e})", "fix the syntax") from None
        file_cfg = from_dict(raw, str(p))
        # only keys present in the file override the preset
        cfg = merge(cfg, {s: {k: getattr(getattr(file_cfg, s), k) for k in v} for s, v in raw.items()})
    if overrides:
        cfg = merge(cfg, overrides)
    return cfg


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {v!r} to TOML")


def to_toml(cfg: RunConfig) -> str:
    """Serialize; ``None`` values are left out (they mean 'default')."""
    out = ["# nasdeploy run configuration (resolved)"]
    for name in SECTIONS:
        out.append(f"\n[{name}]")
        for f in fields(getattr(cfg, name)):
            v = getattr(getattr(cfg, name), f.name)
            if v is not None:
                out.append(f"{f.name} = {_toml_value(v)}")
    return "\n".join(out) + "\n"


def save_config(cfg: RunConfig, path: str | Path) -> Path:
    from .artifacts import atomic_write

    return atomic_write(path, to_toml(cfg))


def load_config_file(path: str | Path) -> RunConfig:
    """A saved ``config.toml`` as a RunConfig (every key present)."""
    return load_config(path)


def config_diff(a: RunConfig, b: RunConfig, sections=tuple(SECTIONS)) -> list[tuple[str, Any, Any]]:
    """``(section.key, a_value, b_value)`` for every differing key of ``sections``."""
    out = []
    for s in sections:
        sa, sb = getattr(a, s), getattr(b, s)
        for f in fields(sa):
            va, vb = getattr(sa, f.name), getattr(sb, f.name)
            if va != vb:
                out.append((f"{s}.{f.name}", va, vb))
    return out
