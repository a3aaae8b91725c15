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

__all__ = ["koopman_jump", "Accelerator", "LayerAccelerator", "layer_fits", "layer_jump",
           "jump_bound", "candidate_horizons"]

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


# ---- per-layer, per-step acceleration (``scope: layer``) ------------------------------

def _difference_dmd(D: np.ndarray, rank: int) -> dict:
    """Exact DMD of one layer's weight updates, dense float64.

    Parameters
    ----------
    D : ndarray, shape (n, p)
        Consecutive updates ``d_t = x_{t+1} - x_t`` of one layer, oldest first (n >= 3).
    rank : int
        Truncation (at most ``n - 1`` and the numerical rank of ``D[:-1]``).

    Returns
    -------
    dict
        ``eigenvalues`` (r,), ``modes`` (r, p) unit-norm, ``amplitudes`` (r,) (least
        squares of the last update on the modes), ``residuals`` (r,) (``‖A z - λ z‖`` for
        unit ``z``, measured against every component of the data, not only the kept
        subspace), ``conditions`` (r,) (``1 / |yᴴ w|`` for unit left/right eigenvectors of
        the projected operator), ``misfit`` (share of the last update the modes miss).
    """
    X, Y = D[:-1].T, D[1:].T                                     # (p, n-1)
    U, s, Vt = np.linalg.svd(X, full_matrices=False)
    keep = s > s[0] * max(X.shape) * np.finfo(np.float64).eps if s.size and s[0] > 0 else s > 0
    r = int(min(rank, keep.sum()))
    if r == 0:
        return {"eigenvalues": np.zeros(0, complex), "modes": np.zeros((0, D.shape[1]), complex),
                "amplitudes": np.zeros(0, complex), "residuals": np.zeros(0),
                "conditions": np.zeros(0), "misfit": 1.0}
    U, s, V = U[:, :r], s[:r], Vt[:r].T
    B = Y @ V / s                                                # A U = B on span(U)
    At = U.T @ B                                                 # (r, r) Rayleigh quotient
    lam, W = np.linalg.eig(At)
    lamL, Wl = np.linalg.eig(At.T.conj())                        # left eigenvectors
    order = [int(np.argmin(np.abs(lamL.conj() - z))) for z in lam]
    Wl = Wl[:, order]
    W = W / np.linalg.norm(W, axis=0)
    Wl = Wl / np.linalg.norm(Wl, axis=0)
    conditions = 1.0 / np.maximum(np.abs(np.sum(Wl.conj() * W, axis=0)), 1e-300)
    Z = U @ W                                                    # (p, r) unit modes
    residuals = np.linalg.norm(B @ W - Z * lam, axis=0)
    d = D[-1].astype(np.complex128)
    b = np.linalg.lstsq(Z, d, rcond=None)[0]
    nd = float(np.linalg.norm(D[-1]))
    misfit = float(np.linalg.norm(Z @ b - d) / nd) if nd > 0 else 0.0
    return {"eigenvalues": lam, "modes": Z.T, "amplitudes": b, "residuals": residuals,
            "conditions": conditions, "misfit": misfit}


def _geometric(lam: np.ndarray, horizon: int) -> np.ndarray:
    """``Σ_{h=1}^{H} λ^h`` per eigenvalue (``H`` at ``λ = 1``)."""
    lam = np.asarray(lam, dtype=np.complex128)
    near1 = np.abs(1.0 - lam) < 1e-12
    safe = np.where(near1, 0.5, lam)
    with np.errstate(over="ignore", invalid="ignore"):   # |λ| > 1 at long H: inf, never certified
        out = safe * (1.0 - safe ** int(horizon)) / (1.0 - safe)
    return np.where(near1, float(horizon), out)


def layer_fits(Y, ranges, rank: int | None = None) -> list[dict]:
    """:func:`_difference_dmd` of each layer's updates in window ``Y``.

    Parameters
    ----------
    Y : ndarray, shape (W, P)
        Consecutive snapshots (per optimizer step in Dogra & Redman's setting), oldest
        first; ``Y[-1]`` is the current weights.
    ranges : list of (str, int, int)
        ``(layer, start, stop)`` column ranges (:meth:`Layout.layer_ranges`).
    rank : int, optional
        Per-layer truncation (default ``(W - 2) // 2``: twice as many update pairs as
        directions, so the residuals are informative).

    Returns
    -------
    list of dict, one per layer: the fit plus ``layer``, ``start``, ``stop``, ``norm``
    (of the layer's current weights).
    """
    Y = np.asarray(Y, dtype=np.float64)
    rank = rank or max(1, (Y.shape[0] - 2) // 2)
    fits = []
    for name, a, b in ranges:
        fit = _difference_dmd(np.diff(Y[:, a:b], axis=0), rank)
        fit.update(layer=name, start=a, stop=b, norm=float(np.linalg.norm(Y[-1, a:b])))
        fits.append(fit)
    return fits


def layer_jump(fits, horizon: int, P: int) -> np.ndarray:
    """``x_{T+H} - x_T`` predicted per layer: ``Re Σ_i b_i z_i Σ_{h=1}^{H} λ_i^h`` over the
    modes that decay (``|λ_i| < 1``; a mode that does not decay is held, never
    extrapolated). For updates that follow ``d_{t+1} = A d_t`` exactly (a linear or
    affine training map of the layer), this is ``(A^H - I) x_T`` up to rounding.

    Returns
    -------
    ndarray, shape (P,), float64 (zero outside the fitted ranges).
    """
    delta = np.zeros(P)
    for f in fits:
        lam = f["eigenvalues"]
        use = np.abs(lam) < 1.0
        if use.any():
            coef = f["amplitudes"][use] * _geometric(lam[use], horizon)
            delta[f["start"]:f["stop"]] = (coef @ f["modes"][use]).real
    return delta


def jump_bound(fits, horizon: int) -> float:
    """First-order error bound of :func:`layer_jump`, relative, worst layer:
    ``max_l Σ_i |b_i| · |S_H(|λ_i| + κ_i r_i) - S_H(|λ_i|)| / ‖x_l‖`` over the modes used,
    ``S_H(μ) = Σ_{h=1}^{H} μ^h`` (each eigenvalue moved outward by its condition-scaled
    residual, the largest error its certification allows). Grows with ``H``; at most
    ``H`` times the per-step bound while the moved modulus stays below 1."""
    worst = 0.0
    for f in fits:
        lam = f["eigenvalues"]
        use = np.abs(lam) < 1.0
        if not use.any() or f["norm"] == 0:
            continue
        mu = np.abs(lam[use])
        err = f["conditions"][use] * f["residuals"][use]
        dS = np.abs(_geometric(mu + err, horizon) - _geometric(mu, horizon))
        worst = max(worst, float(np.sum(np.abs(f["amplitudes"][use]) * dS) / f["norm"]))
    return worst


def candidate_horizons(horizon: int) -> list[int]:
    """``[H, H/2, H/4, ..., 1]`` (integer halving), the horizons a certified jump tries."""
    out, h = [], int(horizon)
    while h >= 1:
        out.append(h)
        h //= 2
    return out


class LayerAccelerator(Accelerator):
    """``accelerate: {scope: layer}``: Dogra & Redman's acceleration — per-layer Koopman
    operators of the weight *updates* over the last ``window`` snapshots (per optimizer
    step with ``snapshot: {unit: step}``), extrapolated ``H`` snapshots ahead.

    ``horizon_rule: fixed``: ``H = horizon``. ``horizon_rule: certified``: the candidates
    :func:`candidate_horizons` whose :func:`jump_bound` is at most ``bound_tol`` are
    tried on the held-out batch, the one with the lowest loss kept; none certified, or
    none lowering the loss → no jump (weights restored bit for bit). The time spent in the
    fits and loss checks is summed in :attr:`seconds` and logged per attempt (``seconds``).
    """

    def __init__(self, model, optimizer, layout, cfg, check_loss):
        super().__init__(model, optimizer, layout, cfg, check_loss)
        self.ranges = layout.layer_ranges()
        self.seconds = 0.0

    def attempt(self, epoch: int, step: int) -> bool:
        import time

        t0 = time.perf_counter()
        try:
            return self._attempt(epoch, step)
        finally:
            took = time.perf_counter() - t0
            self.seconds += took
            self.log[-1]["seconds"] = took             # every attempt logs exactly one entry

    def _attempt(self, epoch: int, step: int) -> bool:
        x_last = self.buffer.last
        Y = self.buffer.array()
        fits = layer_fits(Y, self.ranges, self.cfg.rank)
        record = {"snapshot": self.seen, "epoch": int(epoch), "step": int(step),
                  "rank": max((f["eigenvalues"].size for f in fits), default=0)}
        if self.cfg.horizon_rule == "fixed":
            horizons = [int(self.cfg.horizon)]
        else:
            bounds = {h: jump_bound(fits, h) for h in candidate_horizons(self.cfg.horizon)}
            horizons = [h for h, e in bounds.items() if e <= self.cfg.bound_tol]
            record["bounds"] = {str(h): (e if np.isfinite(e) else None) for h, e in bounds.items()}  # None: unbounded
        if not horizons:
            self.log.append({**record, "outcome": "skipped", "reason": "no horizon certified"})
            return False
        before = float(self.check_loss())
        best_h, best_loss = None, before
        for h in horizons:
            delta = layer_jump(fits, h, Y.shape[1])
            if not np.isfinite(delta).all():
                continue
            self._set((x_last.astype(np.float64) + delta).astype(np.float32))
            loss = float(self.check_loss())
            if loss < best_loss:                                 # NaN never compares lower
                best_h, best_loss = h, loss
        record.update(loss_before=before, loss_after=best_loss)
        if best_h is None:
            self._set(x_last)
            self.log.append({**record, "outcome": "rejected"})
            return False
        self._set((x_last.astype(np.float64) + layer_jump(fits, best_h, Y.shape[1])).astype(np.float32))
        if self.cfg.optimizer_state == "reset":
            self.optimizer.state.clear()
        self.events.append({"kind": "jump", **record, "horizon": best_h,
                            "optimizer_state": self.cfg.optimizer_state})
        self.log.append({**record, "outcome": "jump", "horizon": best_h})
        self.buffer.clear()
        log.info("per-layer koopman jump of %d after snapshot %d: loss %.4g -> %.4g",
                 best_h, self.seen - 1, before, best_loss)
        return True
