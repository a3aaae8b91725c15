"""In-task spectral monitor: DMD of the last W snapshots, inside the training loop.

A training callback (see :class:`pipeline.training.loop.Callback`) that keeps the last ``window``
snapshots in memory and, every ``every`` snapshots, runs the same small-matrix core as
the out-of-core analysis (:class:`pipeline.koopman.KoopmanDMD` on an in-memory array:
reference-subtracted float64 Gram, refined Rayleigh–Ritz DMD with residuals). It records
the spectrum history. Two ways to stop training:

- ``criterion`` (a :class:`pipeline.apps.convergence.Criterion`): the convergence rule
  of the verdicts, applied to the successive windows by the same
  :class:`~pipeline.apps.convergence.ConvergenceTracker` (eigenvalues clustering at 1,
  Manojlović et al. 2020); ``stop_point`` then says where and why (the sweep option
  ``stop: {when: converged, window, every}``);
- ``horizon`` (a :class:`pipeline.apps.horizon.HorizonCriterion`): the second-version
  verdict (:func:`pipeline.apps.horizon.verdict`) on the windows so far, the whole
  network's and every layer's (``groups``), with the validation loss the loop has
  recorded and the variant's budget; training stops at the end of the epoch whose
  window confirms ``k`` holding windows, the offline verdict's ``online_confirmed_epoch``
  on the same windows (the sweep option ``stop: {rule: v2}``, the default);
- ``stop_when``: any callable on each :class:`SpectrumRecord`.

Nothing is read from the store: the window is the last ``window`` snapshots the loop
handed over (float32, as stored).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..apps.snapshots import SnapshotWindow
from ..koopman import KoopmanDMD


@dataclass(frozen=True)
class SpectrumRecord:
    epoch: int
    step: int
    eigenvalues: np.ndarray  # (r,) complex128
    residuals: np.ndarray  # (r,) float64
    result: object = None  # the window's WindowResult (window = snapshot indices [a, b))


class SpectrumMonitor:
    """Callback: spectra of a sliding window of the training trajectory.

    Parameters
    ----------
    window : int
        Snapshots per spectrum (W >= 3).
    every : int
        Compute a spectrum every ``every`` snapshots once ``window`` are held.
    rank, tol, threshold : optional
        Truncation, as in :class:`~pipeline.koopman.KoopmanDMD`.
    stop_when : callable(SpectrumRecord) -> bool, optional
        Return True to stop training at the end of the epoch.
    criterion : pipeline.apps.convergence.Criterion, optional
        Stop when the convergence criterion holds on ``criterion.k`` consecutive
        spectra; ``stop_point`` records it.
    horizon : pipeline.apps.horizon.HorizonCriterion, optional
        Stop when the second-version verdict confirms convergence (see the module
        docstring); ``stop_point`` records it. Needs ``budget_snapshots`` and
        ``budget_epochs`` (the horizon is the rest of the budget).
    groups : list of (str, int, int), optional
        Layers as column ranges of the snapshot (``Layout.layer_ranges()``): with
        ``horizon``, every layer's spectra and motion are judged too.
    budget_snapshots, budget_epochs : int, optional
        The variant's snapshots and epochs at its full budget.
    unit_roundoff : float, optional
        Of the dtype the run's snapshots are stored in (with ``horizon``: the analysis'
        default cut follows it; default float32's).

    Attributes
    ----------
    history : list of SpectrumRecord
    stop_point : dict or None
        ``{"reason": "converged", "snapshot", "epoch", "converged_at",
        "converged_epoch", "window", "every"}`` once the criterion held: ``snapshot`` is
        the last snapshot of the window that confirmed it (where training stops),
        ``converged_at`` the end of the first window of the holding run.
    """

    def __init__(self, window: int = 10, every: int = 1, rank=None, tol=None,
                 stop_when: Callable[[SpectrumRecord], bool] | None = None, threshold=None,
                 criterion=None, horizon=None, groups=None, budget_snapshots=None, budget_epochs=None,
                 unit_roundoff=None, rule: str = "v3"):
        self.window, self.every, self.rank, self.tol = window, every, rank, tol
        self.rule = rule                      # the stop rule's name (with horizon), recorded in stop_point
        self.unit_roundoff = unit_roundoff
        self.horizon = horizon
        self.groups = list(groups) if groups is not None and len(groups) > 1 else None
        self.budget_snapshots, self.budget_epochs = budget_snapshots, budget_epochs
        if horizon is not None and (budget_snapshots is None or budget_epochs is None):
            raise ValueError("horizon needs budget_snapshots and budget_epochs")
        self.verdict: dict | None = None      # the latest second-version verdict (horizon)
        self._spectra, self._factors = [], {}              # whole network, by window
        self._layer_spectra, self._layer_factors = {}, {}  # per layer
        self._fresh = False
        self.threshold = threshold
        self.stop_when = stop_when
        self.criterion = criterion
        self.buffer = SnapshotWindow(window)
        self.history: list[SpectrumRecord] = []
        self.epochs: list[int] = []          # epoch of every snapshot seen
        self.stop_point: dict | None = None
        self._tracker = None
        if criterion is not None:
            from ..apps.convergence import ConvergenceTracker

            self._tracker = ConvergenceTracker(criterion)
        self._seen = 0
        self._stop = False

    def on_snapshot(self, flat, epoch: int, step: int) -> None:
        if self.horizon is not None and self._seen == 0:
            self._x0 = np.array(flat, dtype=np.float32, copy=True)    # the run's first snapshot
        self.buffer.append(flat)
        self.epochs.append(int(epoch))
        self._seen += 1
        if self.buffer.full and (self._seen - self.window) % self.every == 0:
            Y = self.buffer.array()  # (W, P) in memory
            a = self._seen - self.window
            if self.horizon is None:
                est = KoopmanDMD(rank=self.rank, tol=self.tol, threshold=self.threshold).fit(Y)
            else:
                est = self._fit_as_stored(Y, a)
            r = dataclasses.replace(est.results_[0], window=(a, self._seen))
            if self.horizon is not None:
                self._keep(est, a)
            rec = SpectrumRecord(epoch, step, r.eigenvalues, r.residuals, r)
            self.history.append(rec)
            if self._tracker is not None and not self._stop and self._tracker.update(r):
                self._stop = True
                t = self._tracker
                self.stop_point = {
                    "when": "converged", "rule": "v1", "reason": "converged",
                    "snapshot": int(t.confirmed_at), "epoch": self.epochs[t.confirmed_at],
                    "converged_at": int(t.converged_at), "converged_epoch": self.epochs[t.converged_at],
                    "window": int(self.window), "every": int(self.every),
                }
            if self.stop_when is not None and self.stop_when(rec):
                self._stop = True

    def _fit_as_stored(self, Y, a: int):
        """The window's fit exactly as ``kma analyze`` makes it on the stored run (its
        default cut; :meth:`_keep` re-cuts for the verdict as the analysis does): the
        band Gram is referenced to the run's first snapshot (which sets the factor's
        resolution, :func:`pipeline.koopman.windows.gram_resolution`), so the window is
        fitted as ``[1, W + 1)`` of ``[x_0; window]`` (a break at 1 keeps ``x_0`` out of
        it). Window ``[0, W)`` is the run's start: fitted as it is."""
        per_layer = self.groups is not None
        kw = dict(per_layer=per_layer, unit_roundoff=self.unit_roundoff)
        groups = self.groups if per_layer else None
        if a == 0:
            return KoopmanDMD(**kw).fit(Y, groups=groups)
        Y1 = np.concatenate([self._x0[None, :], Y], axis=0)
        return KoopmanDMD(window=self.window, breaks=(1,), **kw).fit(Y1, groups=groups)

    def _keep(self, est, a: int) -> None:
        """The window's verdict spectra (re-cut, :func:`pipeline.apps.convergence.verdict_spectra`)
        and factors, whole network and per layer, under their trajectory indices
        ``[a, a + W)``: what the verdict needs."""
        from ..apps.convergence import verdict_spectra

        win = (a, a + self.window)
        for layer, fs in est.window_factors_.items():
            (r,) = verdict_spectra(est, layer)
            f = fs[tuple(r.window)]
            r = dataclasses.replace(r, window=win)
            if layer == "all":
                self._spectra.append(r)
                self._factors[win] = f
            else:
                self._layer_spectra.setdefault(layer, []).append(r)
                self._layer_factors.setdefault(layer, {})[win] = f
        self._fresh = True

    def _judge(self, history) -> None:
        """The second-version verdict on the windows so far; stop once it confirms."""
        from ..apps import horizon

        self._fresh = False
        v = horizon.verdict(self._spectra, factors=self._factors, layer_spectra=self._layer_spectra,
                            layer_factors=self._layer_factors, metrics=history,
                            snapshot_epochs=self.epochs, budget_snapshots=self.budget_snapshots,
                            budget_epochs=self.budget_epochs, crit=self.horizon)
        self.verdict = v
        if v["online_confirmed_epoch"] is None:
            return
        self._stop = True
        confirmed = self._confirmed_snapshot(v)
        self.stop_point = {
            "when": "converged", "rule": self.rule, "reason": "converged",
            "snapshot": confirmed, "epoch": self.epochs[confirmed],
            "converged_at": int(v["online_converged_at"]),
            "converged_epoch": int(v["online_converged_epoch"]),
            "class": v["class"], "window": int(self.window), "every": int(self.every),
        }

    def _confirmed_snapshot(self, v) -> int:
        return int(v["online_confirmed_at"])       # the verdict's confirmation (its span rule)

    def on_epoch_end(self, epoch: int, history) -> bool:
        if self.horizon is not None and self._fresh and not self._stop:
            self._judge(history)
        return self._stop
