"""Outcome labels from losses (pipeline.apps.outcomes): each class on curves whose
answer is known by construction."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.apps import outcomes

E = np.arange(1, 101)


def test_a_loss_that_flattens_near_the_best_is_converged_at_its_flat_epoch():
    v = 0.1 + 2.0 * 0.8 ** E                      # within 10% of 0.1 once 2*0.8^e <= 0.01
    out = outcomes.label(v, ref=0.1)
    assert out["label"] == "converged"
    assert out["flat_epoch"] == int(np.ceil(np.log(0.01 / 2.0) / np.log(0.8)))
    assert out["best"] == pytest.approx(v.min()) and out["progress"] == pytest.approx(1.0, abs=1e-3)


def test_a_loss_still_falling_at_the_end_is_still_improving():
    v = 1.0 - 0.009 * E                           # 0.28 -> 0.10 over the last 20 epochs
    out = outcomes.label(v, ref=0.05)
    assert out["label"] == "still_improving" and out["flat_epoch"] is None
    assert out["late_gain"] == pytest.approx(v[79] / v[-1] - 1)


def test_a_flat_loss_far_from_the_comparable_runs_is_stalled_and_near_them_converged():
    v = 2.0 + 0.3 * 0.5 ** E                      # flat at 2.0 from epoch ~5 on
    assert outcomes.label(v, ref=0.1)["label"] == "stalled"      # 2.0 > 0.1 + 0.25 (2.15 - 0.1)
    assert outcomes.label(v, ref=1.98)["label"] == "converged"   # 2.0 <= 1.98 + 0.25 (2.15 - 1.98)
    assert outcomes.label(v)["label"] == "converged"             # no reference: never stalled


@pytest.mark.parametrize("v,status", [([1.0, 0.5, float("nan")], None), ([1.0, 0.5, 0.4], "diverged"),
                                      ([1.0, 0.5, 0.4, 3.0], None)])
def test_nan_status_or_blow_up_is_diverged(v, status):
    assert outcomes.label(v, status=status)["label"] == "diverged"


def test_to_gain_and_reference():
    v = [1.0, 0.5, 0.3, 0.2, 0.25, 0.2]
    assert outcomes.to_gain(v, 2) == pytest.approx(0.5 / 0.2 - 1)
    assert outcomes.to_gain(v, 4) == 0.0 and outcomes.to_gain(v, 0) == pytest.approx(4.0)
    assert outcomes.reference([0.3, None, float("nan"), 0.2]) == 0.2
    assert outcomes.to_gain([], 3) is None
