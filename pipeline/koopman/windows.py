"""Windowed compression: every window's Gram from one pass, computing only the band.

For sliding windows ``[a, a+W)`` (stride ``S``) the full Gram costs ``T² P / 2``
multiply-adds and ``T²`` memory per layer, although a window only needs the inner
products of its own rows and with the reference snapshot ``x_0``. One pass accumulates,
per layer, ``c = x_0·x_0``, ``r = D x_0`` (``D`` the reference-subtracted rows
``d_t = x_t - x_0``, ``t ≥ 1``) and the blocks of ``D D^T`` that some window needs
(:func:`band_plan`): rows are cut at window edges into *atoms*; consecutive atoms that
fit in one window form a *panel*, whose square Gram is one symmetric product (BLAS
``syrk``); pairs of atoms in different panels that share a window are rectangular
products (``gemm``). For ``T = 100, W = 50, S = 25`` that is 3,125 products of rows
instead of 5,050 for the full Gram (measured ~20% less time: BLAS is less efficient on
the smaller blocks); for ``T = 1000, W = 100, S = 50``, ~73,000 instead of ~500,000.
A single window spanning the trajectory is one panel: the full Gram.

``[[c, r_w^T], [r_w, G_w]]`` is the Gram of ``[x_0, d_a, …, d_{b-1}]``. A window is
analysed in its own span, never through ``x_0``'s direction (which the window may hold
only as rounding noise: a factor of ``[x_0, x_a, …]`` would gain a direction, put ``Y``
inside ``span(X)`` and make every residual vanish). So the Gram is re-referenced to the
window's own first snapshot (:func:`own_gram`)::

    x_a·x_a = c + 2 r_a + G_aa,
    x_a·e_t = r_t − r_a + G_at − G_aa,               e_t = x_t − x_a,
    e_s·e_t = G_st − G_sa − G_at + G_aa,

and factored exactly as the whole-trajectory Gram
(:func:`pipeline.koopman.factor.gram_to_factor`): ``X_w = [x_a, …, x_{b-1}] = Q_w C_w``
with ``C_w`` of shape ``(k, W)`` and a basis on the window's rows only. The re-reference
cancels: the band entries carry rounding errors of about ``u64 √P ||d_s|| ||d_t||``
while ``e_s·e_t`` may be far smaller, so each factor records its absolute resolution
``Factor.error`` (:func:`gram_resolution`); the estimator's default cut keeps nothing
within ``GRAM_MARGIN`` of it (an explicit rank/tol falls back to the stable TSQR pass
instead), and the residual floors use it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import passes
from .factor import Factor, gram_to_factor, raise_non_finite
from .windowrule import AUTO_MAX_WINDOWS, AUTO_MIN_WINDOW, auto_window, plan_windows  # noqa: F401 - the rule's home

__all__ = ["BandPlan", "band_plan", "window_factors", "own_gram", "gram_resolution",
           "plan_windows", "auto_window", "AUTO_MAX_WINDOWS", "AUTO_MIN_WINDOW"]

_U64 = np.finfo(np.float64).eps / 2


@dataclass(frozen=True)
class BandPlan:
    """Products of one slab that give every window's Gram.

    ``ops[k] = (u1, v1, u2, v2)``: the block ``D D^T[u1:v1, u2:v2]`` (row indices of the
    trajectory, ``≥ 1``) is ``x[u1:v1] @ x[u2:v2].T``; diagonal ops (panels) have
    ``(u1, v1) == (u2, v2)``. Within the union of the windows' squares, every entry of
    the upper triangle is covered by exactly one op.
    """

    spans: tuple[tuple[int, int], ...]        # rows [lo, b) of every window's d's
    ops: tuple[tuple[int, int, int, int], ...]

    def products(self) -> int:
        """Row-pair products per column (symmetric panels counted once)."""
        n = 0
        for u1, v1, u2, v2 in self.ops:
            m = v1 - u1
            n += m * (m + 1) // 2 if (u1, v1) == (u2, v2) else m * (v2 - u2)
        return n


def band_plan(windows, T: int) -> BandPlan:
    """Atoms, panels and cross products for ``windows`` (``[(a, b), ...]``, ``b ≤ T``)."""
    spans = tuple((max(a, 1), b) for a, b in windows)
    edges = sorted({e for s in spans for e in s})
    atoms = [(u, v) for u, v in zip(edges[:-1], edges[1:])
             if any(lo <= u and v <= b for lo, b in spans)]
    cover = [frozenset(w for w, (lo, b) in enumerate(spans) if lo <= u and v <= b)
             for u, v in atoms]
    panels, cur, cand = [], [0], cover[0]
    for k in range(1, len(atoms)):
        common = cand & cover[k]
        if atoms[k][0] == atoms[k - 1][1] and common:
            cur.append(k)
            cand = common
        else:
            panels.append(cur)
            cur, cand = [k], cover[k]
    panels.append(cur)
    panel_of = {k: p for p, ks in enumerate(panels) for k in ks}
    ops = [(atoms[ks[0]][0], atoms[ks[-1]][1]) * 2 for ks in panels]
    for i in range(len(atoms)):
        need = [j for j in range(i + 1, len(atoms))
                if panel_of[j] != panel_of[i] and cover[i] & cover[j]]
        run = []
        for j in need + [None]:                 # contiguous runs of atoms: one gemm each
            if run and (j is None or j != run[-1] + 1 or atoms[j][0] != atoms[run[-1]][1]):
                ops.append((*atoms[i], atoms[run[0]][0], atoms[run[-1]][1]))
                run = []
            if j is not None:
                run.append(j)
    return BandPlan(spans, tuple(ops))


def row_spans(plan: BandPlan, T: int, max_rows: int):
    """Split the band's rows into spans of about ``max_rows`` rows (an op is never cut).

    Returns ``(spans, op_span, owned)``: ``spans[s] = (r0, r1)`` rows of span ``s``,
    ``op_span[k]`` the span computing op ``k``, ``owned[s] = (o0, o1)`` the rows whose
    products with ``x_0`` span ``s`` computes (disjoint, covering ``[1, T)``).
    """
    order = sorted(range(len(plan.ops)), key=lambda k: (min(plan.ops[k][0], plan.ops[k][2]), k))
    groups, lo, hi = [], None, None
    for k in order:
        u1, v1, u2, v2 = plan.ops[k]
        u, v = min(u1, u2), max(v1, v2)
        if groups and max(hi, v) - lo <= max_rows:
            groups[-1].append(k)
            hi = max(hi, v)
        else:
            groups.append([k])
            lo, hi = u, v
    if not groups:
        return [(1, T)], [], [(1, T)]
    bounds = [1] + [min(min(plan.ops[k][0], plan.ops[k][2]) for k in ks) for ks in groups[1:]] + [T]
    owned = list(zip(bounds[:-1], bounds[1:]))
    spans, op_span = [], [0] * len(plan.ops)
    for s, ks in enumerate(groups):
        r0 = min([owned[s][0]] + [min(plan.ops[k][0], plan.ops[k][2]) for k in ks])
        r1 = max([owned[s][1]] + [max(plan.ops[k][1], plan.ops[k][3]) for k in ks])
        spans.append((r0, r1))
        for k in ks:
            op_span[k] = s
    return spans, op_span, owned


def band_kernel(plan: BandPlan, spans=None, op_span=None, owned=None):
    """Slab kernel ``(g, x, s) -> {(g, key): partial}`` for :func:`passes.run_pass`.

    ``x`` holds ``x_0`` and the rows ``d_t`` of span ``s`` (all rows by default:
    ``x[t] = d_t``); see :func:`row_spans`.
    """
    if spans is None:
        T = max([v for op in plan.ops for v in (op[1], op[3])] + [1])
        spans, op_span, owned = [(1, T)], [0] * len(plan.ops), [(1, T)]
    T = owned[-1][1]
    mine = [[k for k in range(len(plan.ops)) if op_span[k] == s] for s in range(len(spans))]

    def kernel(g, x, s=0):               # x[0] = x_0, x[1 + t - r0] = d_t
        r0 = spans[s][0]
        o0, o1 = owned[s]
        r = np.zeros(T - 1)
        r[o0 - 1:o1 - 1] = x[1 + o0 - r0:1 + o1 - r0] @ x[0]
        out = {(g, "r"): r}
        if s == 0:
            out[(g, "c")] = np.atleast_1d(x[0] @ x[0])
        for k in mine[s]:
            u1, v1, u2, v2 = plan.ops[k]
            a = x[1 + u1 - r0:1 + v1 - r0]
            out[(g, k)] = a @ (a.T if (u1, v1) == (u2, v2) else x[1 + u2 - r0:1 + v2 - r0].T)
        return out
    return kernel


def window_gram(plan: BandPlan, w: int, c, r, blocks) -> np.ndarray:
    """Gram of ``[x_0, d_lo, …, d_{b-1}]`` of window ``w`` from the band's blocks."""
    lo, b = plan.spans[w]
    m = b - lo
    G = np.empty((m + 1, m + 1))
    G[0, 0] = c
    G[0, 1:] = G[1:, 0] = r[lo - 1:b - 1]
    for (u1, v1, u2, v2), B in zip(plan.ops, blocks):
        r0, r1, c0, c1 = max(u1, lo), min(v1, b), max(u2, lo), min(v2, b)
        if r0 < r1 and c0 < c1:
            piece = B[r0 - u1:r1 - u1, c0 - u2:c1 - u2]
            G[1 + r0 - lo:1 + r1 - lo, 1 + c0 - lo:1 + c1 - lo] = piece
            G[1 + c0 - lo:1 + c1 - lo, 1 + r0 - lo:1 + r1 - lo] = piece.T
    return G


def own_gram(Gw, a: int) -> np.ndarray:
    """Gram of ``[x_a, x_{a+1} − x_a, …, x_{b-1} − x_a]`` (``W × W``) from
    :func:`window_gram`'s ``Gw`` (Gram of ``[x_0, d_lo, …, d_{b-1}]``, ``lo = max(a, 1)``)."""
    if a == 0:
        return Gw
    c, r, g = Gw[0, 0], Gw[0, 1:], Gw[1:, 1:]
    H = g - g[:, :1] - g[:1, :] + g[0, 0]
    H[0, 1:] = H[1:, 0] = r[1:] - r[0] + g[0, 1:] - g[0, 0]
    H[0, 0] = c + 2 * r[0] + g[0, 0]
    return H


def gram_resolution(Gw, a: int, n: int) -> float:
    """Absolute resolution of a window factor made from the band (``n`` rows summed).

    The band entries carry rounding errors of about ``u64 √n ||v_s|| ||v_t||`` for the
    vectors actually multiplied (``d_t = x_t − x_0``, and ``x_0``). After re-referencing
    to ``x_a`` every error that reaches the window's motion (``e_s·e_t``, and the
    Schur complement of ``x_a``'s column) is of order ``u64 √n D²``, ``D`` the largest
    ``||d_t||`` of the window; the ``W × W`` error matrix (with the float64
    eigendecomposition's ``u64 W`` per entry) has norm about
    ``ε² = 4 u64 (√n + W) √W D²``. Singular values and column components of the factor
    below ``ε`` are not resolved. Measured against a dense float64 SVD of the same
    float32 windows, ``ε`` was 3–20× the actual error of the singular values
    (docs/pages/numerics.md#certified-spectra).
    """
    W = Gw.shape[0] - (0 if a == 0 else 1)
    diag = np.maximum(np.diagonal(Gw), 0.0)
    D = np.sqrt(diag[1:].max()) if diag.size > 1 else 0.0
    eps_gram = 4 * _U64 * (np.sqrt(n) + W) * np.sqrt(W) * D * D
    x_norm = np.sqrt(diag[0]) + D                 # x_a's own column: relative u64 (√n + W)
    return float(np.sqrt(eps_gram) + _U64 * (np.sqrt(n) + W) * x_norm)


def window_factors(Y, groups, windows, *, per_group, scheduler=None):
    """``{name: {(a, b): Factor}}`` for ``"all"`` (and every group).

    Each factor's ``C`` has the window's ``b - a`` columns and spans the window's own
    snapshots; its basis (for modes) has one row per snapshot of ``[a, b)``
    (``Factor.rows``); ``Factor.error`` is its resolution (:func:`gram_resolution`).
    """
    T, P = Y.shape
    starts, stops = [g[1] for g in groups], [g[2] for g in groups]
    plan = band_plan(windows, T)
    # a task holds snapshot 0 and one span of rows of a column block: bounded in T
    p_chunk = max(Y.chunks[1])
    max_rows = max(1, passes.TASK_BYTES // (p_chunk * Y.dtype.itemsize))
    spans, op_span, owned = row_spans(plan, T, max_rows)
    sums = passes.run_pass(Y, band_kernel(plan, spans, op_span, owned), passes.sum_merge,
                            starts, stops, scheduler=scheduler, spans=spans)
    bad = [groups[g][0] for g in range(len(groups))
           if not all(np.isfinite(v).all() for k, v in sums.items() if k[0] == g)]
    if bad:
        raise_non_finite(bad, _first_bad_snapshot(sums, bad_groups=[
            g for g in range(len(groups)) if groups[g][0] in bad]))
    names = [("all", 0, P, range(len(groups)))]
    if per_group and len(groups) > 1:
        names += [(groups[g][0], groups[g][1], groups[g][2], [g]) for g in range(len(groups))]
    out: dict[str, dict] = {}
    for name, start, stop, members in names:
        c = sum(sums[(g, "c")][0] for g in members)
        r = sum(sums[(g, "r")] for g in members)
        blocks = [sum(sums[(g, k)] for g in members) for k in range(len(plan.ops))]
        per_window = {}
        for w, (a, b) in enumerate(windows):
            Gw = window_gram(plan, w, c, r, blocks)
            f, _ = gram_to_factor(own_gram(Gw, a), name, start, stop, "gram-window")
            per_window[(a, b)] = Factor(name, start, stop, f.C, f.segments, "gram-window",
                                        np.arange(a, b), gram_resolution(Gw, a, stop - start))
        out[name] = per_window
    return out


def _first_bad_snapshot(sums, bad_groups):
    """``"snapshot t"`` for the first snapshot whose products with ``x_0`` are not
    finite (``"first snapshot"`` when ``x_0`` itself is not)."""
    for g in bad_groups:
        if not np.isfinite(sums[(g, "c")]).all():
            return "first snapshot"
    ts = [int(np.flatnonzero(~np.isfinite(sums[(g, "r")]))[0]) + 1 for g in bad_groups
          if not np.isfinite(sums[(g, "r")]).all()]
    return f"from snapshot {min(ts)}" if ts else ""
