"""Convergence verdict v2 (pipeline.apps.horizon) on float32 trajectories of known
spectra: the predicted remaining motion and the motion so far against float64 references
computed here, the loss forecast against its closed form, and the class of each kind of run."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.apps import horizon
from pipeline.apps.convergence import verdict_spectra
from pipeline.koopman import KoopmanDMD

T, P = 80, 300


def _fit(Y):
    est = KoopmanDMD(window="auto").fit(Y)
    return est, verdict_spectra(est), est.window_factors_["all"]


def _traj(lam, c=2.0, seed=0):
    rng = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(rng.standard_normal((P, 3)))
    t = np.arange(T)[:, None]
    Y64 = 3.0 * Q[:, 0] + c * lam ** t * Q[:, 1]
    return Y64, (Y64 + 1e-5 * rng.standard_normal(Y64.shape)).astype(np.float32)


def test_predicted_motion_and_path_match_float64_references():
    Y64, Y = _traj(0.9)
    est, spectra, factors = _fit(Y)
    r = spectra[0]
    a, b = r.window
    H = T - b
    true_left = np.linalg.norm(Y64[b - 1 + H] - Y64[b - 1])       # one mode: the bound is exact
    assert horizon.predicted_motion(r, H, 1e-2) == pytest.approx(true_left, rel=2e-2)
    past = horizon.path_so_far(factors)
    wins = sorted(factors)
    ref, cum = {}, 0.0
    for j, (a, b) in enumerate(wins):        # chain of window starts, then to the window's end
        ref[(a, b)] = cum + np.linalg.norm(Y64[b - 1] - Y64[a])
        nxt = wins[j + 1][0] if j + 1 < len(wins) and wins[j + 1][0] < b else b - 1
        cum += np.linalg.norm(Y64[nxt] - Y64[a])
    for w in wins:
        assert past[w] == pytest.approx(ref[w], rel=1e-3, abs=1e-4)


def test_vector_motion_is_the_predicted_displacement_and_the_sum_bounds_it():
    """Two decaying modes along nearly parallel directions (angle 0.05 rad) whose contents
    partly cancel: the vector form is the true remaining displacement (dense float64
    reference), the sum of the modes' norms only an upper bound (here 1.4 times larger)."""
    rng = np.random.default_rng(1)
    Q, _ = np.linalg.qr(rng.standard_normal((P, 3)))
    v1, v2 = Q[:, 1], np.cos(0.05) * Q[:, 1] + np.sin(0.05) * Q[:, 2]
    t = np.arange(T)[:, None]
    Y64 = 3.0 * Q[:, 0] + 2.0 * 0.9 ** t * v1 - 2.0 * 0.8 ** t * v2
    Y = (Y64 + 1e-6 * rng.standard_normal(Y64.shape)).astype(np.float32)
    est, spectra, factors = _fit(Y)
    r = spectra[0]
    a, b = r.window
    H = T - b
    true_left = np.linalg.norm(Y64[b - 1 + H] - Y64[b - 1])
    vec = horizon.predicted_motion(r, H, 1e-2, factor=factors[(a, b)])
    total = horizon.predicted_motion(r, H, 1e-2)
    assert vec == pytest.approx(true_left, rel=2e-2)
    assert total > 1.2 * vec


def test_loss_forecast_is_the_closed_form_of_an_exponential_plateau():
    e = np.arange(1, 61)
    v = 0.5 + 2.0 * 0.9 ** e
    g = horizon.loss_gain(v, 20, 40, 20)
    m40 = v[39]
    assert g == pytest.approx((m40 - 0.5) * (1 - 0.9 ** 20) / m40, rel=1e-6)
    assert horizon.loss_gain(np.full(30, 0.7), 10, 30, 50) == 0.0
    assert horizon.loss_gain(1.0 - 0.01 * e, 20, 40, 20) == pytest.approx(0.01 * 20 / 0.6, rel=1e-6)  # linear: rate x H


def _losses(rate, floor, n):
    e = np.arange(1, n + 1)
    return {"val_loss": list(floor + 1.0 * rate ** e), "train_loss": list(floor + 1.0 * rate ** e)}


def test_classes_of_known_runs():
    ep = list(range(T))                  # snapshot i after epoch i
    # converging: weights and loss settle fast
    _, s, f = _fit(_traj(0.8)[1])
    v = horizon.verdict(s, factors=f, metrics=_losses(0.8, 0.05, T - 1), snapshot_epochs=ep)
    assert v["class"] == "converged" and v["converged_epoch"] is not None
    assert v["converged_epoch"] == v["online_converged_epoch"]
    # slow: a mode at 0.97 still carries motion at the end; the loss still falls
    _, s, f = _fit(_traj(0.97)[1])
    v = horizon.verdict(s, factors=f, metrics=_losses(0.97, 0.05, T - 1), snapshot_epochs=ep)
    assert v["class"] == "still_improving" and v["converged_at"] is None
    assert "predicted" in v["class_reason"]
    # stuck: weights and loss settle, but the loss never left its start
    _, s, f = _fit(_traj(0.8)[1])
    flat = {"val_loss": [2.3] * (T - 1), "train_loss": [2.3] * (T - 1)}
    v = horizon.verdict(s, factors=f, metrics=flat, snapshot_epochs=ep)
    assert v["class"] == "stalled" and "little progress" in v["class_reason"]
    # growing: a certified |λ| > 1 + δ
    _, s, f = _fit(_traj(1.05, c=0.05)[1])
    assert horizon.verdict(s, factors=f, snapshot_epochs=ep)["class"] == "diverging"
    # weights only: the limitation is stated
    _, s, f = _fit(_traj(0.8)[1])
    v = horizon.verdict(s, factors=f, snapshot_epochs=ep)
    assert v["class"] == "converged" and "weights only" in v["evidence"]["limitation"]


@pytest.mark.parametrize("last_epoch, budget, expected", [(71, 150, 151), (103, 150, 151), (150, 150, 151),
                                                         (35, 60, 61)])
def test_an_early_stopped_run_is_judged_against_its_whole_budget(monkeypatch, last_epoch, budget, expected):
    """A run that ``stop:`` ended at epoch e (snapshots 0..e, one per epoch) is judged with
    the horizon of its whole budget: ``1 + budget`` snapshots, as the task judged it."""
    from types import SimpleNamespace

    from pipeline.apps import verdicts

    seen = {}

    def fake(*args, **kw):
        seen.update(kw)
        return {"class": "still_improving", "converged_at": None, "converged_epoch": None,
                "online_converged_at": None, "online_converged_epoch": None, "online_confirmed_epoch": None,
                "class_reason": "", "evidence": {}}

    monkeypatch.setattr(horizon, "verdict", fake)
    n = last_epoch + 1
    run = SimpleNamespace(metrics={"val_loss": [1.0] * last_epoch}, config={"epochs": budget})
    ctx = verdicts.VerdictInput("r", [SimpleNamespace(window=(n - 16, n))], run=run,
                                snapshot_epochs=list(range(n)), status="complete")
    verdicts.horizon_producer(ctx)
    assert seen["budget_snapshots"] == expected and seen["budget_epochs"] == budget
