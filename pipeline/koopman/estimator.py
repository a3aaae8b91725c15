"""``KoopmanDMD``: compress once, then DMD of every window of every layer.

``fit(Y, groups)`` takes a snapshot-major trajectory ``Y`` (``T × P``: a
:class:`pipeline.koopman.source.Trajectory`, dask or numpy) and layers
``[(name, start, stop), ...]``; it reads ``Y`` once (method ``"qr"``; a second pass
only if the Gram is not trustworthy, see below) into small factors, then runs the refined
Rayleigh–Ritz DMD of :mod:`pipeline.koopman.core` (Drmač, Mezić & Mohr 2018; xGEDMD,
LAWN 298) on ``C[:, a:a+W]`` for every window ``[a, a+W)``, stride ``S``, for
``"all"`` and, with ``per_layer``, for every layer. How ``Y`` is compressed is a
strategy (:mod:`pipeline.koopman.strategies`); ``strategy_`` names the one whose factors
gave the results. Because ``Q`` is orthonormal the
eigenvalues, residuals and amplitudes equal those of a direct DMD of
``Y[a:a+W, start:stop].T``. P-long modes need ``Q`` and hence another pass:
:meth:`KoopmanDMD.modes`.

A window's factor from the band of the Gram resolves singular values only down to its
``Factor.error`` (:func:`pipeline.koopman.windows.gram_resolution`). The default cut and
Gavish–Donoho keep nothing below ``GRAM_MARGIN`` times that: one pass, always (issue 20).
Only an explicit ``rank``/``tol`` whose cut keeps such a value in some window redoes the
fit from the stable pass (TSQR of the trajectory, sliced per window), whose resolution is
at float64 level (:meth:`KoopmanDMD.second_pass_possible`). Every
:class:`WindowResult` says which factor it came from (``factor``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import dask.array as da
import numpy as np
from threadpoolctl import threadpool_limits

from .core import U64, _dmd, _validate_rank_args, dtype_roundoff
from .factor import GRAM_MARGIN, KoopmanInputError, as_dask, as_trajectory, resolves, validate_groups
from .strategies import TSQR, BandGram, Randomized
from .windows import plan_windows

__all__ = ["KoopmanDMD", "WindowResult", "GRAM_MARGIN"]

_FACTOR_NAMES = {"band-gram": "gram", "tsqr": "tsqr", "randomized": "randomized"}

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WindowResult:
    """DMD of one layer on one window ``[start, stop)`` of snapshots.

    ``eigenvalues`` (r,) complex128, ``amplitudes`` (r,) complex128, ``residuals`` (r,)
    float64 (data residuals, never below ``residual_floors``), ``singular_values``
    (min(k, W-1),) float64, ``rank`` r; ``residual_floors`` (r,), ``conditions`` (r,)
    eigenvalue condition numbers, ``unit_circle`` (r,) str, ``informative`` (can the
    residuals separate anything), ``rank_requested`` (set when ``rank`` was capped),
    ``misfit`` and ``misfit_limit`` (the share of the window's next snapshots the
    linear model leaves unexplained, and the most its cut explains as noise);
    see :class:`pipeline.koopman.core.DMDResult`. ``factor``: which factor the window's
    DMD ran on, ``"gram"`` (band of the Gram, same pass), ``"tsqr"`` (the stable
    second pass) or ``"randomized"``; ``misfit_terms`` (r,): the part of each residual
    that is the misfit (not stored: None for a loaded analysis).
    """

    layer: str
    window: tuple[int, int]
    eigenvalues: np.ndarray
    amplitudes: np.ndarray
    residuals: np.ndarray
    singular_values: np.ndarray
    rank: int
    residual_floors: np.ndarray | None = None
    conditions: np.ndarray | None = None
    unit_circle: tuple = ()
    informative: bool = True
    rank_requested: int | None = None
    misfit: float | None = None
    misfit_limit: float | None = None
    factor: str = ""
    misfit_terms: np.ndarray | None = None

    @property
    def fits(self) -> bool:
        """Whether a linear model fits the window's own data: ``misfit <= misfit_limit``
        (:class:`pipeline.koopman.core.DMDResult`; True for results of engines < 4)."""
        return self.misfit is None or self.misfit_limit is None or bool(self.misfit <= self.misfit_limit)

    def reliable(self, residual_tol: float) -> np.ndarray:
        """Per pair: the first-order error bound ``κ · residual`` is at most
        ``residual_tol``, the window's residuals are informative and its linear model
        fits its data (:attr:`fits`)."""
        if not self.informative or not self.fits:
            return np.zeros(self.residuals.size, bool)
        if self.conditions is None:               # results of engine 1: residuals only
            return self.residuals <= residual_tol
        return self.conditions * self.residuals <= residual_tol


class KoopmanDMD:
    """Windowed, per-layer DMD of a training trajectory, scikit-learn style.

    Parameters
    ----------
    method : {"qr", "randomized"}
        Compression of the trajectory (:func:`pipeline.koopman.compress.compress`).
    rank, tol, threshold
        Truncation of every window's DMD (at most one; see
        :func:`pipeline.koopman.core.choose_rank`). ``rank`` is also the target rank of
        the randomized sketch.
    window : int, "auto" or "all", optional
        Window length ``W`` in snapshots; ``"auto"``: the automatic rule
        (:func:`pipeline.koopman.windows.auto_window`); None or ``"all"``: the whole
        trajectory. A window ending at the last snapshot is always included
        (:func:`pipeline.koopman.windows.plan_windows`).
    stride : int, optional
        Step between window starts (default: ``W``).
    per_layer : bool
        Also analyse every group given to :meth:`fit`.
    oversample, n_power_iter, seed
        Randomized sketch parameters (``seed`` is used afresh by every ``fit``).
    scheduler : str, optional
        Dask scheduler for the passes.
    scale, refine : bool
        Column scaling and refined Ritz vectors (default on) in the small DMD.
    unit_roundoff : float, optional
        Of the dtype the trajectory was stored in (default: ``Y``'s dtype; a bfloat16
        run read as float32 should pass ``2**-8``): sets the default cut.
    breaks : sequence of int, optional
        Snapshot indices no window may straddle (a run's events: prune, Koopman jump;
        :func:`pipeline.koopman.windows.plan_windows`).

    Attributes
    ----------
    results_ : list of WindowResult
        ``"all"`` first, then layers in order; windows in order within each.
    strategy_ : str
        The compression strategy whose factors gave ``results_``
        (:mod:`pipeline.koopman.strategies`): ``"band-gram"`` (method ``"qr"``, every
        window's cut resolved by the Gram), ``"tsqr"`` (method ``"qr"``, some window kept
        a singular value the Gram could not resolve: a second pass) or ``"randomized"``.
    window_factors_ : dict of str to dict of (int, int) to Factor
        Per layer (``"all"`` and, with ``per_layer``, every group) and window: the
        factor its DMD ran on (``C`` of shape ``(k, b - a)``); used by :meth:`modes`.
    factors_ : dict of str to Factor
        Whole-trajectory factors (``C``: ``k × T``) of the strategy that ran; empty for
        ``"band-gram"``, which factors each window on its own.
    windows_ : list of (int, int)
        The fitted windows ``[a, b)``, in order.
    groups_ : list of (str, int, int)
        The validated layers.
    unit_roundoff_ : float
        Unit roundoff of the storage dtype that set the default cut.
    n_snapshots_, n_parameters_ : int
        ``T`` and ``P`` of the fitted trajectory.
    """

    def __init__(self, method="qr", rank=None, tol=None, threshold=None, window=None,
                 stride=None, per_layer=False, oversample=10, n_power_iter=2, seed=0,
                 scheduler=None, scale=False, refine=True, unit_roundoff=None, breaks=()):
        self.method = method
        self.rank = rank
        self.tol = tol
        self.threshold = threshold
        self.window = window
        self.stride = stride
        self.per_layer = per_layer
        self.oversample = oversample
        self.n_power_iter = n_power_iter
        self.seed = seed
        self.scheduler = scheduler
        self.scale = scale
        self.refine = refine
        self.unit_roundoff = unit_roundoff
        self.breaks = breaks

    def second_pass_possible(self) -> bool:
        """Whether :meth:`fit` may read the trajectory a second time (TSQR): only method
        ``"qr"`` with an explicit ``rank`` or ``tol`` whose cut keeps a singular value
        some window's Gram cannot resolve (likewise the internal ``threshold="storage"``,
        engine 3's default, which :mod:`pipeline.apps.badinit` uses on in-memory
        snapshots). The default cut and Gavish–Donoho stop at the Gram's resolution
        instead (one pass)."""
        return self.method == "qr" and (self.rank is not None or self.tol is not None
                                        or self.threshold == "storage")

    # -- validation ---------------------------------------------------------------
    def _windows(self, T):
        try:
            return plan_windows(T, self.window, self.stride, getattr(self, "breaks", ()))
        except ValueError as err:
            raise KoopmanInputError(str(err)) from None

    def _strategies(self):
        """The compression strategies to try, in order (the last one always stands)."""
        if self.method == "qr":
            # the default cut and Gavish–Donoho keep only what the Gram resolves (one
            # pass); an explicit rank or tol is honoured, from a second pass if needed
            return [BandGram(), TSQR()] if self.second_pass_possible() else [BandGram()]
        if self.method == "randomized":
            return [Randomized(self.rank, self.oversample, self.n_power_iter, self.seed)]
        raise KoopmanInputError(f"unknown method {self.method!r}; known: ['qr', 'randomized']")

    def fit(self, Y, groups=None, progress=None):
        """Compress ``Y`` once and analyse every window of every requested layer.

        Parameters
        ----------
        Y : Trajectory, dask.array.Array or ndarray, shape (T, P)
            A :class:`pipeline.koopman.source.Trajectory` (as the store builds it) lets
            the passes load chunks inside their tasks.
        groups : list of (str, int, int), optional
            Layers as contiguous column ranges covering ``[0, P)`` (default: the
            trajectory's own ``groups``, else one group ``"all"``).
        progress : callable(done, total), optional
            Called with ``done = 0`` before the small per-window problems (one per layer
            and window, ``total`` of them) and after each, so a caller can show progress
            of a long fit; it must not raise.

        Returns
        -------
        self
        """
        try:
            _validate_rank_args(self.rank, self.tol, self.threshold)
        except ValueError as e:
            raise KoopmanInputError(str(e)) from None
        Y = as_trajectory(Y)
        T, P = Y.shape
        windows = self._windows(T)
        groups = validate_groups(groups if groups is not None else Y.groups, P)
        strategies = self._strategies()
        u = self.unit_roundoff if self.unit_roundoff is not None else dtype_roundoff(Y.dtype)
        # one layer: its spectra are the network's ("all"); the passes make no separate factor
        names = ["all"] + ([g[0] for g in groups if g[0] != "all"] if self.per_layer and len(groups) > 1 else [])
        for i, strategy in enumerate(strategies):
            comp = strategy.compress(Y, groups, windows, per_group=self.per_layer,
                                     scheduler=self.scheduler)
            check = strategy.resolution_limited and i + 1 < len(strategies)
            results = self._all_windows(comp.windows, names, windows, u, check=check,
                                        progress=progress, factor=_FACTOR_NAMES[strategy.name],
                                        clip=strategy.resolution_limited and not check)
            if results is not None:
                break
            log.info("a window keeps singular values the %s factor cannot resolve; "
                     "second pass with %s", strategy.name, strategies[i + 1].name)
        capped = [r for r in results if r.rank_requested is not None]
        if capped:
            log.warning("rank %d requested; %d of %d spectra have fewer directions (at most %d)",
                        self.rank, len(capped), len(results), max(r.rank for r in capped))
        self.strategy_ = strategy.name
        self.factors_ = comp.factors
        self.window_factors_ = comp.windows
        self.results_ = results
        self.windows_ = windows
        self.groups_ = groups
        self.unit_roundoff_ = u
        self.n_snapshots_, self.n_parameters_ = T, P
        return self

    def _all_windows(self, wfs, names, windows, u, check, progress=None, factor="", clip=False):
        """WindowResults of every layer and window, or None (``check``) when a factor
        cannot resolve a singular value its window's cut keeps."""
        results = []
        total = len(names) * len(windows)
        if progress is not None:
            progress(0, total)
        # many tiny (k × W) problems: threaded BLAS only adds overhead to them
        with threadpool_limits(limits=1, user_api="blas"):
            for name in names:
                for a, b in windows:
                    if progress is not None and results:
                        progress(len(results), total)
                    f = wfs[name][(a, b)]
                    r = self._window_dmd(f, a, b, u, clip=clip)
                    if check and r.rank and not resolves(f, r.singular_values[r.rank - 1], scale=self.scale):
                        return None
                    results.append(WindowResult(
                        name, (a, b), r.eigenvalues, r.amplitudes, r.residuals,
                        r.singular_values, r.rank, r.residual_floors, r.conditions,
                        r.unit_circle, r.informative, r.rank_requested, r.misfit,
                        r.misfit_limit, factor, r.misfit_terms))
        if progress is not None:
            progress(total, total)
        return results

    def _window_dmd(self, factor, a, b, u=None, clip=None):
        """DMD of window ``[a, b)`` from its factor (``C`` has exactly the window's columns).
        ``clip``: keep no singular value the factor cannot resolve (default: as ``fit``
        did, i.e. for a Gram-derived factor unless a second pass was possible)."""
        u = u if u is not None else getattr(self, "unit_roundoff_", None)
        if clip is None:
            clip = factor.method == "gram-window" and not self.second_pass_possible()
        min_sigma = 0.0
        if clip:
            err = factor.error
            if self.scale:
                norms = np.linalg.norm(factor.C[:, :-1], axis=0)
                err = err / max(norms.min(), np.finfo(np.float64).tiny)
            min_sigma = GRAM_MARGIN * err
        # the rank arguments were validated once by fit, and a factor is finite float64:
        # the per-window core skips dmd()'s checks
        return _dmd(np.asarray(factor.C, dtype=np.float64), self.rank, self.tol, self.threshold,
                    self.scale, self.refine, (factor.stop - factor.start, b - a - 1),
                    u if u is not None else U64, float(factor.error), min_sigma)

    def modes(self, Y, layer="all", window=None):
        """P-long Ritz vectors (modes) of one layer and window: a second pass over ``Y``.

        Parameters
        ----------
        Y : Trajectory, dask.array.Array or ndarray, shape (T, P)
            The trajectory given to :meth:`fit`.
        layer : str
        window : (int, int), optional
            One of ``windows_``; may be omitted when there is a single window.

        Returns
        -------
        dask.array.Array, shape (r, P_layer), complex128
            Row ``i`` is the unit-norm mode of ``results_[...].eigenvalues[i]``
            (lazy; compute it or write it with ``da.to_zarr``).
        """
        if not hasattr(self, "window_factors_"):
            raise KoopmanInputError("call fit before modes")
        if layer not in self.window_factors_:
            raise KoopmanInputError(
                f"unknown layer {layer!r}; fitted: {sorted(self.window_factors_)}")
        if window is None:
            if len(self.windows_) != 1:
                raise KoopmanInputError(f"several windows were fitted; pass one of {self.windows_}")
            window = self.windows_[0]
        window = tuple(int(w) for w in window)
        if window not in self.windows_:
            raise KoopmanInputError(f"window {window} was not fitted; fitted: {self.windows_}")
        Y = as_dask(Y)
        if Y.shape != (self.n_snapshots_, self.n_parameters_):
            raise KoopmanInputError(f"Y has shape {Y.shape}, fit saw "
                                    f"{(self.n_snapshots_, self.n_parameters_)}")
        f = self.window_factors_[layer][window]
        z = self._window_dmd(f, *window).vectors         # (k, r) in C coordinates
        pieces = [_project(_rows_of(Y[:, a:b], f.rows), basis @ z) for a, b, basis in f.segments]
        return pieces[0] if len(pieces) == 1 else da.concatenate(pieces, axis=1)


def _rows_of(Yg, rows):
    """The snapshots a basis refers to (all when ``rows`` is None): a window's modes
    read snapshot 0 and the window's rows only, not all ``T``."""
    if rows is None:
        return Yg
    runs = np.split(np.asarray(rows), np.flatnonzero(np.diff(rows) != 1) + 1)
    return da.concatenate([Yg[r[0]:r[-1] + 1] for r in runs], axis=0)


def _project(Yg, Wc):
    """``Wc^T Yg`` for ``Yg`` (T, p) dask and ``Wc`` (T, r) complex: modes (r, p)."""
    Wr, Wi = np.ascontiguousarray(Wc.real.T), np.ascontiguousarray(Wc.imag.T)

    def block(y):
        y = y.astype(np.float64)
        return (Wr @ y) + 1j * (Wi @ y)

    r = Wc.shape[1]
    return da.blockwise(block, "kj", Yg, "ij", new_axes={"k": r}, concatenate=True,
                        dtype=np.complex128)
