"""Compress-once factors (pipeline.koopman.compress): exactness, chunking, conditioning."""

import dask.array as da
import numpy as np
import pytest
from scipy.linalg import block_diag

from pipeline.koopman import KoopmanInputError, compress, dmd

GROUPS = [("a", 0, 700), ("b", 700, 1500), ("c", 1500, 2000)]
TRUE = np.array([0.99, 0.95, 0.9 + 0.1j, 0.9 - 0.1j, 0.8])


def trajectory(T, P, seed, noise=0.0, dtype=np.float64):
    """Snapshot-major (T, P) trajectory of a lifted linear system with eigenvalues TRUE."""
    rng = np.random.default_rng(seed)
    A = block_diag([[0.99]], [[0.95]], [[0.9, 0.1], [-0.1, 0.9]], [[0.8]])
    z = rng.standard_normal(5) + 1.0
    Z = np.empty((5, T))
    for t in range(T):
        Z[:, t] = z
        z = A @ z
    L = np.linalg.qr(rng.standard_normal((P, 5)))[0]
    return (L @ Z + noise * rng.standard_normal((P, T))).T.astype(dtype)


def sorted_c(v):
    return v[np.lexsort((v.imag.round(8), v.real.round(8)))]


def implicit_q(Y, f):
    return np.concatenate([Y[:, a:b].T.astype(np.float64) @ basis for a, b, basis in f.segments])


@pytest.mark.parametrize("stable", ["gram", "tsqr"])
def test_qr_factors_are_exact(stable):
    Y = trajectory(24, 2000, seed=0, noise=1e-2)     # full rank 24
    Yd = da.from_array(Y, chunks=(7, 300))           # time chunks; blocks straddle groups
    fs = compress(Yd, GROUPS, stable=stable)
    assert set(fs) == {"all", "a", "b", "c"}
    for name, start, stop in GROUPS + [("all", 0, 2000)]:
        f = fs[name]
        X = Y[:, start:stop].T
        assert f.method == stable and f.C.shape == (24, 24) and (f.start, f.stop) == (start, stop)
        Q = implicit_q(Y, f)                         # (stop - start, k)
        np.testing.assert_allclose(Q.T @ Q, np.eye(f.rank), atol=1e-9)
        np.testing.assert_allclose(Q @ f.C, X, atol=1e-10)
        np.testing.assert_allclose(f.C.T @ f.C, X.T @ X, atol=1e-10)


def test_dask_chunking_and_numpy_agree():
    Y = trajectory(20, 2000, seed=1, noise=1e-3)
    ref = compress(Y, GROUPS)
    for chunks in [(20, 2000), (3, 128), (20, 999)]:
        got = compress(da.from_array(Y, chunks=chunks), GROUPS, scheduler="synchronous")
        for name in ref:
            np.testing.assert_allclose(got[name].C.T @ got[name].C, ref[name].C.T @ ref[name].C,
                                       atol=1e-12)


def test_gram_falls_back_to_tsqr_when_spectrum_is_unresolved():
    """compress() uses the estimator's rule (factor.resolves): TSQR when the default
    storage-dtype cut keeps a singular value within GRAM_MARGIN of the Gram's resolution."""
    Y = trajectory(30, 2000, seed=2, noise=1e-6)     # float64: the cut keeps σ ~ 5e-5
    g = compress(Y, stable="gram")["all"]
    s = np.linalg.svd(g.C[:, :-1], compute_uv=False)
    assert g.method == "gram" and 0 < g.error and s[-1] < 100 * g.error
    f = compress(Y)["all"]
    assert f.method == "tsqr"
    dense = np.linalg.svd(Y[:-1].T, compute_uv=False)            # float64 reference
    np.testing.assert_allclose(np.linalg.svd(f.C[:, :-1], compute_uv=False), dense,
                               rtol=1e-9, atol=1e-13)
    # exact rank 5: the Gram keeps 5 well-resolved directions and stays
    exact = trajectory(30, 2000, seed=2)
    assert compress(exact)["all"].method == "gram"
    res = dmd(compress(exact)["all"].C)
    np.testing.assert_allclose(sorted_c(res.eigenvalues), sorted_c(TRUE), atol=1e-10)
    Y32 = trajectory(30, 2000, seed=2, noise=1e-3, dtype=np.float32)
    assert compress(Y32)["all"].method == "gram"     # content well above the Gram's floor


def weakly_excited(T=40, P=20000, seed=0, amp=1e-4):
    """float32 (T, P): large constant weights w0 plus dynamics ~1e-4 of them."""
    rng = np.random.default_rng(seed)
    A = block_diag([[0.99]], [[0.95]], [[0.9, 0.1], [-0.1, 0.9]])
    L = np.linalg.qr(rng.standard_normal((P, 4)))[0] * np.sqrt(P)    # entries ~1
    z, Z = np.ones(4), np.empty((4, T))
    for t in range(T):
        Z[:, t] = z
        z = A @ z
    w0 = rng.standard_normal(P)
    return (w0[:, None] + amp * (L @ Z)).T.astype(np.float32)


def test_conditioning_weak_dynamics_on_large_weights():
    """First-snapshot subtraction + float64 Gram keeps dynamics a float32 Gram loses."""
    Y = weakly_excited()
    truth = np.array([1.0, 0.99, 0.95, 0.9 + 0.1j, 0.9 - 0.1j])   # 1: the constant w0

    def err(lam):
        return max(np.min(np.abs(lam - t)) for t in truth)

    f = compress(da.from_array(Y, chunks=(40, 3000)))["all"]
    assert f.method == "gram"
    ours = dmd(f.C, rank=5).eigenvalues
    dense = dmd(Y.T.astype(np.float64), rank=5).eigenvalues        # float64 SVD of the data
    np.testing.assert_allclose(sorted_c(ours), sorted_c(dense), atol=1e-8)
    assert err(ours) < 5e-4                         # limited by float32 storage only
    X32 = Y.T
    G = (X32.T @ X32).astype(np.float64)             # naive: float32 Gram of raw snapshots
    mu, V = np.linalg.eigh(G)
    mu, V = mu[::-1], V[:, ::-1]
    k = int(np.sum(mu > 0))
    naive = dmd(np.sqrt(mu[:k])[:, None] * V[:, :k].T, rank=5).eigenvalues
    assert err(naive) > 1e-2
    assert err(naive) > 50 * err(ours)


def test_randomized_agrees_with_exact():
    Y = trajectory(60, 2000, seed=3)
    exact = dmd(compress(Y)["all"].C, rank=5).eigenvalues
    fs = compress(da.from_array(Y, chunks=(60, 400)), GROUPS, method="randomized", rank=5,
                  oversample=5, n_power_iter=1, seed=11)
    assert fs["all"].rank <= 10 and fs["all"].method == "randomized"
    np.testing.assert_allclose(sorted_c(dmd(fs["all"].C, rank=5).eigenvalues),
                               sorted_c(exact), atol=1e-9)
    for name, start, stop in GROUPS:                 # per-layer sketches, combined for "all"
        Q = implicit_q(Y, fs[name])
        np.testing.assert_allclose(Q.T @ Q, np.eye(fs[name].rank), atol=1e-8)
    Q = implicit_q(Y, fs["all"])
    np.testing.assert_allclose(Q.T @ Q, np.eye(fs["all"].rank), atol=1e-8)
    np.testing.assert_allclose(Q @ fs["all"].C, Y.T, atol=1e-9)


def test_randomized_noisy_within_tolerance_and_seeded():
    Y = trajectory(80, 2000, seed=4, noise=1e-4)
    exact = dmd(compress(Y)["all"].C, rank=5).eigenvalues
    kw = dict(method="randomized", rank=5, oversample=10, n_power_iter=2)
    a = compress(Y, seed=5, **kw)["all"]
    b = compress(Y, seed=5, **kw)["all"]
    c = compress(Y, seed=6, **kw)["all"]
    np.testing.assert_array_equal(a.C, b.C)
    assert not np.array_equal(a.C, c.C)
    lam = dmd(a.C, rank=5).eigenvalues
    np.testing.assert_allclose(sorted_c(lam), sorted_c(exact), atol=5e-4)   # noise 1e-4


@pytest.mark.parametrize("kw", [dict(), dict(stable="tsqr"), dict(method="randomized", rank=3)])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_input_is_reported(kw, bad):
    Y = trajectory(10, 2000, seed=5, noise=1e-3)
    Y[4, 1600] = bad
    with pytest.raises(KoopmanInputError, match=r"NaN or inf.*'c'"):
        compress(da.from_array(Y, chunks=(5, 500)), GROUPS, **kw)


def test_bad_groups_and_arguments():
    Y = np.ones((4, 10))
    for groups, msg in [([("a", 0, 4), ("b", 5, 10)], "contiguous"),
                        ([("a", 0, 4)], "cover"),
                        ([("a", 0, 4), ("a", 4, 10)], "twice"),
                        ([("all", 0, 4), ("b", 4, 10)], "reserved")]:
        with pytest.raises(KoopmanInputError, match=msg):
            compress(Y, groups)
    with pytest.raises(KoopmanInputError, match="method"):
        compress(Y, method="svd")
    with pytest.raises(KoopmanInputError, match="floating"):
        compress(np.ones((4, 10), dtype=int))


@pytest.mark.parametrize("T, W, S", [(100, 50, 25), (100, 100, 1), (61, 12, 5), (40, 7, 7),
                                     (50, 10, 13), (30, 2, 1), (1000, 100, 50)])
def test_band_plan_gives_every_window_gram_exactly(T, W, S):
    """The band's blocks assemble into each window's Gram [x0, d_lo..d_b-1] (same as a
    direct Gram), every needed row product is made exactly once (no more), never more than the full Gram."""
    from pipeline.koopman.windows import band_kernel, band_plan, window_gram

    windows = [(a, a + W) for a in range(0, T - W + 1, S)]
    plan = band_plan(windows, T)
    x = np.random.default_rng(T + W + S).standard_normal((T, 37))
    part = band_kernel(plan)(0, x)
    blocks = [part[(0, k)] for k in range(len(plan.ops))]
    for w, (a, b) in enumerate(windows):
        rows = x[[0] + list(range(max(a, 1), b))]
        np.testing.assert_allclose(window_gram(plan, w, part[(0, "c")][0], part[(0, "r")], blocks),
                                   rows @ rows.T, rtol=1e-13, atol=1e-12)
    needed = set()
    for lo, b in plan.spans:
        needed |= {(s, t) for s in range(lo, b) for t in range(s, b)}
    made = []
    for u1, v1, u2, v2 in plan.ops:
        made += [(s, t) for s in range(u1, v1) for t in range(u2, v2) if s <= t]
    assert len(made) == len(set(made)) == plan.products() and set(made) == needed
    assert plan.products() <= (T - 1) * T // 2


@pytest.mark.parametrize("T, W, S, max_rows", [(100, 50, 25, 60), (61, 12, 5, 20), (50, 10, 13, 1),
                                               (40, 40, 1, 10), (200, 20, 3, 45)])
def test_band_split_into_row_spans_gives_the_same_grams(T, W, S, max_rows):
    """Long trajectories: each task of the pass holds snapshot 0 and one span of rows;
    spans hold whole ops, own disjoint rows for the x_0 products, and the pass over
    dask chunks gives the same window Grams as the whole-trajectory kernel."""
    from pipeline.koopman import passes
    from pipeline.koopman.windows import band_kernel, band_plan, row_spans, window_gram

    windows = [(a, a + W) for a in range(0, T - W + 1, S)]
    plan = band_plan(windows, T)
    spans, op_span, owned = row_spans(plan, T, max_rows)
    assert owned[0][0] == 1 and owned[-1][1] == T
    assert all(a[1] == b[0] for a, b in zip(owned[:-1], owned[1:]))
    for k, (u1, v1, u2, v2) in enumerate(plan.ops):
        r0, r1 = spans[op_span[k]]
        assert r0 <= min(u1, u2) and max(v1, v2) <= r1
    for (r0, r1), (o0, o1) in zip(spans, owned):
        assert r0 <= o0 and o1 <= r1
    if max_rows >= W:
        assert max(r1 - r0 for r0, r1 in spans) <= max_rows + W

    Y = np.random.default_rng(T * S).standard_normal((T, 300)).astype(np.float32)
    got = passes.run_pass(da.from_array(Y, chunks=(7, 128)), band_kernel(plan, spans, op_span, owned),
                           passes.sum_merge, [0], [300], scheduler="synchronous", spans=spans)
    X = Y.astype(np.float64)
    X[1:] -= X[0]
    blocks = [got[(0, k)] for k in range(len(plan.ops))]
    for w, (a, b) in enumerate(windows):
        rows = X[[0] + list(range(max(a, 1), b))]
        np.testing.assert_allclose(window_gram(plan, w, got[(0, "c")][0], got[(0, "r")], blocks),
                                   rows @ rows.T, rtol=1e-12, atol=1e-10)


@pytest.mark.parametrize("reader", ["zarr", "mapped"])
def test_randomized_long_trajectory_streams_spans_with_the_same_result(monkeypatch, tmp_path, reader):
    """Long trajectories: each task of a randomized pass holds one span of rows at a
    time (two sweeps over its block) and gives the same factors as the one-span pass;
    mapped blocks are also split by columns among the workers."""
    import zarr

    from pipeline.storage.chunkmap import mappable, mapped_trajectory, zarr_trajectory
    from pipeline.koopman import passes

    Y = trajectory(60, 3000, seed=5, noise=1e-3, dtype=np.float32)
    where = zarr.storage.MemoryStore() if reader == "zarr" else zarr.storage.LocalStore(tmp_path)
    arr = zarr.create_array(where, shape=Y.shape, chunks=(7, 1000), dtype="f4",
                            fill_value=np.nan, compressors=None)
    arr[:] = Y
    read = zarr_trajectory if reader == "zarr" else mapped_trajectory
    assert mappable(arr) == (reader == "mapped")
    groups = [("a", 0, 1200), ("b", 1200, 3000)]
    ref = compress(read(arr), groups, method="randomized", rank=6, seed=3)
    streamed, tasks = [], []
    real, real_block = passes.stream_pass, passes.transformed_slabs
    monkeypatch.setattr(passes, "stream_pass", lambda *a, **k: streamed.append(k["spans"]) or real(*a, **k))
    monkeypatch.setattr(passes, "transformed_slabs",
                        lambda *a, **k: tasks.append(a[6:8]) or real_block(*a, **k))
    monkeypatch.setattr(passes, "TASK_BYTES", 1000 * 4 * 24)          # 12 rows per span
    monkeypatch.setattr(passes, "_SLAB_BYTES", 8 * 13 * 256)          # 256-column slabs
    got = compress(read(arr), groups, method="randomized", rank=6, seed=3)
    assert streamed and len(streamed[0]) == 5
    pieces = {t for t in tasks}                      # (s0, s1) column range of each task
    assert len(pieces) == (3 if reader == "zarr" else 6)
    for name in ref:
        np.testing.assert_allclose(got[name].C.T @ got[name].C, ref[name].C.T @ ref[name].C,
                                   rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(sorted_c(dmd(got[name].C, rank=5).eigenvalues),
                                   sorted_c(dmd(ref[name].C, rank=5).eigenvalues), atol=1e-9)
