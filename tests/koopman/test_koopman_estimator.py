"""KoopmanDMD: windows and layers equal direct DMD of the slices; modes; errors."""

import dask.array as da
import numpy as np
import pytest
from scipy.linalg import block_diag

from pipeline.koopman import KoopmanDMD, KoopmanInputError, dmd

GROUPS = [("l0", 0, 900), ("l1", 900, 1300), ("l2", 1300, 2000)]


def trajectory(T, P, seed, noise=1e-3):
    """(T, P): lifted linear system (eigenvalues 0.99, 0.95, 0.9±0.1i, 0.8) plus noise."""
    rng = np.random.default_rng(seed)
    A = block_diag([[0.99]], [[0.95]], [[0.9, 0.1], [-0.1, 0.9]], [[0.8]])
    z, Z = rng.standard_normal(5) + 1.0, np.empty((5, T))
    for t in range(T):
        Z[:, t] = z
        z = A @ z
    L = np.linalg.qr(rng.standard_normal((P, 5)))[0]
    return (L @ Z + noise * rng.standard_normal((P, T))).T


def assert_same(result, direct, atol=1e-8):
    assert result.rank == direct.rank
    np.testing.assert_allclose(result.eigenvalues, direct.eigenvalues, atol=atol)
    np.testing.assert_allclose(result.residuals, direct.residuals, atol=atol)
    np.testing.assert_allclose(np.abs(result.amplitudes), np.abs(direct.amplitudes),
                               rtol=1e-6, atol=atol)
    k = direct.singular_values.size
    np.testing.assert_allclose(result.singular_values[:k], direct.singular_values, atol=atol)


@pytest.mark.parametrize("kw", [dict(rank=6), dict(tol=1e-3), dict(threshold="gavish-donoho")])
def test_windows_and_layers_equal_direct_dmd(kw):
    Y = trajectory(40, 2000, seed=0)
    est = KoopmanDMD(window=16, stride=8, per_layer=True, **kw)
    assert est.fit(da.from_array(Y, chunks=(10, 450)), GROUPS) is est
    assert est.windows_ == [(0, 16), (8, 24), (16, 32), (24, 40)]
    assert [r.layer for r in est.results_][::4] == ["all", "l0", "l1", "l2"]
    assert len(est.results_) == 16
    spans = {"all": (0, 2000), **{n: (a, b) for n, a, b in GROUPS}}
    for r in est.results_:
        (a, b), (c0, c1) = r.window, spans[r.layer]
        assert_same(r, dmd(Y[a:b, c0:c1].T, **kw))


def test_default_single_window_and_numpy_equals_dask():
    Y = trajectory(30, 2000, seed=1)
    ref = KoopmanDMD(rank=5).fit(Y)
    got = KoopmanDMD(rank=5).fit(da.from_array(Y, chunks=(7, 333)), GROUPS)
    assert len(ref.results_) == len(got.results_) == 1
    assert ref.results_[0].window == (0, 30) and ref.results_[0].layer == "all"
    assert_same(got.results_[0], ref.results_[0], atol=1e-10)
    assert_same(ref.results_[0], dmd(Y.T, rank=5))


def test_randomized_estimator_matches_exact():
    Y = trajectory(60, 2000, seed=2, noise=0.0)
    exact = KoopmanDMD(rank=5, window=30, stride=30, per_layer=True).fit(Y, GROUPS)
    rnd = KoopmanDMD(method="randomized", rank=5, window=30, stride=30, per_layer=True,
                     seed=3).fit(Y, GROUPS)
    true = np.array([0.99, 0.95, 0.9 + 0.1j, 0.9 - 0.1j, 0.8])
    for a, b in zip(exact.results_, rnd.results_):
        assert (a.layer, a.window) == (b.layer, b.window)
        np.testing.assert_allclose(b.eigenvalues, true, atol=1e-8)
        assert b.residuals.max() < 1e-8
        # qr here comes from the windows' Grams: accurate to their certified floors
        err = np.abs(a.eigenvalues - true)
        assert np.all(err <= a.conditions * a.residuals) and err.max() < 1e-6
    assert not any(isinstance(v, np.random.Generator) for v in vars(rnd).values())


def test_modes_second_pass_equals_direct_ritz_vectors(tmp_path):
    Y = trajectory(30, 2000, seed=4)
    est = KoopmanDMD(rank=5, window=20, stride=10, per_layer=True).fit(
        da.from_array(Y, chunks=(10, 300)), GROUPS)
    for layer, (c0, c1) in [("l1", (900, 1300)), ("all", (0, 2000))]:
        m = est.modes(da.from_array(Y, chunks=(10, 300)), layer=layer, window=(10, 30))
        assert m.shape == (5, c1 - c0) and m.dtype == np.complex128
        direct = dmd(Y[10:30, c0:c1].T, rank=5)
        got = m.compute()
        for i in range(5):                          # equal up to a unit phase
            overlap = abs(np.vdot(got[i], direct.vectors[:, i]))
            assert overlap == pytest.approx(1.0, abs=1e-8)
    path = tmp_path / "modes.zarr"
    da.to_zarr(est.modes(Y, layer="l0", window=(0, 20)), str(path))
    with pytest.raises(KoopmanInputError, match="several windows"):
        est.modes(Y, layer="l0")
    with pytest.raises(KoopmanInputError, match="unknown layer"):
        est.modes(Y, layer="nope", window=(0, 20))


def test_randomized_modes_for_combined_all_factor():
    Y = trajectory(30, 2000, seed=5, noise=0.0)
    est = KoopmanDMD(method="randomized", rank=5, per_layer=True, seed=1).fit(Y, GROUPS)
    got = est.modes(Y, layer="all").compute()
    direct = dmd(Y.T, rank=5)
    for i in range(5):
        assert abs(np.vdot(got[i], direct.vectors[:, i])) == pytest.approx(1.0, abs=1e-8)


def test_refit_replaces_and_init_only_stores():
    est = KoopmanDMD(window=10, per_layer=True)
    assert not hasattr(est, "results_")
    est.fit(trajectory(20, 2000, seed=6), GROUPS)
    assert len(est.results_) == 8
    est.fit(trajectory(30, 500, seed=7))
    assert len(est.results_) == 3 and set(est.window_factors_) == {"all"}


def test_errors_are_clear():
    Y = trajectory(20, 2000, seed=8)
    with pytest.raises(ValueError, match="window=25 is longer than the trajectory"):
        KoopmanDMD(window=25).fit(Y)
    with pytest.raises(ValueError, match="stride"):
        KoopmanDMD(window=5, stride=0).fit(Y)
    with pytest.raises(ValueError, match="at most one"):
        KoopmanDMD(rank=3, tol=0.1).fit(Y)
    bad = Y.copy()
    bad[3, 950] = np.nan
    with pytest.raises(ValueError, match=r"NaN or inf.*'l1'"):
        KoopmanDMD().fit(da.from_array(bad, chunks=(5, 400)), GROUPS)
    with pytest.raises(KoopmanInputError, match="call fit"):
        KoopmanDMD().modes(Y)


@pytest.mark.parametrize("window, stride", [(10, 10), (12, 6)])
def test_per_window_grams_equal_direct_dmd(window, stride):
    """Long trajectories, short windows: per-window Grams (no T × T Gram) are used and
    every window of every layer still equals a direct DMD of that slice."""
    Y = trajectory(60, 2000, seed=11)
    est = KoopmanDMD(window=window, stride=stride, per_layer=True, rank=5)
    est.fit(da.from_array(Y, chunks=(7, 450)), GROUPS)
    assert est.strategy_ == "band-gram" and est.factors_ == {}  # the per-window path was taken
    assert {f.method for w in est.window_factors_.values() for f in w.values()} == {"gram-window"}
    spans = {"all": (0, 2000), **{n: (a, b) for n, a, b in GROUPS}}
    assert len(est.results_) == 4 * len(est.windows_)
    for r in est.results_:
        (a, b), (c0, c1) = r.window, spans[r.layer]
        assert_same(r, dmd(Y[a:b, c0:c1].T, rank=5))
    # modes of a later window (the x_0 rows enter the basis) equal the direct Ritz vectors
    a, b = est.windows_[-1]
    got = est.modes(Y, layer="l1", window=(a, b)).compute()
    c0, c1 = spans["l1"]
    direct = dmd(Y[a:b, c0:c1].T, rank=5)
    for i in range(5):
        assert abs(np.vdot(got[i], direct.vectors[:, i])) == pytest.approx(1.0, abs=1e-8)


def test_per_window_path_detects_nan():
    Y = trajectory(60, 2000, seed=12)
    Y[33, 1500] = np.nan
    with pytest.raises(KoopmanInputError, match="l2"):
        KoopmanDMD(window=10, stride=10, per_layer=True).fit(Y, GROUPS)


def test_windows_fall_back_to_the_stable_pass_when_a_gram_is_unresolved():
    """Exact low-rank float64 data: the windows' Grams cannot resolve the spectrum. An
    explicit rank is honoured from the TSQR pass, and every window still equals a
    direct DMD; the default cut stays on the one pass and keeps only what the Gram
    resolves (issue 20: the second pass is no longer the default path)."""
    Y = trajectory(30, 2000, seed=2, noise=0.0)      # float64, exact rank 5
    one = KoopmanDMD(window=10, stride=5).fit(da.from_array(Y, chunks=(7, 450)))
    assert one.strategy_ == "band-gram" and {r.factor for r in one.results_} == {"gram"}
    for r in one.results_:
        f = one.window_factors_["all"][r.window]
        assert r.rank < 5 and (r.rank == 0 or r.singular_values[r.rank - 1] >= 100 * f.error)
        for z in r.eigenvalues[r.reliable(1e-2)]:
            assert np.abs(np.array([0.99, 0.95, 0.9 + 0.1j, 0.9 - 0.1j, 0.8]) - z).min() < 1e-2
    est = KoopmanDMD(window=10, stride=5, rank=5).fit(da.from_array(Y, chunks=(7, 450)))
    assert est.strategy_ == "tsqr" and set(est.factors_) == {"all"}
    assert {f.method for f in est.window_factors_["all"].values()} == {"tsqr"}
    assert {r.factor for r in est.results_} == {"tsqr"}
    for r in est.results_:
        a, b = r.window
        direct = dmd(Y[a:b].T, rank=5)
        assert r.rank == direct.rank == 5
        np.testing.assert_allclose(r.eigenvalues, direct.eigenvalues, atol=1e-8)
        np.testing.assert_allclose(r.residuals, direct.residuals, atol=1e-8)
        # exact rank 5: the factor keeps the numerical rank, the SVD of the data all W-1
        np.testing.assert_allclose(r.singular_values, direct.singular_values[:5], atol=1e-10)


def test_pass_split_into_row_spans_equals_direct_dmd(monkeypatch):
    """With a small per-task budget the pass runs span by span (tasks hold a few time
    chunks, not all T); every window of every layer still equals a direct DMD."""
    import pipeline.koopman.windows as windows

    monkeypatch.setattr(windows.passes, "TASK_BYTES", 450 * 8 * 15)   # 15 rows of a column chunk
    calls = []
    real = windows.passes.run_pass
    monkeypatch.setattr(windows.passes, "run_pass",
                        lambda *a, **k: calls.append(k["spans"]) or real(*a, **k))
    Y = trajectory(60, 2000, seed=13)
    est = KoopmanDMD(window=12, stride=6, per_layer=True, rank=5)
    est.fit(da.from_array(Y, chunks=(7, 450)), GROUPS)
    assert len(calls[0]) > 3
    spans = {"all": (0, 2000), **{n: (a, b) for n, a, b in GROUPS}}
    for r in est.results_:
        (a, b), (c0, c1) = r.window, spans[r.layer]
        assert_same(r, dmd(Y[a:b, c0:c1].T, rank=5))


def test_modes_of_a_window_read_only_its_snapshots():
    """The modes pass reads snapshot 0 and the window's rows only: the other rows may
    be anything (here NaN) without changing the modes."""
    Y = trajectory(60, 2000, seed=14)
    est = KoopmanDMD(window=12, stride=12, rank=5).fit(Y)
    a, b = est.windows_[2]
    want = est.modes(Y, window=(a, b)).compute()
    poisoned = Y.copy()
    outside = np.ones(60, bool)
    outside[[0] + list(range(a, b))] = False
    poisoned[outside] = np.nan
    got = est.modes(da.from_array(poisoned, chunks=(5, 700)), window=(a, b)).compute()
    np.testing.assert_allclose(got, want, atol=1e-12)


@pytest.mark.parametrize("method", ["qr", "randomized"])
def test_trajectory_source_loads_chunks_in_tasks_and_gives_the_layers(method):
    """A Trajectory's loader is what the passes read (no registry by array name), its
    groups are the fit's layers, and the results equal a fit of the plain array."""
    from pipeline.koopman import Trajectory

    Y = trajectory(40, 2000, seed=14).astype(np.float32)
    Yd = da.from_array(Y, chunks=(10, 450))
    loads = []

    def load_chunk(i, j):                      # chunk (i, j), as the store's loaders return it
        loads.append((i, j))
        return Y[i * 10:(i + 1) * 10, j * 450:(j + 1) * 450]

    src = Trajectory(Yd, load_chunk=load_chunk, cheap=True, groups=tuple(GROUPS))
    kw = dict(window=20, stride=10, per_layer=True, rank=5, method=method, seed=2)
    got = KoopmanDMD(**kw).fit(src)
    ref = KoopmanDMD(**kw).fit(Y, GROUPS)
    assert set(loads) == {(i, j) for i in range(4) for j in range(5)}
    assert got.groups_ == GROUPS and got.strategy_ == ref.strategy_
    assert got.strategy_ == ("band-gram" if method == "qr" else "randomized")
    assert [(r.layer, r.window) for r in got.results_] == [(r.layer, r.window) for r in ref.results_]
    for a, b in zip(got.results_, ref.results_):
        np.testing.assert_allclose(a.eigenvalues, b.eigenvalues, atol=1e-10)
        np.testing.assert_allclose(a.residuals, b.residuals, atol=1e-10)
    # explicit groups override the source's
    assert {r.layer for r in KoopmanDMD(**kw).fit(src, [("all", 0, 2000)]).results_} == {"all"}
