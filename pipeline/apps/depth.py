"""A-priori depth from the target's own spectrum: ``kma depth``.

The rule (Mohr, Fonoberova, Drmač, Manojlović & Mezić, "Predicting the critical number
of layers for hierarchical support vector regression", Entropy 23(1):37, 2021): find the
scales present in the target, sorted from coarse to fine, merge scales closer than a
*decay ratio* (their Algorithm 2: a scale is kept only if the last kept scale is at
least ``decay`` times larger), and give the model one stage per surviving scale.

Scales come from the Koopman/DMD spectrum of the signal itself. A 1-D signal
``y_0, ..., y_{n-1}`` on a uniform grid of spacing ``dx`` is delay-embedded into the
Hankel matrix ``H`` (``L × K``, ``K = n - L + 1``; column ``j`` is ``y[j:j+L]``); the
shift ``x ↦ x + dx`` acts linearly on its columns, so DMD of ``H``
(:func:`pipeline.koopman.core.dmd`: refined Rayleigh–Ritz with data residuals) gives
eigenvalues ``λ = |λ| e^{iθ}`` whose periods are ``2π dx / θ``. The Fourier support of
``y`` (their Algorithm 1) is computed beside it as a cross-check.

Noise must not invent scales. Three gates, each reported in the evidence:

1. rank: the Gavish–Donoho optimal hard threshold on the Hankel singular values
   (Gavish & Donoho 2014; unknown noise level), and never above the storage dtype's
   resolution (:func:`pipeline.koopman.core.noise_cut`);
2. residual: a Ritz pair's first-order eigenvalue error bound ``κ · residual`` (its
   certified data residual times its condition number) must be at most
   ``residual_tol``;
3. amplitude: a scale's amplitude (least-squares fit of ``y`` on the modes
   ``λ^j``) must exceed ``rel_amplitude`` times the largest one (Mohr et al.'s 1 %) and
   the noise floor ``2 σ̂ √(ln(M/α)/n)``: the amplitude that white noise of the
   estimated standard deviation ``σ̂`` (what the kept modes leave unexplained) reaches at
   any of ``M = n/2`` frequencies with probability at most ``α = 0.01``. The Fourier
   cross-check uses the same floor with ``σ̂`` from the median periodogram.

Pure math on arrays here; :func:`pipeline.cli.signal_from_config` builds a sweep config's
task and gives its samples (``kma depth CONFIG``).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import KMAError
from ..koopman.core import U64, choose_rank, dmd, dtype_roundoff, noise_cut

__all__ = ["DepthResult", "recommend_depth", "filter_scales", "load_signal",
           "MIN_SAMPLES", "DECAY", "REL_AMPLITUDE", "RESIDUAL_TOL"]

log = logging.getLogger(__name__)

DECAY = 2.0            # merge scales closer than an octave (Algorithm 2's decay ratio)
REL_AMPLITUDE = 0.01   # Mohr et al.'s support threshold: 1 % of the largest coefficient
RESIDUAL_TOL = 0.1     # κ · residual of a scale's Ritz values (a distance in the λ-plane)
ALPHA = 0.01           # false-alarm probability of the noise floor, over all frequencies
MAX_DELAYS = 256       # rows of the Hankel matrix (n/2 for shorter signals)
MIN_SAMPLES = 16


@dataclass
class DepthResult:
    """The recommendation and its evidence.

    Attributes
    ----------
    scales : list of float
        Periods in x units, largest first, after the gates and the decay filter.
    depth : int
        Recommended number of stages: ``len(scales)``, at least 1.
    candidates : list of dict
        Every DMD scale (the eigenvalues of one period: a conjugate pair, a real
        eigenvalue, or the near-equal ones of a trend) with its period,
        amplitude, eigenvalues, ``residual_bound`` (max κ·residual), ``kept`` and, when
        dropped, ``dropped`` (which gate).
    fourier : dict
        The Fourier cross-check: ``scales``, ``depth``, ``noise_std``, ``threshold``,
        ``support`` (bins above it).
    evidence : dict
        ``n_samples``, ``dx``, ``delays``, ``rank``, ``rank_gavish_donoho``,
        ``rank_storage``, ``noise_std``, ``amplitude_floor``, ``mean``, parameters.
    """

    scales: list
    depth: int
    candidates: list = field(default_factory=list)
    fourier: dict = field(default_factory=dict)
    evidence: dict = field(default_factory=dict)
    source: dict = field(default_factory=dict)

    @property
    def agree(self) -> bool:
        """DMD and Fourier support give the same number of scales."""
        return self.fourier.get("depth") == self.depth

    def to_json(self) -> dict:
        return {"scales": self.scales, "depth": self.depth, "method": "hankel-dmd",
                **self.evidence, "agree_with_fourier": self.agree, "fourier": self.fourier,
                "candidates": self.candidates, "source": self.source}


def filter_scales(scales, decay: float = DECAY) -> list:
    """Mohr et al.'s Algorithm 2: from scales sorted descending, keep the first and then
    every scale that the last kept one exceeds at least ``decay`` times."""
    out: list = []
    for s in sorted((float(s) for s in scales), reverse=True):
        if not out or out[-1] / s >= decay:
            out.append(s)
    return out


def transition_depth(depths, errors, gain: float = 0.5, floor: float = 0.0) -> int:
    """Where the error against depth stops falling: the smallest depth ``d`` after which
    no deeper depth lowers the error by more than the fraction ``gain`` (default 0.5:
    extra depth never halves it), i.e. ``min(errors[d' > d]) >= (1 - gain) * errors[d]``.
    ``depths`` ascending, ``errors`` (positive, e.g. mean test MSE over seeds) aligned with
    them; the deepest depth is the answer when every step gains. Errors below ``floor``
    count as ``floor`` (halving an error that is already negligible is no gain)."""
    d = [int(v) for v in depths]
    e = np.asarray(errors, dtype=np.float64)
    if not floor >= 0:
        raise KMAError(f"floor must be >= 0, got {floor}")
    e = np.maximum(e, floor)
    if len(d) == 0 or e.shape != (len(d),):
        raise KMAError(f"need one error per depth, got {len(d)} depths and shape {e.shape}")
    if any(b <= a for a, b in zip(d, d[1:])):
        raise KMAError(f"depths must be strictly ascending, got {d}")
    if not (0 < gain < 1) or not np.all(np.isfinite(e)):
        raise KMAError("gain must be in (0, 1) and errors finite")
    for i in range(len(d)):
        if i == len(d) - 1 or e[i + 1:].min() >= (1 - gain) * e[i]:
            return d[i]
    return d[-1]


def recommend_depth(y, dx: float | None = None, *, decay: float = DECAY,
                    rel_amplitude: float = REL_AMPLITUDE, residual_tol: float = RESIDUAL_TOL,
                    delays: int | None = None) -> DepthResult:
    """Scales and depth of the 1-D signal ``y`` (shape ``(n,)``) on a grid of spacing
    ``dx`` (default ``1/n``). ``y``'s dtype sets the storage resolution (float32 data:
    2^-24). See the module docstring for the method."""
    y = check_signal(y)
    n = y.size
    dx = 1.0 / n if dx is None else float(dx)
    if not (math.isfinite(dx) and dx > 0):
        raise KMAError(f"dx must be a positive number, got {dx}")
    if not decay > 1:
        raise KMAError(f"decay must be > 1, got {decay}")
    u = dtype_roundoff(y.dtype) if np.issubdtype(y.dtype, np.floating) else U64
    y64 = y.astype(np.float64)
    mean = float(y64.mean())
    y0 = y64 - mean                       # a constant is no scale
    L = int(delays) if delays else min(n // 2, MAX_DELAYS)
    if not 2 <= L <= n - 2:
        raise KMAError(f"delays must be between 2 and {n - 2}, got {L}")
    cands, ev = _hankel_candidates(y0, dx, L, u, residual_tol, rel_amplitude)
    kept = [c["period"] for c in cands if c["kept"]]
    scales = filter_scales(kept, decay)
    for c in cands:
        if c["kept"] and c["period"] not in scales:
            c["merged"] = True            # within ``decay`` of a larger kept scale
    fourier = fourier_scales(y0, dx, decay=decay, rel_amplitude=rel_amplitude)
    ev.update(n_samples=n, dx=dx, delays=L, mean=mean, decay=decay,
              rel_amplitude=rel_amplitude, residual_tol=residual_tol, alpha=ALPHA)
    return DepthResult(scales=scales, depth=max(1, len(scales)), candidates=cands,
                       fourier=fourier, evidence=ev)


def check_signal(y) -> np.ndarray:
    """``y`` as a finite, real 1-D array of at least :data:`MIN_SAMPLES` values, or a
    :class:`KMAError` naming the problem."""
    y = np.asarray(y)
    if y.dtype.kind not in "fiub":
        raise KMAError(f"expected real numbers, got dtype {y.dtype}")
    if y.ndim != 1:
        raise KMAError(f"expected a 1-D array of samples, got shape {y.shape}")
    if y.size < MIN_SAMPLES:
        raise KMAError(f"{y.size} samples; at least {MIN_SAMPLES} are needed")
    y64 = y.astype(np.float64)
    bad = ~np.isfinite(y64)
    if bad.any():
        raise KMAError(f"{int(bad.sum())} non-finite values (NaN or inf), the first at index "
                       f"{int(np.flatnonzero(bad)[0])}")
    top = float(np.abs(y64).max())
    if top > MAX_ABS:   # its squares and norms overflow float64 (an SVD of inf, "noise std inf")
        raise KMAError(f"values up to {top:.3g} are too large to analyse (|values| must stay below "
                       f"{MAX_ABS:.0e}); rescale the signal: its scales do not depend on its units")
    return y


# the largest |value| a signal may hold: sums of n squares stay finite in float64
MAX_ABS = 1e150


def _hankel_candidates(y0, dx, L, u, residual_tol, rel_amplitude):
    """DMD of the Hankel matrix of ``y0`` (``(n,)``, mean removed): candidate scales
    (list of dict) and the evidence of the rank and noise gates."""
    n = y0.size
    H = np.lib.stride_tricks.sliding_window_view(y0, L).T       # (L, K), a view
    shape = (L, H.shape[1] - 1)
    s = np.linalg.svd(H[:, :-1], compute_uv=False)
    k_gd = choose_rank(s, threshold="gavish-donoho", shape=shape)
    k_store = choose_rank(s, shape=shape, noise=noise_cut(np.linalg.norm(H[:, :-1], axis=0), u, shape))
    k = min(k_gd, k_store)
    ev = {"rank": k, "rank_gavish_donoho": k_gd, "rank_storage": k_store,
          "singular_values": [float(v) for v in s[:max(2 * k, 10)]]}
    if k == 0:
        ev.update(noise_std=float(np.sqrt(np.mean(y0 ** 2))), amplitude_floor=None)
        return [], ev
    r = dmd(np.ascontiguousarray(H), rank=k, unit_roundoff=u)
    lam = r.eigenvalues
    bound = r.conditions * r.residuals
    # the modes on the whole grid, each column scaled to max modulus 1 (no overflow)
    j = np.arange(n)[:, None]
    loglam = np.log(np.where(lam == 0, 1e-300, lam).astype(np.complex128))   # λ = 0: a column e_0
    V = np.exp(j * loglam - np.maximum(0.0, (n - 1) * loglam.real))
    b = np.linalg.lstsq(V, y0.astype(np.complex128), rcond=None)[0]
    fit = (V @ b).real
    sigma = float(np.sqrt(np.sum((y0 - fit) ** 2) / max(n - k, 1)))
    floor = 2 * sigma * math.sqrt(math.log((n // 2) / ALPHA) / n)
    theta = np.abs(np.angle(lam))
    periods = np.where(theta > 2 * np.pi / n, 2 * np.pi * dx / np.maximum(theta, 1e-300), n * dx)
    certified = bound <= residual_tol
    cands = []
    # certified and uncertified eigenvalues are grouped apart: a spurious mode near a true
    # one must not take the true one's scale down with it
    for ok in (True, False):
        idx = np.flatnonzero(certified == ok)
        for g in _same_period(periods[idx]):
            g = idx[g]
            comp = (V[:, g] @ b[g]).real  # a group's modes together: near-equal λ may cancel
            period = float(np.mean(periods[g]))
            cands.append({"period": period, "frequency": 1.0 / period,
                          "amplitude": float(math.sqrt(2.0) * np.sqrt(np.mean(comp ** 2))),
                          "modulus": float(np.abs(lam[g]).max()),
                          "eigenvalues": [[float(z.real), float(z.imag)] for z in lam[g]],
                          "residual_bound": float(bound[g].max())})
    top = max([c["amplitude"] for c in cands if c["residual_bound"] <= residual_tol], default=0.0)
    for c in cands:
        why = ("residual" if not c["residual_bound"] <= residual_tol
               else "noise floor" if not c["amplitude"] > floor
               else "relative amplitude" if not c["amplitude"] >= rel_amplitude * top else None)
        c["kept"] = why is None
        if why:
            c["dropped"] = why
    cands.sort(key=lambda c: -c["period"])
    ev.update(noise_std=sigma, amplitude_floor=floor)
    return cands, ev


def _same_period(periods, rtol: float = 1e-3) -> list:
    """Indices grouped by period (relative ``rtol``): a conjugate pair, or the near-equal
    real eigenvalues of a trend (``λ ≈ 1``, a Jordan-like block), is one scale."""
    order = np.argsort(-periods, kind="stable")
    groups = []
    for i in order:
        if groups and abs(periods[groups[-1][0]] - periods[i]) <= rtol * periods[i]:
            groups[-1].append(int(i))
        else:
            groups.append([int(i)])
    return groups


def fourier_scales(y0, dx, *, decay=DECAY, rel_amplitude=REL_AMPLITUDE) -> dict:
    """Mohr et al.'s Algorithm 1 with a noise floor: bins of ``rfft(y0)`` above
    ``max(rel_amplitude · max, floor)`` give periods ``n dx / k``, filtered by ``decay``.
    The floor is where a bin of white noise lands with probability ``α / M``: the noise's
    bins are Rayleigh with scale ``median / √(2 ln 2)``."""
    n = y0.size
    mag = np.abs(np.fft.rfft(y0))[1:]             # bins 1 .. n//2 (DC removed)
    M = mag.size
    ray = float(np.median(mag)) / math.sqrt(2 * math.log(2))
    floor = ray * math.sqrt(2 * math.log(M / ALPHA))
    thr = max(rel_amplitude * float(mag.max()), floor)
    support = np.flatnonzero(mag > thr) + 1
    periods = [n * dx / k for k in support]
    scales = filter_scales(periods, decay)
    return {"scales": scales, "depth": max(1, len(scales)),
            "noise_std": ray * math.sqrt(2.0 / n), "threshold": thr / (n / 2),
            "support": int(support.size)}


# -- inputs ------------------------------------------------------------------------------
def load_signal(path) -> np.ndarray:
    """A 1-D array from a ``.npy`` file, checked (:func:`check_signal`); every problem is
    a :class:`KMAError` naming the file."""
    from ..outputs import check_path_length

    p = Path(path)
    check_path_length(p, "--signal")
    if not p.is_file():
        raise KMAError(f"--signal {path}: no such file")
    _check_npy_size(p, path)
    try:
        y = np.load(p, allow_pickle=False)
    except (OSError, ValueError, EOFError):
        raise KMAError(f"--signal {path}: not a NumPy .npy file of numbers (np.save writes one)") from None
    if not isinstance(y, np.ndarray):
        y.close()
        raise KMAError(f"--signal {path}: an .npz archive of several arrays; give a .npy of one 1-D array")
    try:
        return check_signal(y)
    except KMAError as e:
        raise KMAError(f"--signal {path}: {e}") from None


def _check_npy_size(p: Path, path) -> None:
    """A ``.npy`` header's shape agrees with the file's size: a tiny file claiming 2^40
    values is refused before anything is allocated for it."""
    from numpy.lib import format as npformat

    try:
        with open(p, "rb") as f:
            version = npformat.read_magic(f)
            read = npformat.read_array_header_2_0 if version >= (2, 0) else npformat.read_array_header_1_0
            shape, _fortran, dtype = read(f, max_header_size=10_000)
            offset = f.tell()
        size = p.stat().st_size
    except (OSError, ValueError, EOFError, TypeError, SyntaxError):
        return   # not a .npy at all (an .npz, garbage): np.load names it
    if dtype.hasobject:
        return
    count = 1
    for d in shape:
        count *= int(d)
    need = count * dtype.itemsize
    if need != size - offset:
        raise KMAError(f"--signal {path}: its header claims {count:,} values of {dtype} ({need:,} bytes) "
                       f"but the file holds {max(size - offset, 0):,} bytes of data; a damaged or "
                       "forged .npy")


def report(result: DepthResult) -> str:
    """The recommendation as a few lines of text (what ``kma depth`` prints)."""
    ev, src = result.evidence, result.source
    where = (f"{src['config']}: training samples of task {src['task'].get('name')} "
             f"(replica {src['replica_seed']}, noise included; {src['filled']} validation points "
             f"interpolated)") if "config" in src else (src.get("signal") or "signal")
    lines = [f"{where}: {ev['n_samples']} samples, dx={ev['dx']:.6g}",
             f"Hankel DMD: {ev['delays']} delays, rank {ev['rank']} (Gavish-Donoho {ev['rank_gavish_donoho']}, "
             f"storage {ev['rank_storage']}), noise std {ev['noise_std']:.3g}"]
    fmt = "  {:>12}  {:>10}  {:>10}  {}"
    lines.append(fmt.format("period", "amplitude", "kappa*res", "verdict"))
    for c in result.candidates:
        verdict = ("scale" if c["kept"] and not c.get("merged") else
                   f"merged into a larger scale (decay {ev['decay']:g})" if c["kept"] else
                   f"dropped: {c['dropped']}")
        lines.append(fmt.format(f"{c['period']:.6g}", f"{c['amplitude']:.3g}",
                                f"{c['residual_bound']:.2g}", verdict))
    scales = ", ".join(f"{s:.6g}" for s in result.scales) or "none above the noise"
    lines.append(f"scales (periods, largest first): {scales}")
    f = result.fourier
    fs = ", ".join(f"{s:.6g}" for s in f["scales"]) or "none"
    lines.append(f"Fourier support cross-check: {fs} -> depth {f['depth']}"
                 + ("" if result.agree else "  (DISAGREES with DMD; depth follows DMD)"))
    lines.append(f"recommended depth: {result.depth} (one stage per scale)")
    return "\n".join(lines)
