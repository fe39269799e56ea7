"""The ``nasdeploy`` command line: one thin command per API function.

Commands parse options, call the API and print; every option defaults to None
so that a flag beats the config file, which beats the preset and the defaults.
Errors of ours print one ``Error:`` line and exit 1 (``--debug`` for the traceback).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from .errors import NasdeployError

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


class _Group(click.Group):
    """Turns our typed errors (and a few OS ones) into one clean line and exit code 1."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except KeyboardInterrupt:
            click.echo("Interrupted — finished epochs are checkpointed; re-run with --resume to continue.", err=True)
            sys.exit(130)
        except (NasdeployError, OSError, MemoryError) as e:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            msg = str(e) if isinstance(e, NasdeployError) else f"{type(e).__name__}: {e}"
            click.echo(f"Error: {msg}", err=True)
            sys.exit(1)


def _csv_ints(ctx, param, value):
    if value is None:
        return None
    try:
        return tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of integers, e.g. 1,8,32") from None


def _csv(ctx, param, value):
    return None if value is None else tuple(v.strip() for v in value.split(",") if v.strip())


@click.group(cls=_Group, context_settings=CONTEXT)
@click.option("--debug", is_flag=True, help="Show full tracebacks instead of one error line.")
@click.version_option(package_name="nasdeploy")
@click.pass_context
def main(ctx, debug):
    """nasdeploy: differentiable architecture search to a verified, profiled ONNX model.

    \b
    Stages (each reads only the previous stage's files in the run directory):
      search    DARTS search on a dataset        -> search/genotype.json
      train     retrain a genotype from scratch  -> train/model.pt
      export    checkpoint to verified ONNX      -> export/model.onnx
      profile   ONNX Runtime latency report      -> profile/latency.json, .md
      pipeline  all four into one run directory
    """
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


# ----------------------------------------------------------------- shared options

def _config_options(f):
    f = click.option("--preset", type=click.Choice(["paper", "quick", "tiny"]), default=None,
                     help="Named settings: paper (published defaults), quick (digits in minutes), tiny (tests).")(f)
    f = click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
                     help="TOML file with [data] [search] [train] [export] [profile] sections.")(f)
    return f


def _data_options(f):
    f = click.option("--dataset", default=None,
                     help="digits (embedded), a CIFAR-10 python dir, an image folder, or a .npz with x, y.")(f)
    return f


def _load(config_path, preset, overrides):
    from .config import load_config

    return load_config(config_path, preset, overrides)


def _dataset(cfg):
    from .data import load_dataset

    return load_dataset(cfg.data.dataset, seed=cfg.data.split_seed, val_fraction=cfg.data.val_fraction,
                        test_fraction=cfg.data.test_fraction)


# ----------------------------------------------------------------- search

@main.command(context_settings=CONTEXT)
@_data_options
@click.option("--out", type=click.Path(file_okay=False), default="runs/search", show_default=True,
              help="Run directory; artifacts go to OUT/search/.")
@click.option("--strategy", type=click.Choice(["darts"]), default=None, help="Search strategy (default darts).")
@click.option("--epochs", type=int, default=None, help="Search epochs (paper: 50).")
@click.option("--batch-size", type=int, default=None, help="Batch size of each half (paper: 64).")
@click.option("--channels", "C", type=int, default=None, help="Initial channels C (paper: 16).")
@click.option("--layers", type=int, default=None, help="Cells (paper: 8).")
@click.option("--nodes", "steps", type=int, default=None, help="Intermediate nodes per cell (paper: 4).")
@click.option("--primitives", callback=_csv, default=None, help="Comma-separated candidate ops.")
@click.option("--order", type=click.Choice(["1", "2"]), default=None,
              help="1: first-order DARTS; 2: unrolled second order (default 1).")
@click.option("--w-lr", type=float, default=None, help="Weight SGD learning rate (paper: 0.025).")
@click.option("--a-lr", type=float, default=None, help="Alpha Adam learning rate (paper: 3e-4).")
@click.option("--seed", type=int, default=None, help="Random seed (CPU runs are deterministic per seed).")
@click.option("--device", default=None, help="cpu, cuda, cuda:1 ...")
@click.option("--kernel", type=click.Choice(["auto", "fused", "reference"]), default=None,
              help="Mixed-op implementation (default auto: fused when built).")
@click.option("--threads", type=int, default=None, help="torch intra-op threads.")
@click.option("--resume", is_flag=True, help="Continue from OUT/search/supernet.pt.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@_config_options
def search(dataset, out, config_path, preset, resume, quiet, order, **opts):
    """Run a DARTS search and write OUT/search/{genotype.json, alphas.jsonl, metrics.jsonl, supernet.pt}.

    \b
    Example:
      nasdeploy search --dataset digits --preset quick --out runs/demo
    """
    from .config import save_config
    from .search.darts import search as run_search

    opts["order"] = int(order) if order else None
    cfg = _load(config_path, preset, {"data": {"dataset": dataset}, "search": opts})
    data = _dataset(cfg)
    click.echo(f"data: {data.summary()}", err=True)
    t0 = time.perf_counter()
    res = run_search(cfg.search, data, out, progress=not quiet, resume=resume)
    save_config(cfg, Path(out) / "config.toml")
    _print_genotype(res.genotype)
    click.echo(f"val accuracy (supernet): {res.val_acc:.4f}   time: {time.perf_counter() - t0:.1f}s")
    click.echo(f"genotype: {Path(out) / 'search' / 'genotype.json'}")


def _print_genotype(g):
    for kind in ("normal", "reduce"):
        edges, concat = g.cell(kind == "reduce")
        nodes = [f"n{2 + i}=" + "+".join(f"{op}({j})" for op, j in edges[2 * i: 2 * i + 2]) for i in range(g.steps)]
        click.echo(f"{kind:7s} " + "  ".join(nodes) + f"  concat={list(concat)}")


# ----------------------------------------------------------------- train

@main.command(context_settings=CONTEXT)
@click.option("--genotype", "genotype_ref", required=True,
              help="genotype.json path or a published name (DARTS_V1, DARTS_V2).")
@_data_options
@click.option("--out", type=click.Path(file_okay=False), default="runs/train", show_default=True,
              help="Run directory; artifacts go to OUT/train/.")
@click.option("--epochs", type=int, default=None, help="Epochs (paper: 600).")
@click.option("--batch-size", type=int, default=None, help="Batch size (paper: 96).")
@click.option("--channels", "C", type=int, default=None, help="Initial channels (paper: 36).")
@click.option("--layers", type=int, default=None, help="Cells (paper: 20).")
@click.option("--lr", type=float, default=None, help="SGD learning rate (paper: 0.025).")
@click.option("--auxiliary/--no-auxiliary", default=None, help="Auxiliary head at 2/3 depth (paper: on).")
@click.option("--drop-path", "drop_path_prob", type=float, default=None, help="Final drop-path probability (0.2).")
@click.option("--cutout/--no-cutout", default=None, help="Cutout augmentation (paper: on).")
@click.option("--seed", type=int, default=None, help="Random seed.")
@click.option("--device", default=None, help="cpu, cuda ...")
@click.option("--threads", type=int, default=None, help="torch intra-op threads.")
@click.option("--resume", is_flag=True, help="Continue from OUT/train/last.pt.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@_config_options
def train(genotype_ref, dataset, out, config_path, preset, resume, quiet, **opts):
    """Train a genotype from scratch (DARTS evaluation recipe) and write OUT/train/model.pt.

    \b
    Example:
      nasdeploy train --genotype runs/demo/search/genotype.json --dataset digits --out runs/demo
      nasdeploy train --genotype DARTS_V2 --preset quick --out runs/v2
    """
    from .space.genotype import Genotype
    from .train import train as run_train

    genotype = Genotype.load(genotype_ref)
    cfg = _load(config_path, preset, {"data": {"dataset": dataset}, "train": opts})
    data = _dataset(cfg)
    click.echo(f"data: {data.summary()}", err=True)
    res = run_train(genotype, cfg.train, data, out, progress=not quiet, resume=resume)
    click.echo(f"test accuracy: {res.test_acc:.4f}   best val: {res.best_val_acc:.4f}   "
               f"params: {res.n_params:,}   time: {res.seconds:.1f}s")
    click.echo(f"checkpoint: {res.checkpoint}")


# ----------------------------------------------------------------- export

@main.command(context_settings=CONTEXT)
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Output folder (default: the run's export/ beside train/).")
@click.option("--opset", type=int, default=None, help="ONNX opset (default 20).")
@click.option("--parity-batch", type=int, default=None, help="Larger batch for the parity check (16).")
@click.option("--atol", "parity_atol", type=float, default=None, help="Max |ONNX - PyTorch| on logits (1e-4).")
@_config_options
def export(checkpoint, out, config_path, preset, **opts):
    """Export a trained model.pt to one verified ONNX file (checker, parity, metadata).

    \b
    Example:
      nasdeploy export runs/demo/train/model.pt
    """
    from .deploy.export import export as run_export

    cfg = _load(config_path, preset, {"export": opts})
    rep = run_export(checkpoint, cfg.export, out=out)
    d = rep.to_dict() if hasattr(rep, "to_dict") else rep.__dict__
    click.echo(f"onnx: {d.get('onnx_path') or d.get('path')}")
    for k in ("opset", "exporter", "max_abs_err", "size_bytes", "sha256"):
        if k in d:
            click.echo(f"{k}: {d[k]}")


# ----------------------------------------------------------------- profile

@main.command(context_settings=CONTEXT)
@click.argument("onnx_model", type=click.Path(dir_okay=False))
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Run directory; the report goes to OUT/profile/ (default: the run holding the model).")
@click.option("--batch-sizes", callback=_csv_ints, default=None, help="Comma-separated batch sizes (1,8,32).")
@click.option("--threads", type=int, default=None, help="ONNX Runtime intra-op threads (1).")
@click.option("--warmup", type=int, default=None, help="Warm-up runs per batch size (20).")
@click.option("--repeats", type=int, default=None, help="Timed runs per batch size (100).")
@click.option("--provider", default=None, help="ONNX Runtime execution provider (CPUExecutionProvider).")
@click.option("--opt-level", type=click.Choice(["all", "extended", "basic", "disable"]), default=None,
              help="ORT graph optimization level (all).")
@click.option("--checkpoint", type=click.Path(dir_okay=False), default=None,
              help="model.pt to time PyTorch eager beside ONNX Runtime.")
@_config_options
def profile(onnx_model, out, checkpoint, config_path, preset, **opts):
    """Measure ONNX Runtime latency: warm-up, percentiles, throughput, per-op breakdown.

    \b
    Example:
      nasdeploy profile runs/demo/export/model.onnx --batch-sizes 1,8,32 --threads 1
    """
    from .deploy.profile import profile as run_profile
    from .deploy.profile import render_markdown

    cfg = _load(config_path, preset, {"profile": opts})
    torch_model = None
    if checkpoint:
        from .train import load_network

        torch_model = load_network(checkpoint)[0]
    if out is None:  # RUN/export/model.onnx -> RUN; elsewhere the model's own folder
        parent = Path(onnx_model).resolve().parent
        out = parent.parent if parent.name == "export" else parent
    rep = run_profile(onnx_model, cfg.profile, out=out, torch_model=torch_model)
    click.echo(render_markdown(rep))
    click.echo(f"report: {Path(out) / 'profile' / 'latency.json'}")


# ----------------------------------------------------------------- pipeline

@main.command(context_settings=CONTEXT)
@_data_options
@click.option("--out", type=click.Path(file_okay=False), default="runs/default", show_default=True,
              help="Run directory for all stages.")
@click.option("--search-epochs", type=int, default=None, help="Search epochs.")
@click.option("--train-epochs", type=int, default=None, help="Retrain epochs.")
@click.option("--seed", type=int, default=None, help="Seed for search and training.")
@click.option("--kernel", type=click.Choice(["auto", "fused", "reference"]), default=None, help="Mixed-op kernel.")
@click.option("--threads", type=int, default=None, help="torch threads for search and training.")
@click.option("--fresh", is_flag=True, help="Re-run every stage instead of resuming.")
@click.option("--overwrite", is_flag=True, help="Start over in an OUT that holds a different run.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@_config_options
def pipeline(dataset, out, search_epochs, train_epochs, seed, kernel, threads, fresh, overwrite, quiet,
             config_path, preset):
    """search → train → export → profile into one run directory (default: digits, quick preset).

    Finished stages are skipped, so re-running continues an interrupted pipeline.

    \b
    Example:
      nasdeploy pipeline --out runs/demo
    """
    from .pipeline import pipeline as run_pipeline

    if preset is None and config_path is None:
        preset = "quick"
    overrides = {
        "data": {"dataset": dataset},
        "search": {"epochs": search_epochs, "seed": seed, "kernel": kernel, "threads": threads},
        "train": {"epochs": train_epochs, "seed": seed, "threads": threads},
    }
    cfg = _load(config_path, preset, overrides)
    t0 = time.perf_counter()
    res = run_pipeline(cfg, out, progress=not quiet, resume=not fresh, overwrite=overwrite,
                       echo=lambda s: click.echo(s, err=True))
    click.echo("")
    click.echo(f"== nasdeploy pipeline: {res.out} ({time.perf_counter() - t0:.0f}s) ==")
    _print_genotype(res.genotype)
    click.echo(f"test accuracy   {res.test_acc:.4f}")
    click.echo(f"model size      {res.n_params:,} weights, ONNX {res.onnx_bytes / 1e6:.2f} MB")
    if res.p50_ms_batch1 is not None:
        click.echo(f"ORT latency     p50 {res.p50_ms_batch1:.3f} ms at batch 1 ({cfg.profile.threads} thread)")
    times = "  ".join(f"{k} {v:.0f}s" for k, v in res.seconds.items())
    click.echo(f"stage time      {times}" + (f"  (skipped: {', '.join(res.skipped)})" if res.skipped else ""))
    for name, path in res.files().items():
        click.echo(f"{name:15s} {path}")


# ----------------------------------------------------------------- info

@main.command(context_settings=CONTEXT)
def info():
    """Versions, threads, and which mixed-op kernels are built and active."""
    import platform

    import torch

    from . import __version__
    from .ops import kernel_status

    click.echo(f"nasdeploy {__version__}  python {platform.python_version()}  torch {torch.__version__}")
    try:
        import onnxruntime as ort

        click.echo(f"onnxruntime {ort.__version__}  providers: {', '.join(ort.get_available_providers())}")
    except ImportError:
        click.echo("onnxruntime: not installed")
    click.echo(f"torch threads: {torch.get_num_threads()}  cuda available: {torch.cuda.is_available()}")
    for k, v in kernel_status().items():
        click.echo(f"{k}: {v}")


if __name__ == "__main__":  # pragma: no cover
    main()
