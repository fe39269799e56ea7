"""Checkpoint payloads and the one way back from ``model.pt`` to a network.

``model.pt`` (DESIGN.md): ``{format, genotype, network, state_dict, data, metrics,
train_config, version}``; ``data`` is the DataSpec including the split
(``split_seed``, fractions, dataset fingerprint) so that export, INT8
calibration and profile reload exactly the images the model was trained on.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

from .artifacts import load_checkpoint
from .data import DataSpec
from .errors import CheckpointError, GenotypeError
from .space.genotype import Genotype
from .space.network import Network


def model_payload(model: Network, state_dict: dict, spec: DataSpec, cfg, metrics: dict) -> dict:
    """The ``model.pt`` payload (DESIGN.md checkpoint contract); ``data`` carries the split."""
    return {
        "genotype": model.genotype.to_dict(),
        "network": model.config(),
        "state_dict": state_dict,
        "data": spec.to_dict(),
        "metrics": metrics,
        "train_config": dataclasses.asdict(cfg),
    }


def load_network(path: str | Path) -> tuple[Network, dict]:
    """Rebuild the eval-mode Network from a ``model.pt`` alone.

    Args:
        path: a ``model``-kind checkpoint written by ``train`` (``model.pt`` or ``best.pt``).

    Returns:
        ``(network, payload)``: the network in eval mode on the CPU and the checkpoint dict.

    Raises:
        CheckpointError: missing, foreign or truncated file; a payload without
            its genotype/network/state_dict; or weights that do not fit the
            stored genotype and network configuration.
    """
    payload = load_checkpoint(path, "model")
    missing = [k for k in ("genotype", "network", "state_dict", "data") if k not in payload]
    if missing:
        raise CheckpointError(f"{path}: checkpoint lacks {', '.join(missing)}", "re-run `nasdeploy train`")
    try:
        genotype = Genotype.from_dict(payload["genotype"], source=f"{path} genotype")
    except GenotypeError as e:
        raise CheckpointError(f"{path}: stored genotype is invalid ({e.problem})", "re-run `nasdeploy train`") from None
    try:
        net = Network(genotype, **payload["network"])
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: stored network config is invalid ({e})", "re-run `nasdeploy train`") from None
    try:
        net.load_state_dict(payload["state_dict"], strict=True)
    except RuntimeError as e:
        detail = " ".join(str(e).split())[:200]
        raise CheckpointError(
            f"{path}: state_dict does not match the genotype/network in the checkpoint ({detail})",
            "the file was edited or mixed from two runs; re-run `nasdeploy train`",
        ) from None
    return net.eval(), payload


def checkpoint_data(payload: dict) -> DataSpec:
    """The data spec (with its split) that a ``model.pt`` payload was trained on."""
    return DataSpec.from_dict(payload["data"])


def resume_checkpoint(path: Path, kind: str, resume: bool, mismatch, what: str, epochs_done=None) -> dict | None:
    """The one resume routine of every search strategy and of train.

    Returns the checkpoint to continue from, or None when not resuming. ``--resume`` with nothing
    to resume is an error, and so is a checkpoint of other settings (``mismatch(ck)`` names the
    difference, or returns None). Says on stderr where the run continues from; ``epochs_done(ck)``
    counts the finished epochs (default: ``ck["epoch"]`` is the index of the last finished one).
    """
    if not resume:
        return None
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"cannot resume: nothing to resume, {path} does not exist",
                              "drop --resume to start from scratch, or point --out at the interrupted run")
    ck = load_checkpoint(path, kind)
    problem = mismatch(ck)
    if problem:
        raise CheckpointError(f"cannot resume from {path}: {problem}",
                              "resume with the same settings, or use a new --out directory")
    from .distributed import main_only

    if main_only():
        done = epochs_done(ck) if epochs_done is not None else int(ck["epoch"]) + 1
        partial = ck.get("partial")
        where = (f"epoch {done + 1}, step {partial['step']} (stopped mid-epoch)" if partial
                 else f"epoch {done + 1} (after finished epoch {done})")
        print(f"resuming {what} at {where} from {path}", file=sys.stderr)
    return ck
