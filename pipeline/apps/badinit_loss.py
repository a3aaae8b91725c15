"""Bad initializations, third version: the run's own training loss over the epochs its
first ``K`` snapshots span, against the task's chance level and the run's first epoch,
beside the weights' evidence of the second version (:mod:`pipeline.apps.badinit`).

Judged against outcome labels (:mod:`pipeline.apps.outcomes`: bad = the run stalled or
diverged), thresholds fixed on the multiscale tuning sweep
(``jobs/experiments/badinit_outcomes.py``; docs "Bad initializations"). A run is flagged
when its loss sits at the chance level and does not leave it (``"at chance"``), when no
chance level is known and its loss has not fallen since the first epoch (``"loss
plateau"``), or when a loss is not finite; without losses (an ingested run) the verdict is
the second version's, weights only.

:func:`detect_v3` works on arrays (the ``(K, P)`` snapshots and the losses);
:func:`detect_run_v3` on a stored run (rows handed in or read); :func:`chance_level`,
:func:`loss_features` and :func:`loss_marks` are its parts.
"""

from __future__ import annotations

import numpy as np

from .badinit import (DEFAULT_SNAPSHOTS, GAIN_HIGH, GAIN_LOW, MIN_SNAPSHOTS, MOTION_LOW, detect_run, detect_v2,
                      first_snapshots, gain_marks, weight_features)

__all__ = ["detect_v3", "detect_run_v3", "loss_features", "loss_marks", "chance_level", "run_chance",
           "run_losses", "MIN_SNAPSHOTS_V3"]

MIN_SNAPSHOTS_V3 = 3      # two epochs' losses (its weight marks need two snapshots)

# fixed on the multiscale tuning sweep (jobs/experiments/badinit_outcomes.py: the most
# recall at <= 5 % false alarms, then the fewest false alarms, ties to the fewest marks and
# then the middle of the feasible range; the K = 6 fit)
CHANCE_BAND = 0.05    # |loss / chance − 1| at most this: the loss sits at the chance level
RATE_LOW = 0.05       # ... and its last epoch's relative drop is below this: not leaving it
PLATEAU_DROP = 0.05   # no chance level known: the loss fell by less than this since epoch 1
RISE_HIGH = float("inf")   # the last loss above (1 + this) × the window's best: blowing up (off)
STALL_PROGRESS = 0.0  # the loss mode's predicted limit keeps less than this of epoch 1's loss gained (0: off)
MODE_TOL = 0.5        # ... when the one-mode fit of the loss differences is within this relative residual
WEIGHTS = False       # whether the second version's weight marks also flag when a loss is known


def chance_level(loss: str | None, *, n_classes: int | None = None, targets=None) -> float | None:
    """The loss of a predictor that ignores its input (the best constant one): ``log(C)``
    for cross-entropy over ``C`` classes (a uniform prediction), the variance of the
    targets (mean over outputs) for MSE; None otherwise or when what it needs is missing.

    ``targets``: the training targets, ``(n,)`` or ``(n, out)`` (MSE only)."""
    if loss == "cross_entropy" and n_classes and n_classes > 1:
        return float(np.log(n_classes))
    if loss == "mse" and targets is not None:
        y = np.asarray(targets, dtype=np.float64)
        y = y.reshape(len(y), -1)
        return float(y.var(axis=0).mean()) if len(y) > 1 else None
    return None


def loss_features(train_loss, chance: float | None = None) -> dict:
    """Features of the training loss over the first epochs (``train_loss[i]``: the mean
    loss of epoch ``i + 1``; the epochs a detector's ``K`` snapshots span).

    Returns ``{"n", "first", "last", "drop", "rate", "rise", "ratio", "chance", "finite",
    "mode", "mode_residual", "limit", "progress"}``: ``drop`` = (first − last)/|first|
    (against the run's own start), ``rate`` = the last epoch's relative drop
    (L[−2] − L[−1])/|L[−2]|, ``rise`` = last / min − 1 (a loss climbing back), ``ratio`` =
    last / chance (None without a chance level), ``finite`` (every loss finite), and the
    loss window's mode (:func:`_loss_mode`; ``progress`` = (first − limit)/|first|).
    Entries are None when fewer than two finite losses are given.
    """
    L = np.asarray([np.nan if x is None else x for x in (list(train_loss) if train_loss is not None else [])],
                   dtype=float)
    out = {"n": int(L.size), "first": None, "last": None, "drop": None, "rate": None, "rise": None,
           "ratio": None, "chance": None if chance is None else float(chance),
           "mode": None, "mode_residual": None, "limit": None, "progress": None,
           "finite": bool(np.isfinite(L).all())}
    if not out["finite"]:
        return out
    if L.size < 2:
        return out
    first, last, prev = float(L[0]), float(L[-1]), float(L[-2])
    out.update(first=first, last=last,
               drop=(first - last) / abs(first) if first else 0.0,
               rate=(prev - last) / abs(prev) if prev else 0.0,
               rise=last / float(L.min()) - 1.0 if L.min() > 0 else 0.0)
    if chance:
        out["ratio"] = last / float(chance)
    out.update(_loss_mode(L))
    if out["limit"] is not None and first:
        out["progress"] = (first - out["limit"]) / abs(first)
    return out


def _loss_mode(L) -> dict:
    """The loss window's one Koopman mode: the differences ``d_t = L_{t+1} − L_t`` as the
    observable, ``d_{t+1} = λ d_t`` fitted by least squares (the 1 × 1 DMD of the shifted
    differences, i.e. ``L_t = c + a λ^t``), its relative residual, and — for a decaying
    mode, ``0 ≤ λ < 1`` — the limit ``c = L_last + d_last λ/(1 − λ)`` the loss approaches
    if the mode holds. Needs four losses (three differences); None entries otherwise."""
    d = np.diff(np.asarray(L, dtype=float))
    if d.size < 3 or not np.any(d[:-1]):
        return {}
    lam = float(d[1:] @ d[:-1] / (d[:-1] @ d[:-1]))
    nrm = float(np.linalg.norm(d[1:]))
    res = float(np.linalg.norm(d[1:] - lam * d[:-1]) / nrm) if nrm > 0 else 0.0
    out = {"mode": lam, "mode_residual": res}
    if 0.0 <= lam < 1.0:
        out["limit"] = float(L[-1] + d[-1] * lam / (1.0 - lam))
    return out


def loss_marks(f: dict, *, chance_band: float = CHANCE_BAND, rate_low: float = RATE_LOW,
               plateau_drop: float = PLATEAU_DROP, rise_high: float = RISE_HIGH,
               stall_progress: float = STALL_PROGRESS, mode_tol: float = MODE_TOL) -> list[str]:
    """The third version's loss marks on :func:`loss_features` ``f``: ``"at chance"`` (the
    loss within ``chance_band`` of the chance level and its last epoch's drop below
    ``rate_low``), ``"loss plateau"`` (no chance level: the loss fell by less than
    ``plateau_drop`` since the first epoch), ``"predicted stall"`` (the loss window's
    decaying mode, fitted within ``mode_tol``, predicts a limit that keeps less than
    ``stall_progress`` of the first epoch's loss gained; 0: off), ``"loss rising"`` (the last loss more than
    ``rise_high`` above the window's best; a non-finite loss always)."""
    marks = []
    if f.get("finite") is False or (f.get("rise") is not None and f["rise"] > rise_high):
        marks.append("loss rising")
    if f.get("last") is None:
        return marks
    if f.get("ratio") is not None:
        if abs(f["ratio"] - 1.0) <= chance_band and f["rate"] < rate_low:
            marks.append("at chance")
    elif f["drop"] < plateau_drop:
        marks.append("loss plateau")
    if (stall_progress > 0 and f.get("progress") is not None and f["mode_residual"] <= mode_tol
            and f["progress"] < stall_progress):
        marks.append("predicted stall")
    return marks


def detect_v3(Y, layout, lr: float | None = None, *, train_loss=None, chance: float | None = None,
              snapshots: int | None = None, chance_band: float = CHANCE_BAND, rate_low: float = RATE_LOW,
              plateau_drop: float = PLATEAU_DROP, rise_high: float = RISE_HIGH,
              stall_progress: float = STALL_PROGRESS, mode_tol: float = MODE_TOL, weights: bool = WEIGHTS,
              **rule) -> dict:
    """Bad-initialization verdict, third version, from the first ``K`` snapshots ``Y``
    (``(T, P)``, as :func:`detect`) and the training losses of the epochs they span.

    With losses (``train_loss``: one per epoch, the first ``K − 1`` for ``K`` snapshots
    taken every epoch) the run is flagged by :func:`loss_marks` — stuck at the task's
    chance level (``chance``: :func:`chance_level`) or, with no chance level, a loss
    plateau against its own first epoch; the second version's weight marks (gain,
    lr-normalised motion) flag too only with ``weights=True`` (they cost false alarms on
    the tuning sweep). Without losses (an ingested run) it is the second version's
    verdict, weights only, and ``bad_init_basis`` says so.

    Returns the keys of :func:`detect_v2` (``bad_init``, ``bad_init_reasons``, its
    evidence) with ``bad_init_v2`` / ``bad_init_v2_reasons`` (the second version's
    decision), ``loss_features`` (:func:`loss_features`), ``bad_init_basis``
    (``"loss"`` or ``"weights"``), the thresholds, and ``bad_init_version`` 3.
    """
    Y = np.asarray(Y)
    K = int(snapshots) if snapshots is not None else min(Y.shape[0], DEFAULT_SNAPSHOTS)
    if K < MIN_SNAPSHOTS_V3 or Y.ndim != 2 or Y.shape[0] < K:
        raise ValueError(f"the third version needs at least {MIN_SNAPSHOTS_V3} snapshots (K = {K}, "
                         f"Y of shape {Y.shape})")
    if K >= MIN_SNAPSHOTS:
        v2 = detect_v2(Y, layout, lr, snapshots=K, **rule)
    else:   # too few for the first version's DMD marks: the weight features alone
        if not np.isfinite(Y[:K]).all():
            raise ValueError("Y holds non-finite values (a diverged run has no initialization verdict)")
        g = {k: rule.pop(k) for k in ("gain_low", "gain_high", "motion_low") if k in rule}
        wf = weight_features(Y[:K], layout, lr)
        reasons = gain_marks(wf, g.get("gain_low", GAIN_LOW), g.get("gain_high", GAIN_HIGH),
                                g.get("motion_low", MOTION_LOW))
        v2 = {"bad_init": bool(reasons), "bad_init_snapshots": K, "bad_init_reasons": reasons,
              "bad_init_v1": None, "init_features": wf}
    f = loss_features(train_loss, chance)
    th = {"init_chance_band": chance_band, "init_rate_low": rate_low, "init_plateau_drop": plateau_drop,
          "init_rise_high": rise_high if np.isfinite(rise_high) else None, "init_stall_progress": stall_progress, "init_mode_tol": mode_tol,
          "init_weights": bool(weights)}
    out = {**v2, "bad_init_v2": v2["bad_init"], "bad_init_v2_reasons": v2["bad_init_reasons"],
           "loss_features": f, **th, "bad_init_version": 3}
    if f["last"] is None and f["finite"]:
        out.update(bad_init_basis="weights")
        return out
    reasons = loss_marks(f, chance_band=chance_band, rate_low=rate_low, plateau_drop=plateau_drop,
                         rise_high=rise_high, stall_progress=stall_progress, mode_tol=mode_tol)
    if weights:
        reasons += v2["bad_init_reasons"]
    out.update(bad_init=bool(reasons), bad_init_reasons=reasons, bad_init_basis="loss")
    return out


def run_chance(run) -> float | None:
    """The chance level of a stored run: the ``chance_loss`` its training recorded (run
    attribute), else ``log(C)`` for a cross-entropy run (``C``: the size of its output
    layer's last tensor in the layout); None otherwise (an MSE run trained before the
    attribute existed, an ingested run)."""
    attrs = getattr(run, "attrs", None) or {}
    if attrs.get("chance_loss") is not None:
        return float(attrs["chance_loss"])
    cfg = run.config if isinstance(run.config, dict) else {}
    if cfg.get("loss") == "cross_entropy":
        try:
            last = run.layout.entries[-1]
        except Exception:  # noqa: BLE001 - a run without a layout has no chance level here
            return None
        return chance_level("cross_entropy", n_classes=int(last.shape[0]))
    return None


def run_losses(run, snapshots: int) -> list | None:
    """The training losses of the epochs a stored run's first ``snapshots`` snapshots span
    (through the epoch of snapshot ``snapshots − 1``); None when the run has none."""
    try:
        tl = (run.metrics or {}).get("train_loss")
    except Exception:  # noqa: BLE001 - an ingested run may have no metrics
        return None
    if not tl:
        return None
    epochs = list(run.attrs.get("snapshot_epochs") or []) if getattr(run, "attrs", None) else []
    last_epoch = int(epochs[snapshots - 1]) if len(epochs) >= snapshots else snapshots - 1
    return list(tl[:max(last_epoch, 0)])


def detect_run_v3(run, snapshots: int | None = None, *, rows=None, **rule) -> dict:
    """:func:`detect_v3` on a stored run: its first snapshots (``rows``: the ``(K, P)``
    array when the caller already holds it, else read), layout, learning rate, the
    training losses of those epochs (:func:`run_losses`) and its chance level
    (:func:`run_chance`)."""
    n = min(run.n_snapshots, DEFAULT_SNAPSHOTS if snapshots is None else int(snapshots))
    if n < MIN_SNAPSHOTS:
        return {**detect_run(run, snapshots, **rule), "bad_init_version": 3}
    Y = np.asarray(rows)[:n] if rows is not None else first_snapshots(run, n)[0]
    cfg = run.config if isinstance(run.config, dict) else {}
    lr = (cfg.get("optimizer") or {}).get("lr") if isinstance(cfg.get("optimizer"), dict) else cfg.get("lr")
    return detect_v3(Y, run.layout, float(lr) if lr else None, train_loss=run_losses(run, Y.shape[0]),
                     chance=run_chance(run), snapshots=Y.shape[0], **rule)
