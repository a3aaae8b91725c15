"""Windowed compression: per-window Grams instead of the whole ``T × T`` Gram.

For sliding windows ``[a, a+W)`` (stride ``S``) the full Gram costs ``T² P`` and
``T²`` memory per layer, although every window only needs its own ``W × W`` block and
the inner products with the reference snapshot ``x_0``. One pass accumulates, per layer
and window, ``G_w = D_w D_w^T`` (``D_w`` the reference-subtracted rows ``d_a … d_{b-1}``,
``d_t = x_t - x_0``), ``r_w = D_w x_0`` and ``c = x_0·x_0``: ``n_windows · W² P``
multiply-adds instead of ``T² P`` — for ``T = 1000, W = 100, S = 50``, a fifth; for
``T = 10^4``, a fiftieth, and ``T²`` of memory per layer becomes ``n_windows · W²``.

``[[c, r^T], [r, G_w]]`` is the Gram of ``[x_0, d_a, …, d_{b-1}]``, the exact
reference-subtracted form (:mod:`pipeline.koopman.factor`) of ``[x_0, x_a, …, x_{b-1}]``,
so each window's factor is made exactly as the whole-trajectory one
(:func:`pipeline.koopman.compress.gram_to_factor`, same conditioning check), and the
``x_0`` column is dropped: ``X_w ≈ Q_w C_w`` with ``C_w`` of shape ``(k, W)``. If any
window's Gram is not trustworthy, the caller falls back to the full path (Gram with its
own TSQR fallback).
"""

from __future__ import annotations

import numpy as np

from . import _blocks
from .compress import _factor_from_gram
from .factor import Factor, raise_non_finite


def windows_cheaper(windows, T: int) -> bool:
    """Per-window Grams pay off when they need well under the full ``T²`` products."""
    cost = sum((b - a + 1) ** 2 for a, b in windows)
    return len(windows) > 1 and cost < 0.5 * T * T


def window_factors(Y, groups, windows, *, per_group, scheduler=None, gram_rcond=1e-6):
    """``{name: {(a, b): Factor}}`` for ``"all"`` (and every group), or None when some
    window's Gram is not trustworthy (the caller then uses the full path).

    Each factor's ``C`` has the window's ``b - a`` columns; its basis (for modes) is
    ``T × k`` with rows outside ``{0} ∪ [a, b)`` zero.
    """
    T, P = Y.shape
    starts, stops = [g[1] for g in groups], [g[2] for g in groups]

    def kernel(g, x):                 # x: (T, p); x[0] = x_0, x[t] = d_t
        out = {(g, "c"): np.atleast_1d(x[0] @ x[0])}
        for w, (a, b) in enumerate(windows):
            lo = max(a, 1)            # rows d_lo … d_{b-1}; x_0 enters through r and c
            d = x[lo:b]
            out[(g, w, "G")] = d @ d.T
            out[(g, w, "r")] = d @ x[0]
        return out

    sums = _blocks.run_pass(Y, kernel, _blocks.sum_merge, starts, stops, scheduler=scheduler)
    bad = [groups[g][0] for g in range(len(groups))
           if not all(np.isfinite(v).all() for k, v in sums.items() if k[0] == g)]
    if bad:
        raise_non_finite(bad)
    u_in = np.finfo(Y.dtype).eps / 2
    names = [("all", 0, P, range(len(groups)))]
    if per_group and len(groups) > 1:
        names += [(groups[g][0], groups[g][1], groups[g][2], [g]) for g in range(len(groups))]
    out: dict[str, dict] = {}
    for name, start, stop, members in names:
        c = sum(sums[(g, "c")][0] for g in members)
        per_window = {}
        for w, (a, b) in enumerate(windows):
            G = sum(sums[(g, w, "G")] for g in members)
            r = sum(sums[(g, w, "r")] for g in members)
            m = G.shape[0] + 1
            Gs = np.empty((m, m))
            Gs[0, 0], Gs[0, 1:], Gs[1:, 0], Gs[1:, 1:] = c, r, r, G
            f, ok = _factor_from_gram(Gs, name, start, stop, u_in, gram_rcond)
            if not ok:
                return None
            rows = [0] + list(range(max(a, 1), b))
            (_, _, basis_sub), = f.segments
            basis = np.zeros((T, basis_sub.shape[1]))
            basis[rows] = basis_sub
            C = f.C if a == 0 else f.C[:, 1:]    # drop the x_0 column outside the window
            per_window[(a, b)] = Factor(name, start, stop, C, ((start, stop, basis),), "gram-window")
        out[name] = per_window
    return out
