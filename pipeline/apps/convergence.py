"""Convergence verdicts: when a run's certified Koopman spectrum has settled at 1.

"The existence of eigenvalues clustering around 1 determines when to terminate the
learning process" (Manojlović et al. 2020, arXiv 2006.11765). This module makes that
rule precise (README, "Convergence verdicts"); the numbers were chosen by measurement
(``jobs/experiments/convergence_study.py``).

A **window holds** when, in the whole network's spectrum of that window (layer ``"all"``):

1. the certified Ritz pairs (:meth:`pipeline.koopman.WindowResult.reliable`,
   κ·residual ≤ ``residual_tol`` in an informative window) with ``|λ − 1| ≤ delta``
   carry at least ``share`` of the window's amplitude ``Σ|b_i|`` (``b`` the fit of the
   window's first snapshot onto the unit Ritz vectors): the weights' dominant part is a
   certified fixed point;
2. no certified pair grows: none has ``|λ| > 1 + delta``.

A **run converged at** snapshot ``b − 1`` of the first window of the first run of ``k``
consecutive holding windows (windows in the order of the analysis' plan). The decision is
known at the end of the ``k``-th of them (``confirmed_at``), which is where in-training
stopping (:class:`pipeline.training.monitor.SpectrumMonitor`) stops. A run that diverged
(non-finite weights or loss) has no convergence point, and neither has a run in which a
window after that point holds a certified growing pair (a relapse: it is diverging).

Which spectrum: the whole network's (``"all"``), re-cut at the Gavish–Donoho optimal hard
threshold (:func:`verdict_spectra`). Under minibatch noise the default storage-resolution
cut keeps rank W−1 and no window is informative, so no pair could ever be certified; the
Gavish–Donoho cut separates the noise, and it runs on the analysis' own small window
factors (no second pass over the trajectory). Using one cut for every verdict makes
verdicts independent of the analysis' truncation options.

Pure functions of :class:`~pipeline.koopman.WindowResult` rows: no store, no MLflow.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

import numpy as np

from ..config import RELIABLE_RESIDUAL

log = logging.getLogger(__name__)

VERDICT_CUT = "gavish-donoho"   # the truncation every verdict's spectra use


@dataclass(frozen=True)
class Criterion:
    """The convergence rule's numbers (defaults measured, README "Convergence verdicts").

    delta : |λ − 1| ≤ delta is "at 1"; |λ| > 1 + delta is "growing".
    share : amplitude share the certified pairs at 1 must carry.
    k : consecutive holding windows.
    residual_tol : certification bound on κ·residual (:data:`RELIABLE_RESIDUAL`).
    """

    delta: float = 0.01
    share: float = 0.8
    k: int = 2
    residual_tol: float = RELIABLE_RESIDUAL

    def __post_init__(self):
        if not 0 < self.delta < 1:
            raise ValueError(f"delta must be in (0, 1), got {self.delta}")
        if not 0 < self.share <= 1:
            raise ValueError(f"share must be in (0, 1], got {self.share}")
        if self.k < 1:
            raise ValueError(f"k must be >= 1, got {self.k}")

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class WindowCheck:
    """The criterion on one window ``[a, b)``: ``holds`` and its evidence."""

    window: tuple[int, int]
    holds: bool
    share_at_1: float        # amplitude share of certified pairs with |λ−1| ≤ δ
    n_certified: int
    n_growing: int           # certified pairs with |λ| > 1 + δ
    min_dist_to_1: float     # of the certified pairs (nan: none)
    certified: tuple = ()    # ((re, im, amplitude share), ...) of the certified pairs


def check_window(result, crit: Criterion = Criterion()) -> WindowCheck:
    """Apply the criterion to one :class:`~pipeline.koopman.WindowResult`."""
    lam = np.asarray(result.eigenvalues, dtype=np.complex128)
    amp = np.abs(np.asarray(result.amplitudes, dtype=np.complex128))
    ok = np.asarray(result.reliable(crit.residual_tol), dtype=bool) & np.isfinite(lam)
    total = float(amp[np.isfinite(amp)].sum())
    at1 = ok & (np.abs(lam - 1) <= crit.delta)
    share = float(amp[at1].sum() / total) if total > 0 else 0.0
    growing = int((ok & (np.abs(lam) > 1 + crit.delta)).sum())
    dist = float(np.abs(lam[ok] - 1).min()) if ok.any() else float("nan")
    holds = bool(share >= crit.share and growing == 0)
    pairs = tuple((float(z.real), float(z.imag), float(a / total) if total > 0 else 0.0)
                  for z, a in zip(lam[ok], amp[ok]))
    return WindowCheck((int(result.window[0]), int(result.window[1])), holds, share,
                       int(ok.sum()), growing, dist, pairs)


class ConvergenceTracker:
    """The criterion fed one window at a time (a training callback's view, and the one
    :func:`converged_at` replays): ``update`` returns True once ``k`` consecutive
    windows held; ``converged_at``/``confirmed_at`` are then set (snapshot indices)."""

    def __init__(self, crit: Criterion = Criterion()):
        self.crit = crit
        self.checks: list[WindowCheck] = []
        self._streak: list[WindowCheck] = []
        self.converged_at: int | None = None
        self.confirmed_at: int | None = None

    def update(self, result) -> bool:
        c = check_window(result, self.crit)
        self.checks.append(c)
        if self.converged_at is not None:
            return True
        self._streak = self._streak + [c] if c.holds else []
        if len(self._streak) >= self.crit.k:
            self.converged_at = self._streak[0].window[1] - 1
            self.confirmed_at = self._streak[-1].window[1] - 1
            return True
        return False


def converged_at(results, crit: Criterion = Criterion(), *, snapshot_epochs=None,
                 status: str | None = None, layer: str = "all") -> dict:
    """The convergence verdict of one run from its windows' spectra.

    Parameters
    ----------
    results : list of WindowResult
        The run's spectra; only ``layer``'s rows are used, in window order.
    snapshot_epochs : sequence of int, optional
        The store's ``snapshot_epochs`` (n_snapshots,): epoch of each snapshot.
    status : str, optional
        The run's status; ``"diverged"`` has no convergence point.

    Returns
    -------
    dict
        ``converged_at`` (snapshot index or None), ``converged_epoch``,
        ``confirmed_at``, ``confirmed_epoch``, ``reason`` (why None, or
        ``"converged"``), and evidence: ``windows_held`` / ``windows`` counts, the
        ``criterion`` numbers, per window ``[a, b, holds, share_at_1]`` in
        ``window_checks`` and its certified pairs ``[[re, im, amplitude share], ...]``
        in ``certified`` (what the figures draw), ``window_epochs`` (epoch of each
        window's end).
    """
    rows = sorted((r for r in results if r.layer == layer), key=lambda r: (r.window[1], r.window[0]))
    tr = ConvergenceTracker(crit)
    for r in rows:
        tr.update(r)
    held = sum(c.holds for c in tr.checks)
    relapse = None
    if tr.converged_at is not None:
        relapse = next((c for c in tr.checks if c.window[1] - 1 > tr.converged_at and c.n_growing), None)
    out = {
        "converged_at": tr.converged_at,
        "converged_epoch": _epoch(tr.converged_at, snapshot_epochs),
        "confirmed_at": tr.confirmed_at,
        "confirmed_epoch": _epoch(tr.confirmed_at, snapshot_epochs),
        "windows": len(tr.checks),
        "windows_held": int(held),
        "criterion": {**crit.as_dict(), "layer": layer, "cut": VERDICT_CUT},
        "window_checks": [[c.window[0], c.window[1], bool(c.holds), round(c.share_at_1, 4)]
                          for c in tr.checks],
        "window_epochs": [_epoch(c.window[1] - 1, snapshot_epochs) for c in tr.checks],
        "certified": [[[round(x, 8), round(y, 8), round(a, 4)] for x, y, a in c.certified]
                      for c in tr.checks],
    }
    if status == "diverged":
        out.update(converged_at=None, converged_epoch=None, confirmed_at=None,
                   confirmed_epoch=None, reason="diverged")
    elif relapse is not None:
        out.update(converged_at=None, converged_epoch=None, confirmed_at=None,
                   confirmed_epoch=None,
                   reason=f"relapsed: certified growing eigenvalue in window {list(relapse.window)}")
    elif tr.converged_at is not None:
        out["reason"] = "converged"
    elif not rows:
        out["reason"] = f"no {layer} spectra"
    elif not any(c.n_certified for c in tr.checks):
        out["reason"] = "no certified eigenvalues"
    elif any(c.n_growing for c in tr.checks[-crit.k:]):
        out["reason"] = "certified growing eigenvalue (|λ| > 1 + δ) in the last windows"
    else:
        out["reason"] = f"fewer than {crit.k} consecutive windows with the certified spectrum at 1"
    return out


def _epoch(idx, snapshot_epochs):
    if idx is None:
        return None
    if snapshot_epochs is not None and len(snapshot_epochs) > idx:
        return int(snapshot_epochs[idx])
    return int(idx)


def recut(result, factor, unit_roundoff=None, threshold: str = VERDICT_CUT):
    """The window's DMD again on its factor (``C``: k × W) with ``threshold``: a
    :class:`~pipeline.koopman.WindowResult` of the same layer and window."""
    from ..koopman import WindowResult, dmd

    a, b = result.window
    r = dmd(factor.C, threshold=threshold, data_shape=(factor.stop - factor.start, b - a - 1),
            unit_roundoff=unit_roundoff, factor_error=float(factor.error))
    return WindowResult(result.layer, (a, b), r.eigenvalues, r.amplitudes, r.residuals,
                        r.singular_values, r.rank, r.residual_floors, r.conditions,
                        r.unit_circle, r.informative, r.rank_requested, r.misfit,
                        r.misfit_limit, result.factor, r.misfit_terms)


def verdict_spectra(est, layer: str = "all") -> list:
    """The spectra a verdict uses, from a fitted :class:`~pipeline.koopman.KoopmanDMD`:
    ``layer``'s windows re-cut at :data:`VERDICT_CUT` on the estimator's window factors
    (no pass over the data). An estimator already cut that way is used as it is."""
    rows = [r for r in est.results_ if r.layer == layer]
    if getattr(est, "threshold", None) == VERDICT_CUT:
        return rows
    factors = getattr(est, "window_factors_", {}).get(layer, {})
    u = getattr(est, "unit_roundoff_", None)
    return [recut(r, factors[tuple(r.window)], u) for r in rows if tuple(r.window) in factors]
