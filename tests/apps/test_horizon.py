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


# -- drift against jitter (the per-layer and whole-network motion test, HorizonCriterion.motion)
V2 = horizon.RULES["v2"]   # the rule before


def _two_layers(kind, amp, seed=0):
    """Two layers of 150 weights settle (mode 0.85, norm 3) while layer ``b`` also jitters
    (a random walk of steps ``amp``: no drift), drifts in a straight line (``amp`` per
    snapshot), or keeps approaching a point ``amp`` away at rate 0.98 (``slow``), or
    nothing more (``settle``); the losses settle with the first mode."""
    rng = np.random.default_rng(seed)
    t = np.arange(T)[:, None]
    Y = rng.standard_normal(P) + 3.0 * 0.85 ** t * rng.standard_normal(P) / np.sqrt(P)
    b = slice(P // 2, P)
    u = rng.standard_normal(P // 2)
    u /= np.linalg.norm(u)
    if kind == "jitter":
        Y[:, b] += np.cumsum(amp * rng.standard_normal((T, P // 2)), axis=0) / np.sqrt(P // 2)
    elif kind == "line":
        Y[:, b] += amp * t * u
    elif kind == "slow":
        Y[:, b] += amp * (1 - 0.98 ** t) * u + np.cumsum(0.02 * rng.standard_normal((T, P // 2)), axis=0) / np.sqrt(P // 2)
    groups = [("a", 0, P // 2), ("b", P // 2, P)]
    est = KoopmanDMD(window="auto", per_layer=True).fit(Y.astype(np.float32), groups=groups)
    e = np.arange(1, T)
    v = list(0.05 + 0.85 ** e)
    return dict(spectra=verdict_spectra(est), factors=est.window_factors_["all"],
                layer_spectra={n: verdict_spectra(est, n) for n, *_ in groups},
                layer_factors={n: est.window_factors_[n] for n, *_ in groups},
                metrics={"val_loss": v, "train_loss": v}, snapshot_epochs=list(range(T)))


def test_drift_motion_is_the_net_drift_and_ignores_a_random_walk():
    """``drift_motion`` against its definition in float64: a straight line keeps its speed,
    a random walk (the same step lengths) has next to none."""
    from pipeline.koopman import Factor

    rng = np.random.default_rng(3)
    n, H = 15, 40
    u = rng.standard_normal(50)
    u /= np.linalg.norm(u)
    line = np.outer(u, 0.2 * np.arange(n + 1))
    walk = np.cumsum(np.c_[np.zeros(50), 0.2 * rng.standard_normal((50, n)) / np.sqrt(50)], axis=1)
    f = lambda C: Factor("x", 0, 50, C, (), "gram-window")      # noqa: E731
    assert horizon.drift_motion(f(line), H) == pytest.approx(0.2 * H, rel=1e-9)
    D2 = np.sum((walk[:, -1] - walk[:, 0]) ** 2)
    S = np.sum(np.diff(walk, axis=1) ** 2)
    ref = np.sqrt(max(D2 - S, 0) / (n * (n - 1))) * H
    assert horizon.drift_motion(f(walk), H) == pytest.approx(ref, rel=1e-9, abs=1e-12)
    assert horizon.drift_motion(f(walk), H) < 0.2 * 0.2 * H


def test_a_flat_run_whose_layer_only_jitters_gets_a_convergence_point():
    """Flat losses; layer ``b`` keeps taking random-walk steps: the modes the old rule sums
    predict motion of the jitter's size (its per-layer test never holds); the default counts
    only what the modes predict *and* the window's displacement shows beyond a random walk."""
    r = _two_layers("jitter", 0.05)
    old = horizon.verdict(**r, crit=V2)
    assert old["converged_at"] is None and "b" in old["class_reason"]
    new = horizon.verdict(**r)
    assert new["class"] == "converged" and new["converged_epoch"] is not None
    assert max(new["evidence"]["layer_motion_ratio"]["b"][4:]) < horizon.HorizonCriterion().layer_tol


def test_a_flat_run_whose_layer_still_drifts_gets_no_point():
    """Flat losses; layer ``b`` still approaches a point 5 away at rate 0.98 (plus jitter) in
    a budget of 200 epochs: its modes predict the motion and its displacement shows it."""
    r = _two_layers("slow", 5.0)
    v = horizon.verdict(**r, budget_snapshots=201, budget_epochs=200)
    assert v["converged_at"] is None and v["class"] == "still_improving"
    assert ["b"] in v["evidence"]["layers_moving"][-3:]
    assert v["evidence"]["layer_motion_ratio"]["b"][-1] > horizon.HorizonCriterion().layer_tol


def test_a_val_loss_that_still_swings_keeps_a_window_from_holding():
    """The loss as an observable: weights that settle, a best-so-far that stays flat, but a
    validation loss still swinging by 30 % from epoch to epoch — the old rule calls it
    converged, the default does not."""
    r = _two_layers("settle", 0.0)
    v = np.asarray(r["metrics"]["val_loss"])
    v[40:] = 0.05 * (1 + 0.3 * (np.arange(v.size - 40) % 2))
    r["metrics"] = {"val_loss": list(v), "train_loss": list(v)}
    assert horizon.verdict(**r, crit=V2)["class"] == "converged"
    new = horizon.verdict(**r)
    assert new["converged_at"] is None and "swings" in new["class_reason"]
    assert horizon.verdict(**r, crit=horizon.HorizonCriterion(loss_spread=None))["converged_at"] is not None


def test_a_straight_line_drift_is_seen_by_the_drift_reading_only():
    """What the default cannot see: a layer moving in a straight line with flat losses puts
    its pair at λ = 1, where the modes predict nothing (the old rule and the default call it
    converged); ``motion="drift"`` (the net drift alone) keeps it moving."""
    r = _two_layers("line", 0.02)
    assert horizon.verdict(**r, crit=V2)["class"] == "converged"
    assert horizon.verdict(**r)["class"] == "converged"
    v = horizon.verdict(**r, crit=horizon.HorizonCriterion(motion="drift"))
    assert v["converged_at"] is None and ["b"] in v["evidence"]["layers_moving"][4:-1]


def test_a_verdict_of_an_older_rule_reads_as_outdated():
    from pipeline.apps import verdicts

    now = {"class": "converged", "converged_at": 12, "converged_epoch": 12, "verdict_version": verdicts.VERDICT_VERSION}
    old = {**now, "verdict_version": 2}
    assert verdicts.cell(now) == "converged 12 (ep 12)" and "kma.verdict_outdated" not in verdicts.mlflow_tags(now)
    assert verdicts.cell(old) == "converged 12 (ep 12) (outdated rule v2)"
    assert verdicts.cell({"class": "stalled"}) == "stalled (outdated rule v2)"       # stored before the key
    assert "re-run kma analyze" in verdicts.mlflow_tags(old)["kma.verdict_outdated"]
    assert verdicts.cell({"converged_at": None}) == "no"                               # first-version verdicts


def test_holding_windows_a_step_apart_do_not_confirm_each_other():
    """k = 2 holding windows confirm when their starts are ⌈W/2⌉ apart (the analysis' plan),
    not when they are 2 snapshots apart (a monitor fitting every 2 snapshots), except at
    the budget's end, where the plan's last window is moved to end with the run."""
    from types import SimpleNamespace

    rows = lambda starts, W=10: [SimpleNamespace(window=(a, a + W)) for a in starts]   # noqa: E731
    step2 = horizon._confirmations(rows([0, 2, 4, 6]), [True] * 4, 2, 0.5, end=100)
    assert step2 == [None, None, None, 0]                 # starts 0 and 6 are 5 or more apart
    half = horizon._confirmations(rows([0, 5, 10]), [False, True, True], 2, 0.5, end=100)
    assert half == [None, None, 1]
    assert horizon._confirmations(rows([0, 2]), [True, True], 2, 0.0, end=100) == [None, 0]   # v2: any two
    at_end = horizon._confirmations(rows([10, 11]), [True, True], 2, 0.5, end=21)
    assert at_end == [None, 0]


def test_the_val_loss_swing_is_relative_unless_the_loss_fell_to_rounding():
    assert horizon.loss_spread([1.0, 0.5, 0.4, 0.5, 0.4], 2, 5) == pytest.approx(0.25)
    exact_fit = [1.0, 1e-3, 1e-9, 1e-16, 5e-17, 2e-16]                  # a fit to rounding
    assert horizon.loss_spread(exact_fit, 3, 6) == pytest.approx((2e-16 - 5e-17) / 1e-6)   # not 3
    assert horizon.loss_spread(exact_fit, 1, 3) == pytest.approx((1e-3 - 1e-9) / 1e-6)
