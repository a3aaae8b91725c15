"""Outcome labels: what a run did, read from its losses (not from its configuration).

Every verdict study labels runs with :func:`label` and every verdict is scored against
these labels (docs "Convergence verdicts", "Outcome labels"). The rule, on the run's
validation loss per epoch ``v[0..T-1]`` (``v[i]`` after epoch ``i + 1``), its best so far
``m(i) = min(v[:i+1])`` and its best ``B = m(T-1)``:

1. **diverged** — the run's status is ``diverged``, or a loss is non-finite, or the last
   validation loss is more than ``blowup`` (2) times ``B`` *and* above the first epoch's
   (the loss came back up past where it started).
2. **still_improving** — the best so far still dropped by more than ``late_gain`` (2 %)
   over the last ``late_fraction`` (20 %) of the budget: ``m(T_late) > (1 + late_gain) B``
   with ``T_late = ⌈(1 − late_fraction) T⌉ − 1``.
3. **stalled** — flat (not 2.), but far from what comparable runs reach:
   ``B > ref + stall_fraction · (v[0] − ref)`` (``stall_fraction`` 0.25), ``ref`` the best
   ``B`` among the comparable runs (the caller's group: same task and architecture), i.e.
   the run made less than 75 % of the progress the best comparable run made from the same
   starting loss. Without a reference (``ref`` None) no run is stalled.
4. **converged** — flat and near the best: everything else.

A flattened run (converged or stalled) has a **flat epoch**: the first epoch whose best so
far is within ``gain_tol`` (10 %) of the run's best, ``m(i) ≤ (1 + gain_tol) B``. A
convergence verdict at epoch ``e`` is **premature** when ``m(e) > (1 + gain_tol) B``: the
run's validation loss still had more than 10 % to gain (:func:`to_gain`).

Pure functions of loss lists: no store, no MLflow.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

__all__ = ["Rule", "label", "reference", "to_gain", "CLASSES"]

CLASSES = ("converged", "stalled", "still_improving", "diverged")


@dataclass(frozen=True)
class Rule:
    """The labelling rule's numbers (module docstring)."""

    late_fraction: float = 0.2
    late_gain: float = 0.02
    stall_fraction: float = 0.25
    gain_tol: float = 0.10
    blowup: float = 2.0

    def as_dict(self) -> dict:
        return asdict(self)


def _losses(v) -> np.ndarray:
    v = np.asarray([np.nan if x is None else x for x in (list(v) if v is not None else [])], dtype=float)
    if v.ndim != 1:
        raise ValueError(f"losses must be a list of numbers, got shape {v.shape}")
    return v


def best(val_loss) -> float | None:
    """The run's best validation loss (None: no finite loss)."""
    v = _losses(val_loss)
    v = v[np.isfinite(v)]
    return float(v.min()) if v.size else None


def reference(runs_best) -> float | None:
    """The reference a group's runs are judged against: the best of their best losses."""
    vals = [b for b in runs_best if b is not None and math.isfinite(b)]
    return float(min(vals)) if vals else None


def label(val_loss, *, status: str | None = None, ref: float | None = None,
          rule: Rule = Rule()) -> dict:
    """The outcome label of one run.

    Parameters
    ----------
    val_loss : sequence of float, shape (T,)
        Validation loss after each epoch (the store's ``val_loss`` metric).
    status : str, optional
        The run's stored status (``"diverged"`` is diverged whatever its losses).
    ref : float, optional
        The best loss of the comparable runs (:func:`reference`); without it the run is
        converged or still improving, never stalled.

    Returns
    -------
    dict
        ``label`` (one of :data:`CLASSES`), ``best`` (B), ``best_epoch``, ``flat_epoch``
        (converged/stalled: first epoch within ``gain_tol`` of B; else None), ``late_gain``
        (relative drop of the best so far over the last ``late_fraction``), ``progress``
        (``(v[0] − B)/(v[0] − ref)`` when ``ref`` is given), and ``rule``.
    """
    v = _losses(val_loss)
    out = {"label": None, "best": None, "best_epoch": None, "flat_epoch": None,
           "late_gain": None, "progress": None, "rule": rule.as_dict()}
    if status == "diverged" or v.size == 0 or not np.isfinite(v).all():
        out["label"] = "diverged"
        fin = v[np.isfinite(v)]
        out["best"] = float(fin.min()) if fin.size else None
        return out
    m = np.minimum.accumulate(v)
    B = float(m[-1])
    out["best"], out["best_epoch"] = B, int(np.argmin(v)) + 1
    if v[-1] > rule.blowup * B and v[-1] > v[0]:
        out["label"] = "diverged"
        return out
    late = max(0, math.ceil((1 - rule.late_fraction) * v.size) - 1)
    gain = float((m[late] - B) / B) if B > 0 else float(m[late] > B)
    out["late_gain"] = gain
    if gain > rule.late_gain:
        out["label"] = "still_improving"
        return out
    out["flat_epoch"] = int(np.flatnonzero(m <= (1 + rule.gain_tol) * B)[0]) + 1
    if ref is not None and v[0] > ref:
        out["progress"] = float((v[0] - B) / (v[0] - ref))
        if B > ref + rule.stall_fraction * (v[0] - ref):
            out["label"] = "stalled"
            return out
    out["label"] = "converged"
    return out


def to_gain(val_loss, epoch: int) -> float | None:
    """How much the run's validation loss still had to gain after ``epoch`` (1-based, the
    epoch a verdict named): ``m(epoch)/B − 1`` (0: the best was already reached; epoch 0,
    the initial weights, counts as epoch 1). None without finite losses."""
    v = _losses(val_loss)
    if v.size == 0 or not np.isfinite(v).any():
        return None
    v = np.where(np.isfinite(v), v, np.inf)
    m = np.minimum.accumulate(v)
    B = float(m[-1])
    i = min(max(int(epoch), 1), v.size) - 1
    return float(m[i] / B - 1) if B > 0 else float(m[i] > B)
