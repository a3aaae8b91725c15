"""Small-matrix DMD (pipeline.koopman.core) against dense numpy, PyDMD and known systems."""

import numpy as np
import pytest
from scipy.linalg import block_diag

from pipeline.koopman import dmd
from pipeline.koopman.core import choose_rank, gavish_donoho_omega

TRUE = np.array([0.99, 0.95, 0.9 + 0.1j, 0.9 - 0.1j, 0.8])


def lifted_system(T, P, seed, noise=0.0):
    """Snapshots (P, T) of a linear system with eigenvalues TRUE, orthonormally lifted."""
    rng = np.random.default_rng(seed)
    A = block_diag([[0.99]], [[0.95]], [[0.9, 0.1], [-0.1, 0.9]], [[0.8]])
    z = rng.standard_normal(A.shape[0]) + 1.0
    Z = np.empty((A.shape[0], T))
    for t in range(T):
        Z[:, t] = z
        z = A @ z
    L = np.linalg.qr(rng.standard_normal((P, A.shape[0])))[0]
    return L @ Z + noise * rng.standard_normal((P, T))


def sorted_c(v):
    v = np.asarray(v)
    return v[np.lexsort((v.imag.round(10), v.real.round(10)))]


def dense_exact_dmd(X, r):
    """Textbook exact DMD (Tu et al. 2014) eigenvalues, projected modes, amplitudes."""
    X1, X2 = X[:, :-1], X[:, 1:]
    U, s, Vh = np.linalg.svd(X1, full_matrices=False)
    U, s, V = U[:, :r], s[:r], Vh[:r].conj().T
    Atilde = U.conj().T @ X2 @ V / s
    lam, W = np.linalg.eig(Atilde)
    modes = U @ W
    b = np.linalg.lstsq(modes, X[:, 0], rcond=None)[0]
    return lam, modes, b


@pytest.mark.filterwarnings("ignore:Input data condition number")
@pytest.mark.parametrize("noise", [0.0, 1e-3])
def test_matches_dense_numpy_and_pydmd(noise):
    from pydmd import DMD

    X = lifted_system(40, 300, seed=1, noise=noise)
    r = 5
    res = dmd(X, rank=r, refine=False)   # plain Ritz vectors: what PyDMD's modes are
    lam, modes, b = dense_exact_dmd(X, r)
    np.testing.assert_allclose(sorted_c(res.eigenvalues), sorted_c(lam), atol=1e-12)
    ref = DMD(svd_rank=r, exact=False).fit(X)
    np.testing.assert_allclose(sorted_c(res.eigenvalues), sorted_c(ref.eigs), atol=1e-12)
    # amplitude times mode is phase-invariant: compare per eigenvalue
    for i, li in enumerate(res.eigenvalues):
        j = np.argmin(np.abs(ref.eigs - li))
        np.testing.assert_allclose(res.amplitudes[i] * res.vectors[:, i],
                                   ref.amplitudes[j] * ref.modes[:, j], atol=1e-9)
        j = np.argmin(np.abs(lam - li))
        np.testing.assert_allclose(abs(res.amplitudes[i]), abs(b[j]), rtol=1e-9)
    assert res.rank == r
    np.testing.assert_allclose(res.singular_values, np.linalg.svd(X[:, :-1], compute_uv=False),
                               rtol=1e-10, atol=1e-12)


def test_known_eigenvalues_exact_data_tiny_residuals():
    X = lifted_system(30, 500, seed=2)
    res = dmd(X)                                     # default: numerical rank
    assert res.rank == 5
    np.testing.assert_allclose(sorted_c(res.eigenvalues), sorted_c(TRUE), atol=1e-10)
    assert res.residuals.max() < 1e-8
    # Ritz vectors are unit norm; the first snapshot is reproduced by the amplitudes
    np.testing.assert_allclose(np.linalg.norm(res.vectors, axis=0), 1.0, atol=1e-12)
    np.testing.assert_allclose(res.vectors @ res.amplitudes, X[:, 0], atol=1e-10)


def test_known_eigenvalues_with_noise():
    X = lifted_system(60, 2000, seed=3, noise=1e-4)
    res = dmd(X, rank=5)
    np.testing.assert_allclose(sorted_c(res.eigenvalues), sorted_c(TRUE), atol=2e-3)
    assert res.residuals.max() < 0.05


def test_spurious_pairs_have_large_residuals():
    X = lifted_system(60, 400, seed=4, noise=1e-3)
    res = dmd(X, rank=20, refine=False)              # 15 pairs fitted to noise
    good = [np.argmin(np.abs(res.eigenvalues - t)) for t in TRUE]
    spurious = np.setdiff1d(np.arange(res.rank), good)
    data = res.residuals - res.misfit_terms          # the data residuals alone
    assert data[good].max() < 0.2          # the fastest-decaying mode is weakest
    assert data[spurious].min() > 0.4
    # refined vectors (the default) lower every residual but still separate the two
    ref = dmd(X, rank=20)
    data = ref.residuals - ref.misfit_terms
    assert data[good].max() < 0.2 < data[spurious].min()
    assert np.all(ref.misfit_terms >= 0)            # the misfit term only adds


def test_refined_residuals_not_larger():
    X = lifted_system(60, 400, seed=5, noise=1e-3)
    plain = dmd(X, rank=10, refine=False)
    refined = dmd(X, rank=10)
    np.testing.assert_array_equal(plain.eigenvalues, refined.eigenvalues)
    assert np.all(refined.residuals <= plain.residuals * (1 + 1e-10) + 1e-14)
    np.testing.assert_allclose(np.linalg.norm(refined.vectors, axis=0), 1.0, atol=1e-12)


def test_scaling_keeps_exact_eigenvalues():
    X = lifted_system(30, 200, seed=6)
    res = dmd(X, scale=True)                         # xGEDMD JOBS='S'
    np.testing.assert_allclose(sorted_c(res.eigenvalues), sorted_c(TRUE), atol=1e-9)


def test_rank_selection_rules():
    rng = np.random.default_rng(7)
    X = lifted_system(80, 1000, seed=7, noise=1e-3)
    assert dmd(X, threshold="gavish-donoho").rank == 5
    assert dmd(X, tol=1e-1).rank <= 5
    s = np.array([3.0, 2.0, 1.0, 0.0])
    assert choose_rank(s) == 3 and choose_rank(s, rank=10) == 3 and choose_rank(s, tol=0.5) == 2
    assert gavish_donoho_omega(1.0) == pytest.approx(2.86, abs=0.01)
    del rng


def test_deterministic_order():
    X = lifted_system(30, 200, seed=8)
    lam = dmd(X).eigenvalues
    assert np.all(np.diff(np.abs(lam)) <= 1e-12)
    k = np.flatnonzero(np.abs(lam.imag) > 0)
    assert lam[k[0]].imag > 0 and lam[k[1]] == np.conj(lam[k[0]])
    assert lam.dtype == np.complex128


def test_zero_data_and_bad_input():
    assert dmd(np.zeros((5, 4))).rank == 0
    with pytest.raises(ValueError, match="NaN"):
        dmd(np.array([[1.0, np.nan, 2.0]]))
    with pytest.raises(ValueError, match="at most one"):
        dmd(np.ones((3, 3)), rank=1, tol=0.1)
    with pytest.raises(ValueError, match="threshold"):
        dmd(np.ones((3, 3)), threshold="nope")
