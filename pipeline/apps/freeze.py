"""Freezing the weights whose Koopman modes say they have converged, as a training callback.

After ``after`` snapshots (and, with ``every``, again every ``every`` snapshots), DMD of
the last ``window`` snapshots held in the task (:class:`pipeline.koopman.KoopmanDMD`,
truncated to ``rank``, default ``(W - 1) // 2`` as for pruning and acceleration) writes
the current weights ``x = Y[-1]`` on the unit modes ``z_i`` (eigenvalues ``λ_i``)::

    x = Σ_i c_i z_i + r                    (c: least squares on the modes)

and bounds, per weight ``p``, how far the modes predict it still moves over the next
``H`` snapshots (``horizon``, default ``window``), by the triangle inequality::

    m_p = Σ_{i certified} |c_i z_ip| |λ_i^H - 1|      certified pairs move as predicted
        + Σ_{i not certified} |c_i z_ip|             an uncertified pair's content may go
        + max_t |Y_tp - Ŷ_tp|                        what the modes do not explain (misfit
                                                     of the window's reconstruction Ŷ)

A weight is **converged** when ``m_p <= tol · rms(its tensor)``: its predicted remaining
motion is small against the scale of the tensor it belongs to (a per-weight relative test
``m_p <= tol · |x_p|`` would never freeze a weight that converges to 0 and would freeze
noise that happens to sit far from 0). Why this bound: a weight on the fixed point
(``λ = 1``) contributes ``|λ^H - 1| = 0``; a weight still carried by a decaying, slow
or oscillating mode contributes in proportion to how much of that mode it holds; an
uncertified eigenvalue says nothing about the future, so its content counts in full; and
the misfit keeps a weight moving outside the modes' span from looking still. Gate: when
the window has no certified pair at all (an unreliable spectrum, e.g. noise), nothing is
frozen.

Frozen weights are held exactly: their gradients are zeroed (a tensor hook), and after
every optimizer step they are written back to their frozen values and their per-weight
optimizer state (momentum buffers, Adam's moments) is set to zero (a step post-hook; the
state is zeroed at the freeze too), so weight decay or leftover momentum cannot move them. The optimizer's state
of the other weights is untouched. **Frozen weights never unfreeze**: each decision only
adds weights. Every decision that freezes something is an event (the analysis windows
split there); the fraction frozen is logged per epoch as ``frozen_fraction``.

Elementwise freezing does not skip any arithmetic in dense layers (the backward pass still
computes every gradient); what it can change is the trajectory, not the cost per step.

Shapes: snapshots are flat ``(P,)`` float32 vectors of the run's
:class:`~pipeline.storage.layout.Layout`; the window ``Y`` is ``(W, P)``.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from ..spectra import RELIABLE_RESIDUAL
from .prune import window_fit
from .snapshots import SnapshotWindow

__all__ = ["remaining_motion", "converged_mask", "Freezer"]

log = logging.getLogger(__name__)


def remaining_motion(Y, horizon: int, rank: int | None = None,
                     residual_tol: float = RELIABLE_RESIDUAL) -> tuple[np.ndarray | None, dict]:
    """Per-weight bound ``m_p`` on the motion over the next ``horizon`` snapshots.

    Parameters
    ----------
    Y : ndarray, shape (W, P)
        Consecutive snapshots, oldest first; ``Y[-1]`` is the current weights.
    horizon : int
        ``H``, snapshots ahead.
    rank : int, optional
        DMD truncation (default ``(W - 1) // 2``).
    residual_tol : float
        Certification threshold on ``κ · residual`` (:meth:`WindowResult.reliable`).

    Returns
    -------
    motion : ndarray, shape (P,), float64, or None
        None when the window has no certified pair (nothing may be frozen).
    info : dict
        ``rank``, ``n_certified``, ``reason`` when ``motion`` is None.
    """
    Y = np.asarray(Y)
    _, res, modes = window_fit(Y, rank)
    lam = res.eigenvalues
    cert = res.reliable(residual_tol)
    info = {"rank": int(res.rank), "n_certified": int(cert.sum())}
    if res.rank == 0 or not cert.any():
        info["reason"] = "no certified mode"
        return None, info
    Z = modes()                                                 # (r, P) unit modes
    Y64 = Y.astype(np.float64)
    # every snapshot on the modes (G, (r, W)); the modes' dynamics G_it ≈ b_i λ_i^t, each
    # b_i by least squares over the window; Ŷ_t = Σ_i b_i λ_i^t z_i
    G = np.linalg.lstsq(Z.T, Y64.T.astype(np.complex128), rcond=None)[0]
    V = lam[None, :] ** np.arange(Y.shape[0])[:, None]          # (W, r) Vandermonde
    b = (V.conj() * G.T).sum(axis=0) / np.maximum((np.abs(V) ** 2).sum(axis=0), 1e-300)
    misfit = np.abs(Y64 - ((V * b[None, :]) @ Z).real).max(axis=0)          # (P,)
    c = G[:, -1]                                                 # x = Y[-1] on the modes
    weight = np.where(cert, np.abs(lam ** int(horizon) - 1.0), 1.0)         # (r,)
    motion = (np.abs(c[:, None] * Z) * weight[:, None]).sum(axis=0) + misfit
    if not np.isfinite(motion).all():
        info["reason"] = "non-finite prediction"
        return None, info
    return motion, info


def converged_mask(motion, x, layout, tol: float) -> np.ndarray:
    """``(P,)`` bool: ``motion_p <= tol · rms`` of the weight's tensor in ``layout``."""
    x = np.asarray(x, dtype=np.float64)
    scale = np.empty_like(x)
    for e in layout.entries:
        seg = x[e.offset:e.offset + e.size]
        scale[e.offset:e.offset + e.size] = np.sqrt(np.mean(seg * seg)) if seg.size else 0.0
    return np.asarray(motion) <= tol * scale


class Freezer:
    """Training callback: freeze converged weights after ``cfg.after`` snapshots.

    Parameters
    ----------
    model : nn.Module
    optimizer : torch.optim.Optimizer
    layout : Layout
        The snapshot layout: the weights that may be frozen.
    cfg : pipeline.config.FreezeConfig

    Attributes
    ----------
    frozen_ : ndarray (P,) bool
        The frozen entries of the snapshot layout (only grows).
    frozen_at_ : ndarray (P,) int
        Per entry, the first snapshot taken after its freeze (-1: not frozen); it holds
        the value of snapshot ``frozen_at_ - 1`` from then on.
    frozen_fraction : float
        ``frozen_.mean()``; logged per epoch as the metric ``frozen_fraction``.
    events : list of dict
        ``{"kind": "freeze", "snapshot": i, "epoch", "step", "n_new", "frozen_fraction",
        ...}`` per decision that froze something; ``i`` is the first snapshot after it.
    decisions : list of dict
        Every decision, with ``n_new`` (0 when it froze nothing) and ``reason``.
    """

    def __init__(self, model, optimizer, layout, cfg):
        self.cfg = cfg
        self.model, self.optimizer, self.layout = model, optimizer, layout
        self.params = dict(model.named_parameters())
        self.buffer = SnapshotWindow(cfg.window)
        self.seen = 0
        self.frozen_ = np.zeros(layout.size, bool)
        self.frozen_at_ = np.full(layout.size, -1, np.int64)
        self.frozen_fraction = 0.0
        self.keep: dict[str, torch.Tensor] = {}     # 1 = trainable, 0 = frozen
        self.values: dict[str, torch.Tensor] = {}   # the frozen values (whole tensor copy)
        self.events: list[dict] = []
        self.decisions: list[dict] = []
        self._handles: list = []

    def on_snapshot(self, flat, epoch: int, step: int) -> None:
        self.seen += 1
        self.buffer.append(flat)
        every = self.cfg.every
        due = self.seen == self.cfg.after or (
            every is not None and self.seen > self.cfg.after and (self.seen - self.cfg.after) % every == 0)
        if due and self.buffer.full:
            self.decide(epoch, step)

    def on_epoch_end(self, epoch: int, history) -> None:
        history.setdefault("frozen_fraction", []).append(self.frozen_fraction)

    def decide(self, epoch: int, step: int) -> int:
        """Freeze the weights the held window says have converged; the number newly frozen."""
        Y = self.buffer.array()
        horizon = self.cfg.horizon or self.cfg.window
        motion, info = remaining_motion(Y, horizon, self.cfg.rank, self.cfg.residual_tol)
        record = {"snapshot": self.seen, "epoch": int(epoch), "step": int(step), **info}
        new = np.zeros_like(self.frozen_)
        if motion is not None:
            new = converged_mask(motion, Y[-1], self.layout, self.cfg.tol) & ~self.frozen_
        n_new = int(new.sum())
        self.decisions.append({**record, "n_new": n_new})
        if not n_new:
            return 0
        self._freeze(new)
        self.frozen_ |= new
        self.frozen_at_[new] = self.seen
        self.frozen_fraction = float(self.frozen_.mean())
        self.events.append({"kind": "freeze", **record, "n_new": n_new,
                            "frozen_fraction": self.frozen_fraction, "tol": self.cfg.tol})
        log.info("froze %d weights (%.1f%% frozen) after snapshot %d", n_new,
                 100 * self.frozen_fraction, self.seen - 1)
        return n_new

    def _freeze(self, new: np.ndarray) -> None:
        views = self.layout.unflatten(torch.from_numpy(~(self.frozen_ | new)))
        first = not self.keep
        with torch.no_grad():
            for name, v in views.items():
                p = self.params[name]
                keep = v.to(device=p.device, dtype=torch.bool)
                if bool(keep.all()):
                    continue
                m = keep.to(p.dtype)
                for value in self.optimizer.state.get(p, {}).values():
                    if torch.is_tensor(value) and value.shape == p.shape:
                        value.mul_(m)                         # momentum, exp_avg, exp_avg_sq ...
                if name not in self.keep:
                    self._handles.append(p.register_hook(lambda g, n=name: g * self.keep[n]))
                self.keep[name] = m
                self.values[name] = p.detach().clone()
        if first and self.keep:
            self._handles.append(self.optimizer.register_step_post_hook(self._after_step))

    def _after_step(self, optimizer, args, kwargs) -> None:
        with torch.no_grad():
            for name, m in self.keep.items():
                p = self.params[name]
                p.copy_(torch.where(m.bool(), p, self.values[name]))
                for value in optimizer.state.get(p, {}).values():   # weight decay refills them
                    if torch.is_tensor(value) and value.shape == p.shape:
                        value.mul_(m)

    def remove(self) -> None:
        """Detach the hooks (the weights stay as they are)."""
        for h in self._handles:
            h.remove()
        self._handles.clear()
