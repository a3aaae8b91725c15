"""A training run's metric history goes into an MLflow database in one insert
(pipeline.tracking.bulk); MLflow reads back every point and keeps the latest values."""

from __future__ import annotations

import math

from pipeline.tracking.bulk import insert_history
from pipeline.tracking.tracker import Tracker


def test_series_read_back_point_by_point_with_latest_values(tmp_path):
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}")
    series = {"train_loss": [1.0 / (i + 1) for i in range(1500)],       # > 1000: several batches before
              "val_loss": [0.5, None, 0.25, 0.125],                      # a non-finite epoch is skipped
              "clean_error": [0.3]}                                       # one point only
    rid, created = tracker.register_training(
        experiment="bulk", run_id="r0", status="complete", params={"depth": 2}, metrics=series,
        trajectory_uri=f"{tmp_path}/store/runs/r0", config_yaml="depth: 2\n", store=f"{tmp_path}/store")
    assert created
    client = tracker.client
    for key, values in series.items():
        got = [(m.step, m.value) for m in client.get_metric_history(rid, key)]
        want = [(i, v) for i, v in enumerate(values, start=1) if v is not None]
        assert sorted(got) == want, key
    run = client.get_run(rid)
    assert run.data.metrics == {"train_loss": 1.0 / 1500, "val_loss": 0.125, "clean_error": 0.3}
    assert run.info.status == "FINISHED"


def test_insert_history_stores_non_finite_as_mlflow_does(tmp_path):
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}")
    rid = tracker.client.create_run(tracker.experiment_id("bulk")).info.run_id
    assert insert_history(tracker.client, rid, [("x", 1.5, 1), ("x", math.inf, 2), ("x", math.nan, 3)], 1000)
    got = {m.step: m.value for m in tracker.client.get_metric_history(rid, "x")}
    assert got[1] == 1.5 and got[2] == 1.7976931348623157e308 and math.isnan(got[3])
