"""jobs/experiments/badinit_outcomes.py: the threshold fit (most recall at <= 5 % false
alarms, then the fewest false alarms, ties to the rule with the fewest marks) and the
chance level a run's training records."""

import importlib.util
import math
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import REPO


def _job():
    spec = importlib.util.spec_from_file_location("badinit_outcomes_job",
                                                  REPO / "jobs" / "experiments" / "badinit_outcomes.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_fit_takes_the_most_recall_within_the_false_alarm_budget_and_the_simplest_tie():
    job = _job()
    # 10 bad runs with x in 0..9, 40 good runs with x in 5..44: flag x < t
    runs = [{"bad": True, "x": float(i)} for i in range(10)] + [{"bad": False, "x": float(5 + i)} for i in range(40)]
    grid = [{"t": t, "weights": w} for w in (False, True) for t in (0.0, 3.0, 6.0, 7.0, 8.0, 20.0)]
    th = job.fit(runs, grid, lambda r, th: r["x"] < th["t"])
    # t = 7 flags 7 bad and 2 good (5 %); t = 8 would flag 3 good (7.5 %): over budget
    assert th == {"t": 7.0, "weights": False}
    assert job.rate(runs, lambda r: r["x"] < 7.0) == (7, 10, 2, 40)
    # nothing within budget: the first grid point
    assert job.fit([{"bad": False, "x": 0.0}], [{"t": 1.0}], lambda r, th: True) == {"t": 1.0}


def test_chance_of_a_stored_run_is_what_its_training_records():
    from pipeline.training.tasks import build_task

    job = _job()
    digits = SimpleNamespace(config={"task": {"name": "digits", "val_fraction": 0.2}, "torch_seed": 3,
                                     "loss": "cross_entropy"})
    assert job.chance_of(digits) == pytest.approx(math.log(10))
    task = {"name": "multiscale", "n_points": 64, "frequencies": [1.0, 4.0], "amplitudes": [1.0, 0.3]}
    ms = SimpleNamespace(config={"task": task, "torch_seed": 5, "loss": "mse"})
    y = build_task("multiscale", seed=5, **{k: v for k, v in task.items() if k != "name"}).y_train.numpy()
    y64 = y.astype(np.float64)
    assert job.chance_of(ms) == pytest.approx(((y64 - y64.mean(0)) ** 2).mean(), rel=1e-9)
