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
``K`` snapshots of a stored (trained or ingested) run; :func:`detect_run` does both. The
second version (:func:`detect_v2`) adds per-layer gain and lr-normalised motion; the third,
the one the verdicts and ``on_bad_init`` use by default, reads the training loss against
the task's chance level (:mod:`pipeline.apps.badinit_loss`).
"""

from __future__ import annotations

import logging

import numpy as np
from threadpoolctl import threadpool_limits

from ..koopman import KoopmanDMD

log = logging.getLogger(__name__)

__all__ = ["detect", "detect_run", "detect_v2", "detect_run_v2", "weight_features", "gain_marks", "first_snapshots",
           "DEFAULT_SNAPSHOTS", "GROWTH_TOL",
           "COLLAPSED_RANK", "MIN_SNAPSHOTS"]

DEFAULT_SNAPSHOTS = 6     # K: the initial weights and five epochs (docs/pages/badinit.md)
MIN_SNAPSHOTS = 4         # fewer leave no room to tell a collapsed layer (rank <= 2) from K - 1
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
    rows are read, and none when the run carries them already (``run.leading_rows``:
    ``(rows, groups)``, kept by ``kma analyze``'s pass, :mod:`pipeline.workflows.analyze`).
    """
    n = run.n_snapshots
    K = min(n, DEFAULT_SNAPSHOTS) if snapshots is None else int(snapshots)
    if K > n:
        raise ValueError(f"run {run.run_id}: {n} snapshots, fewer than the {K} asked for")
    held = getattr(run, "leading_rows", None)   # (rows, groups) an analysis' pass already read
    if held is not None and held[0].shape[0] >= K and held[0].dtype == np.float32:
        return held[0][:K], list(held[1])
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
    reasons += gain_marks(f, gain_low, gain_high, motion_low)
    return {**v1, "bad_init": bool(reasons), "bad_init_reasons": reasons,
            "bad_init_v1": v1["bad_init"], "bad_init_v1_reasons": v1["bad_init_reasons"],
            "init_features": f, "init_gain_low": gain_low, "init_gain_high": gain_high,
            "init_motion_low": motion_low, "init_structure": bool(structure), "bad_init_version": 2}


def gain_marks(f: dict, gain_low: float, gain_high: float, motion_low: float) -> list[str]:
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
