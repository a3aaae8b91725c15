"""Koopman training acceleration, as a training callback.

Dogra & Redman, "Optimizing neural networks via Koopman operator theory" (NeurIPS
2020): the weights' trajectory over a short window is well predicted by its Koopman
(DMD) modes, so the weights can be moved ahead along the prediction and training
continued from there, saving the optimizer steps in between.

Here, every ``every`` snapshots, once ``window`` snapshots since the last jump are held,
DMD of the window (:class:`pipeline.koopman.KoopmanDMD`, truncated to ``rank``, default
``(W - 1) // 2`` so the residuals are informative) and a jump of ``horizon`` snapshots::

    x_last = Σ_i c_i z_i + r                (c: least squares on the modes z_i)
    x_jump = x_last + Re Σ_{i ∈ S} c_i (λ_i^H - 1) z_i

over ``S`` = the certified pairs (``WindowResult.reliable(RELIABLE_RESIDUAL)``) that do
not grow (``|λ_i| <= 1``): an uncertified or growing mode is held where it is, never
extrapolated, and ``r`` (what the modes miss) is kept. Guards, so the weights are never
corrupted: no certified non-growing mode → no jump; a non-finite jump → no jump; the
loss on a fixed training batch not lower after the jump → the weights are restored
bit for bit (the jump is rejected). An accepted jump is an event (the analysis windows
split there) and empties the window. The optimizer's state (momentum, Adam moments and
step count) is kept (``optimizer_state: keep``, the default) or cleared
(``reset``: the optimizer starts afresh from the jumped weights).

Shapes: snapshots are flat ``(P,)`` float32 vectors of the run's
:class:`~pipeline.storage.layout.Layout`; the window ``Y`` is ``(W, P)``.
"""

from __future__ import annotations

import logging
from typing import Callable

import numpy as np
import torch

from ..spectra import RELIABLE_RESIDUAL
from .prune import window_fit
from .snapshots import SnapshotWindow

__all__ = ["koopman_jump", "Accelerator"]

log = logging.getLogger(__name__)


def koopman_jump(Y, horizon: int, rank: int | None = None,
                 residual_tol: float = RELIABLE_RESIDUAL) -> tuple[np.ndarray | None, dict]:
    """The jump ``x_jump - x_last`` predicted from the certified modes of window ``Y``.

    Parameters
    ----------
    Y : ndarray, shape (W, P)
        Consecutive snapshots, oldest first; ``Y[-1]`` is the current weights.
    horizon : int
        Snapshots to move ahead (``H``).
    rank : int, optional
        DMD truncation (default ``(W - 1) // 2``).
    residual_tol : float
        Certification threshold on ``κ · residual`` (:meth:`WindowResult.reliable`).

    Returns
    -------
    delta : ndarray, shape (P,), float64, or None
        None when no certified, non-growing mode exists (no jump).
    info : dict
        ``rank``, ``n_certified`` (pairs used), ``eigenvalues`` used ([re, im] each),
        ``reason`` when ``delta`` is None.
    """
    Y = np.asarray(Y)
    _, res, modes = window_fit(Y, rank)
    lam = res.eigenvalues
    use = res.reliable(residual_tol) & (np.abs(lam) <= 1.0)
    info = {"rank": int(res.rank), "n_certified": int(use.sum()),
            "eigenvalues": [[float(z.real), float(z.imag)] for z in lam[use]]}
    if not use.any():
        info["reason"] = "no certified non-growing mode"
        return None, info
    Z = modes()                                                 # (r, P) unit modes
    x = Y[-1].astype(np.float64)
    c = np.linalg.lstsq(Z.T, x.astype(np.complex128), rcond=None)[0]
    delta = ((c[use] * (lam[use] ** int(horizon) - 1.0)) @ Z[use]).real
    if not np.isfinite(delta).all():
        info["reason"] = "non-finite prediction"
        return None, info
    return delta, info


class Accelerator:
    """Training callback: Koopman jumps of the snapshot layers' weights.

    Parameters
    ----------
    model : nn.Module
    optimizer : torch.optim.Optimizer
    layout : Layout
        The snapshot layout: the weights that are predicted and moved.
    cfg : pipeline.config.AccelerateConfig
    check_loss : callable () -> float
        Loss of the current model on a fixed training batch (no gradients); a jump is
        kept only when it lowers it.

    Attributes
    ----------
    events : list of dict
        One per accepted jump: ``{"kind": "jump", "snapshot": i, "epoch", "step",
        "loss_before", "loss_after", ...}``; ``i`` is the first snapshot after it.
    log : list of dict
        Every attempt, accepted or not, with ``outcome`` (``jump``, ``skipped``,
        ``rejected``).
    """

    def __init__(self, model, optimizer, layout, cfg, check_loss: Callable[[], float]):
        self.cfg = cfg
        self.model, self.optimizer, self.layout = model, optimizer, layout
        self.params = dict(model.named_parameters())
        self.check_loss = check_loss
        self.buffer = SnapshotWindow(cfg.window)
        self.seen = 0
        self.events: list[dict] = []
        self.log: list[dict] = []

    def on_snapshot(self, flat, epoch: int, step: int) -> None:
        self.seen += 1
        self.buffer.append(flat)
        if self.buffer.full and self.seen % self.cfg.every == 0:
            self.attempt(epoch, step)

    def on_epoch_end(self, epoch: int, history) -> None:
        history.setdefault("koopman_jumps", []).append(float(len(self.events)))

    def attempt(self, epoch: int, step: int) -> bool:
        """Try one jump from the held window; True if it was kept."""
        x_last = self.buffer.last
        delta, info = koopman_jump(self.buffer.array(), self.cfg.horizon, self.cfg.rank,
                                   getattr(self.cfg, "residual_tol", RELIABLE_RESIDUAL))
        record = {"snapshot": self.seen, "epoch": int(epoch), "step": int(step),
                  "n_certified": info["n_certified"], "rank": info["rank"]}
        if delta is None:
            self.log.append({**record, "outcome": "skipped", "reason": info["reason"]})
            return False
        before = float(self.check_loss())
        x_new = (x_last.astype(np.float64) + delta).astype(np.float32)
        self._set(x_new)
        after = float(self.check_loss())
        record.update(loss_before=before, loss_after=after)
        if not after < before:                           # worse, equal or NaN: undo exactly
            self._set(x_last)
            self.log.append({**record, "outcome": "rejected"})
            return False
        if self.cfg.optimizer_state == "reset":
            self.optimizer.state.clear()
        self.events.append({"kind": "jump", **record, "horizon": self.cfg.horizon,
                            "optimizer_state": self.cfg.optimizer_state})
        self.log.append({**record, "outcome": "jump"})
        self.buffer.clear()                               # the next window starts afresh
        log.info("koopman jump after snapshot %d: loss %.4g -> %.4g (%d modes)",
                 self.seen - 1, before, after, info["n_certified"])
        return True

    def _set(self, flat: np.ndarray) -> None:
        views = self.layout.unflatten(torch.from_numpy(np.ascontiguousarray(flat)))
        with torch.no_grad():
            for name, v in views.items():
                p = self.params[name]
                p.copy_(v.to(device=p.device, dtype=p.dtype))


def batch_loss(model, loss_fn, x, y) -> Callable[[], float]:
    """``check_loss`` for :class:`Accelerator`: the loss of ``model`` on ``(x, y)``."""

    def check() -> float:
        with torch.no_grad():
            return float(loss_fn(model(x), y))

    return check
