"""Koopman-mode pruning (and its magnitude baseline), as a training callback.

Koopman magnitude pruning (KMP; Redman, Fonoberova, Mohr, Kevrekidis & Mezić, "An
operator theoretic view on pruning deep neural networks", ICLR 2022): fit DMD on the
last ``W`` snapshots of the weights, take the Koopman mode of the eigenvalue nearest 1
(the fixed point the training is heading to) times its amplitude as each weight's
predicted end point, and remove the weights whose predicted end point is smallest.
Global magnitude pruning (GMP) ranks the current weights instead; KMP equals GMP at
convergence (the trajectory is then its own fixed point).

What is pruned: the weight tensors (two or more dimensions: ``Linear`` and ``Conv``
weights) among the snapshot's layers; biases are kept. ``scope="global"`` ranks all of
them together (Redman et al. compare with global magnitude pruning), ``"layer"`` takes
the same fraction from every tensor. Exactly ``round(sparsity * n)`` weights are masked
(``n`` the prunable weights of the scope).

After the prune the mask stays fixed: the pruned weights are set to 0, their gradients
are masked (a tensor hook), they are zeroed again after every optimizer step (a step
post-hook), and the optimizer's per-weight state of them (momentum buffers, Adam's
first and second moments) is zeroed at the prune, so Adam's update of a pruned weight
is ``0 / (0 + eps) = 0``; the state of the kept weights is untouched. Every snapshot
from the prune on stores the pruned weights as exact zeros.

Shapes: a snapshot is the flat ``(P,)`` float32 vector of the run's
:class:`~pipeline.storage.layout.Layout`; the window ``Y`` is ``(W, P)``.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from ..koopman import KoopmanDMD
from .snapshots import SnapshotWindow

__all__ = ["koopman_endpoint", "prune_mask", "prunable_ranges", "Pruner"]

log = logging.getLogger(__name__)


def default_rank(window: int) -> int:
    """DMD truncation when none is given: ``(W - 1) // 2`` directions, so that a window
    has at least twice as many snapshot pairs as directions and its residuals are
    informative (:class:`pipeline.koopman.core.DMDResult`)."""
    return max(1, (int(window) - 1) // 2)


def window_fit(Y, rank: int | None = None):
    """``(est, res, modes)``: the in-memory DMD of a window ``Y`` (shape ``(W, P)``) that
    pruning, freezing and acceleration share — :class:`~pipeline.koopman.KoopmanDMD` at
    ``rank`` (default :func:`default_rank`), its whole-network result, and a callable
    giving the ``(r, P)`` unit modes (a second pass over ``Y``, only when called)."""
    Y = np.asarray(Y)
    est = KoopmanDMD(rank=rank or default_rank(Y.shape[0])).fit(Y)
    return est, est.results_[0], lambda: np.asarray(est.modes(Y).compute())


def koopman_endpoint(Y, rank: int | None = None) -> tuple[np.ndarray, dict]:
    """Predicted end point of every weight from the DMD mode of the eigenvalue nearest 1.

    Parameters
    ----------
    Y : ndarray, shape (W, P)
        The last ``W`` snapshots, oldest first (float32 as stored).
    rank : int, optional
        DMD truncation (default :func:`default_rank`).

    Returns
    -------
    endpoint : ndarray, shape (P,), float64
        ``|z_i b_i|``: the mode ``z_i`` of the eigenvalue ``λ_i`` nearest 1 times its
        amplitude ``b_i`` (the window's first snapshot is ``Σ_j z_j b_j``), in modulus.
        Its ranking is what pruning uses.
    info : dict
        ``eigenvalue`` ([re, im]), ``residual``, ``rank`` of the fit.
    """
    _, res, modes = window_fit(Y, rank)
    if res.rank == 0:
        raise ValueError("the window's snapshots are all zero: no mode to rank")
    i = int(np.argmin(np.abs(res.eigenvalues - 1.0)))
    mode = modes()[i]
    lam = res.eigenvalues[i]
    info = {"eigenvalue": [float(lam.real), float(lam.imag)],
            "residual": float(res.residuals[i]), "rank": int(res.rank)}
    return np.abs(mode * res.amplitudes[i]), info


def prunable_ranges(layout) -> list[tuple[str, int, int]]:
    """``[(name, start, stop), ...]`` of the layout's weight tensors (ndim >= 2)."""
    return [(e.name, e.offset, e.offset + e.size) for e in layout.entries if len(e.shape) >= 2]


def prune_mask(scores, ranges, sparsity: float, scope: str = "global") -> np.ndarray:
    """Keep-mask: False for the ``sparsity`` fraction of smallest ``scores``.

    Parameters
    ----------
    scores : ndarray, shape (P,)
        Larger = more important (|weight| or |predicted end point|).
    ranges : list of (str, int, int)
        The prunable column ranges (:func:`prunable_ranges`); other entries are kept.
    sparsity : float in (0, 1)
    scope : {"global", "layer"}
        Rank all prunable entries together, or each range on its own.

    Returns
    -------
    ndarray, shape (P,), bool
        Exactly ``round(sparsity * n)`` False entries per scope (``n`` its entries);
        ties are broken by index (stable sort).
    """
    scores = np.asarray(scores, dtype=np.float64)
    keep = np.ones(scores.shape[0], bool)
    if scope == "global":
        groups = [np.concatenate([np.arange(a, b) for _, a, b in ranges])] if ranges else []
    elif scope == "layer":
        groups = [np.arange(a, b) for _, a, b in ranges]
    else:
        raise ValueError(f"unknown scope {scope!r}; known: global, layer")
    for idx in groups:
        k = int(round(sparsity * idx.size))
        if k:
            keep[idx[np.argsort(scores[idx], kind="stable")[:k]]] = False
    return keep


class Pruner:
    """Training callback: prune once after ``cfg.after`` snapshots, then hold the mask.

    Parameters
    ----------
    model : nn.Module
        The model being trained (its parameters are masked in place).
    optimizer : torch.optim.Optimizer
    layout : Layout
        The snapshot layout (what ``on_snapshot`` receives); its weight tensors are
        the prunable ones.
    cfg : pipeline.config.PruneConfig

    Attributes
    ----------
    events : list of dict
        ``{"kind": "prune", "snapshot": i, "epoch": e, "step": s, ...}`` once pruned:
        ``i`` is the first snapshot taken with the mask (the prune happens right after
        snapshot ``i - 1``, at epoch ``e``, step ``s``).
    sparsity : float
        Fraction of the prunable weights masked (0 before the prune); logged per epoch
        as the metric ``sparsity``.
    keep_ : ndarray (P,) bool or None
        The mask over the snapshot layout.
    """

    def __init__(self, model, optimizer, layout, cfg):
        self.cfg = cfg
        self.model, self.optimizer, self.layout = model, optimizer, layout
        self.params = dict(model.named_parameters())
        self.ranges = prunable_ranges(layout)
        self.buffer = SnapshotWindow(cfg.window)
        self.seen = 0
        self.keep_ = None
        self.masks: dict[str, torch.Tensor] = {}
        self.events: list[dict] = []
        self.sparsity = 0.0
        self._handles: list = []

    # -- callback -------------------------------------------------------------------
    def on_snapshot(self, flat, epoch: int, step: int) -> None:
        self.seen += 1
        if self.keep_ is not None:
            return
        x = np.asarray(flat, dtype=np.float32)
        if self.cfg.method == "koopman":
            self.buffer.append(x)
        if self.seen == self.cfg.after:
            self.prune(x, epoch, step)

    def on_epoch_end(self, epoch: int, history) -> None:
        history.setdefault("sparsity", []).append(self.sparsity)

    # -- the prune ------------------------------------------------------------------
    def scores(self, x: np.ndarray) -> tuple[np.ndarray, dict]:
        """Per-weight importance at the prune: ``(P,)`` scores and what they came from."""
        if self.cfg.method == "magnitude":
            return np.abs(x.astype(np.float64)), {"method": "magnitude"}
        try:
            end, info = koopman_endpoint(self.buffer.array(), self.cfg.rank)
            return end, {"method": "koopman", **info}
        except ValueError as e:        # nothing to rank (all-zero window): say so, fall back
            log.warning("koopman pruning: %s; pruning by magnitude", e)
            return np.abs(x.astype(np.float64)), {"method": "magnitude", "fallback": str(e)}

    def prune(self, x: np.ndarray, epoch: int, step: int) -> None:
        """Compute the mask from snapshot ``x`` (the current weights) and apply it."""
        scores, info = self.scores(x)
        keep = prune_mask(scores, self.ranges, self.cfg.sparsity, self.cfg.scope)
        n = sum(b - a for _, a, b in self.ranges)
        self.keep_ = keep
        self.sparsity = float((~keep).sum() / n) if n else 0.0
        views = self.layout.unflatten(torch.from_numpy(keep))
        with torch.no_grad():
            for name, _, _ in self.ranges:
                p = self.params[name]
                m = views[name].to(device=p.device, dtype=p.dtype)
                self.masks[name] = m
                p.mul_(m)
                for value in self.optimizer.state.get(p, {}).values():
                    if torch.is_tensor(value) and value.shape == p.shape:
                        value.mul_(m)                 # momentum, exp_avg, exp_avg_sq ...
                self._handles.append(p.register_hook(lambda g, m=m: g * m))
        self._handles.append(self.optimizer.register_step_post_hook(self._after_step))
        self.events.append({"kind": "prune", "snapshot": self.seen, "epoch": int(epoch),
                            "step": int(step), "sparsity": self.sparsity,
                            "scope": self.cfg.scope, **info})
        log.info("pruned %.1f%% of %d weights (%s) after snapshot %d", 100 * self.sparsity, n,
                 info["method"], self.seen - 1)

    def _after_step(self, optimizer, args, kwargs) -> None:
        with torch.no_grad():
            for name, m in self.masks.items():
                self.params[name].mul_(m)

    def remove(self) -> None:
        """Detach the hooks (the weights stay as they are)."""
        for h in self._handles:
            h.remove()
        self._handles.clear()
