"""Convergence verdict, second version: horizon-aware, with the losses and every layer.

The first version (:mod:`pipeline.apps.convergence`) asks whether certified eigenvalues at
1 carry most of a window's amplitude. Each window is fitted from its own first snapshot,
so the pair at 1 carries the current weights and the test reduces to "the weights have
stopped moving relative to their own size" — true of a run that is still slowly
improving, and of one that is stuck. This version asks what the spectrum predicts for the
rest of the budget, and checks it against the losses and every layer (docs "Convergence
verdicts").

For a window ``[a, b)`` (end snapshot ``e = b − 1``) and the ``H`` snapshots left in the
budget after ``e`` (at least the window's width ``W = b − a``: near the budget's end the
question is whether one more window would still move it):

- **remaining motion** of a unit (the whole network, a layer), read two ways
  (``HorizonCriterion.motion``). The default, ``drift``: the window's **net drift** carried
  over the rest of the budget, ``M = v̂ · H`` with ``v̂² = max(D² − S, 0) / (n (n − 1))``
  (``D`` the window's displacement, ``S`` the sum of its ``n`` squared steps:
  :func:`drift_motion`) — displacement beyond what a random walk of the same steps would
  make, so a layer that only jitters under minibatch noise (a random walk, or a
  mean-reverting jitter) has none and a layer moving in a straight line keeps it all. The
  rule before (``sum``, verdict_version 2): the motion the modes predict,
  ``Σ_i |b_i| |λ_i|^{W−1} |λ_i^H − 1|`` over the kept Ritz pairs that can be told from 1
  (``|λ_i − 1| > min(κ_i r_i, δ)``; ``b_i λ_i^{W−1}`` is mode ``i``'s content at ``e``,
  ``|λ_i^H − 1|`` how much of it moves by the end: the bound the freeze option uses,
  :mod:`pipeline.apps.freeze`); it reads minibatch jitter as motion (noise modes inside
  the unit circle carry the jitter's size) and a straight-line drift as none (its pair
  sits at λ = 1). Measured on the tuning and held-out sweeps:
  ``jobs/experiments/verdict_minibatch.py``. Certification is not required either way
  (engine 4 certifies few pairs of a minibatch window);
- **motion so far** ``M_past``: the path from snapshot 0 to ``e`` measured on the windows'
  factors (``‖x_{a_{j+1}} − x_{a_j}‖`` chained over the windows, then ``‖x_e − x_a‖``; exact
  in the factor's coordinates, no pass over the data);
- **predicted remaining loss gain**: a Koopman model of the best-so-far validation loss
  ``m`` with eigenvalues ``{1, ρ}`` (``m_{t+1} = ρ m_t + c``, least squares over the
  window's epochs), ``G = (m_e − c/(1−ρ)) (1 − ρ^{H_ep}) / m_e``; a fit with ``ρ ∉ (0, 1)``
  falls back to the window's linear rate times ``H_ep`` (capped at 1).

- **loss spread**: the validation loss over the window's epochs swings by ``max / min − 1``
  (:func:`loss_spread`); a loss still swinging by more than ``loss_spread`` is a run that
  still moves, whatever its best-so-far says.

A window **holds** when no certified pair grows (``|λ| > 1 + δ``), ``M ≤ motion_tol ·
M_past`` for the whole network, ``≤ layer_tol · M_past`` of the layer for every layer,
``G ≤ loss_tol`` and the loss spread ``≤ loss_spread`` where losses are
stored (without window factors — a stored analysis — the first version's share test
stands in for the motion test). The first version's share at 1 stays in the evidence.
The run's **class**, judged at its last window:

- ``diverging`` — status diverged, a non-finite loss, or a certified ``|λ| > 1 + δ`` in
  one of the last ``k`` windows (before any NaN);
- ``converged`` — ``k`` consecutive windows held (``converged_at``: the end of the first
  of them) and the last window holds, and the run made progress (its best validation
  loss is at most ``stall_ratio`` times its first epoch's) without a training loss that
  rose in most of the last windows;
- ``stalled`` — the last window's losses are flat (``G ≤ loss_tol``) or its weights hold,
  but the run made no progress, its training loss came back up (last window mean > 1.1 ×
  its lowest, and rising in most of the last ``rise_windows`` windows), or a layer never
  moved (a frozen layer);
- ``still_improving`` — everything else.

Without losses (an ingested run) only the weights are judged (``evidence["limitation"]``):
a run that flattened at a bad loss reads as converged.

Pure functions of window results, factors and loss lists: no store, no MLflow.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from . import convergence

RISE = 0.25     # a training loss 25 % above its lowest window mean has come back up
SPREAD_FLOOR = 1e-6   # a val loss a million times below its first epoch's is a fit to rounding

__all__ = ["HorizonCriterion", "path_so_far", "predicted_motion", "drift_motion", "loss_gain", "loss_spread",
           "verdict"]

MOTIONS = ("sum", "vector", "drift", "both")


@dataclass(frozen=True)
class HorizonCriterion:
    """The second version's numbers (fixed on the multiscale tuning sweep: the motion's
    reading, its tolerances and the loss swing by ``jobs/experiments/verdict_minibatch.py``,
    ``loss_tol`` and ``rise_tol`` by ``jobs/experiments/verdict_study.py``)."""

    delta: float = 0.01
    share: float = 0.8
    k: int = 2
    motion_tol: float = 0.1
    layer_tol: float = 0.1
    loss_tol: float = 0.01
    rise_tol: float = 0.25
    stall_ratio: float = 0.5
    rise_windows: int = 5
    residual_tol: float = convergence.RELIABLE_RESIDUAL
    # what a unit's remaining motion is (unit_motion): "sum" (the modes' predicted motion,
    # Σ|b_i|·|λ_i^{W-1}|·|λ_i^H − 1|), "vector" (the norm of the predicted displacement),
    # "drift" (the window's net drift, what its displacement holds beyond a random walk of
    # its steps, times H), "both" (the smaller of "sum" and "drift": motion the modes
    # predict *and* the displacement shows)
    motion: str = "both"
    loss_spread: float | None = 0.2    # a window's val loss may swing by this much (max/min − 1); None: off
    confirm_span: float = 0.5          # k holding windows confirm when their starts span (k − 1)·⌈confirm_span·W⌉

    def __post_init__(self):
        if self.motion not in MOTIONS:
            raise ValueError(f"motion must be one of {', '.join(MOTIONS)}, not {self.motion!r}")

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    def v1(self) -> convergence.Criterion:
        return convergence.Criterion(self.delta, self.share, self.k, self.residual_tol)


# The in-training ``stop:`` rules of the second version (``pipeline.config.policies.StopPolicy``):
# ``v2`` the rule before drift and jitter were told apart (the modes' predicted motion,
# tolerance 0.05, no loss spread, any k consecutive windows confirm: verdict_version 2), ``v3`` the defaults.
RULES = {"v2": HorizonCriterion(motion="sum", motion_tol=0.05, layer_tol=0.05, loss_spread=None, confirm_span=0.0),
         "v3": HorizonCriterion()}


def path_so_far(factors: dict) -> dict:
    """``{(a, b): M_past}``: the path length from the first window's start to each window's
    end, from the windows' factors (``{(a, b): Factor}``, ``C`` of shape ``(k, b − a)``)."""
    out, cum = {}, 0.0
    wins = sorted(factors)
    for j, (a, b) in enumerate(wins):
        C = np.asarray(factors[(a, b)].C, dtype=np.float64)
        out[(a, b)] = cum + float(np.linalg.norm(C[:, -1] - C[:, 0]))
        nxt = wins[j + 1][0] if j + 1 < len(wins) else None
        step = nxt - a if nxt is not None and a < nxt < b else C.shape[1] - 1
        cum += float(np.linalg.norm(C[:, step] - C[:, 0]))
    return out


def predicted_motion(result, horizon: int, residual_tol: float, delta: float = 0.01,
                     factor=None) -> float:
    """``M_pred`` of one :class:`~pipeline.koopman.WindowResult` over ``horizon`` snapshots
    (inf when a pair grows and the horizon is long enough to matter). Every kept pair
    counts except those that cannot be told from 1: ``|λ − 1| ≤ min(κ r, δ)``
    (``residual_tol`` is kept for the signature; certification is not required, see the
    module docstring).

    With the window's ``factor`` (``C``: k × W, the factor the result was cut from) the
    motion is the norm of the predicted displacement, ``‖Σ_i b_i λ_i^{W−1} (λ_i^H − 1) z_i‖``
    (``z_i`` the unit Ritz vectors in the factor's coordinates, which keep norms): the
    modes' contents add as vectors (``HorizonCriterion(motion="vector")``). Without it, the
    sum of their norms ``Σ_i |b_i| |λ_i|^{W−1} |λ_i^H − 1|`` (the default), an upper bound
    that ill-conditioned pairs (nearly parallel Ritz vectors whose amplitudes cancel)
    inflate. The tuning runs chose the sum (``jobs/experiments/verdict_minibatch.py``)."""
    lam = np.asarray(result.eigenvalues, dtype=np.complex128)
    if lam.size == 0 or horizon <= 0:
        return 0.0
    b = np.asarray(result.amplitudes, dtype=np.complex128)
    ok = np.isfinite(lam)
    bound = np.abs(np.asarray(result.conditions if result.conditions is not None else np.ones(lam.size))) \
        * np.asarray(result.residuals, dtype=float)
    moving = ok & (np.abs(lam - 1) > np.minimum(bound, delta))
    W = result.window[1] - result.window[0]
    Z = _ritz_vectors(result, factor) if factor is not None else None
    with np.errstate(over="ignore", invalid="ignore"):
        coef = np.where(moving, b * lam ** (W - 1) * (lam ** int(horizon) - 1), 0.0)
        if Z is not None:
            total = float(np.linalg.norm(Z @ coef)) if np.isfinite(coef).all() else float("inf")
        else:
            total = float(np.nansum(np.abs(coef)))
    return total if math.isfinite(total) else float("inf")


def drift_motion(factor, horizon: int) -> float:
    """The window's net drift carried over ``horizon`` more snapshots: ``v̂ · H`` with
    ``v̂² = max(D² − S, 0) / (n (n − 1))`` — ``D = ‖x_e − x_a‖`` the window's displacement,
    ``S = Σ_t ‖x_{t+1} − x_t‖²`` the sum of its squared steps, ``n = W − 1`` steps (in the
    factor's coordinates, ``C``: k × W, which keep norms).

    For steps ``v + ξ_t`` (a constant drift ``v`` plus zero-mean noise of any covariance,
    uncorrelated in time) ``E[D² − S] = n (n − 1) ‖v‖²``: the noise's share cancels, so a
    layer that only jitters — a random walk (``D² ≈ S``) or a mean-reverting jitter
    (``D² < S``) — has no drift, and a layer moving in a straight line keeps all of its
    displacement. Extrapolated linearly over the rest of the budget: an upper bound for a
    drift that slows. 0 for windows of fewer than 3 snapshots."""
    C = np.asarray(factor.C, dtype=np.float64)
    n = C.shape[1] - 1
    if n < 2 or horizon <= 0:
        return 0.0
    D2 = float(np.sum((C[:, -1] - C[:, 0]) ** 2))
    S = float(np.sum(np.diff(C, axis=1) ** 2))
    return math.sqrt(max(D2 - S, 0.0) / (n * (n - 1))) * int(horizon)


def unit_motion(result, factor, horizon: int, crit: HorizonCriterion, *, modes: float | None = None,
                drift: float | None = None) -> float:
    """The remaining motion of one unit (the whole network or a layer) in one window, as
    ``crit.motion`` reads it (:class:`HorizonCriterion`); needs ``factor`` for ``vector``,
    ``drift`` and ``both`` (without it: the modes' sum). ``modes`` / ``drift``: the
    window's :func:`predicted_motion` (no factor) and :func:`drift_motion` when the caller
    has them already."""
    if crit.motion == "vector":
        return predicted_motion(result, horizon, crit.residual_tol, crit.delta, factor=factor)
    if modes is None:
        modes = predicted_motion(result, horizon, crit.residual_tol, crit.delta)
    if crit.motion == "sum" or factor is None:
        return modes
    d = drift_motion(factor, horizon) if drift is None else drift
    return d if crit.motion == "drift" else min(d, modes)


def loss_spread(val_loss, start_epoch: int, end_epoch: int) -> float | None:
    """How much the validation loss swings over epochs ``(start_epoch, end_epoch]``:
    ``(max − min) / max(min, SPREAD_FLOOR · v_1)`` of its values there (``val_loss[i]`` is
    epoch ``i + 1``, ``v_1`` the first epoch's): ``max / min − 1`` unless the loss has
    fallen a million times below where it started (a fit to rounding, where relative swings
    of 1e-16 losses mean nothing; a floor at 1e-3 suppressed real swings of runs that
    started from a huge loss and made a premature call on the tuning runs). None when the
    losses do not cover the window or are not positive."""
    v = np.asarray([np.nan if x is None else x for x in (list(val_loss) if val_loss is not None else [])], dtype=float)
    seg = v[max(0, int(start_epoch)):min(int(end_epoch), v.size)]
    if seg.size == 0 or not np.isfinite(seg).all() or seg.min() < 0:
        return None
    floor = SPREAD_FLOOR * abs(v[0]) if np.isfinite(v[0]) else 0.0
    den = max(float(seg.min()), floor)
    if den <= 0:
        return None
    return float((seg.max() - seg.min()) / den)


def _ritz_vectors(result, factor):
    """The result's unit Ritz vectors ``(k, r)`` in the factor's coordinates: its DMD again
    on the factor at the verdict cut (:func:`convergence.recut`'s call); None when that does
    not reproduce the result's eigenvalues (a result cut some other way)."""
    from ..koopman import dmd

    a, b = result.window
    r = dmd(factor.C, threshold=convergence.VERDICT_CUT, data_shape=(factor.stop - factor.start, b - a - 1),
            factor_error=float(factor.error))
    lam = np.asarray(result.eigenvalues, dtype=np.complex128)
    if r.eigenvalues.shape != lam.shape or not np.allclose(r.eigenvalues, lam, rtol=1e-9, atol=1e-12):
        return None
    return np.asarray(r.vectors, dtype=np.complex128)


def loss_gain(val_loss, start_epoch: int, end_epoch: int, horizon_epochs: int) -> float | None:
    """``G``: the predicted remaining relative gain of the best-so-far validation loss
    after ``end_epoch`` over ``horizon_epochs`` more epochs, fitted on epochs
    ``(start_epoch, end_epoch]`` (at least 4 of them; ``val_loss[i]`` is epoch ``i + 1``).
    None when the losses do not cover the window."""
    v = np.asarray([np.nan if x is None else x for x in (list(val_loss) if val_loss is not None else [])], dtype=float)
    end = min(int(end_epoch), v.size)
    lo = max(0, min(int(start_epoch), end - 4))
    if end < 2 or not np.isfinite(v[:end]).all():
        return None
    m = np.minimum.accumulate(v[:end])[lo:end]
    me = float(m[-1])
    if horizon_epochs <= 0:
        return 0.0
    if me <= 0:
        return 0.0
    span = float(m[0] - me)
    if span <= 1e-6 * me:
        return 0.0
    x, y = m[:-1], m[1:]
    A = np.stack([x, np.ones_like(x)], axis=1)
    (rho, c), *_ = np.linalg.lstsq(A, y, rcond=None)
    if 0 < rho < 0.999:          # a plateau model; rho ~ 1 is a straight line: its rate
        inf_ = c / (1 - rho)
        g = (me - inf_) * (1 - rho ** horizon_epochs) / me
    else:
        g = span / (m.size - 1) * horizon_epochs / me
    return float(min(max(g, 0.0), 1.0))


def _epoch(i, ep):
    return convergence._epoch(i, ep)


def verdict(spectra, *, factors=None, layer_spectra=None, layer_factors=None,
            metrics=None, snapshot_epochs=None, status=None, budget_snapshots=None,
            budget_epochs=None, crit: HorizonCriterion = HorizonCriterion()) -> dict:
    """The second-version verdict of one run.

    Parameters
    ----------
    spectra : list of WindowResult
        The whole network's verdict spectra (:func:`convergence.verdict_spectra`).
    factors : dict of (int, int) to Factor, optional
        The whole network's window factors (``est.window_factors_["all"]``): the motion
        so far. Without them the horizon test is skipped (``evidence["limitation"]``).
    layer_spectra, layer_factors : dict of str to list / dict, optional
        The same per layer.
    metrics : dict, optional
        The stored metrics (``val_loss``, ``train_loss`` per epoch).
    snapshot_epochs : sequence of int, optional
        Epoch of each snapshot.
    status : str, optional
        The run's status.
    budget_snapshots, budget_epochs : int, optional
        Index of the budget's last snapshot + 1 and the budget's epochs (default: the
        last window's end and its epoch: a finished run's budget).

    Returns
    -------
    dict
        ``class``, ``converged_at`` / ``converged_epoch`` (converged runs only),
        ``online_converged_at`` / ``online_converged_epoch`` (the end of the first window of
        the first confirmed streak of holding windows) and ``online_confirmed_at`` /
        ``online_confirmed_epoch`` (the end of the window that confirms it: where an
        in-training stopper would stop), and ``evidence`` (per window:
        ``window_epochs``, ``predicted_motion``, ``modes_motion``, ``drift_motion``,
        ``motion_so_far``, ``loss_gain``, ``loss_spread``,
        ``holds``, ``layers_moving``; ``frozen_layers``, ``train_loss_rising``,
        ``progress_ratio``, ``reasons``, ``criterion``, ``limitation``).
    """
    rows = sorted(spectra, key=lambda r: (r.window[1], r.window[0]))
    metrics = metrics or {}
    val = list(metrics.get("val_loss") if metrics.get("val_loss") is not None else [])
    train = list(metrics.get("train_loss") if metrics.get("train_loss") is not None else [])
    has_loss = len(val) > 0
    last_snap = budget_snapshots if budget_snapshots is not None else (rows[-1].window[1] if rows else 0)
    past = path_so_far(factors) if factors else {}
    layer_past = {n: path_so_far(f) for n, f in (layer_factors or {}).items() if f}
    layer_rows = {n: {tuple(r.window): r for r in rs} for n, rs in (layer_spectra or {}).items()}
    ev = {"window_epochs": [], "predicted_motion": [], "motion_so_far": [], "loss_gain": [],
          "holds": [], "layers_moving": [], "share_at_1": [], "val_loss_at": [], "train_loss_at": [],
          "loss_spread": [], "modes_motion": [], "drift_motion": [],
          "layer_motion_ratio": {n: [] for n in layer_rows}}
    limits = []
    if not factors:
        limits.append("no window factors (stored spectra): the horizon test on the weights is skipped")
    if not has_loss:
        limits.append("weights only: no loss stored (an ingested run); a run that flattened at a bad "
                      "loss cannot be told from a converged one")
    v1 = crit.v1()
    growing_at = []
    for r in rows:
        a, b = (int(r.window[0]), int(r.window[1]))
        e = b - 1
        H = max(last_snap - 1 - e, b - a)     # at least one more window: the budget's end is no free pass
        c1 = convergence.check_window(r, v1)
        growing_at.append(c1.n_growing > 0)
        wf = (factors or {}).get((a, b))
        modes = predicted_motion(r, H, crit.residual_tol, crit.delta)
        drift = drift_motion(wf, H) if wf is not None else None
        mp = unit_motion(r, wf, H, crit, modes=modes, drift=drift)
        ms = past.get((a, b))
        w_ok = c1.n_growing == 0 and (ms is None or mp <= crit.motion_tol * ms) and \
            (ms is not None or c1.holds)       # no factors: the first version's test stands in
        moving = []
        for name, by_win in layer_rows.items():
            lr = by_win.get((a, b))
            lms = layer_past.get(name, {}).get((a, b))
            if lr is None or lms is None:
                continue
            lmp = unit_motion(lr, (layer_factors or {}).get(name, {}).get((a, b)), H, crit)
            ev["layer_motion_ratio"][name].append(_r(lmp / lms) if lms > 0 else 0.0)
            if lmp > crit.layer_tol * lms:
                moving.append(name)
        ea, ee = _epoch(a, snapshot_epochs), _epoch(e, snapshot_epochs)
        bud_ep = budget_epochs if budget_epochs is not None else _epoch(last_snap - 1, snapshot_epochs)
        g = loss_gain(val, ea, ee, max(bud_ep - ee, ee - ea)) if has_loss else None
        sp = loss_spread(val, ea, ee) if has_loss else None
        l_ok = (g is None or g <= crit.loss_tol) and (crit.loss_spread is None or sp is None or sp <= crit.loss_spread)
        ev["loss_spread"].append(_r(sp))
        ev["modes_motion"].append(_r(modes))
        ev["drift_motion"].append(_r(drift))
        ev["window_epochs"].append(ee)
        ev["val_loss_at"].append(_r(val[ee - 1]) if has_loss and 1 <= ee <= len(val) and val[ee - 1] is not None else None)
        ev["train_loss_at"].append(_r(train[ee - 1]) if 1 <= ee <= len(train) and train[ee - 1] is not None else None)
        ev["predicted_motion"].append(_r(mp))
        ev["motion_so_far"].append(_r(ms))
        ev["loss_gain"].append(_r(g))
        ev["share_at_1"].append(round(c1.share_at_1, 4))
        ev["layers_moving"].append(moving)
        ev["holds"].append(bool(w_ok and not moving and l_ok))
    holds = ev["holds"]
    confirms = _confirmations(rows, holds, crit.k, crit.confirm_span, last_snap)
    first = next((j for j, c in enumerate(confirms) if c is not None), None)
    online = confirms[first] if first is not None else None
    online_at = rows[online].window[1] - 1 if online is not None else None
    confirmed = rows[first].window[1] - 1 if first is not None else None
    # the run's end state
    frozen = sorted(n for n, p in layer_past.items() if p and max(p.values()) == 0.0)
    finite = all(x is not None and math.isfinite(x) for x in val + train)
    rising = _rising(train, [int(x) for x in ev["window_epochs"]], crit.rise_windows, crit.rise_tol) if train else None
    prog = None
    if has_loss and finite and val and val[0] > 0:
        prog = float(min(val) / val[0])
    reasons = []
    last_g = ev["loss_gain"][-1] if rows else None
    if status == "diverged" or not finite or any(growing_at[-crit.k:]):
        cls = "diverging"
        reasons.append("status diverged" if status == "diverged" else
                       "non-finite loss" if not finite else
                       "certified growing eigenvalue (|λ| > 1 + δ) in the last windows")
    else:
        flat = bool(holds and holds[-1])
        no_progress = prog is not None and prog > crit.stall_ratio
        bad = [why for why, hit in (("little progress: best val loss > "
                                     f"{crit.stall_ratio} × first epoch's", no_progress),
                                    ("training loss rose in most of the last windows", bool(rising)),
                                    ("frozen layer(s): " + ", ".join(frozen), bool(frozen))) if hit]
        loss_flat = last_g is not None and last_g <= crit.loss_tol
        weights_flat = bool(rows) and not ev["layers_moving"][-1] and _ratio(ev, -1) <= crit.motion_tol
        if flat and online is not None and not bad:
            cls = "converged"
            reasons.append("the last windows hold: little predicted motion and loss gain left")
        elif bad and (loss_flat or weights_flat or flat):
            cls = "stalled"
            reasons += bad
        else:
            cls = "still_improving"
            reasons.append(_why_not(ev, crit, rows))
    conv_at = online_at if cls == "converged" else None
    ev["class_by_window"] = _classes_by_window(ev, growing_at, val, train, layer_past, rows, crit, confirms)
    if ev["class_by_window"]:
        ev["class_by_window"][-1] = cls        # the last window's is the run's class
    return {
        "class": cls,
        "converged_at": conv_at,
        "converged_epoch": _epoch(conv_at, snapshot_epochs),
        "online_converged_at": online_at,
        "online_converged_epoch": _epoch(online_at, snapshot_epochs),
        "online_confirmed_at": confirmed,
        "online_confirmed_epoch": _epoch(confirmed, snapshot_epochs),
        "class_reason": "; ".join(r for r in reasons if r),
        "evidence": {**ev, "frozen_layers": frozen, "train_loss_rising": rising,
                     "progress_ratio": _r(prog), "criterion": crit.as_dict(),
                     "limitation": "; ".join(limits) or None, "losses": has_loss},
    }


def _confirmations(rows, holds, k, span_frac: float = 0.5, end: int | None = None) -> list:
    """Per window ``j``: the index of the first window of the streak of holding windows that
    ``j`` confirms, or None. A streak confirms once it holds ``k`` windows whose starts span
    at least ``(k − 1) ⌈span_frac · W⌉`` snapshots: ``k`` half-overlapping windows (the
    analysis' auto plan), not ``k`` windows a step apart that share most of their snapshots
    (a monitor fitting every 2 snapshots) — those would confirm one window's noise. At the
    budget's end (a window ending at snapshot ``end``) there is nothing more to confirm with:
    ``k`` windows suffice (the auto plan's last window, moved to end at the run's end)."""
    out, start = [], None
    for j, r in enumerate(rows):
        if not holds[j]:
            start = None
            out.append(None)
            continue
        start = j if start is None else start
        a0, b0 = rows[start].window
        span = int(r.window[0]) - int(a0)
        ok = j - start + 1 >= k and (span >= (k - 1) * math.ceil(span_frac * (b0 - a0)) or
                                     (end is not None and int(r.window[1]) >= end))
        out.append(start if ok else None)
    return out


def _classes_by_window(ev, growing_at, val, train, layer_past, rows, crit, confirms=None) -> list:
    """The class as it read at each window's end, from what was known then (the figures'
    class fractions over training)."""
    out = []
    holds = ev["holds"]
    for j, r in enumerate(rows):
        ee = ev["window_epochs"][j]
        if any(growing_at[max(0, j - crit.k + 1):j + 1]):
            out.append("diverging")
            continue
        seen = [x for x in val[:max(ee, 0)] if x is not None]
        prog = (min(seen) / seen[0]) if seen and seen[0] > 0 and all(map(math.isfinite, seen)) else None
        frozen = any(p and all(v == 0.0 for (a, b), v in p.items() if b <= r.window[1]) and
                     any(b <= r.window[1] for (a, b) in p) for p in layer_past.values())
        rising = _rising(train[:max(ee, 0)], [int(x) for x in ev["window_epochs"][:j + 1]],
                         crit.rise_windows, crit.rise_tol) if train else None
        bad = (prog is not None and prog > crit.stall_ratio) or bool(rising) or frozen
        streak = confirms[j] is not None
        g = ev["loss_gain"][j]
        if streak and not bad:
            out.append("converged")
        elif bad and ((g is not None and g <= crit.loss_tol) or holds[j]):
            out.append("stalled")
        else:
            out.append("still_improving")
    return out


def _ratio(ev, i) -> float:
    mp, ms = ev["predicted_motion"][i], ev["motion_so_far"][i]
    if ms is None:
        return 0.0 if ev["share_at_1"][i] >= 0.8 else math.inf
    if mp is None:
        return math.inf
    return mp / ms if ms > 0 else (0.0 if mp == 0 else math.inf)


def _why_not(ev, crit, rows) -> str:
    if not rows:
        return "no whole-network spectra"
    i = len(rows) - 1
    parts = []
    if ev["motion_so_far"][i] is None:
        if ev["share_at_1"][i] < crit.share:
            parts.append(f"certified share at 1 {ev['share_at_1'][i]:.2f} < {crit.share} (no factors)")
    mp, ms = ev["predicted_motion"][i], ev["motion_so_far"][i]
    if ms is not None and mp is not None and mp > crit.motion_tol * ms:
        parts.append(f"predicted remaining motion ({crit.motion}) {mp:.3g} > {crit.motion_tol} × motion so far {ms:.3g}")
    if ev["layers_moving"][i]:
        parts.append("layers still moving: " + ", ".join(ev["layers_moving"][i]))
    g = ev["loss_gain"][i]
    if g is not None and g > crit.loss_tol:
        parts.append(f"predicted val-loss gain {g:.1%} > {crit.loss_tol:.0%}")
    sp = ev["loss_spread"][i]
    if crit.loss_spread is not None and sp is not None and sp > crit.loss_spread:
        parts.append(f"val loss still swings {sp:.0%} within the window > {crit.loss_spread:.0%}")
    return "; ".join(parts) or (f"no {crit.k} consecutive holding windows whose starts span "
                                f"{crit.confirm_span:g} of a window (the last window holds)")


def _rising(train, window_epochs, n, rise=None) -> bool | None:
    """Whether the training loss came back up: its last window mean is more than ``RISE``
    above its lowest window mean, and it rose from one window to the next in most of the
    last ``n`` window-to-window steps."""
    t = np.asarray(train, dtype=float)
    ends = [min(e, t.size) for e in window_epochs if e >= 1]
    if len(ends) < 3:
        return None
    means, prev = [], 0
    for e in ends:
        seg = t[prev:e] if e > prev else t[max(0, e - 1):e]
        means.append(float(seg.mean()))
        prev = e
    steps = np.diff(means)[-n:]
    up = means[-1] > (1 + (RISE if rise is None else rise)) * min(means)
    return bool(up and (steps > 0).sum() > steps.size / 2)


def _r(x):
    if x is None:
        return None
    x = float(x)
    return round(x, 6) if math.isfinite(x) else None   # JSON has no inf: None = unbounded
