"""What the framework callbacks share: which logged metrics are the losses the verdicts
read, and the record of a stop on the spectral verdict. No framework imported here."""

from __future__ import annotations

import math
from collections.abc import Mapping

from ..record import positive_int  # noqa: F401 - the integrations' counting options, checked as the Recorder's

# logged names taken for the verdicts' losses, first found wins (a mapping given to a
# callback's ``losses`` replaces these)
LOSS_NAMES = {
    "train_loss": ("train_loss_epoch", "train_loss", "train/loss", "loss", "training_loss"),
    "val_loss": ("val_loss_epoch", "val_loss", "val/loss", "eval_loss", "valid_loss", "validation_loss"),
}


def scalars(logged: Mapping) -> dict[str, float]:
    """The numbers among ``logged`` (floats, ints, one-element tensors) as floats."""
    out = {}
    for k, v in logged.items():
        try:
            if hasattr(v, "numel") and v.numel() != 1:
                continue
            x = v.item() if hasattr(v, "item") else v
            if isinstance(x, bool) or not isinstance(x, (int, float)):
                continue
            out[str(k)] = float(x)
        except (TypeError, ValueError, RuntimeError):
            continue
    return out


def with_losses(logged: Mapping, losses: Mapping[str, str] | None = None) -> dict[str, float]:
    """``logged`` (numbers only) plus ``train_loss`` / ``val_loss`` taken from the names in
    ``losses`` (``{"train_loss": "my_loss", ...}``), else the first of :data:`LOSS_NAMES`
    found. A name given in ``losses`` that was not logged is simply absent this time."""
    out = scalars(logged)
    for target, names in LOSS_NAMES.items():
        if losses is not None:
            names = (losses[target],) if target in losses else ()
        for name in names:
            if name in out:
                out[target] = out[name]
                break
    return out


def stop_record(verdict: dict, epoch: int, snapshot: int) -> dict:
    """The run attribute ``stop`` (as a sweep's ``stop:`` option writes it; MLflow tags
    ``kma.stop.*``) for training stopped on a ``converged`` verdict."""
    return {"when": "converged", "reason": "converged", "snapshot": int(snapshot), "epoch": int(epoch),
            "converged_at": verdict.get("converged_at"), "converged_epoch": verdict.get("converged_epoch"),
            "by": "spectral verdict (class converged)"}


def verdict_metrics(verdict: dict) -> dict[str, float]:
    """The verdict as numbers a framework's logger takes: ``kma/converged`` (1/0),
    ``kma/converged_epoch`` when converged, ``kma/snapshots``."""
    out = {"kma/converged": float(verdict.get("class") == "converged"),
           "kma/snapshots": float(verdict.get("n_snapshots") or 0)}
    e = verdict.get("converged_epoch")
    if e is not None and math.isfinite(float(e)):
        out["kma/converged_epoch"] = float(e)
    return out


def outside_stop_record(by: str, verdict: dict | None, epoch: int, snapshot: int, spectral: bool = False) -> dict:
    """The run attribute ``stop`` for training ended in a search (Ray Tune, Optuna): by
    the spectral verdict (``spectral``; a ``converged`` one as :func:`stop_record`
    writes it) or by the search itself (a scheduler, another stopper or pruner), with
    the spectral class at the time."""
    v = verdict or {}
    cls = v.get("class")
    if spectral and cls == "converged":
        return {**stop_record(v, epoch, snapshot), "by": f"{by} on the spectral verdict (class converged)"}
    if spectral:
        return {"when": cls, "reason": cls, "by": f"{by} on the spectral verdict (class {cls})",
                "snapshot": int(snapshot), "epoch": int(epoch), "class": cls}
    return {"when": "search", "reason": "stopped by the search", "by": by, "snapshot": int(snapshot),
            "epoch": int(epoch), "class": cls}
