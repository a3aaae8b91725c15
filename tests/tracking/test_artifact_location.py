"""Where MLflow's artifacts go when the tracking URI is a relative SQLite path given to a
driver running in a scratch working directory (what ``ray job submit`` gives a job): the
URI is made absolute on the driver, the artifacts go beside the database file, and a later
command from another directory finds the same database through the store."""

from __future__ import annotations

import os
from pathlib import Path

from pipeline import config
from pipeline.storage.store import TrajectoryStore
from pipeline.workflows.sync import register_run
from pipeline.tracking.tracker import Tracker, tracking_uri_for
from pipeline.tracking.uri import absolute_tracking_uri
from pipeline.training.runner import run_variant


def test_absolute_tracking_uri(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert absolute_tracking_uri("sqlite:///m.db") == f"sqlite:///{tmp_path}/m.db"
    assert absolute_tracking_uri("sqlite:///a/../b/m.db?timeout=5") == f"sqlite:///{tmp_path}/b/m.db?timeout=5"
    for unchanged in ("sqlite:////abs/m.db", "sqlite:///:memory:", "http://127.0.0.1:5000",
                      "postgresql+psycopg2://u@h:5432/d"):
        assert absolute_tracking_uri(unchanged) == unchanged


def test_relative_sqlite_uri_artifacts_beside_the_database(tmp_path, monkeypatch, tiny_config):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("KMA_ARTIFACT_ROOT", raising=False)
    cfg = tiny_config(epochs=3)
    job = tmp_path / "job-scratch"
    (job / "db").mkdir(parents=True)
    monkeypatch.chdir(job)
    store_url = str(tmp_path / "store")
    (v, *_) = config.expand(config.load(cfg))
    assert run_variant(v, store_url)["status"] == "complete"

    tracker = Tracker("sqlite:///db/mlflow.db")
    assert tracker.uri == f"sqlite:///{job}/db/mlflow.db"
    store = TrajectoryStore(store_url)
    store.remember_tracking_uri(tracker.uri)
    assert register_run(tracker, store, v.run_id)
    (rec,) = tracker.find(v.sweep, v.run_id)
    artifacts = Path(rec.info.artifact_uri.removeprefix("file://"))
    assert artifacts.is_absolute() and artifacts.is_relative_to(job / "db" / "mlartifacts")
    assert (artifacts / "config.yaml").is_file()
    assert sorted(os.listdir(job)) == ["db"]                       # nothing else in the scratch dir
    assert sorted(os.listdir(job / "db")) == ["mlartifacts", "mlflow.db"]

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)   # a later command: same database, found through the store
    uri = tracking_uri_for(None, TrajectoryStore(store_url, read_only=True))
    assert uri == tracker.uri
    again = Tracker(uri)
    assert not register_run(again, TrajectoryStore(store_url), v.run_id)   # the same record
    assert os.listdir(elsewhere) == []


def test_no_default_database_in_a_ray_jobs_scratch_dir(tmp_path, monkeypatch):
    """In the driver of ``ray job submit`` (Ray sets RAY_JOB_CONFIG_JSON_ENV_VAR there) no
    ``./mlflow.db`` is made in Ray's copy of the working dir: one line asks for a URI; one
    given explicitly, by the environment or by the store is used as always."""
    import pytest

    from pipeline.errors import KMAError
    from pipeline.tracking.tracker import RAY_JOB_ENV

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(RAY_JOB_ENV, '{"runtime_env": {}}')
    with pytest.raises(KMAError, match=r"^no MLflow tracking URI: this Ray job's working directory .* "
                                        r"pass --tracking-uri") as e:
        tracking_uri_for(None, None)
    assert "\n" not in str(e.value) and os.listdir(tmp_path) == []
    assert tracking_uri_for("http://mlflow:5000", None) == "http://mlflow:5000"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    assert tracking_uri_for(None, None) == "http://mlflow:5000"
    monkeypatch.delenv(RAY_JOB_ENV)
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert tracking_uri_for(None, None) == f"sqlite:///{tmp_path}/mlflow.db"
