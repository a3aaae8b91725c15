"""In-task spectral monitor: DMD of the last W snapshots, inside the training loop.

A training callback (see :class:`pipeline.training.loop.Callback`) that keeps the last ``window``
snapshots in memory and, every ``every`` snapshots, runs the same small-matrix core as
the out-of-core analysis (:class:`pipeline.koopman.KoopmanDMD` on an in-memory array:
reference-subtracted float64 Gram, refined Rayleigh–Ritz DMD with residuals). It records
the spectrum history; a stopping rule (eigenvalues clustering at 1, Manojlović et al.
2020) plugs in through ``stop_when``.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..koopman import KoopmanDMD


@dataclass(frozen=True)
class SpectrumRecord:
    epoch: int
    step: int
    eigenvalues: np.ndarray  # (r,) complex128
    residuals: np.ndarray  # (r,) float64


class SpectrumMonitor:
    """Callback: spectra of a sliding window of the training trajectory.

    Parameters
    ----------
    window : int
        Snapshots per spectrum (W >= 3).
    every : int
        Compute a spectrum every ``every`` snapshots once ``window`` are held.
    rank, tol : optional
        Truncation, as in :class:`~pipeline.koopman.KoopmanDMD`.
    stop_when : callable(SpectrumRecord) -> bool, optional
        Return True to stop training at the end of the epoch.
    """

    def __init__(self, window: int = 10, every: int = 1, rank=None, tol=None,
                 stop_when: Callable[[SpectrumRecord], bool] | None = None):
        self.window, self.every, self.rank, self.tol = window, every, rank, tol
        self.stop_when = stop_when
        self.buffer: deque = deque(maxlen=window)
        self.history: list[SpectrumRecord] = []
        self._seen = 0
        self._stop = False

    def on_snapshot(self, flat, epoch: int, step: int) -> None:
        self.buffer.append(np.asarray(flat, dtype=np.float32).copy())
        self._seen += 1
        if len(self.buffer) == self.window and (self._seen - self.window) % self.every == 0:
            Y = np.stack(self.buffer)  # (W, P) in memory
            est = KoopmanDMD(rank=self.rank, tol=self.tol).fit(Y)
            r = est.results_[0]
            rec = SpectrumRecord(epoch, step, r.eigenvalues, r.residuals)
            self.history.append(rec)
            if self.stop_when is not None and self.stop_when(rec):
                self._stop = True

    def on_epoch_end(self, epoch: int, history) -> bool:
        return self._stop
