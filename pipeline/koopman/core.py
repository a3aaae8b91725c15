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
   (``= ||A z_i - λ_i z_i||``). ``B`` has every row of ``X``, not only the ``k`` kept
   directions: the residual is measured against all the data the matrix holds (for a
   compressed factor, everything the compression kept), as in xGEDMD. With
   ``refine=True`` (the default) the refined Ritz vectors minimise that residual over
   unit vectors of ``span(U_k)`` (smallest right singular vector of ``B - λ_i U_k``,
   computed in ``2k`` coordinates). A window whose residuals are not informative
   (see ``DMDResult.informative``) keeps the plain Ritz vectors: no pair of it can be
   certified, and refinement would cost ``O(k^4)`` there;
5. certification: a residual is never reported below ``residual_floor``, what the
   input can certify: ``(factor_error + u64 (√m + n) σ_max) ||d_i||`` with
   ``r_i = X d_i`` the residual as a combination of the snapshots (see
   ``shared/NUMERICS.md``); ``factor_error`` is the caller's bound on the absolute
   error of ``X``'s columns (a Gram-derived factor: its resolution);
6. unit circle: ``κ_i = 1/|y_i^H w_i|`` from unit left/right eigenvectors of the
   Rayleigh quotient (left ones from ``W^{-1}``); first order, a true eigenvalue lies within ``κ_i r_i`` of
   ``λ_i``: ``"inside"`` if ``|λ_i| + κ_i r_i < 1``, ``"outside"`` if
   ``|λ_i| - κ_i r_i > 1``, else ``"uncertain"``;
7. amplitudes: least-squares fit of the first snapshot onto the Ritz vectors.

Default truncation (no ``rank``/``tol``/``threshold``, :func:`default_cut`): keep
``σ_i`` above the larger of two noise levels, at most ``⌊(n-1)/2⌋`` of them (residuals
stay informative; when ``m_data < n - 1``, where they never are, the storage cut alone):

- the noise that storing the snapshots in a dtype of unit roundoff ``u`` puts into
  ``X1``: ``τ_u = 2 · u/√3 · max_j ||x_j|| · (1 + √(n/m_data))``, ``m_data`` the data's row
  count (white rounding noise of standard deviation ``≤ u|x|/√3`` per entry; the largest
  singular value of such a noise matrix is about ``(√m + √n)`` times that). The cut is
  on the raw snapshots (never reference-subtracted), so the rounding error of a
  reference is not common to every column;
- the noise the data show: the Gavish–Donoho threshold ``ω(β) · median(σ)`` with the
  median over the *whole* spectrum of ``X1`` (:func:`full_spectrum`: a factor's values
  below its resolution are padded from it), ``β = (n-1)/m_data``.

``threshold="gavish-donoho"`` uses the second alone (still on the whole spectrum).
A caller passing ``min_sigma`` (a Gram-derived factor's resolution) gets no value below
it kept by either rule.

Misfit (``DMDResult.misfit``): ``||X2 (I - V_k V_k^T)||_F / ||X2||_F``, what the fitted
linear map leaves unexplained of the next snapshots; the residuals cannot see it. A
window whose misfit exceeds ``misfit_limit`` (``MISFIT_MARGIN`` times what its cut
explains as noise) certifies nothing (``DMDResult.fits``).

Eigenvalues are complex128, sorted by descending ``|λ|``, ties by descending imaginary
part.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

__all__ = ["DMDResult", "dmd", "choose_rank", "gavish_donoho_omega", "noise_cut",
           "dtype_roundoff", "unit_circle_verdicts", "full_spectrum", "MISFIT_MARGIN"]

log = logging.getLogger(__name__)

_THRESHOLDS = ("gavish-donoho", "storage")
_EPS = np.finfo(np.float64).eps
U64 = _EPS / 2
NOISE_SAFETY = 2.0     # the cut sits this far above the estimated noise edge
# a window certifies nothing when its linear model leaves more of the next snapshots
# unexplained than this many times what its cut calls noise (docs "Certified spectra").
# Linear data plus white noise sit at ~1/3 of the unmargined limit; nonlinear maps' transient
# windows at 10^3-10^5 times it; minibatch SGD/Adam (process noise) at 3-100 times. Moderate
# misfit is priced into the residual instead (the misfit term), so the gate only has to
# catch windows that fit no linear model at all.
MISFIT_MARGIN = 100.0


def dtype_roundoff(dtype) -> float:
    """Unit roundoff of a storage dtype: float64 2^-53, float32 2^-24, float16 2^-11,
    ``"bfloat16"`` 2^-8."""
    if str(dtype) == "bfloat16":
        return 2.0 ** -8
    return float(np.finfo(np.dtype(dtype)).eps) / 2


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
        ``max(||A z_i - λ_i z_i||, residual_floor_i) + μ ||c_i||`` for the unit-norm
        (refined) Ritz vector ``z_i = X1 c_i``; the data residual (all rows of ``X``),
        never below the floor, plus the model's misfit inside the kept directions
        (``μ``: the unexplained part of ``X2`` inside ``span(U_k)`` per unexplained
        direction, see :func:`_misfit`), which the data residual cannot see.
    singular_values : ndarray, shape (min(m, n-1),), float64
        All singular values of the (scaled) ``X1``, before truncation.
    rank : int
        Number ``r`` of singular values kept.
    vectors : ndarray, shape (m, r), complex128
        Unit-norm Ritz vectors in the coordinates of the input rows.
    residual_floors : ndarray, shape (r,), float64
        Smallest residual the input can certify, per pair.
    conditions : ndarray, shape (r,), float64
        Eigenvalue condition numbers ``κ_i`` of the Rayleigh quotient.
    unit_circle : tuple of str, length r
        ``"inside"``, ``"outside"`` or ``"uncertain"`` (first order, ``|λ| ± κ r``).
    informative : bool
        False when the residuals cannot separate anything: the kept rank leaves fewer
        snapshot pairs (or data rows) to test it than it has directions
        (``2 r > min(n - 1, m_data)``).
    rank_requested : int or None
        The ``rank`` asked for, when it was capped to ``rank`` (fewer directions).
    misfit : float
        ``||X2 (I - V_k V_k^T)||_F / ||X2||_F``: the share of the next snapshots that the
        fitted linear map ``A = X2 V_k Σ_k^{-1} U_k^T`` leaves unexplained (``A X1 =
        X2 V_k V_k^T``). The residuals cannot see it (it lies outside ``span(U_k)``'s
        preimage), so a window whose data no linear map fits would certify anything.
    misfit_limit : float
        The largest ``misfit`` the window's cut explains as noise (or as dropped
        directions): ``MISFIT_MARGIN · (√(n-1-k) · σ_cut + floor) / ||X2||_F``, with
        ``σ_cut`` the largest singular value the cut dropped (the noise estimate when
        none). ``misfit > misfit_limit``: no pair of the window may be certified.
    misfit_terms : ndarray, shape (r,)
        ``μ ||c_i||``, the part of ``residuals`` that is the model's misfit rather than
        the data residual (``residuals - misfit_terms = max(data residual, floor)``).
    """

    eigenvalues: np.ndarray
    amplitudes: np.ndarray
    residuals: np.ndarray
    singular_values: np.ndarray
    rank: int
    vectors: np.ndarray
    residual_floors: np.ndarray = field(default_factory=lambda: np.zeros(0))
    conditions: np.ndarray = field(default_factory=lambda: np.zeros(0))
    unit_circle: tuple = ()
    informative: bool = True
    rank_requested: int | None = None
    misfit: float = 0.0
    misfit_limit: float = np.inf
    misfit_terms: np.ndarray = field(default_factory=lambda: np.zeros(0))

    @property
    def fits(self) -> bool:
        """Whether a linear model fits the window (``misfit <= misfit_limit``)."""
        return bool(self.misfit <= self.misfit_limit)


def gavish_donoho_omega(beta: float) -> float:
    """Optimal hard-threshold factor ω(β) for unknown noise (Gavish & Donoho 2014).

    The threshold is ``ω(β) · median(σ)`` for an ``M × N`` matrix, ``β = min/max``.
    """
    beta = float(beta)
    return 0.56 * beta**3 - 0.95 * beta**2 + 1.82 * beta + 1.43


def noise_cut(col_norms, u, shape) -> float:
    """Default cut ``τ = 2 · u/√3 · max_j ||x_j|| · (1 + √(n/m))`` for ``X1`` of shape
    ``(m, n)`` whose stored entries carry rounding errors up to ``u |x|`` (white noise
    of standard deviation ``≤ u |x|/√3``; the largest singular value of an ``m × n``
    such matrix is about ``(√m + √n)`` times that)."""
    col_norms = np.asarray(col_norms, dtype=np.float64)
    if col_norms.size == 0 or u is None or u <= 0:
        return 0.0
    m, n = shape
    return float(NOISE_SAFETY * u / np.sqrt(3.0) * col_norms.max() * (1 + np.sqrt(n / max(m, 1))))


def numerical_rank(s, n: int) -> int:
    """How many of ``s`` (descending, nonnegative) exceed ``n · eps · s[0]``: the
    numerical rank rule of every factor and cut in the engine (0 when ``s[0]`` is not
    positive). Given eigenvalues ``μ = σ²`` of a Gram it keeps ``σ > sqrt(n eps) σ_max``."""
    s = np.asarray(s)
    if s.size == 0 or not s[0] > 0:
        return 0
    return int(np.count_nonzero(s > n * _EPS * s[0]))


def full_spectrum(s, q: int, pad: float) -> np.ndarray:
    """``s`` (descending) completed to the ``q = min(P, n-1)`` singular values of the data
    matrix it stands for: a factor drops the values below its resolution, which are at
    most ``pad`` (``min(s[-1], pad)`` stands in for each). What a noise estimate from the
    median needs (shared/NUMERICS.md, "Noise estimates need the whole spectrum")."""
    s = np.asarray(s, dtype=np.float64)
    if s.size >= q:
        return s[:q] if q > 0 else s
    fill = min(float(s[-1]), float(pad)) if s.size else 0.0
    return np.concatenate([s, np.full(q - s.size, max(fill, 0.0))])


def choose_rank(s, *, rank=None, tol=None, threshold=None, shape=None, noise=None,
                spectrum=None) -> int:
    """Number of singular values to keep.

    Parameters
    ----------
    s : ndarray, shape (q,)
        Singular values in descending order.
    rank : int, optional
        Explicit rank (capped at the numerical rank, so ``1/σ`` stays finite).
    tol : float, optional
        Keep ``σ_i > tol · σ_max``.
    threshold : {"gavish-donoho", "storage"}, optional
        Optimal hard threshold ``ω(β) median(σ)``, the median over ``spectrum`` (the
        whole spectrum, :func:`full_spectrum`; default ``s``, which must then be whole).
        ``"storage"``: the storage dtype's noise alone (``noise``; engine 3's default,
        no cap: what :mod:`pipeline.apps.badinit` reads ranks from).
    shape : (int, int), optional
        Shape of the data matrix the spectrum belongs to (for ``β`` and the default
        tolerance); defaults to ``(len(s), len(s))``.
    noise : float, optional
        Absolute noise level (:func:`noise_cut`) for the storage rule.

    With none of ``rank``, ``tol``, ``threshold``: ``σ_i > noise`` and above the
    numerical rank ``σ_i > max(shape) · eps · σ_max``. (The estimator's default is
    :func:`default_cut`.)
    """
    s = np.asarray(s, dtype=np.float64)
    if s.size == 0 or not s[0] > 0:
        return 0
    m, n = shape if shape is not None else (s.size, s.size)
    numerical = numerical_rank(s, max(m, n))
    if rank is not None:
        return int(min(rank, numerical))
    if tol is not None:
        return int(np.count_nonzero(s > tol * s[0]))
    if threshold == "storage":
        return int(min(numerical, np.count_nonzero(s > noise))) if noise else numerical
    if threshold is not None:
        if threshold not in _THRESHOLDS:
            raise ValueError(f"unknown threshold {threshold!r}; known: {list(_THRESHOLDS)}")
        return int(min(numerical, np.count_nonzero(s > gavish_donoho_cut(
            s if spectrum is None else spectrum, (m, n)))))
    if noise:
        return int(min(numerical, np.count_nonzero(s > noise)))
    return numerical


def gavish_donoho_cut(spectrum, shape) -> float:
    """``ω(β) · median(spectrum)``, ``β`` the aspect ratio of ``shape`` (Gavish & Donoho
    2014, unknown noise); ``spectrum`` must be the whole spectrum (:func:`full_spectrum`)."""
    m, n = shape
    spectrum = np.asarray(spectrum, dtype=np.float64)
    if spectrum.size == 0:
        return 0.0
    return float(gavish_donoho_omega(min(m, n) / max(m, n, 1)) * np.median(spectrum))


def default_cut(s, spectrum, shape, noise) -> tuple[int, float]:
    """The estimator's default rank: keep ``σ_i`` above both the storage-dtype noise
    (``noise``, :func:`noise_cut`) and the noise the data show (Gavish–Donoho on the whole
    ``spectrum``), at most ``⌊min(P, n-1)/2⌋`` of them so the residuals stay informative
    (as many snapshot pairs left to test the kept directions as there are directions).
    Returns ``(k, τ)``, ``τ`` the cut."""
    s = np.asarray(s, dtype=np.float64)
    if s.size == 0 or not s[0] > 0:
        return 0, 0.0
    m, n = shape
    tau = float(noise or 0.0)
    if m >= n:   # fewer rows than snapshot pairs are never informative: storage cut only
        tau = max(tau, gavish_donoho_cut(spectrum, shape))
    k = min(numerical_rank(s, max(m, n)), int(np.count_nonzero(s > tau)))
    if m >= n:
        k = min(k, n // 2)
    return int(k), tau


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


def dmd(X, *, rank=None, tol=None, threshold=None, scale=False, refine=True,
        data_shape=None, unit_roundoff=None, factor_error=0.0, min_sigma=0.0) -> DMDResult:
    """Refined Rayleigh–Ritz DMD of the snapshot matrix ``X`` (xGEDMD, LAWN 298).

    Parameters
    ----------
    X : array_like, shape (m, n), n >= 2
        Snapshots as columns (or a factor ``C`` with ``X_data = Q C``); cast to float64.
    rank, tol, threshold
        Truncation of the SVD of ``X1 = X[:, :-1]``, see :func:`choose_rank`
        (at most one of them). None of them: the storage-noise cut (module docstring).
    scale : bool
        Scale the columns of ``X1`` (and ``X2`` by the same factors) to unit norm
        before the SVD (xGEDMD ``JOBS='S'``).
    refine : bool
        Refined Ritz vectors (minimal data residual in ``span(U_k)``; default) instead
        of the plain Ritz vectors.
    data_shape : (int, int), optional
        Shape of the original ``X1`` when ``X`` is a compressed factor (``(P, n-1)``);
        used for the Gavish–Donoho aspect ratio and the default cut.
    unit_roundoff : float, optional
        Of the dtype the snapshots were stored in (default: ``X``'s own dtype).
    factor_error : float
        Absolute error bound of ``X``'s columns (0 for data; a Gram-derived factor's
        resolution): enters ``residual_floors``.
    min_sigma : float
        Keep no singular value below it (default cut and Gavish–Donoho): what a
        Gram-derived factor resolves (:func:`pipeline.koopman.factor.resolves`).

    Returns
    -------
    DMDResult
    """
    _validate_rank_args(rank, tol, threshold)
    X = np.asarray(X)
    if unit_roundoff is None:
        unit_roundoff = dtype_roundoff(X.dtype) if np.issubdtype(X.dtype, np.floating) else U64
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or X.shape[1] < 2:
        raise ValueError(f"X must be 2-d with at least 2 snapshot columns, got shape {X.shape}")
    if not np.isfinite(X).all():
        raise ValueError("X contains NaN or inf")
    return _dmd(X, rank, tol, threshold, scale, refine, data_shape, unit_roundoff,
                float(factor_error), float(min_sigma))


def _sort_order(lam):
    return np.lexsort((-lam.imag, -np.abs(lam)))


def _dmd(X, rank, tol, threshold, scale, refine, data_shape, u, factor_error,
         min_sigma=0.0) -> DMDResult:
    m, n = X.shape
    X1, X2 = X[:, :-1], X[:, 1:]
    shape = data_shape if data_shape is not None else X1.shape
    d = np.ones(n - 1)
    if scale:
        d = np.linalg.norm(X1, axis=0)
        d[d == 0] = 1.0
        X1, X2 = X1 / d, X2 / d
    U, s, Vh = np.linalg.svd(X1, full_matrices=False)
    err = factor_error / d.min() if scale else factor_error      # in X1's units
    q = min(shape[0], n - 1)
    spectrum = full_spectrum(s, q, max(err, n * _EPS * (s[0] if s.size else 0.0)))
    if threshold == "storage":     # engine 3's default: the storage dtype's noise alone
        noise = noise_cut(np.linalg.norm(X1, axis=0), u, shape)
        k = choose_rank(s, shape=shape, noise=max(noise, min_sigma))
    elif rank is None and tol is None and threshold is None:
        noise = noise_cut(np.linalg.norm(X1, axis=0), u, shape)
        k, _ = default_cut(s, spectrum, shape, max(noise, min_sigma))
    else:
        k = choose_rank(s, rank=rank, tol=tol, threshold=threshold, shape=shape,
                        spectrum=spectrum)
        if threshold is not None and min_sigma:
            k = min(k, int(np.count_nonzero(s > min_sigma)))
    capped = rank if rank is not None and k < rank else None
    if k == 0:
        empty_c, empty_r = np.zeros(0, np.complex128), np.zeros(0)
        return DMDResult(empty_c, empty_c, empty_r, s, 0, np.zeros((m, 0), np.complex128),
                         empty_r, empty_r, (), False, capped)
    Uk, sk = U[:, :k], s[:k]
    B = (X2 @ Vh[:k].T) / sk                      # (m, k) = A U_k
    S = Uk.T @ B                                  # (k, k) Rayleigh quotient
    lam, W0 = np.linalg.eig(S)
    order = _sort_order(lam)
    lam, W0 = lam[order].astype(np.complex128), W0[:, order].astype(np.complex128)
    kappa = _conditions(W0)
    informative = 2 * k <= min(n - 1, shape[0])
    if refine and informative:   # uninformative windows: nothing to certify, keep O(k^3)
        W, res = _refine(Uk, B, lam)
    else:
        W = W0
        res = np.linalg.norm(B @ W - (Uk @ W) * lam, axis=0)
    # residual as a combination of the snapshots: r = X2 c - λ X1 c = X d (raw columns)
    c = (Vh[:k].T / sk) @ W / d[:, None]            # (n-1, r)
    dn = np.sqrt(np.sum(np.abs(np.vstack([-lam * c, np.zeros((1, k))])
                              + np.vstack([np.zeros((1, k)), c])) ** 2, axis=0))
    # the small problem's own rounding (SVD and products of the data), ~u64 (√rows + n)
    norm_x1 = s[0] if not scale else float(np.linalg.norm(X[:, :-1]))   # (Frobenius ≥ 2-norm)
    arith = U64 * (np.sqrt(max(m, shape[0])) + n) * norm_x1
    floors = (factor_error + arith) * dn
    misfit, limit, mu = _misfit(X2, Vh[:k].T, Uk, spectrum, k, n, err + arith)
    # the misfit inside the kept directions is invisible to the residual: it moves the
    # Rayleigh quotient by U_k^T E V_k Σ^{-1} w. Estimate it from the visible misfit
    # within span(U_k), per direction (isotropic error: exact in expectation for white
    # noise), acting on the pair's combination of snapshots c = V_k Σ^{-1} w
    terms = mu * np.linalg.norm((Vh[:k].T / sk) @ W, axis=0)
    res = np.maximum(res, floors) + terms
    circle = unit_circle_verdicts(lam, kappa * res)
    Z = Uk @ W
    amp = np.linalg.lstsq(Z, X[:, 0].astype(np.complex128), rcond=None)[0]
    return DMDResult(lam, amp, res, s, k, Z, floors, kappa, circle, informative, capped,
                     misfit, limit, terms)


def _misfit(X2, Vk, Uk, spectrum, k, n, resolution):
    """``(misfit, misfit_limit, μ)`` of the window (see :class:`DMDResult`).

    The fitted map gives ``A X1 = X2 V_k V_k^T``, so ``R = X2 (I - V_k V_k^T)`` is what it
    leaves unexplained (shared/NUMERICS.md, "When the residual cannot see a bad fit");
    the snapshots are raw (never re-referenced), so an affine map of the weights is a
    linear map of them and fits. For linear dynamics plus white noise of singular value
    ``σ_n`` the unexplained part is about ``√(n-1-k) σ_n``; dropped directions add at
    most their own size. ``σ_cut`` (the largest dropped singular value, padded from the
    factor's resolution) bounds both, ``resolution`` the error of the computation.
    ``μ = ||U_k^T R||_F / √(n-1-k)``: the unexplained part inside the kept directions,
    per unexplained direction (what moves the Rayleigh quotient)."""
    y = float(np.linalg.norm(X2))
    if y == 0:
        return 0.0, np.inf, 0.0
    R = X2 - (X2 @ Vk) @ Vk.T
    sig_cut = float(spectrum[k]) if k < spectrum.size else 0.0
    limit = MISFIT_MARGIN * (np.sqrt(max(n - 1 - k, 0)) * sig_cut + np.sqrt(n - 1) * resolution)
    mu = float(np.linalg.norm(Uk.T @ R)) / np.sqrt(max(n - 1 - k, 1) * k)
    return float(np.linalg.norm(R)) / y, float(limit) / y, mu


def unit_circle_verdicts(lam, radius) -> tuple:
    """``"inside"`` if ``|λ| + radius < 1``, ``"outside"`` if ``|λ| − radius > 1``, else
    ``"uncertain"`` (``radius = κ · residual``: first order)."""
    return tuple("inside" if abs(z) + q < 1 else "outside" if abs(z) - q > 1 else "uncertain"
                 for z, q in zip(lam, radius))


def _conditions(W0):
    """Eigenvalue condition numbers ``1/|y_i^H x_i|`` (unit left/right eigenvectors): with
    unit columns ``x_i`` of ``W0``, the left eigenvectors are the rows of ``W0^{-1}`` and
    ``κ_i`` is the norm of row ``i`` (``y_i^H x_i = 1`` before normalising ``y_i``)."""
    W0 = W0 / np.linalg.norm(W0, axis=0)
    try:
        Winv = np.linalg.inv(W0)
    except np.linalg.LinAlgError:                 # defective: no finite bound
        return np.full(W0.shape[1], np.inf)
    return np.maximum(np.linalg.norm(Winv, axis=1), 1.0)


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
