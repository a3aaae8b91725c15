"""Negative Sobolev (H^-s) losses on a uniform grid, and the clean-signal error metrics.

A residual ``r = pred - target`` sampled on a uniform periodic grid of ``n`` points has
the discrete Fourier coefficients ``r̂_k = Σ_j r_j exp(-2πi jk/n)`` (``|k| ≤ n/2``,
``k`` in cycles per period of the grid: on the multiscale task's grid of [0, 1) this is
the task's frequency ``f``). The H^-s loss weighs its power spectrum by

    w_k = (1 + k²)^(-s)

and is normalised so that the weights have mean 1 over the ``n`` frequencies:

    L_s(r) = (1/n²) Σ_k ŵ_k |r̂_k|²,     ŵ_k = w_k / mean_k(w_k).

What the normalisation buys (each tested in ``tests/test_sobolev.py``):

- ``s = 0`` gives exactly the mean squared error (Parseval: (1/n²) Σ|r̂_k|² = mean r²);
- a residual with a flat spectrum (white noise in expectation; an impulse exactly) gives
  its mean squared error whatever ``s``: H^-s and MSE read noise on the same scale, so a
  blend ``mse_weight · MSE + (1 - mse_weight) · L_s`` weighs the two terms fairly;
- a single sinusoid of integer frequency ``k`` (0 < k < n/2) gives ``ŵ_k`` × its MSE:
  low frequencies cost more than under MSE, high ones (where white noise lives) less;
- it is invariant to a circular shift and a reflection of the grid, and to the sign
  of the residual, and quadratic in its scale (``L_s(c·r) = c² L_s(r)``).

It is *not* invariant to the grid's resolution: mean(w) shrinks like 1/n for s > 1/2,
so the same sinusoid costs more on a finer grid (compare values at one ``n_points``).

The loss needs the whole grid in its order, so a training loop steps it full-batch in
grid order (the loss says so with ``whole_grid = True``; see
:func:`pipeline.training.loop.train`). Tensors are ``(n, out_dim)``: the FFT runs along
the grid axis 0, channels are averaged.
"""

from __future__ import annotations

import itertools
import math
from typing import Sequence

import torch
from torch import nn

from ..errors import ConfigError


def sobolev_weights(n: int, s: float, *, dtype=torch.float64, device=None) -> torch.Tensor:
    """Normalised weights ŵ_k of the rfft bins ``k = 0 .. n//2``, shape ``(n//2 + 1,)``,
    each multiplied by how many of the ``n`` full-FFT bins it stands for (1 for k = 0 and,
    for even ``n``, k = n/2; 2 otherwise), so that ``Σ_k m_k ŵ_k = n``."""
    k = torch.arange(n // 2 + 1, dtype=dtype, device=device)
    mult = torch.full_like(k, 2.0)
    mult[0] = 1.0
    if n % 2 == 0:
        mult[-1] = 1.0
    w = (1.0 + k * k) ** (-float(s))
    return mult * w * (n / float((mult * w).sum()))


def hminus_loss(pred: torch.Tensor, target: torch.Tensor, s: float) -> torch.Tensor:
    """``L_s(pred - target)`` (module docstring); ``pred``, ``target`` of shape
    ``(n,)`` or ``(n, out_dim)`` on a uniform grid, in grid order. A scalar tensor."""
    r = pred - target
    if r.ndim == 1:
        r = r.unsqueeze(1)
    n = r.shape[0]
    spec = torch.fft.rfft(r, dim=0)                      # (n//2 + 1, out_dim)
    power = spec.real ** 2 + spec.imag ** 2
    w = sobolev_weights(n, s, dtype=power.dtype, device=power.device)
    return (w.unsqueeze(1) * power).sum(0).mean() / (n * n)


class SobolevLoss(nn.Module):
    """``mse_weight · MSE + (1 - mse_weight) · L_s``: the H^-s loss of the module
    docstring, optionally blended with the mean squared error.

    Parameters
    ----------
    s : float
        Sobolev exponent, ``>= 0`` (0 is plain MSE; larger ignores fine scales more).
    mse_weight : float
        Weight of plain MSE in the blend, in ``[0, 1]``.
    """

    whole_grid = True  # the training loop steps this loss full-batch, in grid order

    def __init__(self, s: float, mse_weight: float = 0.0):
        super().__init__()
        if not (math.isfinite(s) and s >= 0):
            raise ConfigError(f"sobolev s must be >= 0, got {s}")
        if not 0.0 <= mse_weight <= 1.0:
            raise ConfigError(f"sobolev mse_weight must be in [0, 1], got {mse_weight}")
        self.s = float(s)
        self.mse_weight = float(mse_weight)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        loss = hminus_loss(pred, target, self.s)
        if self.mse_weight > 0:
            loss = self.mse_weight * (pred - target).pow(2).mean() + (1 - self.mse_weight) * loss
        return loss

    def extra_repr(self) -> str:
        return f"s={self.s:g}, mse_weight={self.mse_weight:g}"


# -- the clean-signal error ------------------------------------------------------------------
def metric_name(frequency: float) -> str:
    """``clean_error_f<frequency>``: ``clean_error_f16`` for 16.0, ``clean_error_f2.5``."""
    return f"clean_error_f{float(frequency):g}"


def clean_errors(pred: torch.Tensor, clean: torch.Tensor, grid: torch.Tensor,
                 frequencies: Sequence[float]) -> dict[str, float]:
    """How far a prediction on the grid is from the noise-free target.

    ``clean_error`` = ‖pred − clean‖₂ / ‖clean‖₂ over the grid; for each frequency f of
    the target, ``clean_error_f<f>`` = ‖P_f (pred − clean)‖ / ‖P_f clean‖ with P_f the
    least-squares projection onto span{cos 2πfx, sin 2πfx} on the grid: the relative
    error of the target's component at that scale (amplitude and phase). For an integer
    f with 0 < f < n/2 this is |ê_f| / |ĉ_f|, the ratio of DFT coefficients.

    ``pred``, ``clean``, ``grid``: ``(n, 1)`` (or ``(n,)``). Computed in float64.
    """
    p = pred.detach().reshape(-1).double().cpu()
    c = clean.detach().reshape(-1).double().cpu()
    x = grid.detach().reshape(-1).double().cpu()
    err = p - c
    out = {"clean_error": float(err.norm() / c.norm().clamp_min(1e-300))}
    for f in frequencies:
        basis = torch.stack([torch.cos(2 * torch.pi * f * x), torch.sin(2 * torch.pi * f * x)], 1)
        if float(f) == 0.0:
            basis = basis[:, :1]
        q, _ = torch.linalg.qr(basis)                     # orthonormal basis of the span
        num = (q.T @ err).norm()
        den = (q.T @ c).norm().clamp_min(1e-300)
        out[metric_name(f)] = float(num / den)
    return out


class CleanErrorCallback:
    """Appends :func:`clean_errors` of the model on the task's grid to the training
    history after every epoch (before other hooks read it). For tasks with a grid and a
    noise-free target (``task.grid``, ``task.clean``; multiscale)."""

    def __init__(self, model: nn.Module, task, device: str | torch.device = "cpu"):
        self.model = model
        self.grid = task.grid
        self.clean = task.clean
        self.frequencies = list(task.params.get("frequencies", []))
        self.device = torch.device(device)

    @torch.no_grad()
    def on_epoch_end(self, epoch: int, history: dict[str, list[float]]) -> None:
        was_training = self.model.training
        self.model.eval()
        pred = self.model(self.grid.to(self.device))
        self.model.train(was_training)
        for key, value in clean_errors(pred, self.clean, self.grid, self.frequencies).items():
            history.setdefault(key, []).append(value)
        return None


def task_callbacks(model: nn.Module, task, device: str | torch.device = "cpu") -> list:
    """The metric hooks a task asks for: the clean error where it has a clean target."""
    if task.grid is not None and task.clean is not None:
        return [CleanErrorCallback(model, task, device)]
    return []


# -- per-band error and a Wiener-filtered target (the scales experiment) ----------------------
def band_errors(pred: torch.Tensor, clean: torch.Tensor,
                edges: Sequence[float]) -> list[float]:
    """Relative error of a prediction on a uniform periodic grid, band by band.

    With ê_k, ĉ_k the DFTs of ``pred − clean`` and ``clean`` (k = 0 .. n//2, cycles per
    grid period), band b holds the bins ``edges[b] <= k < edges[b+1]`` and its error is
    ``sqrt(Σ_b m_k |ê_k|²) / sqrt(Σ_b m_k |ĉ_k|²)`` (m_k the full-FFT multiplicity, as in
    :func:`sobolev_weights`) — the relative L2 error of the prediction restricted to that
    band; for a band whose clean part is nil (below 1e-9 of the total power), the band's error relative to ‖clean‖
    instead (how much the prediction put where the target has nothing: fitted noise).
    ``pred``, ``clean``: ``(n,)`` or ``(n, 1)``; float64 throughout.
    """
    p = pred.detach().reshape(-1).double().cpu()
    c = clean.detach().reshape(-1).double().cpu()
    n = c.numel()
    k = torch.arange(n // 2 + 1, dtype=torch.float64)
    mult = torch.full_like(k, 2.0)
    mult[0] = 1.0
    if n % 2 == 0:
        mult[-1] = 1.0
    pe = mult * torch.fft.rfft(p - c).abs() ** 2
    pc = mult * torch.fft.rfft(c).abs() ** 2
    total = float(pc.sum())
    out = []
    for lo, hi in itertools.pairwise(edges):
        band = (k >= lo) & (k < hi)
        den = float(pc[band].sum())
        if den <= 1e-9 * total:  # no clean power here (float32 round-off aside)
            den = total
        out.append(float((pe[band].sum() / max(den, 1e-300)) ** 0.5))
    return out


def wiener_target(y: torch.Tensor, noise_quantile_from: float = 0.5) -> torch.Tensor:
    """A Wiener-filtered copy of a signal ``y`` (``(n,)`` or ``(n, 1)``) on a uniform grid,
    under a *white*-noise model whose level is estimated from the data.

    The noise power per rfft bin, N, is estimated as median/ln 2 of |ŷ_k|² over the bins
    ``k >= noise_quantile_from · n/2`` (the upper half of the spectrum by default, where
    a band-limited signal has almost no power; a white-noise bin's power is exponential,
    whose mean is its median/ln 2); each bin is kept with the gain
    ``max(0, 1 − α N / |ŷ_k|²)``, α = ln(n/2): spectral subtraction over-subtracted so
    that a pure-noise bin passes with probability e^-α = 2/n (the plain Wiener gain,
    α = 1, lets a third of the noise bins through). Coloured noise breaks the model (its low-frequency power
    passes through): the filter is a baseline that knows as much as the user would.
    """
    flat = y.detach().reshape(-1).double()
    n = flat.numel()
    spec = torch.fft.rfft(flat)
    power = spec.abs() ** 2
    start = int(noise_quantile_from * (n // 2))
    noise = power[start:].median() / math.log(2.0)
    alpha = math.log(max(n // 2, 2))
    gain = (1.0 - alpha * noise / power.clamp_min(1e-300)).clamp_min(0.0)
    out = torch.fft.irfft(gain * spec, n=n)
    return out.to(y.dtype).reshape(y.shape)
