"""Randomized compression ``X ≈ Q C`` with ``k ≪ T`` (randomized DMD).

Range finder of Halko, Martinsson & Tropp (SIAM Review 53(2), 2011, Alg. 4.4) as used by
randomized DMD (Erichson, Mathelin, Kutz & Brunton, "Randomized dynamic mode
decomposition", SIAM J. Appl. Dyn. Syst. 18(4), 2019): ``Q = orth((X X^T)^q X Ω)``,
``C = Q^T X``, applied to ``XE`` (first snapshot subtracted, see
:mod:`pipeline.koopman.factor`), for ``X`` of shape ``(P, T)``.

Out of core, nothing P-long is ever stored. The only random matrix is the test matrix
``Ω`` of shape ``(T, l)``, ``l = rank + oversample``, drawn from
``numpy.random.default_rng(SeedSequence(seed).spawn(...))`` per group (it does not grow
with ``P``, so no per-block generation is needed). ``Q`` is kept implicit as
``Q = X M`` with a ``T × l`` matrix ``M``. Each pass over the data computes, for the
current ``M`` and every row block ``X_b``: ``Z_b = X_b M`` (``p × l``), the sum
``Σ X_b^T Z_b = X^T X M`` (``T × l``) and the TSQR ``R`` of the stacked ``Z_b``. Then
``Q = X M R^{-1}`` is orthonormal (re-orthonormalisation at every pass) and
``X^T Q = (X^T X M) R^{-1}`` is the next power step, or, after the last pass,
``C^T``. Number of passes over the data: ``n_power_iter + 1``. The rank is chosen
later from the singular values of ``C`` (the sketch), never from a full SVD of ``X``.

Residuals (:mod:`pipeline.koopman.core`) are measured against what the sketch kept: the
``rank + oversample`` directions of ``Q``. The part of the data outside the sketch never
enters them, so they are lower bounds of the full-data residual (the sketch is all this
path has: no second pass forms it). ``rank`` is the number of Ritz pairs each window
keeps; the sketch holds ``rank + oversample`` columns.

With ``per_group``, every layer gets its own sketch and the whole-network factor is
combined from them: ``[C_1; C_2; ...] = Q_s R_s`` (QR of the stacked layer factors),
``X_all ≈ blockdiag(Q_g) Q_s R_s``.
"""

from __future__ import annotations

import numpy as np

from . import passes
from .core import numerical_rank
from .factor import Factor, KoopmanInputError, apply_e_rows, raise_non_finite, undo_e_columns

DEFAULT_RANK = 50


def randomized_factors(Y, groups, *, per_group, rank, oversample, n_power_iter, seed,
                       scheduler) -> dict[str, Factor]:
    """Randomized factors for every group (if ``per_group``) and ``"all"``.

    Parameters are those of :func:`pipeline.koopman.compress.compress`.
    """
    if oversample < 0 or n_power_iter < 0:
        raise KoopmanInputError("oversample and n_power_iter must be >= 0")
    T, P = Y.shape
    l = int(min(T, (rank if rank is not None else DEFAULT_RANK) + oversample))
    chains = groups if per_group and len(groups) > 1 else [("all", 0, P)]
    starts, stops = [g[1] for g in chains], [g[2] for g in chains]
    seeds = np.random.SeedSequence(seed).spawn(len(chains))
    Ms = [np.random.default_rng(s).standard_normal((T, l)) for s in seeds]
    # long trajectories: tasks stream their column block span by span, twice (half the
    # usual span: a task also holds Z, p × l)
    block_bytes = T * max(Y.chunks[1]) * Y.dtype.itemsize
    max_rows = max(1, passes.TASK_BYTES // 2 // (max(Y.chunks[1]) * Y.dtype.itemsize))
    spans = [(a, min(a + max_rows, T)) for a in range(1, T, max_rows)]
    if block_bytes <= passes.TASK_BYTES:
        spans = spans[:1]      # fits: one sweep (streaming casts every chunk twice)
    for it in range(n_power_iter + 1):
        out = None
        if len(spans) > 1:
            out = passes.stream_pass(Y, _stream_block(Ms, spans, T, l), _merge, starts, stops,
                                      spans=spans, scheduler=scheduler)
        if out is None:
            out = passes.run_pass(Y, _make_kernel(Ms), _merge, starts, stops,
                                   scheduler=scheduler)
        bad = [chains[g][0] for g in range(len(chains))
               if not np.isfinite(out[("a", g)]).all() or not np.isfinite(out[("r", g)][0]).all()]
        if bad:
            raise_non_finite(bad)
        last = it == n_power_iter
        new_Ms, factors = [], {}
        for g, (name, start, stop) in enumerate(chains):
            A1, R = out[("a", g)], out[("r", g)][0]
            _, s, Vh = np.linalg.svd(R, full_matrices=False)
            k = numerical_rank(s, l)
            Pinv = Vh[:k].T / s[:k]                    # Q = XE @ (M @ Pinv)
            XtQ = A1 @ Pinv                            # (T, k) = (XE)^T Q
            if last:
                basis = apply_e_rows(Ms[g] @ Pinv)
                factors[name] = Factor(name, start, stop, undo_e_columns(XtQ.T),
                                       ((start, stop, basis),), "randomized")
            else:
                new_Ms.append(np.linalg.qr(XtQ)[0] if k else XtQ)
        Ms = new_Ms
    if len(chains) > 1:
        factors = {"all": _combine(list(factors.values()), P), **factors}
    return factors


def _make_kernel(Ms):
    def kernel(g, x):                                  # x: (T, p) rows of (XE)^T
        Z = x.T @ Ms[g]                                # (p, l)
        return {("a", g): x @ Z, ("r", g): [passes.qr_r(Z)]}
    return kernel


def _stream_block(Ms, spans, T, l):
    """The kernel of :func:`_make_kernel` for a whole column block, holding one span of
    rows at a time: a first sweep sums ``Z = (XE) M`` over the spans, a second one
    ``(XE)^T Z`` (the block's chunks are read twice; ``Z`` is ``p × l``)."""
    def block_fn(slabs):
        Z, gs = [], []
        for si, (r0, _) in enumerate(spans):
            for k, (g, x) in enumerate(slabs(si)):
                c = x[1:].T @ Ms[g][r0:r0 + x.shape[0] - 1]
                if si == 0:
                    c += np.outer(x[0], Ms[g][0])
                    Z.append(c)
                    gs.append(g)
                else:
                    Z[k] += c
        out = {}
        for z, g in zip(Z, gs):
            out = _merge([out, {("r", g): [passes.qr_r(z)]}])
        A = {}
        for si, (r0, _) in enumerate(spans):
            for k, (g, x) in enumerate(slabs(si)):
                a = A.setdefault(g, np.zeros((T, l)))
                a[r0:r0 + x.shape[0] - 1] += x[1:] @ Z[k]
                if si == 0:
                    a[0] += x[0] @ Z[k]
        out.update({("a", g): a for g, a in A.items()})
        return out
    return block_fn


def _merge(partials):
    sums = passes.sum_merge([{k: v for k, v in p.items() if k[0] == "a"} for p in partials])
    rs = passes.tsqr_merge([{k: v for k, v in p.items() if k[0] == "r"} for p in partials])
    return {**sums, **rs}


def _combine(layer_factors, P) -> Factor:
    """Whole-network factor from layer factors: QR + SVD of the stacked ``C``."""
    stacked = np.concatenate([f.C for f in layer_factors], axis=0)
    Qs, Rs = np.linalg.qr(stacked)
    U, s, Vh = np.linalg.svd(Rs, full_matrices=False)
    T = stacked.shape[1]
    k = numerical_rank(s, T)
    C = s[:k, None] * Vh[:k]
    W = Qs @ U[:, :k]                                  # (Σ k_g, k)
    segments, row = [], 0
    for f in layer_factors:
        (_, _, basis), = f.segments
        segments.append((f.start, f.stop, basis @ W[row:row + f.rank]))
        row += f.rank
    return Factor("all", 0, P, C, tuple(segments), "randomized")
