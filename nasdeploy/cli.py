"""The ``nasdeploy`` command line: one thin command per API function.

Commands parse options, call the API and print; every option defaults to None
so that a flag beats the config file, which beats the preset and the defaults.
Errors of ours print one ``Error:`` line and exit 1 (``--debug`` for the traceback).
"""

from __future__ import annotations

import os
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
        except KeyboardInterrupt as e:
            from .distributed import Interrupted

            if isinstance(e, Interrupted):  # a loop saved a mid-epoch checkpoint and says where
                click.echo(f"Interrupted: {e}", err=True)
                sys.exit(128 + e.signum)  # 130 for SIGINT, 143 for SIGTERM
            click.echo("Interrupted — finished epochs are checkpointed; re-run with --resume to continue.", err=True)
            sys.exit(130)
        except (NasdeployError, OSError, MemoryError) as e:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            msg = str(e) if isinstance(e, NasdeployError) else f"{type(e).__name__}: {e}"
            click.echo(f"Error: {msg}", err=True)
            sys.exit(1)


def _one_line_warnings() -> None:
    """nasdeploy's own warnings (collapse, busy machine, ...) as one "Warning: ..." line on stderr,
    without Python's file:line header and source line; other libraries' warnings as they come."""
    import warnings

    plain = warnings.showwarning
    if getattr(plain, "_nasdeploy", False):
        return

    def show(message, category, filename, lineno, file=None, line=None):
        if category.__module__.startswith("nasdeploy"):
            click.echo(f"Warning: {message}", err=True)
        else:
            plain(message, category, filename, lineno, file, line)

    show._nasdeploy = True
    warnings.showwarning = show


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
    if not debug:
        _one_line_warnings()
    if os.environ.get("RANK", "0") != "0":  # under torchrun rank 0 alone reports; errors still reach stderr
        sys.stdout = open(os.devnull, "w")  # for the life of this worker process


# ----------------------------------------------------------------- shared options

def _config_options(f):
    f = click.option("--preset", type=click.Choice(["paper", "quick", "tiny"]), default=None,
                     help="Named settings: paper (published defaults), quick (digits in minutes), tiny (tests).")(f)
    f = click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
                     help="TOML file with [data] [search] [train] [export] [profile] sections.")(f)
    return f


def _stage_options(checkpoint: str, overwrite: str):
    """--resume, --overwrite, --quiet and the config options of a stage that checkpoints."""
    def deco(f):
        f = _config_options(f)
        f = click.option("--quiet", is_flag=True, help="No progress bar.")(f)
        f = click.option("--overwrite", is_flag=True, help=overwrite[0].upper() + overwrite[1:] + ".")(f)
        return click.option("--resume", is_flag=True, help=f"Continue from {checkpoint}.")(f)
    return deco


def _data_options(f):
    f = click.option("--dataset", default=None,
                     help="digits (embedded), fashion-mnist (Debian package), an MNIST-layout IDX dir, "
                          "a CIFAR-10 python dir, an image folder, or a .npz with x, y.")(f)
    return f


def _deploy_options(f):
    """The served network's size, named alike in search, latency-table and latency-kit ([train] C, layers)."""
    f = click.option("--deploy-layers", type=int, default=None, help="Cells of the deployed network ([train] layers).",
                     )(f)
    f = click.option("--deploy-channels", type=int, default=None,
                     help="Initial channels of the deployed network ([train] C); --channels is the supernet's.")(f)
    return f


def _serving_options(f):
    """How the deployed network is served ([search] latency_*), for latency-table and latency-kit."""
    for opt in reversed((
        click.option("--nodes", "steps", type=int, default=None, help="Intermediate nodes per cell ([search] steps)."),
        click.option("--batch", "latency_batch", type=int, default=None, help="Batch size served (1)."),
        click.option("--threads", "latency_threads", type=int, default=None, help="ORT intra-op threads (1)."),
        click.option("--opt-level", "latency_opt_level", type=click.Choice(["all", "extended", "basic", "disable"]),
                     default=None, help="ORT graph optimization level (all)."),
        click.option("--calibrate", "latency_calibration", type=int, default=None,
                     help="Random whole networks timed to calibrate the sum (24)."),
    )):
        f = opt(f)
    return f


def _load(config_path, preset, overrides):
    from .config import load_config

    return load_config(config_path, preset, overrides)


# ----------------------------------------------------------------- search

@main.command(context_settings=CONTEXT)
@_data_options
@click.option("--out", type=click.Path(file_okay=False), default="runs/search", show_default=True,
              help="Run directory; artifacts go to OUT/search/.")
@click.option("--strategy", type=click.Choice(["darts", "random", "evolution", "rl"]), default=None,
              help="darts (gradient), random (random search, shared weights), evolution (aging evolution), "
                   "rl (REINFORCE controller, ENAS-style); default darts. See docs/strategies.md.")
@click.option("--candidates", type=int, default=None,
              help="Budget: architectures scored with inherited weights (random/evolution/rl; 1000).")
@click.option("--max-seconds", type=float, default=None,
              help="Budget: wall time of the search in seconds, checked at epoch/candidate boundaries.")
@click.option("--skip-limit", type=int, default=None,
              help="DARTS collapse remedy (P-DARTS): at most this many skip connections in the normal cell.")
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
@click.option("--warmup-epochs", type=int, default=None, help="First epochs train weights only, alpha frozen (0).")
@click.option("--seed", type=int, default=None, help="Random seed (CPU runs are deterministic per seed).")
@click.option("--device", default=None, help="cpu, cuda, cuda:1 ...")
@click.option("--kernel", type=click.Choice(["auto", "fused", "reference"]), default=None,
              help="Mixed-op implementation (default auto: fused when built).")
@click.option("--conv-path", type=click.Choice(["native", "kernel"]), default=None,
              help="Fused kernel's conv candidates: native (oneDNN, default) or kernel (csrc/, least memory).")
@click.option("--partial-channels", type=int, default=None,
              help="PC-DARTS: 1/K of each edge's channels through the candidates, edge normalization (1 = off).")
@click.option("--threads", type=int, default=None, help="torch intra-op threads.")
@click.option("--latency-target", type=float, default=None,
              help="Budget in ms: the deployed network's measured ORT p50 ([train] C/layers, batch 1, 1 thread) "
                   "must be <= it; checked and repaired after the search; refused outside the measured range.")
@click.option("--latency-weight", type=float, default=None,
              help="Weight of the budget penalty (steep above 0.95*target, 1/4 as steep below; default 0.1).")
@click.option("--latency-table", type=click.Path(dir_okay=False), default=None,
              help="Latency table JSON: this machine's (default: the per-machine cache, `nasdeploy latency-table`) "
                   "or the serving machine's (`nasdeploy latency-kit`).")
@_deploy_options
@_stage_options("OUT/search/supernet.pt", "search again where a search finished, or in an OUT of another run")
def search(dataset, out, config_path, preset, resume, overwrite, quiet, order, deploy_channels, deploy_layers,
           **opts):
    """Search (DARTS or a black-box strategy); write OUT/search/{genotype.json, metrics.jsonl, supernet.pt, ...}.

    \b
    Example:
      nasdeploy search --dataset digits --preset quick --out runs/demo
    """
    from .stages import load_data, resolve_config
    from .stages import search as run_search

    opts["order"] = int(order) if order else None
    cfg = resolve_config(out, config_path, preset, {"data": {"dataset": dataset}, "search": opts,
                                                    "train": {"C": deploy_channels, "layers": deploy_layers}},
                         "search")
    data = load_data(cfg)
    click.echo(f"data: {data.summary()}", err=True)
    t0 = time.perf_counter()
    res = run_search(cfg, out, data=data, progress=not quiet, resume=resume, overwrite=overwrite)
    _print_genotype(res.genotype)
    click.echo(f"val accuracy (supernet): {res.val_acc:.4f}   time: {time.perf_counter() - t0:.1f}s")
    budget = Path(out) / "search" / "latency_budget.json"
    if cfg.search.latency_target is not None and budget.is_file():
        import json

        b = json.loads(budget.read_text(encoding="utf-8"))
        measured = (f"fresh-process p50 {b['measured_p50_ms']:.4f} ms ({b['verdict']} budget, {len(b['repairs'])} "
                    f"repair(s))" if b.get("measured_p50_ms") is not None else b.get("note", b["verdict"]))
        click.echo(f"latency budget {b['target_ms']:g} ms: predicted {b['deployed_predicted_ms']:.4f} ms, {measured}")
    click.echo(f"genotype: {Path(out) / 'search' / 'genotype.json'}   run summary: {Path(out) / 'summary.json'}")
    click.echo(f"pictures: {Path(out) / 'search'}/{{cells_normal,cells_reduce}}.{{png,svg}}, alphas.png, curves.png")


# ----------------------------------------------------------------- latency-table

@main.command("latency-table", context_settings=CONTEXT)
@_data_options
@click.option("--table", "table_path", type=click.Path(dir_okay=False), default=None,
              help="Table JSON (default: $NASDEPLOY_CACHE or ~/.cache/nasdeploy, latency/<fingerprint>.json).")
@_deploy_options
@_serving_options
@click.option("--quiet", is_flag=True, help="No progress bar.")
@_config_options
def latency_table(dataset, table_path, deploy_channels, deploy_layers, steps, quiet, config_path, preset, **opts):
    """Time the latency table of the deployed network (only what the cached table lacks).

    \b
    Example:
      nasdeploy latency-table --preset quick --deploy-channels 16 --deploy-layers 8
    """
    from .latency.model import achievable_range
    from .latency.table import LatencyTable, ort_timer

    cfg, spec = _deploy_spec(dataset, config_path, preset, deploy_channels, deploy_layers, steps,
                             {**opts, "latency_table": table_path})
    s = cfg.search
    t0 = time.perf_counter()
    table = LatencyTable.load_or_measure(spec, s.latency_table, threads=s.latency_threads,
                                         opt_level=s.latency_opt_level, calibrate=s.latency_calibration,
                                         timer=ort_timer(s.latency_threads, s.latency_opt_level),
                                         progress=not quiet)
    lo, hi = achievable_range(table.costs(spec))
    cal = table.calibration.get(spec.key(), {})
    click.echo(f"deployed network: {spec.key()}  fingerprint {table.fingerprint['id']}")
    click.echo(f"achievable range (predicted ORT p50): {lo:.4f}–{hi:.4f} ms")
    if cal.get("scale") is not None:
        corr = cal.get("corrections_ms") or {}
        loo = cal.get("loo_median_abs_pct")
        click.echo(f"calibration: p50 = {cal['offset_ms']:.4f} ms + {cal['scale']:.3f} x table sum"
                   + (f" + ridge corrections of {len(corr)} entries" if corr else "")
                   + f" ({len(cal['networks'])} networks, median error {cal['fit_median_abs_pct']:.1f}% in the fit"
                   + (f", {loo:.1f}% left out" if loo is not None else "") + ")")
    click.echo(f"table: {table.path}   time: {time.perf_counter() - t0:.1f}s")


# ----------------------------------------------------------------- latency-kit

@main.command("latency-kit", context_settings=CONTEXT)
@_data_options
@click.option("--out", type=click.Path(file_okay=False), required=True, help="Kit folder.")
@_deploy_options
@_serving_options
@_config_options
def latency_kit(dataset, out, deploy_channels, deploy_layers, steps, config_path, preset, **opts):
    """Write the latency kit of the deployed network: ONNX pieces, manifest, one runner (numpy + onnxruntime).

    \b
    Example:
      nasdeploy latency-kit --preset quick --out kit
      python kit/run_latency_kit.py --threads 4        # on the serving machine -> kit/table-<id>.json
      nasdeploy search --preset quick --latency-table kit/table-<id>.json --latency-target 0.2
    """
    from .latency.kit import write_kit

    cfg, spec = _deploy_spec(dataset, config_path, preset, deploy_channels, deploy_layers, steps, opts)
    s = cfg.search
    t0 = time.perf_counter()
    runner = write_kit(spec, out, calibrate=s.latency_calibration, threads=s.latency_threads,
                       opt_level=s.latency_opt_level, opset=cfg.export.opset)
    click.echo(f"deployed network: {spec.key()}   kit: {Path(out)} ({time.perf_counter() - t0:.0f}s)")
    click.echo(f"on the serving machine: python {runner} [--threads N] [--provider P]   (needs numpy, onnxruntime)")


def _deploy_spec(dataset, config_path, preset, deploy_channels, deploy_layers, steps, search_opts):
    """(config, DeploySpec) of the served network, from the same settings `search` reads."""
    from .latency.table import DeploySpec
    from .stages import load_data

    cfg = _load(config_path, preset, {"data": {"dataset": dataset}, "search": {**search_opts, "steps": steps},
                                      "train": {"C": deploy_channels, "layers": deploy_layers}})
    data = load_data(cfg)
    return cfg, DeploySpec.from_configs(cfg.search, cfg.train, data.spec.input_shape, data.spec.num_classes,
                                        opset=cfg.export.opset)


def _print_genotype(g):
    for kind in ("normal", "reduce"):
        edges, concat = g.cell(kind == "reduce")
        nodes = [f"n{2 + i}=" + "+".join(f"{op}({j})" for op, j in edges[2 * i: 2 * i + 2]) for i in range(g.steps)]
        click.echo(f"{kind:7s} " + "  ".join(nodes) + f"  concat={list(concat)}")


# ----------------------------------------------------------------- show

@main.command(context_settings=CONTEXT)
@click.argument("run_dir", type=click.Path(file_okay=False, exists=True))
def show(run_dir):
    """Print a run's report (every finished stage) and (re)draw the search pictures; refresh summary.json.

    \b
    Example:
      nasdeploy show runs/demo
    """
    from .artifacts import RunDir, read_json
    from .errors import ConfigError
    from .runs import render_report, update_summary

    run = RunDir(run_dir)
    if not any((run.root / stage).is_dir() for stage in ("search", "train", "export", "profile")):
        raise ConfigError(f"{run.genotype} not found: {run.root} holds no stage of a run",
                          "pass a run directory written by nasdeploy (search/genotype.json, train/model.pt, ...)")
    click.echo(render_report(update_summary(run)))
    summary = run.search / "summary.json"
    if summary.exists():
        s = read_json(summary)
        extra = f"   scored {s['candidates_scored']}" if "candidates_scored" in s else ""
        click.echo(f"strategy {s['strategy']}   val accuracy {s['val_acc']:.4f}   {s['seconds']:.1f}s   "
                   f"stopped by {s['stopped_by']}{extra}")
    if run.genotype.exists():
        from .space.genotype import Genotype
        from .viz import render_search

        _print_genotype(Genotype.load(run.genotype))
        for name, path in render_search(run.root).items():
            click.echo(f"{name:17s} {path}")
    click.echo(f"{'summary':17s} {run.root / 'summary.json'}")
    click.echo(f"{'report':17s} {run.root / 'report.md'}")


# ----------------------------------------------------------------- train

@main.command(context_settings=CONTEXT)
@click.option("--genotype", "genotype_ref", default=None,
              help="genotype.json path or a published name (DARTS_V1, DARTS_V2); default OUT/search/genotype.json.")
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
@_stage_options("OUT/train/last.pt", "train again where OUT/train/model.pt already exists")
def train(genotype_ref, dataset, out, config_path, preset, resume, overwrite, quiet, **opts):
    """Train a genotype from scratch (DARTS evaluation recipe) and write OUT/train/model.pt.

    \b
    Example:
      nasdeploy train --genotype runs/demo/search/genotype.json --dataset digits --out runs/demo
      nasdeploy train --genotype DARTS_V2 --preset quick --out runs/v2
    """
    from .stages import load_data, resolve_config
    from .stages import train as run_train

    cfg = resolve_config(out, config_path, preset, {"data": {"dataset": dataset}, "train": opts}, "train")
    data = load_data(cfg)
    click.echo(f"data: {data.summary()}", err=True)
    res = run_train(cfg, out, genotype=genotype_ref, data=data, progress=not quiet, resume=resume,
                    overwrite=overwrite)
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
@click.option("--variants", callback=_csv, default=None,
              help="Comma-separated files to build beside model.onnx: fp32, ort-basic (ORT BASIC-optimized, "
                   "standard ONNX), int8 (static QDQ, calibrated on training images), fp16 (fp32 I/O). Default fp32.")
@click.option("--calibration-samples", type=int, default=None, help="Training images that calibrate INT8 (256).")
@click.option("--triton-repo", type=click.Path(file_okay=False), default=None,
              help="Also write a Triton model repository: DIR/NAME/config.pbtxt and DIR/NAME/1/model.onnx.")
@click.option("--model-name", default=None, help="Triton model name (default: nasdeploy).")
@click.option("--triton-variant", type=click.Choice(["fp32", "ort-basic", "int8", "fp16"]), default=None,
              help="Which built variant Triton serves (default fp32).")
@click.option("--triton-gpu/--triton-cpu", "triton_gpu", default=None,
              help="Triton instance group on the GPU or the CPU (default CPU).")
@click.option("--max-batch-size", type=int, default=None, help="Triton max_batch_size (64).")
@click.option("--overwrite", is_flag=True, help="Export again where the export already finished.")
@_config_options
def export(checkpoint, out, config_path, preset, overwrite, **opts):
    """Export a trained model.pt to one verified ONNX file (checker, parity, metadata).

    \b
    Example:
      nasdeploy export runs/demo/train/model.pt
    """
    from .stages import export as run_export
    from .stages import resolve_config

    if opts["triton_repo"] is None and (opts["model_name"] or opts["triton_variant"] or opts["triton_gpu"]):
        raise click.UsageError("--model-name/--triton-variant/--triton-gpu need --triton-repo DIR")
    parent = Path(checkpoint).resolve().parent
    run = parent.parent if parent.name == "train" else None
    cfg = resolve_config(run, config_path, preset, {"export": opts}, "export")
    res = run_export(cfg, checkpoint, out=out, overwrite=overwrite)
    rep = res.report
    parity = "  ".join(f"batch {p['batch']}: {p['max_abs_diff']:.2e}" for p in rep.parity)
    click.echo(f"onnx: {rep.onnx}  ({rep.file_size / 1e6:.2f} MB, opset {rep.opset}, {rep.exporter} exporter)")
    click.echo(f"parity max |onnx - torch| ({rep.parity_inputs}): {parity}")
    click.echo(f"batch independence: {rep.batch_independence_max_abs_diff:.2e}   checker: "
               f"{'ok' if rep.checker_ok else 'FAILED'}   sha256: {rep.sha256[:16]}…")
    click.echo(f"report: {rep.report}")
    _print_variants_and_triton(res, cfg.export)


def _print_variants_and_triton(res, export_cfg):
    for name, v in res.variants.items():
        acc = (f"test acc {v['test_accuracy']:.4f} ({100 * v['accuracy_change']:+.2f} pp)"
               if "test_accuracy" in v else "test acc n/a")
        lat = "  ".join(f"b{b} {x['p50_ms']:.3f} ms ({x['ratio_to_fp32']:.2f}x)" for b, x in v["latency"].items())
        click.echo(f"variant {name:9s} {v['file']:22s} {acc}  p50 {lat}")
    if res.triton is not None:
        checked = ("checked against Triton's model-config schema" if res.triton_checked
                   else "not schema-checked: pip install 'nasdeploy[serve]' to check it")
        click.echo(f"triton: {res.triton} ({export_cfg.triton_variant}, {'GPU' if export_cfg.triton_gpu else 'CPU'}, "
                   f"max_batch_size {export_cfg.max_batch_size}; {checked})")


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
@click.option("--variants/--no-variants", "compare_variants", default=None,
              help="Also time every variant beside the model (model.int8.onnx, ...) side by side "
                   "(default: on when there is one).")
@click.option("--overwrite", is_flag=True, help="Profile again where OUT/profile/latency.json exists.")
@_config_options
def profile(onnx_model, out, checkpoint, config_path, preset, overwrite, **opts):
    """Measure ONNX Runtime latency: warm-up, percentiles, throughput, per-op breakdown.

    \b
    Example:
      nasdeploy profile runs/demo/export/model.onnx --batch-sizes 1,8,32 --threads 1
    """
    from .deploy.profile import render_markdown
    from .stages import profile as run_profile
    from .stages import resolve_config

    compare_variants = opts.pop("compare_variants", None)
    parent = Path(onnx_model).resolve().parent
    run = parent.parent if parent.name == "export" else None
    cfg = resolve_config(run, config_path, preset, {"profile": opts}, "profile")
    res = run_profile(cfg, onnx_model, out, checkpoint=checkpoint, variants=compare_variants, overwrite=overwrite)
    click.echo(render_markdown(res.report))
    if res.variants is not None:
        click.echo(res.variants["markdown"])
        click.echo(f"variants: {res.out / 'profile' / 'variants.json'}")
    click.echo(f"report: {res.out / 'profile' / 'latency.json'}")


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
@click.option("--partial-channels", type=int, default=None, help="PC-DARTS K for the search (1 = off).")
@click.option("--fresh", is_flag=True, help="Re-run every stage instead of resuming.")
@click.option("--overwrite", is_flag=True, help="Start over in an OUT that holds a different run.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@_config_options
def pipeline(dataset, out, search_epochs, train_epochs, seed, kernel, threads, partial_channels, fresh, overwrite,
             quiet, config_path, preset):
    """search → train → export → profile into one run directory (default: digits, quick preset).

    Finished stages are skipped, so re-running continues an interrupted pipeline.

    \b
    Example:
      nasdeploy pipeline --out runs/demo
    """
    from .stages import pipeline as run_pipeline
    from .stages import resolve_config

    if preset is None and config_path is None and (overwrite or not (Path(out) / "config.toml").is_file()):
        preset = "quick"  # a new run; an existing one continues with its own config.toml
    overrides = {
        "data": {"dataset": dataset},
        "search": {"epochs": search_epochs, "seed": seed, "kernel": kernel, "threads": threads,
                   "partial_channels": partial_channels},
        "train": {"epochs": train_epochs, "seed": seed, "threads": threads},
    }
    continuing = preset is None and config_path is None and not overwrite
    cfg = resolve_config(out if continuing else None, config_path, preset, overrides)
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
    b = res.summary.get("latency_budget")
    if b:
        verdict = b.get("profile_within_budget")
        click.echo(f"latency budget  {b['target_ms']:g} ms: " + (b.get("profile_verdict", "not profiled")
                   if verdict is None else f"profiled p50 {b['profile_p50_ms']:.4f} ms, "
                   f"{'within' if verdict else 'OVER'} budget"))
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
