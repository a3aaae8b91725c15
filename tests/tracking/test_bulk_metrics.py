"""A training run's metric history goes into an MLflow database in one insert
(pipeline.tracking.bulk); MLflow reads back every point and keeps the latest values. The
insert runs only on the MLflow schema revision it was written for (else log_batch, said
once in the log), on SQLite and on PostgreSQL."""

from __future__ import annotations

import logging
import math

import pytest
from services import postgres_server  # noqa: F401

from pipeline.tracking.bulk import SCHEMA_REVISION, insert_history
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


def _set_revision(tracker, revision: str) -> None:
    """Rewrite the database's MLflow schema revision (as another MLflow's database has)."""
    with tracker.client._tracking_client.store.ManagedSessionMaker() as session:
        session.connection().exec_driver_sql(f"UPDATE alembic_version SET version_num = '{revision}'")


def test_another_mlflow_schema_falls_back_to_log_batch(tmp_path, caplog):
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}")
    rid = tracker.client.create_run(tracker.experiment_id("bulk")).info.run_id
    _set_revision(tracker, "0123456789ab")
    with caplog.at_level(logging.WARNING, logger="pipeline.tracking.bulk"):
        assert not insert_history(tracker.client, rid, [("x", 1.0, 1), ("x", 2.0, 2)], 1000)
        assert not insert_history(tracker.client, rid, [("x", 1.0, 1)], 1000)
    assert tracker.client.get_metric_history(rid, "x") == []          # nothing written
    said = [r.getMessage() for r in caplog.records if r.name == "pipeline.tracking.bulk"]
    assert len(said) == 1 and "0123456789ab" in said[0] and SCHEMA_REVISION in said[0], said   # once a database
    # the registration still keeps every point (through log_batch)
    series = {"loss": [1.0 / (i + 1) for i in range(30)]}
    rid2, _ = tracker.register_training(
        experiment="bulk", run_id="r1", status="complete", params={}, metrics=series,
        trajectory_uri=f"{tmp_path}/store/runs/r1", config_yaml="{}\n", store=f"{tmp_path}/store")
    assert sorted((m.step, m.value) for m in tracker.client.get_metric_history(rid2, "loss")) == \
        [(i, v) for i, v in enumerate(series["loss"], start=1)]


@pytest.fixture(scope="module")
def pg_tracker(postgres_server):
    """A Tracker on a database of its own in the module's PostgreSQL (MLflow creates its
    schema at the revision this MLflow writes)."""
    pytest.importorskip("psycopg2")
    return Tracker(postgres_server.create_database("bulk"))


def test_bulk_insert_on_postgresql(pg_tracker):
    client = pg_tracker.client
    rid = client.create_run(pg_tracker.experiment_id("bulk")).info.run_id
    points = [("x", 1.5, 1), ("x", math.inf, 2), ("x", -math.inf, 3), ("x", math.nan, 4), ("y", 0.25, 1)]
    assert insert_history(client, rid, points, 1000)                  # the bulk path, not log_batch
    got = {m.step: m.value for m in client.get_metric_history(rid, "x")}
    assert got[1] == 1.5 and got[2] == 1.7976931348623157e308 and got[3] == -1.7976931348623157e308
    assert math.isnan(got[4])
    assert [(m.step, m.value) for m in client.get_metric_history(rid, "y")] == [(1, 0.25)]
