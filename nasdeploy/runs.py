"""The run directory as the source of truth: stage records, staleness, and the run summary.

Every finished stage writes ``RUN/<stage>/stage.json``: the configuration it
consumed, the SHA-256 of the files it read and of the files it wrote. From
those alone a later call can tell whether a stage is finished and still up to
date, and if not, say why (``stale_reason``). ``RUN/summary.json`` and
``RUN/report.md`` carry the headline figures of every stage that has finished;
each stage rewrites them from the files (never from memory), so they cannot
disagree with the artifacts.
"""

from __future__ import annotations

import dataclasses
import datetime
import platform
from pathlib import Path
from typing import Any

from .artifacts import RunDir, atomic_write, file_sha256, read_json, write_json
from .config import RunConfig
from .version import __version__

STAGES = ("search", "train", "export", "profile")
RECORD = "stage.json"

# Settings that change how fast a stage runs, not what it produces: they never make a stage stale.
_NOT_CONSUMED = {
    "search": ("threads", "device", "kernel", "conv_path", "max_seconds"),
    "train": ("threads", "device"),
    "export": ("triton_repo", "model_name", "triton_variant", "triton_gpu", "max_batch_size"),
    "profile": (),
}
# What each stage reads, relative to the run root (its own inputs; the config is separate).
_INPUTS = {"search": (), "train": ("search/genotype.json",), "export": ("train/model.pt",),
           "profile": ("export/model.onnx",)}
_OUTPUTS = {"search": ("search/genotype.json",), "train": ("train/model.pt",),
            "export": ("export/model.onnx", "export/export.json"), "profile": ("profile/latency.json",)}


def _section(obj, ignore=()) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(obj).items() if k not in ignore}


def consumed_config(cfg: RunConfig, stage: str) -> dict[str, dict]:
    """The configuration ``stage`` depends on, by section (what a change of makes it stale)."""
    ignore = _NOT_CONSUMED[stage]
    if stage == "search":
        out = {"data": _section(cfg.data), "search": _section(cfg.search, ignore)}
        if cfg.search.latency_target is not None:  # the budget is about the deployed network
            out["train"] = {k: getattr(cfg.train, k) for k in ("C", "layers", "stem")}
        return out
    if stage == "train":
        return {"data": _section(cfg.data), "train": _section(cfg.train, ignore)}
    return {stage: _section(getattr(cfg, stage), ignore)}


def stage_dir(run: RunDir, stage: str) -> Path:
    return run.root / stage


def read_record(run: RunDir, stage: str) -> dict | None:
    p = stage_dir(run, stage) / RECORD
    return read_json(p, f"{stage} record") if p.is_file() else None


def _digests(run: RunDir, rels) -> dict[str, str | None]:
    return {r: file_sha256(run.root / r) if (run.root / r).is_file() else None for r in rels}


def record_stage(run: RunDir, stage: str, cfg: RunConfig, seconds: float, inputs: dict[str, str] | None = None,
                 figures: dict | None = None) -> dict:
    """Mark ``stage`` finished: what it consumed and produced (hashes), how long it took."""
    rec = {
        "stage": stage,
        "config": consumed_config(cfg, stage),
        "inputs": {**_digests(run, _INPUTS[stage]), **(inputs or {})},
        "outputs": _digests(run, _OUTPUTS[stage]),
        "seconds": seconds,
        "finished": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "version": __version__,
        **({"figures": figures} if figures else {}),
    }
    write_json(stage_dir(run, stage) / RECORD, rec)
    return rec


def is_finished(run: RunDir, stage: str) -> bool:
    """A stage record exists, or (runs made before records) the stage's outputs do."""
    return read_record(run, stage) is not None or all((run.root / r).is_file() for r in _OUTPUTS[stage])


def stale_reason(run: RunDir, stage: str, cfg: RunConfig, inputs: dict[str, str] | None = None) -> str | None:
    """None when ``stage`` finished and nothing it consumed changed since; else why it must run."""
    rec = read_record(run, stage)
    if rec is None:
        return "not run yet"
    for rel, digest in rec["outputs"].items():
        p = run.root / rel
        if not p.is_file():
            return f"{rel} is missing"
        if digest is not None and file_sha256(p) != digest:
            return f"{rel} was changed after {stage} wrote it"
    now_inputs = {**_digests(run, _INPUTS[stage]), **(inputs or {})}
    for rel in sorted(set(now_inputs) | set(rec["inputs"])):  # an input given by hand counts as a change
        if rec["inputs"].get(rel) != now_inputs.get(rel):
            return f"{rel} changed since {stage} ran"
    old, new = rec["config"], consumed_config(cfg, stage)
    for section in sorted(set(old) | set(new)):
        a, b = old.get(section, {}), new.get(section, {})
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                return f"config {section}.{key} changed ({a.get(key)!r} -> {b.get(key)!r})"
    return None


# ----------------------------------------------------------------- the run summary

def summarize(run: RunDir) -> dict:
    """The headline figures of every finished stage, read from the run's files."""
    root = run.root
    out: dict[str, Any] = {"run": str(root), "stages": {}, "versions": _versions()}
    if (root / "config.toml").is_file():
        from .config import load_config_file

        cfg = load_config_file(root / "config.toml")
        out["dataset"] = cfg.data.dataset
        out["split_seed"] = cfg.data.split_seed
    for stage in STAGES:
        rec = read_record(run, stage)
        if rec is not None:
            out["stages"][stage] = {"seconds": rec["seconds"], "finished": rec["finished"]}
    if run.genotype.is_file():
        from .space.genotype import Genotype

        out["genotype"] = Genotype.load(run.genotype).to_dict()
    search_summary = run.search / "summary.json"
    if search_summary.is_file():
        s = read_json(search_summary)
        out["search"] = {k: s[k] for k in ("strategy", "val_acc", "epochs", "stopped_by") if k in s}
        if "latency" in s:
            out["latency_budget"] = s["latency"]
    train_rec = read_record(run, "train")
    if train_rec is not None and "figures" in train_rec:
        out["train"] = train_rec["figures"]
    if run.export_report.is_file():
        e = read_json(run.export_report, "export report")
        out["export"] = {"onnx": str(run.onnx), "onnx_bytes": e["file"]["size_bytes"], "opset": e["opset"],
                         "sha256": e["file"]["sha256"], "parity_max_abs_diff": e["parity"]["max_abs_diff"],
                         "parity_inputs": e["parity"]["inputs"], "variants": sorted(e.get("variants", {}))}
    if run.latency_json.is_file():
        lat = read_json(run.latency_json, "latency report")
        cfg_p = lat.get("config", {})
        p50 = {"fp32": {str(b["batch_size"]): b["ort"]["p50_ms"] for b in lat.get("batches", [])}}
        variants = run.profile / "variants.json"
        if variants.is_file():
            for batch, row in read_json(variants).get("batches", {}).items():
                for name, v in row.items():
                    if name != "fp32":  # fp32 is the profile's own figure above
                        p50.setdefault(name, {})[str(batch)] = v["p50_ms"]
        out["latency"] = {"p50_ms": p50, "threads": cfg_p.get("threads"), "provider": cfg_p.get("provider"),
                          "cpu": lat.get("fingerprint", {}).get("cpu")}
        if "latency_budget" in out:  # the measured verdict: the served model's p50 against the budget
            b = out["latency_budget"]
            batch = str(b.get("batch", 1))
            measured = p50["fp32"].get(batch)
            same = (b.get("threads") in (None, cfg_p.get("threads"))
                    and b.get("cpu") in (None, lat.get("fingerprint", {}).get("cpu")))
            if measured is not None and b.get("target_ms") and not same:  # another machine's or thread count's budget
                b["profile_verdict"] = (f"not comparable: profiled at {cfg_p.get('threads')} thread(s) on "
                                        f"{lat.get('fingerprint', {}).get('cpu')}, budget for {b.get('threads')} "
                                        f"on {b.get('cpu')}")
            elif measured is not None and b.get("target_ms"):
                b["profile_p50_ms"] = measured
                b["profile_within_budget"] = measured <= b["target_ms"]
    return out


def _versions() -> dict:
    import importlib.metadata as md

    v = {"nasdeploy": __version__, "python": platform.python_version()}
    for pkg in ("torch", "onnx", "onnxruntime"):
        try:
            v[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            v[pkg] = None
    return v


# One report line per stage section of summary.json.
_STAGE_BULLETS = {
    "search": lambda x: (f"search: {x.get('strategy')}, {x.get('epochs')} epochs, supernet val accuracy "
                         f"{x.get('val_acc', float('nan')):.4f}"),
    "train": lambda t: (f"**test accuracy {t['test_acc']:.4f}** (best val {t['best_val_acc']:.4f}), "
                        f"{t['n_params']:,} weights, {t['mult_adds'] / 1e6:.2f} M multiply-adds per image"),
    "export": lambda e: (f"ONNX: `{e['onnx']}` ({(e['onnx_bytes'] or 0) / 1e6:.2f} MB, opset {e['opset']}, parity "
                         f"max abs diff {e['parity_max_abs_diff']:.1e})"),
}


def render_report(s: dict) -> str:
    """``report.md``: the summary for people."""
    lines = [f"# nasdeploy run `{s['run']}`", ""]
    if "dataset" in s:
        lines += [f"- dataset: `{s['dataset']}` (split seed {s.get('split_seed')})"]
    lines += [f"- {bullet(s[key])}" for key, bullet in _STAGE_BULLETS.items() if key in s]
    if "latency_budget" in s:
        b = s["latency_budget"]
        verdict = b.get("profile_within_budget")
        searched = (f"search: predicted {b['deployed_predicted_ms']:.4f} ms, measured "
                    f"{b['measured_p50_ms']:.4f} ms (median fresh-process p50), "
                    f"{len(b.get('repairs', []))} repair(s); "
                    if b.get("measured_p50_ms") is not None else "")
        lines += [f"- latency budget {b.get('target_ms')} ms: {searched}"
                  + (b.get("profile_verdict", "no profile yet") if verdict is None else
                     f"profiled p50 {b['profile_p50_ms']:.4f} ms, {'within' if verdict else 'OVER'} budget")]
    if "latency" in s:
        lat = s["latency"]
        batches = sorted({b for v in lat["p50_ms"].values() for b in v}, key=int)
        lines += ["", f"ONNX Runtime p50 (ms), {lat.get('provider')}, {lat.get('threads')} thread(s), "
                      f"{lat.get('cpu')}:", "",
                  "| variant | " + " | ".join(f"batch {b}" for b in batches) + " |",
                  "|---|" + "---|" * len(batches)]
        for name, row in lat["p50_ms"].items():
            lines.append(f"| {name} | " + " | ".join(f"{row[b]:.4f}" if b in row else "–" for b in batches) + " |")
    if s.get("genotype"):
        g = s["genotype"]
        lines += ["", "Genotype:", "", "```", f"normal: {g['normal']}  concat {g['normal_concat']}",
                  f"reduce: {g['reduce']}  concat {g['reduce_concat']}", "```"]
    if s["stages"]:
        lines += ["", "| stage | seconds | finished |", "|---|---|---|"]
        lines += [f"| {k} | {v['seconds']:.1f} | {v['finished']} |" for k, v in s["stages"].items()]
    v = s["versions"]
    lines += ["", "versions: " + ", ".join(f"{k} {x}" for k, x in v.items() if x)]
    return "\n".join(lines) + "\n"


def update_summary(run: RunDir) -> dict:
    """Rewrite ``summary.json`` and ``report.md`` at the run root from the run's files."""
    s = summarize(run)
    write_json(run.root / "summary.json", s)
    atomic_write(run.root / "report.md", render_report(s))
    return s
