"""Small-matrix DMD in float64: refined Rayleigh–Ritz with residuals.

The data matrix ``X`` has shape ``(m, n)``: its columns are the snapshots
``x_0, ..., x_{n-1}`` (``X = Y.T`` for a snapshot-major trajectory ``Y`` of shape
``(n, m)``). ``m`` is small here: either the rank ``k`` of a compressed factor ``C``
(:mod:`pipeline.koopman.compress`, ``X ≈ Q C`` with orthonormal ``Q``; every quantity
below is invariant under ``Q``), or the size of an in-memory window.

Method (Drmač, Mezić & Mohr, "Data driven modal decompositions: analysis and
enhancements", SIAM J. Sci. Comput. 40(4), 2018; LAPACK ``xGEDMD``, Drmač, LAWN 298,
2022):

1. optional column scaling ``X1 = X1s D``, ``X2s = X2 D^{-1}`` (same ``D``, so
   ``A X1 = X2`` is preserved);
2. thin SVD ``X1 = U Σ W^T``, truncated to ``k`` by an explicit rank, a tolerance
   relative to ``σ_max``, or the Gavish–Donoho optimal hard threshold (Gavish &
   Donoho, IEEE Trans. Inf. Theory 60(8), 2014);
3. ``B = X2 W_k Σ_k^{-1}`` (``= A U_k`` for linear data), Rayleigh quotient
   ``S = U_k^T B``, eigenpairs ``S w_i = λ_i w_i`` with ``||w_i|| = 1``;
4. Ritz vectors ``z_i = U_k w_i`` and residuals ``r_i = ||B w_i - λ_i U_k w_i||``
   (``= ||A z_i - λ_i z_i||``); with ``refine=True`` the refined Ritz vectors minimise
   that residual over unit vectors of ``span(U_k)`` (smallest right singular vector of
   ``B - λ_i U_k``, computed in ``2k`` coordinates);
5. amplitudes: least-squares fit of the first snapshot onto the Ritz vectors.

Eigenvalues are complex128, sorted by descending ``|λ|``, ties by descending imaginary
part.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["DMDResult", "dmd", "choose_rank", "gavish_donoho_omega"]

_THRESHOLDS = ("gavish-donoho",)
_EPS = np.finfo(np.float64).eps


@dataclass(frozen=True)
class DMDResult:
    """Result of :func:`dmd` on one matrix.

    Attributes
    ----------
    eigenvalues : ndarray, shape (r,), complex128
        Ritz values, sorted by descending modulus (ties: descending imaginary part).
    amplitudes : ndarray, shape (r,), complex128
        Least-squares coefficients of the first snapshot on ``vectors``.
    residuals : ndarray, shape (r,), float64
        ``||A z_i - λ_i z_i||`` for the unit-norm (refined) Ritz vector ``z_i``.
    singular_values : ndarray, shape (min(m, n-1),), float64
        All singular values of the (scaled) ``X1``, before truncation.
    rank : int
        Number ``r`` of singular values kept.
    vectors : ndarray, shape (m, r), complex128
        Unit-norm Ritz vectors in the coordinates of the input rows.
    """

    eigenvalues: np.ndarray
    amplitudes: np.ndarray
    residuals: np.ndarray
    singular_values: np.ndarray
    rank: int
    vectors: np.ndarray


def gavish_donoho_omega(beta: float) -> float:
    """Optimal hard-threshold factor ω(β) for unknown noise (Gavish & Donoho 2014).

    The threshold is ``ω(β) · median(σ)`` for an ``M × N`` matrix, ``β = min/max``.
    """
    beta = float(beta)
    return 0.56 * beta**3 - 0.95 * beta**2 + 1.82 * beta + 1.43


def choose_rank(s, *, rank=None, tol=None, threshold=None, shape=None) -> int:
    """Number of singular values to keep.

    Parameters
    ----------
    s : ndarray, shape (q,)
        Singular values in descending order.
    rank : int, optional
        Explicit rank (capped at the numerical rank, so ``1/σ`` stays finite).
    tol : float, optional
        Keep ``σ_i > tol · σ_max``.
    threshold : {"gavish-donoho"}, optional
        Optimal hard threshold ``ω(β) median(σ)``; ``s`` must be the full spectrum.
    shape : (int, int), optional
        Shape of the data matrix the spectrum belongs to (for ``β`` and the default
        tolerance); defaults to ``(len(s), len(s))``.

    With none of ``rank``, ``tol``, ``threshold`` the numerical rank is kept:
    ``σ_i > max(shape) · eps · σ_max``.
    """
    s = np.asarray(s, dtype=np.float64)
    if s.size == 0 or not s[0] > 0:
        return 0
    m, n = shape if shape is not None else (s.size, s.size)
    numerical = int(np.count_nonzero(s > max(m, n) * _EPS * s[0]))
    if rank is not None:
        return int(min(rank, numerical))
    if tol is not None:
        return int(np.count_nonzero(s > tol * s[0]))
    if threshold is not None:
        if threshold not in _THRESHOLDS:
            raise ValueError(f"unknown threshold {threshold!r}; known: {list(_THRESHOLDS)}")
        beta = min(m, n) / max(m, n)
        return int(np.count_nonzero(s > gavish_donoho_omega(beta) * np.median(s)))
    return numerical


def _validate_rank_args(rank, tol, threshold):
    given = [name for name, v in (("rank", rank), ("tol", tol), ("threshold", threshold))
             if v is not None]
    if len(given) > 1:
        raise ValueError(f"give at most one of rank, tol, threshold (got {', '.join(given)})")
    if rank is not None and (int(rank) != rank or rank < 1):
        raise ValueError(f"rank must be a positive integer, got {rank!r}")
    if tol is not None and not (0 <= tol < 1):
        raise ValueError(f"tol must be in [0, 1), got {tol!r}")
    if threshold is not None and threshold not in _THRESHOLDS:
        raise ValueError(f"unknown threshold {threshold!r}; known: {list(_THRESHOLDS)}")


def dmd(X, *, rank=None, tol=None, threshold=None, scale=False, refine=False,
        data_shape=None) -> DMDResult:
    """Refined Rayleigh–Ritz DMD of the snapshot matrix ``X`` (xGEDMD, LAWN 298).

    Parameters
    ----------
    X : array_like, shape (m, n), n >= 2
        Snapshots as columns; cast to float64.
    rank, tol, threshold
        Truncation of the SVD of ``X1 = X[:, :-1]``, see :func:`choose_rank`
        (at most one of them).
    scale : bool
        Scale the columns of ``X1`` (and ``X2`` by the same factors) to unit norm
        before the SVD (xGEDMD ``JOBS='S'``).
    refine : bool
        Return refined Ritz vectors (minimal residual in ``span(U_k)``) and their
        residuals instead of the plain Ritz vectors.
    data_shape : (int, int), optional
        Shape of the original ``X1`` when ``X`` is a compressed factor (``(P, n-1)``);
        used for the Gavish–Donoho aspect ratio and the default tolerance.

    Returns
    -------
    DMDResult
    """
    _validate_rank_args(rank, tol, threshold)
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or X.shape[1] < 2:
        raise ValueError(f"X must be 2-d with at least 2 snapshot columns, got shape {X.shape}")
    if not np.isfinite(X).all():
        raise ValueError("X contains NaN or inf")
    return _dmd(X, rank, tol, threshold, scale, refine, data_shape)


def _sort_order(lam):
    return np.lexsort((-lam.imag, -np.abs(lam)))


def _dmd(X, rank, tol, threshold, scale, refine, data_shape) -> DMDResult:
    m = X.shape[0]
    X1, X2 = X[:, :-1], X[:, 1:]
    if scale:
        d = np.linalg.norm(X1, axis=0)
        d[d == 0] = 1.0
        X1, X2 = X1 / d, X2 / d
    U, s, Vh = np.linalg.svd(X1, full_matrices=False)
    k = choose_rank(s, rank=rank, tol=tol, threshold=threshold,
                    shape=data_shape if data_shape is not None else X1.shape)
    if k == 0:
        empty_c = np.zeros(0, np.complex128)
        return DMDResult(empty_c, empty_c, np.zeros(0), s, 0, np.zeros((m, 0), np.complex128))
    Uk, sk = U[:, :k], s[:k]
    B = (X2 @ Vh[:k].T) / sk                      # (m, k) = A U_k
    S = Uk.T @ B                                  # (k, k) Rayleigh quotient
    lam, W = np.linalg.eig(S)
    order = _sort_order(lam)
    lam, W = lam[order].astype(np.complex128), W[:, order].astype(np.complex128)
    if refine:
        W, res = _refine(Uk, B, lam)
    else:
        res = np.linalg.norm(B @ W - (Uk @ W) * lam, axis=0)
    Z = Uk @ W
    amp = np.linalg.lstsq(Z, X[:, 0].astype(np.complex128), rcond=None)[0]
    return DMDResult(lam, amp, res, s, k, Z)


def _refine(Uk, B, lam):
    """Refined Ritz vectors: argmin_{||w||=1} ||(B - λ U_k) w|| in 2k coordinates."""
    k = Uk.shape[1]
    UB = np.concatenate([Uk, B], axis=1)
    R = np.linalg.qr(UB, mode="r") if UB.shape[0] > UB.shape[1] else UB
    Ru, Rb = R[:, :k], R[:, k:]
    W = np.empty((k, lam.size), np.complex128)
    res = np.empty(lam.size)
    for i, li in enumerate(lam):
        _, sv, vh = np.linalg.svd(Rb - li * Ru)
        W[:, i] = vh[-1].conj()
        res[i] = sv[-1] if sv.size == k else 0.0
    return W, res
