"""The stage verbs — ``search``, ``train``, ``export``, ``profile``, ``pipeline`` — the public API the CLI calls.

Every verb works on a run directory (``runs/<name>/``, DESIGN.md), which is the
source of truth:

- a verb run inside a run dir starts from its ``config.toml`` (``resolve_config``);
  flags win, but a flag that contradicts the data the run was searched on is refused;
- it loads its data from the configuration and sets threads and seeds once;
- a finished stage is never overwritten, nor its logs truncated, without
  ``overwrite``; ``resume`` with nothing to resume is an error;
- each finished stage records what it consumed (``runs.record_stage``) and the
  run's ``summary.json`` / ``report.md`` are rewritten from the files;
- ``pipeline`` re-runs exactly the stages whose inputs changed, and says why.

The implementations live below: ``strategies`` (search), ``training``,
``deploy`` (export, variants, Triton, profile).
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .artifacts import RunDir, ensure_dir
from .config import RunConfig, config_diff, load_config, load_config_file, save_config
from .data import Dataset, load_dataset
from .distributed import env_ranks
from .errors import BusyMachineWarning, ConfigError, GenotypeError
from .latency.measure import runnable_tasks
from .runs import STAGES, is_finished, record_stage, stale_reason, update_summary
from .strategies.dispatch import check_world, run_strategy

__all__ = ["export", "pipeline", "profile", "resolve_config", "search", "train"]

# Sections whose values a stage inherits from the run and may not contradict (the data it was searched on).
_UPSTREAM = {"search": (), "train": ("data",), "export": (), "profile": ()}


def _is_main() -> bool:
    """Rank 0 under torchrun (before or after the process group exists), or a single process."""
    return env_ranks()[0] == 0


# ----------------------------------------------------------------- configuration of a run

def resolve_config(out: str | Path | None, config_path=None, preset: str | None = None,
                   overrides: dict | None = None, stage: str | None = None) -> RunConfig:
    """The configuration a stage runs with.

    Outside a run directory, and for ``search`` (which defines its run): defaults ← preset ←
    ``config_path`` ← ``overrides`` (flags). Inside one (``out/config.toml`` exists) the later
    stages start from the run's saved configuration instead of the defaults; preset, file and
    flags still apply on top, but one that changes a section the stage inherits (``[data]`` for
    ``train``, once the run has searched) is refused.
    """
    run = RunDir(out) if out is not None else None
    if run is None or not run.config.is_file() or stage == "search":  # a search defines its run
        return load_config(config_path, preset, overrides)
    base = load_config_file(run.config)
    cfg = load_config(config_path, preset, overrides, base=base)
    if stage is not None and is_finished(run, "search"):
        for key, old, new in config_diff(base, cfg, sections=_UPSTREAM[stage]):
            flag = "--" + key.split(".")[-1].replace("_", "-")
            raise ConfigError(
                f"{key} = {new!r} contradicts the run in {run.root}, which was searched with {old!r} "
                f"({run.config})",
                f"drop {flag} (and the config key) to {stage} on the run's data, or use a new --out directory",
            )
    return cfg


def _run_config(run: RunDir) -> RunConfig:
    return load_config_file(run.config) if run.config.is_file() else RunConfig()


def _refuse_other_run(cfg: RunConfig, run: RunDir, sections) -> None:
    """A stage into a directory whose config.toml describes a different run would mix two runs."""
    if not run.config.is_file():
        return
    diff = config_diff(load_config_file(run.config), cfg, sections=sections)
    if diff:
        key, a, b = diff[0]
        raise ConfigError(f"{run.root} already holds another run ({key}: {a!r} there, {b!r} now)",
                          "use a new --out directory, or pass --overwrite to start over there")


def _save_run_config(cfg: RunConfig, run: RunDir) -> None:
    if _is_main():
        ensure_dir(run.root)
        save_config(cfg, run.config)


def _guard_finished(run: RunDir, stage: str, what: Path, resume: bool, overwrite: bool) -> None:
    """Never overwrite a finished stage (or truncate its logs) without ``overwrite``."""
    if overwrite or resume or not what.exists():
        return
    raise ConfigError(f"{stage} already finished in {run.root} ({what} exists)",
                      f"pass --overwrite to {stage} again there, or use a new --out directory")


def _clear(folder: Path) -> None:
    if _is_main() and folder.is_dir():
        for f in folder.iterdir():
            if f.is_file():
                f.unlink()


def _process_settings(threads: int | None) -> None:
    """The one process-wide setting a verb makes (seeds are set by the stage from its config)."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    warn_if_crowded(torch.get_num_threads())


def warn_if_crowded(threads: int, others: int | None = None, cores: int | None = None) -> str | None:
    """Warn (and return the message) when this job's threads and the tasks already running
    outnumber the cores. OpenMP threads that share a core wait on each other at every parallel
    region: a 2-thread pipeline that took 24 s on a quiet 2-core machine took 213 s at load 4.
    ``others`` defaults to the tasks running now besides this process (and the other ranks of a
    torchrun job on this host). Measured on 2 cores beside two busy processes, a 1-epoch tiny search
    took 94 s at 2 threads, 16 s at 1 thread, 10 s at 2 threads on the quiet machine.
    """
    cores = cores or os.cpu_count() or 1
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if others is None:
        running = runnable_tasks()
        if running is None:
            return None
        others = max(running - local, 0)
    if threads * local == 1 or others + threads * local <= cores:
        return None  # one thread alone just gets its time share; nothing waits on it
    fit = max((cores - others) // local, 1)
    fix = "Run when the machine is free."
    if fit < threads:
        fix = f"Pass --threads {fit}, or run when the machine is free."
    msg = (f"{others} other task(s) are running on this machine's {cores} core(s) and this job starts "
           f"{threads * local} thread(s): threads that share a core wait on each other, so steps can take several "
           f"times longer. {fix}")
    warnings.warn(msg, BusyMachineWarning, stacklevel=2)
    return msg


def load_data(cfg: RunConfig) -> Dataset:
    """The run's dataset and split, as ``[data]`` describes them."""
    d = cfg.data
    return load_dataset(d.dataset, seed=d.split_seed, val_fraction=d.val_fraction, test_fraction=d.test_fraction,
                        max_train=d.max_train, max_val=d.max_val)


# ----------------------------------------------------------------- search

def search(cfg: RunConfig | None = None, out: str | Path = "runs/search", *, data: Dataset | None = None,
           resume: bool = False, overwrite: bool = False, progress: bool = True, log: Callable | None = None,
           penalty: Callable | None = None):
    """Search the cell space (``cfg.search.strategy``) and write ``out/search/``.

    Args:
        cfg: the run configuration; None: ``out/config.toml`` if it exists, else the defaults.
        out: the run directory.
        data: an already loaded dataset (default: the one ``cfg.data`` names).
        resume: continue from ``search/supernet.pt`` (an error when there is none).
        overwrite: search again where a search already finished.
        progress: progress bars on stderr.
        log: called with each epoch's metrics record.
        penalty: an extra architecture loss on the supernet (DARTS), e.g. a custom latency term.

    Returns:
        SearchResult(genotype, metrics, val_acc, seconds, out).

    Example:
        >>> from nasdeploy import load_config, search
        >>> search(load_config(preset="quick"), "runs/demo").genotype  # doctest: +SKIP
    """
    run = RunDir(out)
    cfg = cfg or _run_config(run)
    check_world(cfg.search)
    if not (resume or overwrite):
        _refuse_other_run(cfg, run, ("data", "search"))
        _guard_finished(run, "search", run.genotype, resume, overwrite)
        if run.supernet.exists():
            raise ConfigError(f"{run.root} holds an interrupted search ({run.supernet})",
                              "pass --resume to continue it, or --overwrite to start over")
    if resume and not run.supernet.is_file():
        raise ConfigError(f"--resume: nothing to resume in {run.root} ({run.supernet} does not exist)",
                          "drop --resume to start a new search")
    if overwrite and not resume:
        _clear(run.search)
    _process_settings(cfg.search.threads)
    data = data if data is not None else load_data(cfg)
    _save_run_config(cfg, run)
    t0 = time.perf_counter()
    res = run_strategy(cfg.search, data, run.root, progress=progress, resume=resume, penalty=penalty, log=log,
                       deploy=cfg.train)
    if _is_main():
        record_stage(run, "search", cfg, time.perf_counter() - t0, inputs={"data": data.spec.fingerprint})
        update_summary(run)
    return res


# ----------------------------------------------------------------- train

def _genotype(run: RunDir, genotype):
    """(Genotype, extra stage inputs): a Genotype, a published name, a file, or the run's search result."""
    from .space.genotype import Genotype

    if genotype is None:
        if not run.genotype.is_file():
            raise GenotypeError(f"no genotype given, and {run.genotype} does not exist",
                                f"pass --genotype FILE or a published name (DARTS_V2), or run "
                                f"`nasdeploy search --out {run.root}` first")
        return Genotype.load(run.genotype), {}
    if isinstance(genotype, Genotype):
        g = genotype
    else:
        g = Genotype.load(genotype)
        if Path(str(genotype)).resolve() == run.genotype.resolve():
            return g, {}
    import hashlib

    return g, {"genotype": hashlib.sha256(g.to_json().encode()).hexdigest()}


def train(cfg: RunConfig | None = None, out: str | Path = "runs/train", *, genotype=None,
          data: Dataset | None = None, resume: bool = False, overwrite: bool = False, progress: bool = True):
    """Train a genotype from scratch (DARTS evaluation recipe) and write ``out/train/model.pt``.

    Args:
        cfg: the run configuration; None: ``out/config.toml`` if it exists, else the defaults.
        out: the run directory.
        genotype: a Genotype, a genotype.json path or a published name; None: ``out/search/genotype.json``.
        data: an already loaded dataset (default: the one ``cfg.data`` names).
        resume: continue from ``train/last.pt`` (an error when there is none).
        overwrite: train again where a model was already trained.
        progress: progress bar on stderr.

    Returns:
        TrainResult(checkpoint, best, test_acc, best_val_acc, epochs, seconds, n_params).

    Example:
        >>> from nasdeploy import load_config, train
        >>> train(load_config(preset="quick"), "runs/v2", genotype="DARTS_V2").test_acc  # doctest: +SKIP
    """
    from .checkpoint import load_network
    from .space.network import count_mult_adds
    from .training import train as run_train

    run = RunDir(out)
    cfg = cfg or _run_config(run)
    g, g_inputs = _genotype(run, genotype)
    _guard_finished(run, "train", run.model, resume, overwrite)
    if resume and not run.train_state.is_file():
        raise ConfigError(f"--resume: nothing to resume in {run.root} ({run.train_state} does not exist)",
                          "drop --resume to start training")
    _process_settings(cfg.train.threads)
    data = data if data is not None else load_data(cfg)
    _save_run_config(cfg, run)
    t0 = time.perf_counter()
    res = run_train(g, cfg.train, data, run.root, progress=progress, resume=resume)
    if _is_main():
        net, _ = load_network(run.model)
        figures = {"test_acc": res.test_acc, "best_val_acc": res.best_val_acc, "n_params": res.n_params,
                   "mult_adds": count_mult_adds(net, data.spec.input_shape), "epochs": res.epochs}
        record_stage(run, "train", cfg, time.perf_counter() - t0, inputs=g_inputs, figures=figures)
        update_summary(run)
    return res


# ----------------------------------------------------------------- export

@dataclass
class ExportOutcome:
    """What ``export`` wrote: the verified fp32 model, the variants and the Triton repository."""

    report: object  # deploy.export.ExportReport
    variants: dict = field(default_factory=dict)  # deploy.quantize.build_variants' report (beyond fp32)
    triton: Path | None = None
    triton_checked: bool = False


def _run_of(path: Path, folder: str) -> RunDir | None:
    """``RUN`` when ``path`` is ``RUN/<folder>/<file>`` in a run directory."""
    p = Path(path).resolve()
    return RunDir(p.parent.parent) if p.parent.name == folder else None


def export(cfg: RunConfig | None = None, checkpoint: str | Path | None = None, out: str | Path | None = None, *,
           data: Dataset | None = None, overwrite: bool = False, run: str | Path | None = None) -> ExportOutcome:
    """Export ``model.pt`` to one verified ONNX file, plus the configured variants and Triton repository.

    Args:
        cfg: the run configuration (its ``[export]`` section is used); None: the run's config.toml.
        checkpoint: ``model.pt``; None: ``run/train/model.pt``.
        out: folder of ``model.onnx``; None: the run's ``export/`` beside ``train/``.
        data: images for the parity check (default: the split recorded in the checkpoint).
        overwrite: export again where an export already finished.
        run: the run directory when ``checkpoint`` is not given.

    Example:
        >>> from nasdeploy import export
        >>> export(checkpoint="runs/demo/train/model.pt").report.max_abs_diff  # doctest: +SKIP
    """
    from .deploy.export import default_out
    from .deploy.export import export as run_export

    if checkpoint is None:
        if run is None:
            raise ConfigError("export needs a checkpoint or a run directory", "pass model.pt, or run=RUN")
        checkpoint = RunDir(run).model
    rd = _run_of(checkpoint, "train")
    cfg = cfg or (_run_config(rd) if rd is not None else RunConfig())
    out_dir = Path(default_out(checkpoint) if out is None else out)
    _guard_finished(rd or RunDir(out_dir.parent), "export", out_dir / "export.json", False, overwrite)
    t0 = time.perf_counter()
    rep = run_export(checkpoint, cfg.export, out=out_dir, data=data)
    outcome = ExportOutcome(rep)
    if tuple(cfg.export.variants) != ("fp32",):
        from .deploy.quantize import build_variants

        outcome.variants = build_variants(Path(rep.onnx), cfg.export, data=data)
    if cfg.export.triton_repo is not None:
        outcome.triton, outcome.triton_checked = _write_triton(Path(rep.onnx), cfg.export)
    if rd is not None and out is None and _is_main():
        record_stage(rd, "export", cfg, time.perf_counter() - t0)
        update_summary(rd)
    return outcome


def _write_triton(onnx_path: Path, ec) -> tuple[Path, bool]:
    """The Triton model repository of the served variant, checked against Triton's schema when installed."""
    from .deploy.quantize import FILES
    from .deploy.triton import check_repository, schema_available, write_repository
    from .errors import ExportError

    source = onnx_path.parent / FILES[ec.triton_variant]
    folder = write_repository(source, ec.triton_repo, ec.model_name, ec.max_batch_size, gpu=ec.triton_gpu)
    if not schema_available():
        return folder, False
    problems = check_repository(folder, source)
    if problems:
        raise ExportError(f"{folder / 'config.pbtxt'} disagrees with the model: {'; '.join(problems)}",
                          "report this; the Triton writer is wrong")
    return folder, True


# ----------------------------------------------------------------- profile

@dataclass
class ProfileOutcome:
    report: object  # deploy.profile.LatencyReport
    variants: dict | None = None  # deploy.quantize.profile_variants' result
    out: Path | None = None


def profile(cfg: RunConfig | None = None, onnx: str | Path | None = None, out: str | Path | None = None, *,
            checkpoint: str | Path | None = None, torch_model=None, variants: bool | None = None,
            overwrite: bool = False) -> ProfileOutcome:
    """Measure the ONNX model's latency in ONNX Runtime; write ``out/profile/latency.json`` and ``.md``.

    Args:
        cfg: the run configuration (its ``[profile]`` section); None: the run's config.toml.
        onnx: the model; None: ``out/export/model.onnx``.
        out: the run directory of the report; None: the run holding the model (else its folder).
        checkpoint: ``model.pt`` to time PyTorch eager beside ONNX Runtime (or pass ``torch_model``).
        variants: also time the variants beside ``model.onnx`` (None: when there are any).
        overwrite: profile again where a profile already finished.

    Example:
        >>> from nasdeploy import profile
        >>> profile(onnx="runs/demo/export/model.onnx").report.stats(1).p50_ms  # doctest: +SKIP
    """
    from .deploy.profile import profile as run_profile
    from .deploy.quantize import find_variants, profile_variants

    if onnx is None:
        if out is None:
            raise ConfigError("profile needs an ONNX model or a run directory", "pass model.onnx, or out=RUN")
        onnx = RunDir(out).onnx
    onnx = Path(onnx)
    rd = _run_of(onnx, "export")
    if out is None:
        out = rd.root if rd is not None else onnx.resolve().parent
    run = RunDir(out)
    cfg = cfg or _run_config(rd or run)
    _guard_finished(run, "profile", run.latency_json, False, overwrite)
    if checkpoint is not None and torch_model is None:
        from .checkpoint import load_network

        torch_model = load_network(checkpoint)[0]
    t0 = time.perf_counter()
    rep = run_profile(onnx, cfg.profile, out=run.root, torch_model=torch_model)
    outcome = ProfileOutcome(rep, out=run.root)
    is_export = onnx.name == "model.onnx"
    if variants and not is_export:
        raise ConfigError("--variants compares the files beside an export's model.onnx", "pass that file")
    if variants or (variants is None and is_export and len(find_variants(onnx.parent)) >= 2):
        outcome.variants = profile_variants(onnx.parent, cfg.profile, out=run.root)
    if rd is not None and rd.root == run.root.resolve() and _is_main():
        record_stage(rd, "profile", cfg, time.perf_counter() - t0)
        update_summary(rd)
    return outcome


# ----------------------------------------------------------------- pipeline

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
    reasons: dict = field(default_factory=dict)  # stage -> why it ran
    summary: dict = field(default_factory=dict)

    def files(self) -> dict[str, Path]:
        run = RunDir(self.out)
        return {
            "summary": run.root / "summary.json",
            "report": run.root / "report.md",
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
    if not overwrite:
        _refuse_other_run(cfg, run, ("data", "search", "train"))


def pipeline(cfg: RunConfig | None, out: str | Path, progress: bool = True, resume: bool = True,
             overwrite: bool = False,
             echo: Callable[[str], None] = print) -> PipelineResult:
    """search → train → export → profile into ``out``; stages that are finished and up to date are skipped.

    A stage re-runs when it never finished, when one of its outputs is missing or was changed, when
    an input it read changed (e.g. ``model.pt`` retrained), or when the configuration it consumed
    changed; ``echo`` says which reason applied.

    Args:
        cfg: the resolved run configuration (``load_config``); None: the run's config.toml.
        out: run directory (``runs/<name>``).
        progress: progress bars on stderr.
        resume: skip up-to-date stages and continue interrupted ones; False re-runs every stage.
        overwrite: start over in a directory that holds a different run.
        echo: where stage headers go.

    Example:
        >>> res = pipeline(load_config(preset="quick"), "runs/demo")  # doctest: +SKIP
        >>> res.test_acc  # doctest: +SKIP
    """
    from .distributed import barrier, init_from_env

    run = RunDir(out)
    cfg = cfg or _run_config(run)
    main = _is_main()
    if main:
        ensure_dir(run.root)
    check_run_dir(cfg, run, overwrite)
    check_world(cfg.search)
    if overwrite or not resume:
        for stage in STAGES:
            _clear(run.root / stage)
    _save_run_config(cfg, run)
    seconds, skipped, reasons = {}, [], {}
    data = load_data(cfg)
    echo(f"data     {data.summary()}")

    def step(stage: str, fn, inputs=None):
        reason = stale_reason(run, stage, cfg, inputs)
        if reason is None:
            skipped.append(stage)
            echo(f"{stage:8s} up to date (skipped)")
            return
        reasons[stage] = reason
        echo(f"{stage:8s} {'...' if reason == 'not run yet' else 're-run: ' + reason}")
        t = time.perf_counter()
        fn(reason)
        seconds[stage] = time.perf_counter() - t

    def do_search(reason):
        interrupted = reason == "not run yet" and run.supernet.is_file()
        search(cfg, run.root, data=data, resume=interrupted, overwrite=not interrupted, progress=progress)

    def do_train(reason):
        interrupted = reason == "not run yet" and run.train_state.is_file() and not run.model.exists()
        train(cfg, run.root, data=data, resume=interrupted, overwrite=not interrupted, progress=progress)

    def sync():  # under torchrun: every rank sees what rank 0 wrote before it reads the next stage's inputs
        if env_ranks()[1] > 1:
            barrier(init_from_env(device=cfg.search.device))

    step("search", do_search, {"data": data.spec.fingerprint})
    sync()
    step("train", do_train)
    sync()
    if main:  # serving artifacts: rank 0 alone under torchrun, the others wait for them
        step("export", lambda r: export(cfg, run.model, data=data, overwrite=True))
        step("profile", lambda r: profile(cfg, run.onnx, run.root, checkpoint=run.model, overwrite=True))
        summary = update_summary(run)  # re-checks a latency budget against the profiled p50 (runs.summarize)
        b = summary.get("latency_budget", {})
        if b.get("profile_within_budget") is False:
            echo(f"latency  OVER budget: profiled p50 {b['profile_p50_ms']:.4f} ms > {b['target_ms']:g} ms")
    sync()
    if not main:
        from .artifacts import read_json

        summary = read_json(run.root / "summary.json", "run summary")
    lat = summary.get("latency", {}).get("p50_ms", {}).get("fp32", {})
    train_fig = summary.get("train", {})
    from .space.genotype import Genotype

    return PipelineResult(
        out=run.root,
        genotype=Genotype.from_dict(summary["genotype"]),
        test_acc=float(train_fig.get("test_acc", float("nan"))),
        n_params=int(train_fig.get("n_params", 0)),
        onnx_bytes=int(summary.get("export", {}).get("onnx_bytes") or 0),
        p50_ms_batch1=lat.get("1"),
        seconds=seconds,
        skipped=skipped,
        reasons=reasons,
        summary=summary,
    )

