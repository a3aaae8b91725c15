"""Compressed factors ``X_g ≈ Q C`` and the helpers shared by the compression methods.

For a group (layer) ``g`` with columns ``[start, stop)`` of the snapshot-major
trajectory ``Y`` (``T × P``), ``X_g = Y[:, start:stop].T`` has shape ``(P_g, T)``.
A :class:`Factor` holds ``C`` (``k × T``, float64) with ``X_g ≈ Q C`` and ``Q``
orthonormal (``P_g × k``). ``Q`` is never formed: it is recorded as
``Q[rows of segment i] = X[rows of segment i] @ basis_i`` (``basis_i``: ``T × k``), so a
second pass over the data can form P-long modes ``Q z`` on request.

The column transform ``E`` used by the passes maps ``X`` to
``X E = [x_0, x_1 - x_0, ..., x_{T-1} - x_0]``; it is exact and is undone on the small
side (``C = C_E E^{-1}``, ``basis = E basis_E``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import dask.array as da
import numpy as np

from ..errors import KMAError, plural
from .core import numerical_rank
from .source import Trajectory

__all__ = ["Factor", "KoopmanInputError", "as_dask", "as_trajectory", "validate_groups",
           "gram_to_factor", "factor_from_r", "resolves", "GRAM_MARGIN"]

GRAM_MARGIN = 100.0   # a kept singular value must exceed the factor's resolution this much


class KoopmanInputError(KMAError, ValueError):
    """Invalid input to the Koopman engine (bad shape, NaN/inf, bad window)."""


@dataclass(frozen=True)
class Factor:
    """Compressed factor of one group.

    Attributes
    ----------
    name : str
        Group name (``"all"`` for the whole network).
    start, stop : int
        Column range of the group in ``Y``.
    C : ndarray, shape (k, T), float64
        ``X_g ≈ Q C`` with ``Q`` orthonormal.
    segments : tuple of (int, int, ndarray of shape (T, k))
        ``Q[a - start:b - start] = Y[:, a:b].T @ basis`` for each ``(a, b, basis)``.
    method : str
        ``"gram"``, ``"tsqr"``, ``"randomized"`` or ``"gram-window"``.
    rows : ndarray of int, optional
        The snapshots the bases refer to (their rows; ``len(rows) × k``), when not all
        ``T``: a window's factor depends only on the window's own snapshots.
    error : float
        Absolute resolution of ``C``: bound on the error of its columns (and on the
        singular values it can resolve). A Gram-derived factor's is far larger than a
        QR's (:func:`pipeline.koopman.windows.gram_resolution`).
    """

    name: str
    start: int
    stop: int
    C: np.ndarray
    segments: tuple
    method: str
    rows: np.ndarray | None = None
    error: float = 0.0

    @property
    def rank(self) -> int:
        return self.C.shape[0]


def resolves(factor, sigma, *, scale=False) -> bool:
    """Whether ``factor`` resolves the singular value ``sigma`` a cut keeps: ``sigma``
    is at least ``GRAM_MARGIN`` times ``factor.error`` (in the units of the column-scaled
    matrix when ``scale``). The one rule that sends a Gram-derived factor to the stable
    pass (the estimator per window, :func:`pipeline.koopman.compress.compress` for the
    whole trajectory)."""
    error = factor.error
    if scale:
        norms = np.linalg.norm(factor.C[:, :-1], axis=0)
        error = error / max(norms.min(), np.finfo(np.float64).tiny)
    return bool(sigma >= GRAM_MARGIN * error)


def undo_e_columns(C):
    """``C E^{-1}``: add column 0 to the other columns (``k × T``)."""
    C = np.array(C, dtype=np.float64)
    C[:, 1:] += C[:, :1]
    return C


def apply_e_rows(M):
    """``E M`` for ``M`` of shape ``(T, k)``: row 0 minus the sum of the other rows."""
    M = np.array(M, dtype=np.float64)
    M[0] -= M[1:].sum(axis=0)
    return M


def factor_from_r(R, name, start, stop, method):
    """Factor from ``X E = Q_R R`` (``R``: ``r × T``): ``C = Σ V^T E^{-1}``."""
    T = R.shape[1]
    _, s, Vh = np.linalg.svd(R, full_matrices=False)
    k = numerical_rank(s, T)
    Ct = s[:k, None] * Vh[:k]
    basis = apply_e_rows(Vh[:k].T / s[:k])
    # Householder QR / TSQR: backward error ~ u64 (√P + T) ||X||
    err = float(np.finfo(np.float64).eps / 2 * (np.sqrt(stop - start) + T) * (s[0] if s.size else 0.0))
    return Factor(name, start, stop, undo_e_columns(Ct), ((start, stop, basis),), method,
                  error=err)


def gram_to_factor(G, name, start, stop, method="gram"):
    """Factor of ``XE`` from its float64 Gram ``G`` (``T × T``), with column scaling.

    Returns the factor and the scaled spectrum ``σ / σ_max`` (descending).
    """
    T = G.shape[0]
    d = np.sqrt(np.maximum(np.diagonal(G), 0.0))
    d[d == 0] = 1.0
    Gs = G / d[:, None] / d[None, :]
    mu, V = np.linalg.eigh((Gs + Gs.T) / 2)
    mu, V = mu[::-1], V[:, ::-1]
    k = numerical_rank(mu, T)                     # on σ² = μ: σ > sqrt(T eps) σ_max
    sig = np.sqrt(mu[:k])
    Ct = (sig[:, None] * V[:, :k].T) * d[None, :]
    basis = apply_e_rows((V[:, :k] / d[:, None]) / sig)
    rel = np.sqrt(np.maximum(mu, 0.0) / mu[0]) if k else np.zeros(0)
    return Factor(name, start, stop, undo_e_columns(Ct), ((start, stop, basis),), method), rel


def as_trajectory(Y) -> Trajectory:
    """``Y`` (``T × P`` numpy, dask or :class:`Trajectory`) as a validated Trajectory.

    An in-memory ``Y`` is wrapped without a copy (:func:`as_dask` ``copy=False``): the
    fit and the passes that take a Trajectory compute it before they return."""
    if isinstance(Y, Trajectory):
        array = as_dask(Y.array)
        return Y if array is Y.array else replace(Y, array=array)
    return Trajectory(as_dask(Y, copy=False))


def as_dask(Y, copy: bool = True):
    """Wrap ``Y`` (``T × P`` numpy, dask or Trajectory) as a dask array; validate shape
    and dtype.

    ``copy=False`` wraps an in-memory ``Y``'s column blocks as they are (views of ``Y``,
    the same blocks ``dask.array.from_array`` makes of its copy), for a caller that
    computes the result before ``Y`` can change: ``from_array`` copies the whole array
    and hashes it for the graph's name (0.3 s of the 6 × 3M bad-init fit in a
    ``kma analyze`` at load 13)."""
    if isinstance(Y, Trajectory):
        Y = Y.array
    if not isinstance(Y, da.Array):
        Y = np.asarray(Y)
        if Y.ndim == 2:
            p_chunk = max(1, min(Y.shape[1], 2**24 // max(1, Y.shape[0] * Y.itemsize)))
            Y = (da.from_array(Y, chunks=(Y.shape[0], p_chunk)) if copy or not Y.shape[1]
                 else _blocks_of(Y, p_chunk))
    return _validate_array(Y)


def _blocks_of(Y: np.ndarray, p_chunk: int):
    """``Y`` (2-d numpy) as a dask array of column blocks ``Y[:, a:a + p_chunk]`` (views)."""
    import uuid

    name = f"array-{uuid.uuid4().hex}"
    starts = range(0, Y.shape[1], p_chunk)
    dsk = {(name, 0, j): Y[:, a:a + p_chunk] for j, a in enumerate(starts)}
    chunks = ((Y.shape[0],), tuple(min(p_chunk, Y.shape[1] - a) for a in starts))
    return da.Array(dsk, name, chunks, dtype=Y.dtype, meta=Y[:0, :0])


def _validate_array(Y):
    if Y.ndim != 2:
        raise KoopmanInputError(f"trajectory must be 2-d (snapshots × parameters), got shape {Y.shape}")
    if not np.issubdtype(Y.dtype, np.floating):
        raise KoopmanInputError(f"trajectory must be floating point, got dtype {Y.dtype}")
    if Y.shape[0] < 2:
        raise KoopmanInputError(f"need at least 2 snapshots, got {Y.shape[0]}")
    if any(np.isnan(c) for c in Y.chunks[0] + Y.chunks[1]):
        raise KoopmanInputError("trajectory has unknown chunk sizes")
    return Y


def validate_groups(groups, P):
    """Check ``[(name, start, stop), ...]`` covers ``[0, P)`` contiguously, in order."""
    if groups is None:
        return [("all", 0, P)]
    out, expected, names = [], 0, set()
    for item in groups:
        try:
            name, start, stop = item
        except (TypeError, ValueError):
            raise KoopmanInputError(f"group {item!r} is not (name, start, stop)") from None
        name, start, stop = str(name), int(start), int(stop)
        if start != expected or stop <= start:
            raise KoopmanInputError(
                f"group {name!r} spans [{start}, {stop}); groups must be non-empty, contiguous "
                f"and in order from 0 (expected start {expected})")
        if name in names:
            raise KoopmanInputError(f"group name {name!r} appears twice")
        names.add(name)
        out.append((name, start, stop))
        expected = stop
    if expected != P:
        raise KoopmanInputError(f"groups cover [0, {expected}) but the trajectory has {plural(P, 'parameter')}")
    if "all" in names and len(out) > 1:
        raise KoopmanInputError("group name 'all' is reserved for the whole network")
    return out


def raise_non_finite(names, detail=""):
    raise KoopmanInputError(
        f"trajectory contains NaN or inf values in {plural(len(names), 'layer', count=False)} "
        + ", ".join(repr(n) for n in names) + (f" ({detail})" if detail else ""))
