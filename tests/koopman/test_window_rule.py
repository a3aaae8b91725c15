"""The window plan: explicit windows honoured and the trajectory's end always covered;
the automatic rule bounds the window count from a dozen snapshots to thousands."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from pipeline.config import AnalysisParams
from pipeline.errors import ConfigError
from pipeline.koopman import KoopmanDMD
from pipeline.koopman.factor import KoopmanInputError
from pipeline.koopman.windowrule import AUTO_MAX_WINDOWS, auto_window, plan_windows


def test_explicit_windows_cover_the_end():
    # W=30 over 61 snapshots: [0,30), [30,60) and the end-aligned [31,61)
    assert plan_windows(61, 30) == [(0, 30), (30, 60), (31, 61)]
    assert plan_windows(60, 30) == [(0, 30), (30, 60)]             # already covered
    assert plan_windows(61, 20, 10)[-1] == (41, 61)
    assert plan_windows(50, 20, 10) == [(0, 20), (10, 30), (20, 40), (30, 50)]


def test_whole_run():
    assert plan_windows(7) == plan_windows(7, "all") == [(0, 7)]


@pytest.mark.parametrize("T", [2, 3, 5, 6, 12, 13, 61, 100, 401, 4001, 100_000])
def test_auto_rule_bounds_windows_and_covers_everything(T):
    wins = plan_windows(T, "auto")
    W, S = auto_window(T)
    assert 1 <= len(wins) <= AUTO_MAX_WINDOWS + 1
    assert all(b - a == W for a, b in wins) and W >= min(T, 6)
    assert T < 32 or W >= 16        # issue 20: room for 7 directions with informative residuals
    assert wins[0][0] == 0 and wins[-1][1] == T
    covered = np.zeros(T, bool)
    for a, b in wins:
        covered[a:b] = True
    assert covered.all()
    assert all(b1 - a1 >= 0 for (a1, _), (_, b1) in zip(wins, wins[1:]))     # overlapping


def test_auto_rule_on_short_runs():
    """A dozen snapshots keep three windows; from 32 on, at least 16 snapshots a window
    (issue 20: the default cut may keep 7 directions with informative residuals)."""
    assert plan_windows(12, "auto") == [(0, 6), (3, 9), (6, 12)]
    assert plan_windows(20, "auto") == [(0, 10), (5, 15), (10, 20)]
    assert plan_windows(40, "auto") == [(0, 16), (8, 24), (16, 32), (24, 40)]


@pytest.mark.parametrize("window, stride, msg", [
    (1, None, "window must be"), (70, None, "longer than"), (10, 0, "stride must be"),
    ("auto", 3, "stride needs an explicit window"), ("some", None, "window must be"),
])
def test_bad_plans(window, stride, msg):
    with pytest.raises((ValueError, KoopmanInputError), match=msg):
        plan_windows(61, window, stride)


def test_estimator_analyses_the_end_window():
    rng = np.random.default_rng(0)
    lam = np.array([0.9, 0.5])
    Y = (rng.standard_normal((40, 2)) @ np.diag(lam ** 0)).astype(np.float32)
    A = np.diag(lam)
    x = rng.standard_normal(2)
    B = rng.standard_normal((2, 30))
    Y = np.stack([(np.linalg.matrix_power(A, t) @ x) @ B for t in range(25)]).astype(np.float32)
    est = KoopmanDMD(window=10, per_layer=False).fit(Y)
    assert est.windows_ == [(0, 10), (10, 20), (15, 25)]
    assert [r.window for r in est.results_] == est.windows_


@pytest.mark.parametrize("window, stride", [
    (1, None), ("some", None), (True, None), (2.5, None), (10, 0), (10, -1), ("auto", 3), ("all", 2),
])
def test_one_rule_one_message_at_the_edge_and_in_the_engine(window, stride):
    """The configuration (flags and YAML) and the engine check a window with the same
    function (pipeline.koopman.windowrule.check_window) and say the same thing."""
    with pytest.raises(ValueError) as engine:
        plan_windows(61, window, stride)
    with pytest.raises(ConfigError) as edge:
        AnalysisParams.from_flags(window=window, stride=stride)
    assert str(engine.value) in str(edge.value)
    with pytest.raises(KoopmanInputError) as fit:
        KoopmanDMD(window=window, stride=stride).fit(np.ones((61, 4), np.float32))
    assert str(fit.value) == str(engine.value)


def test_the_configuration_imports_the_rule_without_the_engine():
    """pipeline.koopman loads its numpy/dask modules only when one of its names is used."""
    code = ("import sys, pipeline.config as c; c.AnalysisParams(window=8, stride=4).analysis_id; "
            "heavy = [m for m in ('dask', 'pipeline.koopman.windows', 'pipeline.koopman.estimator') "
            "if m in sys.modules]; assert not heavy, heavy; "
            "from pipeline.koopman import compress, KoopmanDMD; import pipeline.koopman.compress as m; "
            "assert callable(compress) and m is compress, m")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
