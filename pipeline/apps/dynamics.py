"""Distances between runs' training dynamics, and a seed-to-seed permutation null.

Pure math (numpy only, no I/O): :mod:`pipeline.workflows.compare` hands in each run's spectra;
what "certified" means is the engine's ``reliable`` flag, never decided here, and how
much an uncertified pair counts follows from the engine's own error bound κ · residual.

The question (Redman et al., "Identifying Equivalent Training Dynamics", NeurIPS 2024,
arXiv 2302.09160): topologically conjugate training maps share their Koopman
eigenvalues, so two configurations train alike when the spectra of their trajectories
agree, phase of training by phase of training. Redman et al. compare all the DMD
eigenvalues they compute; here each counts by how well the engine pins it down.

The metric, ``spectral-w1-weighted`` (``spectral-w1-certified``: certified pairs only)
-----------------------------------------------------------------------------------
A window's spectrum is a probability measure on the plane, ``μ = Σ_i w_i δ_{λ_i}``, over
its Ritz values ``λ_i`` with weights ``w_i ∝ q_i · |a_i| · |λ_i − 1|``: mode ``i``'s
amplitude in the update ``x_{t+1} − x_t`` (plain amplitudes put almost all the mass on
the fixed point λ = 1 that every converging training map has; only when nothing else
carries weight is the measure a point mass there), times the pair's reliability
``q_i`` (:func:`reliability`): 1 for a pair the engine certifies, ``tol / (κ_i · r_i)``
for one whose first-order error bound ``κ_i · r_i`` exceeds the certification tolerance
``tol`` (a pair ten times less sure counts a tenth), 0 in a window the engine does not
trust at all (residuals not informative, or no linear map fits its data). Certified
pairs alone (``ritz_pairs="certified"``) miss what Adam does: its updates are far from
linear, the engine certifies only λ ≈ 1 there, and every Adam window is a point mass at 1
(docs/pages/dynamics.md). ``certified_mass`` says how much of each run's weight rests on
certified pairs. Eigenvalues of a real training map come in conjugate pairs, so each is described
by its rate ``ρ = min(|λ|, RHO_MAX)`` (decay per snapshot; above ``RHO_MAX`` everything
is "diverging" alike) and its frequency ``θ = |arg λ| / π`` in [0, 1]. The distance of
two windows is

    d(μ, ν) = W1(ρ_μ, ρ_ν) + W1(θ_μ, θ_ν)

(1-D Wasserstein-1 distances of the marginals: the L1 distance of the quantile
functions, evaluated by the midpoint rule on ``N_QUANTILES`` levels, :func:`quantiles`).
A window with no weight (all its pairs of reliability 0) is unknown and is not compared. Two runs are compared on
``n_bins`` windows aligned by fraction of training (:func:`align`); their distance is the
mean of ``d`` over the bins known to both (:func:`pairwise`) — per layer role (``all`` =
the whole network, ``first``, ``hidden``, ``last``: :func:`layer_roles`), so that networks
of different depths compare.

Invariances (by construction, tested in ``tests/apps/test_dynamics.py`` on stored
trajectories): any fixed linear change of coordinates ``x → c·Q x`` (``Q`` orthogonal)
leaves the DMD eigenvalues unchanged and scales all amplitudes by ``c``, so the distance
ignores the scale of the weights, a permutation of hidden units (a permutation matrix),
and the number of parameters when the same dynamics are embedded in more of them. It is
not invariant to the speed of training (a larger step size moves the rates) nor to the
snapshot interval (``λ`` is per snapshot).

Why the marginals and not the 2-D Wasserstein distance: both coordinates have a meaning
of their own (rate, frequency); their 1-D W1 is closed-form and embeds each window as
a vector of ``2 · n_quantiles`` numbers, so all ``N(N-1)/2`` pairs of a 1,000-run sweep are an
L1 distance between small vectors, computed block by block (:func:`pairwise`), instead
of millions of small transport problems.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

from ..spectra import RELIABLE_RESIDUAL

METRIC = "spectral-w1-weighted"          # every Ritz pair, weighted by its reliability
METRIC_CERTIFIED = "spectral-w1-certified"  # certified pairs only
RITZ_PAIRS = ("weighted", "certified")
RELIABILITY_RULE = "1 if certified; else tol / (kappa * residual); 0 in a window not informative or not fitting"
RHO_MAX = 1.5             # rates above this count as one "diverging" rate
MISSING = RHO_MAX + 1.0  # the largest d: runs with nothing comparable, when no pair has anything
N_QUANTILES = 64
ROLES = ("all", "first", "hidden", "last")


# --------------------------------------------------------------------------- one window
def quantiles(eigenvalues, amplitudes, n_quantiles: int = N_QUANTILES) -> np.ndarray | None:
    """The window's measure embedded as ``(2 · n_quantiles,)``: the quantile functions
    of the rate ``ρ`` and the frequency ``θ`` at the midpoints ``(k + ½)/n_quantiles``,
    each divided by ``n_quantiles``, so the L1 distance of two embeddings is the sum of
    the two W1 distances up to the midpoint rule's error (at most the coordinate's range
    times the number of atoms of both measures, over ``n_quantiles``; exact when every
    weight is a multiple of ``1/n_quantiles``). None when the window
    has no eigenvalue (or all amplitudes are zero): an unknown window.

    ``eigenvalues`` (r,) complex; ``amplitudes`` (r,) complex or real (a pair's weight
    before the share of motion: ``|a_i| · q_i`` from :func:`role_windows`).
    """
    lam = np.asarray(eigenvalues, dtype=np.complex128).ravel()
    a = np.abs(np.asarray(amplitudes, dtype=np.complex128).ravel())
    ok = np.isfinite(lam) & np.isfinite(a) & (a > 0)
    lam, a = lam[ok], a[ok]
    if lam.size == 0:
        return None
    w = a * np.abs(lam - 1.0)          # each mode's share of the motion x_{t+1} - x_t
    w = w / w.sum() if w.sum() > 0 else a / a.sum()
    levels = (np.arange(n_quantiles) + 0.5) / n_quantiles
    rho = np.minimum(np.abs(lam), RHO_MAX)
    theta = np.abs(np.angle(lam)) / np.pi
    return np.concatenate([_quantile(rho, w, levels), _quantile(theta, w, levels)]) / n_quantiles


def _quantile(x, w, levels):
    order = np.argsort(x, kind="stable")
    cdf = np.cumsum(w[order])
    idx = np.minimum(np.searchsorted(cdf, levels, side="left"), x.size - 1)
    return x[order][idx]


def window_distance(qa, qb) -> float | None:
    """``d`` of two embedded windows (:func:`quantiles`); None when either is unknown
    (no weight there: not comparable)."""
    if qa is None or qb is None:
        return None
    return float(np.abs(np.asarray(qa) - np.asarray(qb)).sum())


# --------------------------------------------------------------------------- one run
def layer_roles(layers) -> dict[str, list[str]]:
    """``{role: [layer names]}`` for the layers of an analysis in network order (``all``
    excluded): ``first`` the first layer, ``last`` the last (the output), ``hidden``
    every layer in between (empty for a network of two layers: the role is absent).
    A single layer is only ``all``."""
    names = [n for n in layers if n != "all"]
    roles: dict[str, list[str]] = {}
    if len(names) >= 2:
        roles["first"], roles["last"] = [names[0]], [names[-1]]
        if len(names) > 2:
            roles["hidden"] = names[1:-1]
    return roles


def align(fractions, n_bins: int) -> np.ndarray:
    """Int (n_bins,): for each bin ``j`` (target fraction of training ``(j + 1)/n_bins``)
    the index of the window whose end fraction is nearest (the later one on ties).

    ``fractions`` (n_windows,) in training order. Alignment is by fraction of training,
    not by epoch: runs with equal budgets and windows get exactly their epoch-aligned
    windows, runs with different budgets are compared phase by phase (early, middle,
    late training), which is what "train the same way" asks.
    """
    f = np.asarray(fractions, dtype=float)
    if f.size == 0:
        raise ValueError("no windows to align")
    target = (np.arange(n_bins) + 1.0) / n_bins
    gap = np.abs(f[None, :] - target[:, None]) - 1e-12 * np.arange(f.size)[None, :]
    return np.argmin(gap, axis=1)


def embed(windows, fractions, n_bins: int, n_quantiles: int = N_QUANTILES) -> tuple[np.ndarray, np.ndarray]:
    """One run's role as ``(E, present)``: ``E`` (n_bins, 2·n_quantiles) the embedded
    aligned windows (zeros where unknown), ``present`` (n_bins,) bool.

    ``windows`` is a list of ``(eigenvalues, weights)`` (:func:`role_windows`), one per
    window in training order; ``fractions`` their end as a fraction of training.
    """
    pick = align(fractions, n_bins)
    E = np.zeros((n_bins, 2 * n_quantiles))
    present = np.zeros(n_bins, bool)
    cache: dict[int, np.ndarray | None] = {}
    for j, i in enumerate(pick):
        if int(i) not in cache:
            cache[int(i)] = quantiles(*windows[int(i)], n_quantiles=n_quantiles)
        q = cache[int(i)]
        if q is not None:
            E[j], present[j] = q, True
    return E, present


# --------------------------------------------------------------------------- all pairs
def pairwise(E, present, block: int = 256) -> np.ndarray:
    """``D`` (N, N) symmetric, zero diagonal: the mean of ``d`` over the bins where both
    runs have a known window.

    ``E`` (N, n_bins, m) embedded windows, ``present`` (N, n_bins) bool (a run whose role
    is absent altogether: all False). Two runs with no known bin in common are as far
    apart as the farthest pair that has one (``MISSING`` if no pair has). Memory is
    ``O(N²)`` for the result plus ``O(block² · m)`` scratch; time ``O(N² · n_bins · m)``
    in blocks of ``block`` runs.
    """
    E = np.asarray(E, dtype=float)
    P = np.asarray(present, dtype=bool)
    N, n_bins, m = E.shape
    D = np.zeros((N, N))
    C = np.zeros((N, N))          # bins known to both
    Pf = P.astype(float)
    for a0 in range(0, N, block):
        a1 = min(N, a0 + block)
        for b0 in range(a0, N, block):
            b1 = min(N, b0 + block)
            acc = np.zeros((a1 - a0, b1 - b0))
            for j in range(n_bins):
                both = np.outer(Pf[a0:a1, j], Pf[b0:b1, j])
                if both.any():
                    acc += both * np.abs(E[a0:a1, j, None, :] - E[None, b0:b1, j, :]).sum(-1)
            C[a0:a1, b0:b1] = Pf[a0:a1] @ Pf[b0:b1].T
            C[b0:b1, a0:a1] = C[a0:a1, b0:b1].T
            D[a0:a1, b0:b1] = acc
            D[b0:b1, a0:a1] = acc.T
    known = C > 0
    D[known] /= C[known]
    D[~known] = D[known].max() if known.any() else MISSING
    np.fill_diagonal(D, 0.0)
    return D


# --------------------------------------------------------------------------- the null
def group_stats(D, idx_a, idx_b) -> tuple[float | None, float | None, float]:
    """(within_a, within_b, between): mean distance over distinct pairs inside each group
    (None for a group of one run) and across them."""
    D = np.asarray(D)
    a, b = np.asarray(idx_a), np.asarray(idx_b)

    def within(ix):
        if ix.size < 2:
            return None
        sub = D[np.ix_(ix, ix)]
        return float(sub[np.triu_indices(ix.size, 1)].mean())

    return within(a), within(b), float(D[np.ix_(a, b)].mean())


def _statistics(S, Z):
    """Between minus pooled-within mean, for each labelling row of ``Z`` (n_l, n) in
    {0, 1} (1 = group a) on the sub-matrix ``S`` (n, n)."""
    n_a = Z.sum(1)
    n_b = Z.shape[1] - n_a
    SZ = Z @ S
    s_aa = (SZ * Z).sum(1) / 2
    s_ab = (SZ * (1 - Z)).sum(1)
    total = S.sum() / 2
    s_bb = total - s_aa - s_ab
    n_within = n_a * (n_a - 1) / 2 + n_b * (n_b - 1) / 2
    return s_ab / (n_a * n_b) - (s_aa + s_bb) / n_within


def permutation_test(D, idx_a, idx_b, n_perm: int = 999, seed: int = 0) -> float | None:
    """One-sided permutation p-value that the between-group distances exceed the
    within-group ones (statistic: mean between − mean of the pooled within pairs),
    permuting the run labels of the two groups (sizes kept).

    Every labelling is enumerated when there are at most ``n_perm + 1`` of them (the p-value
    is then exact; with ``n`` runs per group the smallest possible is ``2 / C(2n, n)``:
    0.1 at 3 seeds per group, 0.029 at 4, 0.008 at 5); else ``n_perm`` random labellings
    from ``numpy.random.default_rng(seed)`` and ``p = (1 + #{T ≥ T_obs}) / (1 + n_perm)``.
    None when no within-group pair exists (two single runs): nothing to compare against.
    """
    a, b = list(idx_a), list(idx_b)
    n = len(a) + len(b)
    n_within = len(a) * (len(a) - 1) // 2 + len(b) * (len(b) - 1) // 2
    if n_within == 0 or not a or not b:
        return None
    ix = np.asarray(a + b)
    S = np.asarray(D, dtype=float)[np.ix_(ix, ix)]
    obs = np.zeros((1, n))
    obs[0, :len(a)] = 1
    t_obs = _statistics(S, obs)[0]
    tol = 1e-12 * max(1.0, abs(t_obs))
    if math.comb(n, len(a)) <= n_perm + 1:
        Z = np.zeros((math.comb(n, len(a)), n))
        for k, chosen in enumerate(itertools.combinations(range(n), len(a))):
            Z[k, list(chosen)] = 1
        t = _statistics(S, Z)
        return float(np.mean(t >= t_obs - tol))
    rng = np.random.default_rng(seed)
    Z = np.zeros((n_perm, n))
    np.put_along_axis(Z, np.argsort(rng.random((n_perm, n)), axis=1)[:, :len(a)], 1.0, axis=1)
    t = _statistics(S, Z)
    return float((1 + np.sum(t >= t_obs - tol)) / (1 + n_perm))


def holm(pvalues) -> list[float | None]:
    """Holm–Bonferroni adjusted p-values (None stays None)."""
    idx = [i for i, p in enumerate(pvalues) if p is not None]
    out: list[float | None] = [None] * len(pvalues)
    m = len(idx)
    running = 0.0
    for rank, i in enumerate(sorted(idx, key=lambda i: pvalues[i])):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        out[i] = running
    return out


def group_pairs(D, labels, order=None, alpha: float = 0.05, n_perm: int = 999, seed: int = 0) -> list[dict]:
    """One record per pair of groups (in ``order``, default sorted):
    ``{"a", "b", "within_a", "within_b", "between", "p_value", "p_holm", "equivalent",
    "n_a", "n_b"}``. ``equivalent`` is ``p_value > alpha`` (the between-group distances
    cannot be told from the seed-to-seed ones at level ``alpha``, uncorrected; ``p_holm``
    corrects for the number of pairs); None where no p-value exists.
    """
    labels = list(labels)
    groups = list(order) if order is not None else sorted(set(labels))
    members = {g: [i for i, x in enumerate(labels) if x == g] for g in groups}
    out = []
    for k, (ga, gb) in enumerate(itertools.combinations(groups, 2)):
        wa, wb, between = group_stats(D, members[ga], members[gb])
        p = permutation_test(D, members[ga], members[gb], n_perm=n_perm, seed=seed + k)
        out.append({"a": ga, "b": gb, "within_a": wa, "within_b": wb, "between": between,
                    "p_value": p, "equivalent": None if p is None else bool(p > alpha),
                    "n_a": len(members[ga]), "n_b": len(members[gb])})
    for rec, ph in zip(out, holm([r["p_value"] for r in out])):
        rec["p_holm"] = ph
    return out


def classes(groups, pairs) -> list[list[str]]:
    """Classes of groups that train alike: connected components of the graph whose edges
    are the ``equivalent`` pairs (a pair without a p-value joins nothing). Equivalence by
    a test is not transitive (a ~ b and b ~ c with a, c told apart is possible); a class
    says "linked by pairs that could not be told apart", not "all alike"."""
    parent = {g: g for g in groups}

    def root(g):
        while parent[g] != g:
            parent[g] = parent[parent[g]]
            g = parent[g]
        return g

    for p in pairs:
        if p.get("equivalent"):
            parent[root(p["a"])] = root(p["b"])
    out: dict[str, list[str]] = {}
    for g in groups:
        out.setdefault(root(g), []).append(g)
    return list(out.values())


def classical_mds(D, dims: int = 2) -> np.ndarray:
    """(N, dims) coordinates whose Euclidean distances approximate ``D`` (Torgerson's
    classical scaling: top eigenvectors of the double-centred ``-D²/2``)."""
    D = np.asarray(D, dtype=float)
    N = D.shape[0]
    if N == 1:
        return np.zeros((1, dims))
    J = np.eye(N) - 1.0 / N
    B = -0.5 * J @ (D ** 2) @ J
    vals, vecs = np.linalg.eigh(B)
    top = np.argsort(vals)[::-1][:dims]
    X = vecs[:, top] * np.sqrt(np.maximum(vals[top], 0.0))
    if X.shape[1] < dims:
        X = np.hstack([X, np.zeros((N, dims - X.shape[1]))])
    return X


# --------------------------------------------------------------------------- from spectra
def reliability(result, certified, residual_tol: float = RELIABLE_RESIDUAL) -> np.ndarray:
    """Float (r,) in [0, 1]: how much each Ritz pair of one window counts.

    1 for a pair the engine certifies (``certified``: the engine's ``reliable`` mask);
    ``residual_tol / (κ_i · r_i)`` (below 1) for one whose first-order eigenvalue error
    bound ``κ_i · r_i`` exceeds the tolerance; 0 for every pair of a window the engine
    does not trust at all: its residuals are not informative, or no linear map fits its
    data (``result.fits`` false). ``result`` is a :class:`~pipeline.koopman.WindowResult`.
    """
    ok = np.asarray(certified, bool)
    res = np.asarray(result.residuals, dtype=float)
    if not result.informative or not result.fits:
        return np.zeros(res.size)
    bound = res if result.conditions is None else np.asarray(result.conditions, dtype=float) * res
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(np.isfinite(bound) & (bound > 0), residual_tol / bound, 0.0)
    rel = np.clip(np.nan_to_num(rel, nan=0.0), 0.0, 1.0)
    rel[ok] = 1.0
    return rel


def certified_share(eigenvalues, weights, certified) -> float | None:
    """The share of a window's measure (:func:`quantiles`' weights) on certified pairs;
    None for an unknown window (no weight at all)."""
    lam = np.asarray(eigenvalues, dtype=np.complex128).ravel()
    a = np.abs(np.asarray(weights, dtype=float).ravel())
    cert = np.asarray(certified, bool).ravel()
    ok = np.isfinite(lam) & np.isfinite(a) & (a > 0)
    if not ok.any():
        return None
    m = a * np.abs(lam - 1.0)
    m = np.where(ok, m if m[ok].sum() > 0 else a, 0.0)
    return float(m[cert].sum() / m.sum())


def role_windows(spectra, layers, residual_tol: float = RELIABLE_RESIDUAL,
                 ritz_pairs: str = "weighted") -> tuple[list, list[float], list] | None:
    """The Ritz pairs of a role's layers, window by window: ``([(eigenvalues, weights),
    ...], [end fraction, ...], [certified mask, ...])`` in training order, or None when
    the run's analysis has none of ``layers``. ``spectra`` is a
    :class:`~pipeline.spectra.RunSpectra` (its ``reliable`` masks are the engine's
    certification). ``weights`` are ``|a_i| · q_i`` with ``q_i`` the pair's
    :func:`reliability` (``ritz_pairs="weighted"``) or its certification, 1 or 0
    (``"certified"``). A role of several layers (``hidden``) pools, per window, their
    pairs, each layer's weights normalised to sum 1 first, so every hidden layer counts
    alike.
    """
    if ritz_pairs not in RITZ_PAIRS:
        raise ValueError(f"ritz_pairs {ritz_pairs!r}: known {', '.join(RITZ_PAIRS)}")
    per_layer = [spectra.rows(name) for name in layers if spectra.rows(name)]
    if not per_layer:
        return None
    n = min(len(ix) for ix in per_layer)
    windows, fractions, masks = [], [], []
    for k in range(n):
        lams, amps, certs = [], [], []
        for ix in per_layer:
            i = ix[k]
            result = spectra.results[i]
            ok = np.asarray(spectra.reliable[i], bool)
            rel = reliability(result, ok, residual_tol) if ritz_pairs == "weighted" else ok.astype(float)
            amp = np.abs(np.asarray(result.amplitudes)) * rel
            if len(per_layer) > 1 and amp.sum() > 0:
                amp = amp / amp.sum()
            lams.append(np.asarray(result.eigenvalues))
            amps.append(amp)
            certs.append(ok)
        windows.append((np.concatenate(lams), np.concatenate(amps)))
        masks.append(np.concatenate(certs))
        fractions.append(spectra.fraction(per_layer[0][k]))
    return windows, fractions, masks


def run_roles(spectra) -> dict[str, list[str]]:
    """``{role: [layer names]}`` of one run's analysis: ``all`` and :func:`layer_roles`."""
    roles = {"all": ["all"]} if spectra.rows("all") else {}
    roles.update(layer_roles(spectra.layers()))
    return roles


def default_bins(spectra_list) -> int:
    """The fewest whole-network windows of any run (at least 1): no run's window is
    used for two bins unless it has fewer windows than that."""
    return max(1, min((len(s.rows("all")) for s in spectra_list), default=1))


def distances(spectra_list, n_bins: int | None = None, n_quantiles: int = N_QUANTILES,
              residual_tol: float = RELIABLE_RESIDUAL, ritz_pairs: str = "weighted",
              roles=ROLES) -> dict[str, np.ndarray]:
    """``{role: D (N, N)}`` for the runs' :class:`~pipeline.spectra.RunSpectra`: ``all``
    and those of ``roles`` that at least one run has. ``n_bins`` defaults to the fewest
    whole-network windows of any run (at least 1); ``ritz_pairs`` and ``residual_tol``:
    :func:`role_windows`."""
    run_r = [run_roles(s) for s in spectra_list]
    n_bins = n_bins or default_bins(spectra_list)
    out = {}
    for role in roles:
        if role != "all" and not any(role in r for r in run_r):
            continue
        E = np.zeros((len(spectra_list), n_bins, 2 * n_quantiles))
        P = np.zeros((len(spectra_list), n_bins), bool)
        for k, (s, r) in enumerate(zip(spectra_list, run_r)):
            got = role_windows(s, r[role], residual_tol, ritz_pairs) if role in r else None
            if got is not None and got[0]:
                E[k], P[k] = embed(got[0], got[1], n_bins, n_quantiles)
        out[role] = pairwise(E, P)
    return out


def certified_mass(spectra, n_bins: int, residual_tol: float = RELIABLE_RESIDUAL) -> float | None:
    """The mean, over a run's aligned whole-network windows that carry weight, of the
    share of the window's measure on certified pairs (:func:`certified_share`): 1 when
    the weighted distance of this run rests on certified pairs only, near 0 when it rests
    on uncertified ones. None when no window carries weight."""
    got = role_windows(spectra, ["all"], residual_tol, "weighted")
    if got is None or not got[0]:
        return None
    shares = [certified_share(*got[0][int(i)], got[2][int(i)]) for i in align(got[1], n_bins)]
    shares = [x for x in shares if x is not None]
    return float(np.mean(shares)) if shares else None


def section(run_ids, labels, spectra_list, order=None, alpha: float = 0.05, n_perm: int = 999,
            seed: int = 0, n_bins: int | None = None, residual_tol: float = RELIABLE_RESIDUAL,
            ritz_pairs: str = "weighted") -> dict:
    """The ``dynamics`` section of ``kma compare --json``: ``{"metric", "ritz_pairs",
    "reliability": {"rule", "residual_tol"}, "runs", "group_of", "groups", "role"
    (``all``), "distance" (the whole network's; N × N lists), "pairs"
    (:func:`group_pairs`), "classes" (:func:`classes`), "alpha", "n_bins",
    "certified_mass": {run: share or None} (:func:`certified_mass`), "by_role": {role:
    {"distance", "pairs"}}}``, and with ``ritz_pairs="weighted"`` also
    ``"certified_only": {"metric", "pairs"}``: the whole network's test on certified
    pairs alone, so a reader sees whether a conclusion needs the uncertified pairs.
    Runs in the order given."""
    n_bins = n_bins or default_bins(spectra_list)
    D = distances(spectra_list, n_bins=n_bins, residual_tol=residual_tol, ritz_pairs=ritz_pairs)
    head = "all"
    order = list(order) if order is not None else sorted(set(labels))

    def clean(pairs):
        return [{k: (None if v is None else (round(v, 8) if isinstance(v, float) else v))
                 for k, v in p.items()} for p in pairs]

    def as_lists(M):
        return np.round(M, 8).tolist()

    def test(M):
        return clean(group_pairs(M, labels, order, alpha=alpha, n_perm=n_perm, seed=seed))

    pairs = test(D[head])
    mass = [certified_mass(s, n_bins, residual_tol) for s in spectra_list]
    out = {
        "metric": METRIC if ritz_pairs == "weighted" else METRIC_CERTIFIED,
        "ritz_pairs": ritz_pairs,
        "reliability": {"rule": RELIABILITY_RULE if ritz_pairs == "weighted" else "certified: 1, else 0",
                        "residual_tol": residual_tol},
        "runs": list(run_ids),
        "group_of": dict(zip(run_ids, labels)),
        "groups": order,
        "role": head,
        "distance": as_lists(D[head]),
        "pairs": pairs,
        "classes": classes([g for g in order if g in set(labels)], pairs),
        "alpha": alpha,
        "n_bins": n_bins,
        "certified_mass": {rid: (None if m is None else round(m, 6)) for rid, m in zip(run_ids, mass)},
        "by_role": {role: {"distance": as_lists(M), "pairs": test(M)} for role, M in D.items() if role != head},
    }
    if ritz_pairs == "weighted":
        only = distances(spectra_list, n_bins=n_bins, residual_tol=residual_tol, ritz_pairs="certified", roles=("all",))
        out["certified_only"] = {"metric": METRIC_CERTIFIED, "pairs": test(only["all"])}
    return out
