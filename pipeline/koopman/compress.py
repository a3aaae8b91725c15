"""Compress once: one pass over the trajectory gives a small factor per layer.

Input: a snapshot-major trajectory ``Y`` (dask or numpy, ``T × P``, float16/32/64),
i.e. ``X = Y.T`` is ``P × T`` (tall, skinny), and layers ``[(name, start, stop), ...]``
covering the columns of ``Y``. Output: ``{name: Factor}`` for every layer (if asked) and
for ``"all"``, each with ``C`` of shape ``(k, T)`` and ``X_layer ≈ Q C`` (see
:mod:`pipeline.koopman.factor`). Every DMD quantity of any window of any layer is then
a small problem on ``C[:, a:b]``.

Methods
-------
``"qr"`` (exact; ``k`` = numerical rank ``≤ T``), one pass:
    per block, cast to float64, apply the exact transform ``E`` (subtract the first
    snapshot, so a large, slowly moving weight vector no longer dominates every column)
    and accumulate the float64 Gram ``G = (XE)^T (XE)`` per layer (``G_all = Σ G_layer``).
    Then, with column scaling ``D`` (Drmač, Mezić & Mohr 2018, §on scaling), the
    eigendecomposition ``D^{-1} G D^{-1} = V Σ² V^T`` gives ``C = Σ V^T D E^{-1}``.
    A Gram squares the condition number: the factor resolves singular values only down
    to its ``Factor.error`` (:func:`pipeline.koopman.windows.gram_resolution`, the whole
    trajectory as one window). The fallback rule is the estimator's
    (:func:`pipeline.koopman.factor.resolves`): if the default storage-dtype cut of the
    whole trajectory's DMD (:func:`pipeline.koopman.core.noise_cut` on ``C[:, :-1]``)
    keeps a singular value below ``GRAM_MARGIN`` times that resolution, a second pass
    computes the stable factor instead: Householder QR of every float64 block and TSQR
    (Demmel, Grigori, Hoemmen & Langou, SIAM J. Sci. Comput. 34(1), 2012) of the stacked
    ``R`` factors. ``stable="tsqr"`` uses that pass directly, ``stable="gram"`` never.
    (Formerly a separate ``gram_rcond`` gray-zone test decided; it is gone.)
``"randomized"`` (``k ≪ T``), ``n_power_iter + 1`` passes: see
    :mod:`pipeline.koopman.randomized` (Halko, Martinsson & Tropp 2011; Erichson,
    Mathelin, Kutz & Brunton 2019).

The passes are implemented on the chunk structure directly (:mod:`.passes`); the
generic ``dask.array.linalg`` TSQR/SVD is far slower than a read pass.
"""

from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np

from . import passes
from ..errors import plural
from .core import choose_rank, dtype_roundoff, noise_cut
from .factor import (Factor, KoopmanInputError, as_trajectory, factor_from_r, gram_to_factor,
                     raise_non_finite, resolves, validate_groups)
from .windows import gram_resolution

__all__ = ["compress", "Factor"]

log = logging.getLogger(__name__)

_METHODS = ("qr", "randomized")
_STABLE = ("auto", "gram", "tsqr")


def compress(Y, groups=None, *, method="qr", per_group=True, rank=None, oversample=10,
             n_power_iter=2, seed=0, stable="auto", unit_roundoff=None,
             scheduler=None) -> dict[str, Factor]:
    """Compress the trajectory ``Y`` into small factors, reading it once (``"qr"``).

    Parameters
    ----------
    Y : Trajectory, dask.array.Array or ndarray, shape (T, P)
        Snapshot-major trajectory (float16/32/64), any chunking.
    groups : list of (str, int, int), optional
        Contiguous column ranges covering ``[0, P)``; default one group ``"all"``.
    method : {"qr", "randomized"}
    per_group : bool
        Also return a factor for every group (``"all"`` is always returned).
    rank : int, optional
        Target rank of the randomized sketch (default 50); ignored by ``"qr"``.
    oversample, n_power_iter, seed
        Randomized sketch size ``rank + oversample``, power iterations, and the seed of
        the Gaussian test matrices.
    stable : {"auto", "gram", "tsqr"}
        ``"qr"`` only: Gram with fallback, Gram only, or TSQR only.
    unit_roundoff : float, optional
        Of the dtype the trajectory was stored in (default: ``Y``'s dtype): sets the
        default cut whose kept singular values the Gram must resolve (``"auto"``).
    scheduler : str, optional
        Dask scheduler for the passes (None: default threaded).

    Returns
    -------
    dict of str to Factor
        Keyed by group name, plus ``"all"``.

    Raises
    ------
    KoopmanInputError
        Bad shape/groups, or NaN/inf in the data (detected during the pass).
    """
    if method not in _METHODS:
        raise KoopmanInputError(f"unknown method {method!r}; known: {list(_METHODS)}")
    if stable not in _STABLE:
        raise KoopmanInputError(f"unknown stable={stable!r}; known: {list(_STABLE)}")
    Y = as_trajectory(Y)
    groups = validate_groups(groups if groups is not None else Y.groups, Y.shape[1])
    if method == "randomized":
        from .randomized import randomized_factors
        return randomized_factors(Y, groups, per_group=per_group, rank=rank,
                                  oversample=oversample, n_power_iter=n_power_iter,
                                  seed=seed, scheduler=scheduler)
    u = unit_roundoff if unit_roundoff is not None else dtype_roundoff(Y.dtype)
    return _qr_factors(Y, groups, per_group, stable, u, scheduler)


def _spans(groups):
    return [g[1] for g in groups], [g[2] for g in groups]


def _qr_factors(Y, groups, per_group, stable, unit_roundoff, scheduler):
    """Exact factors: Gram (checked with :func:`_gram_resolved` when ``stable="auto"``)
    or TSQR (``stable="tsqr"``, or a Gram the default cut cannot trust)."""
    starts, stops = _spans(groups)
    P = Y.shape[1]
    wanted = list(range(len(groups))) if per_group and len(groups) > 1 else []
    if stable != "tsqr":
        grams = passes.run_pass(Y, _gram_kernel, passes.sum_merge, starts, stops,
                                scheduler=scheduler)
        _check_gram_finite(grams, groups)
        jobs = [("all", 0, P, sum(grams[g] for g in range(len(groups))))]
        jobs += [(*groups[g], grams[g]) for g in wanted]
        out, unreliable = {}, []
        for name, start, stop, G in jobs:
            f, _ = gram_to_factor(G, name, start, stop)
            out[name] = f = replace(f, error=gram_resolution(G, 0, stop - start))
            if stable == "auto" and not _gram_resolved(f, unit_roundoff):
                unreliable.append(name)
        if not unreliable:
            return out
        log.info("the default cut of %s keeps singular values the Gram cannot resolve; "
                 "second pass with TSQR", unreliable)
    rs = passes.run_pass(Y, _tsqr_kernel, passes.tsqr_merge, starts, stops,
                          scheduler=scheduler)
    Rs = [rs[g][0] for g in range(len(groups))]
    bad = [groups[g][0] for g, R in enumerate(Rs) if not np.isfinite(R).all()]
    if bad:
        raise_non_finite(bad)
    R_all = passes.qr_r(np.concatenate(Rs, axis=0))
    out = {"all": factor_from_r(R_all, "all", 0, P, "tsqr")}
    for g in wanted:
        out[groups[g][0]] = factor_from_r(Rs[g], *groups[g], "tsqr")
    return out


def _gram_kernel(g, x):
    return {g: x @ x.T}


def _tsqr_kernel(g, x):
    return {g: [passes.qr_r(x.T)]}


def _check_gram_finite(grams, groups):
    bad = [g for g, G in grams.items() if not np.isfinite(G).all()]
    if not bad:
        return
    diag = np.diagonal(grams[bad[0]])
    if not np.isfinite(diag[0]):
        detail = "first snapshot"
    else:
        snaps = np.flatnonzero(~np.isfinite(diag))
        detail = plural(snaps.size, "snapshot", count=False) + " " + ", ".join(str(s) for s in snaps[:10])
        detail += " ..." if snaps.size > 10 else ""
    raise_non_finite([groups[g][0] for g in bad], detail)


def _gram_resolved(f, u) -> bool:
    """The estimator's rule on the whole trajectory: the smallest singular value the
    default storage-dtype cut keeps of ``X1 = C[:, :-1]`` is resolved by ``f``."""
    X1 = f.C[:, :-1]
    s = np.linalg.svd(X1, compute_uv=False)
    shape = (f.stop - f.start, X1.shape[1])
    k = choose_rank(s, shape=shape, noise=noise_cut(np.linalg.norm(X1, axis=0), u, shape))
    return k == 0 or resolves(f, s[k - 1])
