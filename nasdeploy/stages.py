"""pipeline(): search → train → export → profile inside one run directory.

Each stage reads only the previous stage's files; a stage whose output exists
is skipped, so an interrupted pipeline resumes from the last finished stage.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .artifacts import RunDir, ensure_dir, read_json
from .config import RunConfig, config_diff, load_config_file, save_config
from .errors import ConfigError
from .space.network import count_weights

STAGES = ("search", "train", "export", "profile")


@dataclass
class PipelineResult:
    out: Path
    genotype: object
    test_acc: float
    n_params: int
    onnx_bytes: int
    p50_ms_batch1: float | None
    seconds: dict = field(default_factory=dict)
    skipped: list = field(default_factory=list)

    def files(self) -> dict[str, Path]:
        run = RunDir(self.out)
        return {
            "config": run.config,
            "genotype": run.genotype,
            "checkpoint": run.model,
            "onnx": run.onnx,
            "export report": run.export_report,
            "latency": run.latency_json,
            "latency table": run.latency_md,
        }


def check_run_dir(cfg: RunConfig, run: RunDir, overwrite: bool) -> None:
    """Refuse to mix two different runs in one directory (unless ``overwrite``)."""
    if not run.config.exists() or overwrite:
        return
    old = load_config_file(run.config)
    diff = config_diff(old, cfg, sections=("data", "search", "train"))
    if diff:
        key, a, b = diff[0]
        raise ConfigError(
            f"{run.root} already holds another run ({key}: {a!r} there, {b!r} now)",
            "use a new --out directory, or pass --overwrite to start over there",
        )


def pipeline(
    cfg: RunConfig,
    out: str | Path,
    progress: bool = True,
    resume: bool = True,
    overwrite: bool = False,
    echo: Callable[[str], None] = print,
) -> PipelineResult:
    """Run every stage into ``out``; finished stages are skipped when ``resume``.

    Args:
        cfg: the resolved run configuration (``load_config``).
        out: run directory (``runs/<name>``).
        progress: progress bars on stderr.
        resume: skip stages whose outputs exist and continue interrupted ones.
        overwrite: start over in a directory that holds a different run.
        echo: where stage headers go.

    Example:
        >>> res = pipeline(load_config(preset="quick"), "runs/demo")
        >>> res.test_acc
    """
    from .data import load_dataset
    from .deploy.export import export
    from .deploy.profile import LatencyReport, profile
    from .strategies.strategy import run_strategy
    from .space.genotype import Genotype
    from .training import load_network, train

    run = RunDir(out)
    ensure_dir(run.root)
    check_run_dir(cfg, run, overwrite)
    if overwrite or not resume:
        for stage in STAGES:
            for f in sorted(getattr(run, stage).glob("*")) if getattr(run, stage).exists() else []:
                if f.is_file():
                    f.unlink()
    save_config(cfg, run.config)
    seconds, skipped = {}, []

    t = time.perf_counter()
    data = load_dataset(cfg.data.dataset, seed=cfg.data.split_seed, val_fraction=cfg.data.val_fraction,
                        test_fraction=cfg.data.test_fraction)
    echo(f"data     {data.summary()}")

    t = time.perf_counter()
    if resume and run.genotype.exists():
        genotype = Genotype.load(run.genotype)
        skipped.append("search")
        echo(f"search   skipped ({run.genotype} exists)")
    else:
        echo("search   ...")
        genotype = run_strategy(cfg.search, data, run.root, progress=progress, resume=resume, deploy=cfg.train).genotype
    seconds["search"] = time.perf_counter() - t

    t = time.perf_counter()
    if resume and run.model.exists():
        skipped.append("train")
        echo(f"train    skipped ({run.model} exists)")
    else:
        echo("train    ...")
        train(genotype, cfg.train, data, run.root, progress=progress, resume=resume and run.train_state.exists())
    seconds["train"] = time.perf_counter() - t
    model, ckpt = load_network(run.model)

    t = time.perf_counter()
    if resume and run.onnx.exists() and run.export_report.exists():
        skipped.append("export")
        echo(f"export   skipped ({run.onnx} exists)")
    else:
        echo("export   ...")
        export(run.model, cfg.export, out=run.export, data=data)
        if set(cfg.export.variants) - {"fp32"}:
            from .deploy.quantize import build_variants

            build_variants(run.onnx, cfg.export, data=data)
    seconds["export"] = time.perf_counter() - t

    t = time.perf_counter()
    if resume and run.latency_json.exists():
        skipped.append("profile")
        echo(f"profile  skipped ({run.latency_json} exists)")
        report = LatencyReport.from_dict(read_json(run.latency_json))
    else:
        echo("profile  ...")
        report = profile(run.onnx, cfg.profile, out=run.root, torch_model=model)
    seconds["profile"] = time.perf_counter() - t

    p50 = report.stats(1).p50_ms if any(b.batch_size == 1 for b in report.batches) else None
    return PipelineResult(
        out=run.root,
        genotype=genotype,
        test_acc=float(ckpt["metrics"]["test_acc"]),
        n_params=count_weights(model, exclude_prefix="auxiliary_head"),  # the served network
        onnx_bytes=run.onnx.stat().st_size,
        p50_ms_batch1=p50,
        seconds=seconds,
        skipped=skipped,
    )

