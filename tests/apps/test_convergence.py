"""Convergence criterion on trajectories of known spectra (stored as float32) and on a
real tiny training; the verdict producers' merge."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.apps import verdicts
from pipeline.apps.convergence import Criterion, check_window, converged_at, verdict_spectra
from pipeline.koopman import KoopmanDMD
from pipeline.koopman.windows import plan_windows

T, P = 60, 300


def _basis(seed=0):
    rng = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(rng.standard_normal((P, 4)))
    return rng, Q


def _stored(Y, rng):
    """As the store keeps it: float32, with a little noise above its resolution."""
    return (Y + 1e-5 * rng.standard_normal(Y.shape)).astype(np.float32)


def _verdict(Y):
    est = KoopmanDMD(window="auto").fit(Y)
    return est, verdict_spectra(est), converged_at(verdict_spectra(est), Criterion())


def test_converging_trajectory_converges_where_the_known_amplitudes_say():
    rng, Q = _basis()
    t = np.arange(T)[:, None]
    c = np.array([3.0, 2.0, 1.0])       # fixed point, then modes 0.8 and 0.6 (orthonormal directions)
    lam = np.array([1.0, 0.8, 0.6])
    Y = _stored(c[0] * Q[:, 0] + c[1] * lam[1] ** t * Q[:, 1] + c[2] * lam[2] ** t * Q[:, 2], rng)
    est, spectra, v = _verdict(Y)
    # float64 reference: the certified eigenvalues of the first window are the known ones
    first = spectra[0]
    ok = first.reliable(Criterion().residual_tol)
    assert ok.sum() == 3
    np.testing.assert_allclose(np.sort(first.eigenvalues[ok].real), np.sort(lam), atol=1e-3)
    # reference verdict from the known amplitudes (unit directions: |b_i| = c_i lam_i^a)
    crit = Criterion()
    holds = [c[0] / (c * lam ** a).sum() >= crit.share for a, _ in plan_windows(T, "auto")]
    first_run = next(i for i in range(len(holds)) if all(holds[i:i + crit.k]))
    expected = plan_windows(T, "auto")[first_run][1] - 1
    assert v["converged_at"] == expected and v["reason"] == "converged"
    assert v["converged_epoch"] == expected          # no snapshot_epochs: index stands in
    assert v["confirmed_at"] == plan_windows(T, "auto")[first_run + crit.k - 1][1] - 1


def test_oscillating_trajectory_never_converges():
    rng, Q = _basis(1)
    t = np.arange(T)[:, None]
    theta = 0.3                          # rotation: |λ| = 1 but λ ≠ 1
    Y = _stored(2.0 * Q[:, 0] + 1.5 * (np.cos(theta * t) * Q[:, 1] + np.sin(theta * t) * Q[:, 2]), rng)
    _, spectra, v = _verdict(Y)
    assert v["converged_at"] is None and v["converged_epoch"] is None
    last = spectra[-1]
    ok = last.reliable(Criterion().residual_tol)
    lam = last.eigenvalues[ok]
    ref = np.exp(1j * theta)             # float64 reference of the rotation's eigenvalues
    assert np.abs(lam - ref).min() < 1e-3 and np.abs(lam - ref.conjugate()).min() < 1e-3
    assert check_window(last).share_at_1 < Criterion().share


def test_diverging_trajectory_never_converges():
    rng, Q = _basis(2)
    t = np.arange(T)[:, None]
    Y = _stored(3.0 * Q[:, 0] + 0.05 * 1.05 ** t * Q[:, 1] + 1.0 * 0.7 ** t * Q[:, 2], rng)
    _, spectra, v = _verdict(Y)
    assert v["converged_at"] is None
    # the growing mode is certified in the late windows, within 1e-3 of the known 1.05
    grow = [r.eigenvalues[r.reliable(0.01)] for r in spectra[-3:]]
    assert all(np.abs(g - 1.05).min() < 1e-3 for g in grow)
    # the early windows held (the small growing mode hid under the fixed point): a relapse
    assert v["reason"].startswith("relapsed") or "growing" in v["reason"]


def test_diverged_status_has_no_convergence_point():
    rng, Q = _basis(3)
    Y = _stored(np.repeat(Q[:, :1].T, T, axis=0) * 3.0, rng)
    est = KoopmanDMD(window="auto").fit(Y)
    assert converged_at(verdict_spectra(est), status="diverged")["converged_at"] is None


def test_producers_merge_and_a_failing_one_is_recorded():
    rng, Q = _basis(4)
    t = np.arange(T)[:, None]
    Y = _stored(3.0 * Q[:, 0] + 0.5 ** t * Q[:, 1], rng)
    est = KoopmanDMD(window="auto").fit(Y)
    ctx = verdicts.VerdictInput("r1", verdict_spectra(est), est.results_)
    base = verdicts.build_verdict(ctx)
    assert base["bad_init"] is None and base["run_id"] == "r1" and base["converged_at"] is not None

    def bad_init(c):
        return {"bad_init": True, "bad_init_score": 0.9}

    def broken(c):
        raise RuntimeError("boom")

    v = verdicts.build_verdict(ctx, [verdicts.convergence_producer, bad_init, broken])
    assert v["bad_init"] is True and v["bad_init_score"] == 0.9
    assert v["converged_at"] == base["converged_at"]
    assert v["verdict_errors"] == ["broken: RuntimeError: boom"]
    assert verdicts.mlflow_tags(v)["kma.bad_init"] == "yes"


@pytest.mark.parametrize("bad", [dict(delta=0), dict(share=1.5), dict(k=0)])
def test_criterion_numbers_are_checked(bad):
    with pytest.raises(ValueError):
        Criterion(**bad)
