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
                 criterion=None):
        self.window, self.every, self.rank, self.tol = window, every, rank, tol
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
        self.buffer.append(flat)
        self.epochs.append(int(epoch))
        self._seen += 1
        if self.buffer.full and (self._seen - self.window) % self.every == 0:
            Y = self.buffer.array()  # (W, P) in memory
            est = KoopmanDMD(rank=self.rank, tol=self.tol, threshold=self.threshold).fit(Y)
            a = self._seen - self.window
            r = dataclasses.replace(est.results_[0], window=(a, self._seen))
            rec = SpectrumRecord(epoch, step, r.eigenvalues, r.residuals, r)
            self.history.append(rec)
            if self._tracker is not None and not self._stop and self._tracker.update(r):
                self._stop = True
                t = self._tracker
                self.stop_point = {
                    "when": "converged", "reason": "converged",
                    "snapshot": int(t.confirmed_at), "epoch": self.epochs[t.confirmed_at],
                    "converged_at": int(t.converged_at), "converged_epoch": self.epochs[t.converged_at],
                    "window": int(self.window), "every": int(self.every),
                }
            if self.stop_when is not None and self.stop_when(rec):
                self._stop = True

    def on_epoch_end(self, epoch: int, history) -> bool:
        return self._stop
