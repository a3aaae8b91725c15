"""Bad initializations, recognised from the first few snapshots of a training run.

The spectral signature (docs/pages/badinit.md): the Koopman/DMD spectrum of the
first ``K`` snapshots ``Y[:K]`` (``K × P``, one window, the whole network and every
layer; the same small-matrix core as every analysis, :class:`pipeline.koopman.KoopmanDMD`
on an in-memory array). A good initialization starts far from the origin, in a generic
(symmetry-free) point: its early trajectory stays close to its starting point in norm
(the dominant Ritz value sits at ``|λ| ≈ 1``, the mode of the initial weights) and moves
in as many directions as the window can hold (every layer's kept rank is ``K - 1``). A
bad one shows one of three marks:

- **growth** — the whole network's dominant Ritz value lies well outside the unit
  circle, ``max |λ| − 1 > growth_tol``: the weights grow geometrically away from a
  starting point near the origin, where gradients vanish (``small_variance``,
  ``zeros`` once the readout bias moves, a ``constant`` init whose symmetric mode
  blows up);
- **frozen layers** — a layer whose trajectory spans at most one direction (kept rank
  ``≤ 1``: it never moves, or only along one line, as a readout whose bias alone
  learns; an all-zero layer has rank 0): no gradient reaches its weights (``zeros``);
- **collapsed layers** — a layer whose trajectory spans at most ``COLLAPSED_RANK``
  directions while the window could hold ``K − 1``, and whose kept Ritz pairs are all
  certified (:meth:`pipeline.koopman.WindowResult.reliable`): its dynamics are confined
  to a tiny invariant subspace, the mark of unbroken symmetry between units
  (``constant``).

What it does not see: a saturating initialization (``large_variance`` on ``tanh``)
whose weights are large and move little, like a good initialization trained with a
small learning rate (docs/pages/badinit.md: the spectrum loses to activation statistics there).

:func:`detect` works on any ``(K, P)`` array; :func:`first_snapshots` reads the first
``K`` snapshots of a stored (trained or ingested) run; :func:`detect_run` does both.
"""

from __future__ import annotations

import logging

import numpy as np
from threadpoolctl import threadpool_limits

from ..koopman import KoopmanDMD

log = logging.getLogger(__name__)

__all__ = ["detect", "detect_run", "detect_v2", "detect_run_v2", "detect_v3", "detect_run_v3", "weight_features",
           "loss_features", "loss_marks", "chance_level", "run_chance", "run_losses", "first_snapshots",
           "DEFAULT_SNAPSHOTS", "GROWTH_TOL",
           "COLLAPSED_RANK", "MIN_SNAPSHOTS"]

DEFAULT_SNAPSHOTS = 6     # K: the initial weights and five epochs (docs/pages/badinit.md)
MIN_SNAPSHOTS = 4         # fewer leave no room to tell a collapsed layer (rank <= 2) from K - 1
MIN_SNAPSHOTS_V3 = 3      # the third version: two epochs' losses (its weight marks need two snapshots)
GROWTH_TOL = 0.05         # max |λ| − 1 of the whole network (chosen on the study's training seeds)
COLLAPSED_RANK = 2        # a layer confined to at most this many directions is collapsed
RESIDUAL_TOL = 1e-2       # = pipeline.config.RELIABLE_RESIDUAL (not imported: apps stay below config)


def detect(Y, groups=None, *, snapshots: int | None = None, growth_tol: float = GROWTH_TOL,
           collapsed_rank: int = COLLAPSED_RANK, residual_tol: float = RESIDUAL_TOL) -> dict:
    """Bad-initialization verdict from the first snapshots of a run.

    Parameters
    ----------
    Y : array_like, shape (T, P)
        Snapshots in order, ``Y[0]`` the initial weights (float32 as stored, or any
        float dtype; the storage dtype's resolution sets the DMD's cut).
    groups : list of (str, int, int), optional
        Layers as column ranges covering ``[0, P)`` (``Layout.layer_ranges()``); without
        them the whole network is one layer.
    snapshots : int, optional
        ``K``: how many leading snapshots to use (default ``min(T, DEFAULT_SNAPSHOTS)``);
        at least :data:`MIN_SNAPSHOTS`.
    growth_tol, collapsed_rank, residual_tol : float, int, float
        The rule's thresholds (module docstring).

    Returns
    -------
    dict
        ``bad_init`` (bool), ``bad_init_snapshots`` (``K``), ``bad_init_reasons``
        (list of ``"growth"``, ``"frozen"``, ``"collapsed"``), and the evidence:
        ``init_growth`` (``max |λ| − 1`` of the whole network), ``init_rank`` (its kept
        rank), ``init_frozen_layers`` / ``init_collapsed_layers`` (layer names),
        ``init_layers`` (per layer: ``rank``, ``max_abs``, ``n_certified``), and the
        thresholds used.
    """
    Y = np.asarray(Y)
    if Y.ndim != 2 or not np.issubdtype(Y.dtype, np.floating):
        raise ValueError(f"Y must be a (snapshots, parameters) float array, got shape {Y.shape} {Y.dtype}")
    K = int(snapshots) if snapshots is not None else min(Y.shape[0], DEFAULT_SNAPSHOTS)
    if K < MIN_SNAPSHOTS:
        raise ValueError(f"bad-init detection needs at least {MIN_SNAPSHOTS} snapshots, got {K}")
    if Y.shape[0] < K:
        raise ValueError(f"Y has {Y.shape[0]} snapshots, fewer than the {K} asked for")
    Y = Y[:K]
    if not np.isfinite(Y).all():
        raise ValueError("Y holds non-finite values (a diverged run has no initialization verdict)")
    groups = list(groups) if groups else [("all", 0, Y.shape[1])]
    per_layer = len(groups) > 1
    # Y is in this process' memory: fit it here (threads), never ship it to a cluster's
    # workers through whatever scheduler is the default (a dask.distributed Client is)
    # the storage dtype's cut (engine 3's default): the rule reads "rank K - 1" as a generic
    # start, which a noise-estimating cut capped at (K-1)/2 would hide
    est = KoopmanDMD(window="all", per_layer=per_layer, scheduler="threads",
                     threshold="storage").fit(Y, groups if per_layer else None)
    layers, frozen, collapsed = {}, [], []
    growth, whole_rank = 0.0, 0
    for r in est.results_:
        lam = np.abs(r.eigenvalues)
        certified = r.reliable(residual_tol)
        # "confined to an invariant subspace" is what the collapsed mark reads: the data
        # residuals alone (engine 4's reliable also asks that a linear map fit, which the
        # symmetric dynamics of a constant init do not, though they never leave the subspace)
        invariant = bool(r.informative) and bool(np.all(
            r.conditions * (r.residuals - (r.misfit_terms if r.misfit_terms is not None else 0.0))
            <= residual_tol))
        info = {"rank": int(r.rank), "max_abs": float(lam.max()) if lam.size else 0.0,
                "dominant_abs": _dominant_modulus(r, K), "n_certified": int(certified.sum())}
        if r.layer == "all":
            growth, whole_rank = info["dominant_abs"] - 1.0, info["rank"]
            if per_layer:
                continue
        layers[r.layer] = info
        if r.rank <= 1:
            frozen.append(r.layer)
        elif r.rank <= collapsed_rank < K - 1 and invariant:
            collapsed.append(r.layer)
    reasons = [name for name, hit in (("growth", growth > growth_tol), ("frozen", bool(frozen)),
                                      ("collapsed", bool(collapsed))) if hit]
    return {
        "bad_init": bool(reasons),
        "bad_init_snapshots": K,
        "bad_init_reasons": reasons,
        "init_growth": float(growth),
        "init_rank": int(whole_rank),
        "init_frozen_layers": frozen,
        "init_collapsed_layers": collapsed,
        "init_layers": layers,
        "init_growth_tol": float(growth_tol),
        "init_collapsed_rank": int(collapsed_rank),
    }


def _dominant_modulus(r, K: int) -> float:
    """``|λ|`` of the Ritz pair that carries most of the window: the largest
    ``|b_i| · (Σ_{t<K} |λ_i|^{2t})^{1/2}`` (amplitude times the mode's norm over the
    ``K`` snapshots), not the largest ``|λ|``, which a weak noise-fitted pair can hold."""
    if r.eigenvalues.size == 0:
        return 0.0
    lam = np.abs(r.eigenvalues)
    t = np.arange(K)[:, None]
    with np.errstate(over="ignore"):
        energy = np.abs(r.amplitudes) * np.sqrt((lam[None, :] ** (2 * t)).sum(axis=0))
    return float(lam[int(np.argmax(energy))])


def first_snapshots(run, snapshots: int | None = None) -> tuple[np.ndarray, list]:
    """The first ``K`` snapshots of a stored run (``pipeline.storage.store.Run``: trained or
    ingested), as an in-memory float32 ``(K, P)`` array, with its layers.

    ``K`` defaults to ``min(n_snapshots, DEFAULT_SNAPSHOTS)``; only the chunks holding those
    rows are read.
    """
    n = run.n_snapshots
    K = min(n, DEFAULT_SNAPSHOTS) if snapshots is None else int(snapshots)
    if K > n:
        raise ValueError(f"run {run.run_id}: {n} snapshots, fewer than the {K} asked for")
    traj = run.trajectory(np.float32, rows=K)
    # read here (threads): the snapshots end in this process' memory anyway; through a
    # cluster's scheduler one worker would hold them all, concatenated, on their way here
    return np.asarray(traj.array.compute(scheduler="threads"), dtype=np.float32), list(traj.groups or [])


def detect_run(run, snapshots: int | None = None, **rule) -> dict:
    """:func:`detect` on the first snapshots of a stored run (keyword ``rule`` as there).

    A run too short for a verdict (fewer than :data:`MIN_SNAPSHOTS` snapshots) is not
    flagged: ``{"bad_init": False, "bad_init_snapshots": n, "bad_init_reasons": [],
    "bad_init_undecided": why}``, so that every run gets a verdict in one call.
    """
    n = run.n_snapshots if snapshots is None else min(int(snapshots), run.n_snapshots)
    if n < MIN_SNAPSHOTS:
        return {"bad_init": False, "bad_init_snapshots": int(n), "bad_init_reasons": [],
                "bad_init_undecided": f"{n} snapshot(s), fewer than the {MIN_SNAPSHOTS} the detector needs"}
    Y, groups = first_snapshots(run, snapshots)
    return detect(Y, groups, snapshots=Y.shape[0], **rule)


# ---------------------------------------------------------------------------------------
# Second version (issue 23): per-layer gain, growth and lr-normalised motion, judged
# against outcome labels (pipeline.apps.outcomes), thresholds fixed on the multiscale
# tuning sweep (jobs/experiments/verdict_study.py).

# fixed on the multiscale tuning sweep (the most recall at <= 5% false alarms against the
# outcome labels; docs "Bad initializations"): frozen/collapsed layers do not flag there
# (constant-initialized MLPs whose layers are collapsed still end converged)
GAIN_LOW = 0.01       # min over weight tensors of std(W0)·√fan_in below this: a start near 0
GAIN_HIGH = 30.0      # max over weight tensors above this: a saturating start
MOTION_LOW = 0.01     # min over layers of RMS change per snapshot / lr below this: not escaping
STRUCTURE = False     # whether the first version's frozen / collapsed layers flag too


def weight_features(Y, layout, lr: float | None = None) -> dict:
    """Data-free per-layer features of the first ``K`` snapshots ``Y`` (``(K, P)``) of a
    run laid out by ``layout`` (:class:`~pipeline.storage.layout.Layout`).

    Returns ``{"gain": {tensor: std(W0)·√fan_in}, "growth": {layer: ‖W_{K−1}‖/‖W_0‖},
    "motion": {layer: RMS change per snapshot (÷ lr when given)}, "gain_min", "gain_max",
    "motion_min", "growth_max"}`` — weight tensors (ndim ≥ 2; fan_in = the product of the
    trailing dimensions) for the gain, every layer for growth and motion.
    """
    # one BLAS thread: the norms are of one layer's slice (10^5-10^6 values), which a
    # multithreaded OpenBLAS dot splits across every core; on a loaded machine its
    # threads wait for cores (0.35 s of a 1 GB analysis at load 13, 0.06 s with one),
    # and one thread gives the same sum whatever the core count
    with threadpool_limits(limits=1, user_api="blas"):
        return _weight_features(Y, layout, lr)


def _weight_features(Y, layout, lr):
    Y = np.asarray(Y)
    K = Y.shape[0]
    # only the first and last snapshots enter: convert those two, not all K (K × P float64)
    first, last = np.asarray(Y[0], dtype=np.float64), np.asarray(Y[-1], dtype=np.float64)
    gain, growth, motion = {}, {}, {}
    for e in layout.entries:
        if len(e.shape) >= 2:
            w0 = first[e.offset:e.offset + e.size]
            gain[e.name] = float(w0.std() * np.sqrt(np.prod(e.shape[1:])))
    for name, a, b in layout.layer_ranges():
        n0, n1 = np.linalg.norm(first[a:b]), np.linalg.norm(last[a:b])
        growth[name] = float(n1 / n0) if n0 > 0 else (float("inf") if n1 > 0 else 1.0)
        rms = float(np.sqrt(np.mean((last[a:b] - first[a:b]) ** 2))) / max(K - 1, 1)
        motion[name] = rms / lr if lr else rms
    fin = [g for g in growth.values() if np.isfinite(g)]
    return {"gain": gain, "growth": growth, "motion": motion,
            "gain_min": min(gain.values()) if gain else None,
            "gain_max": max(gain.values()) if gain else None,
            "motion_min": min(motion.values()) if motion else None,
            "growth_max": max(fin) if fin else None, "lr_normalised": bool(lr)}


def detect_v2(Y, layout, lr: float | None = None, *, gain_low: float = GAIN_LOW,
              gain_high: float = GAIN_HIGH, motion_low: float = MOTION_LOW,
              structure: bool = STRUCTURE, **rule) -> dict:
    """Bad-initialization verdict, second version: the first version's frozen and
    collapsed layers (:func:`detect`, its growth mark no longer flags: a small start that
    grows out of the origin often trains well), or a weight tensor's gain at snapshot 0
    below ``gain_low`` or above ``gain_high`` while the slowest layer's motion per
    snapshot ÷ lr stays below ``motion_low`` (a start that is not escaping), or a gain
    above ``gain_high`` alone (``structure=False``: frozen/collapsed layers are evidence
    only). Keys of :func:`detect` plus ``bad_init_v1`` (the first
    version's decision) and ``init_features`` (:func:`weight_features`)."""
    v1 = detect(Y, layout.layer_ranges(), **rule)
    f = weight_features(np.asarray(Y)[:v1["bad_init_snapshots"]], layout, lr)
    reasons = [r for r in v1["bad_init_reasons"] if r != "growth"] if structure else []
    reasons += _gain_reasons(f, gain_low, gain_high, motion_low)
    return {**v1, "bad_init": bool(reasons), "bad_init_reasons": reasons,
            "bad_init_v1": v1["bad_init"], "bad_init_v1_reasons": v1["bad_init_reasons"],
            "init_features": f, "init_gain_low": gain_low, "init_gain_high": gain_high,
            "init_motion_low": motion_low, "init_structure": bool(structure), "bad_init_version": 2}


def _gain_reasons(f: dict, gain_low: float, gain_high: float, motion_low: float) -> list[str]:
    """The second version's weight marks on :func:`weight_features` ``f``."""
    reasons = []
    slow = f["motion_min"] is not None and f["motion_min"] < motion_low
    if f["gain_min"] is not None and f["gain_min"] < gain_low and slow:
        reasons.append("small gain, not escaping")
    if f["gain_max"] is not None and f["gain_max"] > gain_high:
        reasons.append("large gain")
    return reasons


def detect_run_v2(run, snapshots: int | None = None, **rule) -> dict:
    """:func:`detect_v2` on the first snapshots of a stored run (its layout, and its
    optimizer's learning rate when the stored config has one)."""
    n = run.n_snapshots if snapshots is None else min(int(snapshots), run.n_snapshots)
    if n < MIN_SNAPSHOTS:
        return detect_run(run, snapshots, **rule)
    Y, _ = first_snapshots(run, snapshots)
    cfg = run.config if isinstance(run.config, dict) else {}
    lr = (cfg.get("optimizer") or {}).get("lr") if isinstance(cfg.get("optimizer"), dict) else cfg.get("lr")
    return detect_v2(Y, run.layout, float(lr) if lr else None, snapshots=Y.shape[0], **rule)


# ---------------------------------------------------------------------------------------
# Third version: the run's own training loss (its early trend against the run's first
# epoch and against the task's chance level) beside the weights' evidence of the second
# version; thresholds fixed on the multiscale tuning sweep
# (jobs/experiments/badinit_outcomes.py; docs "Bad initializations").

# fixed on the multiscale tuning sweep (jobs/experiments/badinit_outcomes.py: the most
# recall at <= 5 % false alarms, ties broken toward the middle of the feasible range)
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
        reasons = _gain_reasons(wf, g.get("gain_low", GAIN_LOW), g.get("gain_high", GAIN_HIGH),
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
