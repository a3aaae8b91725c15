"""MLflow registration against a real SQLite MLflow: idempotent, keyed by store and run
id, self-healing after an interruption, absolute trajectory URIs, safe on a fresh
database opened by two processes at once, and failed tasks recorded as failed."""

from __future__ import annotations

import multiprocessing as mp

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from pipeline import config
from pipeline.workflows.sweep import SweepSummary, _record
from pipeline.storage.layout import Layout
from pipeline.storage.store import TrajectoryStore
from pipeline.workflows.sync import register_run
from pipeline.tracking.tracker import TAG_STORE, Tracker

LAYOUT = Layout.from_named_shapes([("l0.weight", (3, 2)), ("l0.bias", (3,))])


def _variant(tiny_config):
    return config.expand(config.load(tiny_config()))[0]


def _stored(store: TrajectoryStore, v, status="complete", n=3):
    w = store.create_run(v.run_id, LAYOUT, config=v.model_dump(mode="json"), capacity=n,
                         extra={"sweep": v.sweep})
    for i in range(n):
        w.append(np.full(LAYOUT.size, i, np.float32), epoch=i)
    if status != "running":
        w.finish(status, metrics={"train_loss": [1.0, 0.5, 0.25][: n - 1]})
    return w


def _records(uri, experiment, kind="training"):
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id], f"tags.`kma.kind` = '{kind}'") if exp else []


def test_half_written_record_is_replaced_and_children_reattached(tiny_config, tmp_path):
    v = _variant(tiny_config)
    store = TrajectoryStore(str(tmp_path / "s"))
    _stored(store, v)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri)
    client = MlflowClient(uri)
    # what a kill between create_run and set_terminated leaves: the tags, no params, RUNNING
    run = store.open_run(v.run_id)
    half = client.create_run(tracker.experiment_id(v.sweep), run_name=v.run_id, tags={
        "kma.run_id": v.run_id, "kma.kind": "training", TAG_STORE: store.location,
        "kma.status": "complete", "kma.trajectory_uri": run.uri}).info.run_id
    child = client.create_run(tracker.experiment_id(v.sweep), tags={
        "kma.run_id": v.run_id, "kma.kind": "analysis", "kma.analysis_id": "a1", TAG_STORE: store.location,
        "mlflow.parentRunId": half}).info.run_id
    client.set_terminated(child, "FINISHED")
    assert client.get_run(half).info.status == "RUNNING" and not client.get_run(half).data.params

    assert register_run(tracker, store, v.run_id) is True
    [rec] = _records(uri, v.sweep)
    assert rec.info.run_id != half and rec.info.status == "FINISHED"
    assert rec.data.params["depth"] == str(v.depth) and rec.data.metrics["train_loss"] == 0.5
    assert client.get_run(half).info.lifecycle_stage == "deleted"
    assert client.get_run(child).data.tags["mlflow.parentRunId"] == rec.info.run_id
    # idempotent: a second registration writes nothing
    assert register_run(tracker, store, v.run_id) is False
    assert [r.info.run_id for r in _records(uri, v.sweep)] == [rec.info.run_id]


def test_same_variant_in_two_stores_and_absolute_uris(tiny_config, tmp_path, monkeypatch):
    """Keyed by store and run id: the same variant trained into a second store gets its
    own record; a store named by a relative path is recorded by its absolute location.
    A complete record from before the kma.store tag is adopted, not duplicated."""
    monkeypatch.chdir(tmp_path)
    v = _variant(tiny_config)
    a, b = TrajectoryStore("store-a"), TrajectoryStore("./store-b/")
    _stored(a, v)
    _stored(b, v)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri)
    assert register_run(tracker, a, v.run_id) and register_run(tracker, b, v.run_id)
    assert not register_run(tracker, a, v.run_id) and not register_run(tracker, b, v.run_id)
    recs = _records(uri, v.sweep)
    assert sorted(r.data.tags[TAG_STORE] for r in recs) == [str(tmp_path / "store-a"), str(tmp_path / "store-b")]
    assert sorted(r.data.tags["kma.trajectory_uri"] for r in recs) == [
        f"{tmp_path}/store-a/runs/{v.run_id}", f"{tmp_path}/store-b/runs/{v.run_id}"]

    # a record registered by an older version: no kma.store tag, same trajectory
    c = TrajectoryStore(str(tmp_path / "store-c"))
    _stored(c, v)
    client = MlflowClient(uri)
    old = client.create_run(tracker.experiment_id(v.sweep), tags={
        "kma.run_id": v.run_id, "kma.kind": "training", "kma.status": "complete",
        "kma.trajectory_uri": c.open_run(v.run_id).uri}).info.run_id
    client.set_terminated(old, "FINISHED")
    assert register_run(tracker, c, v.run_id) is False
    assert len(_records(uri, v.sweep)) == 3


def _open_tracker(uri, barrier, out):
    barrier.wait()
    try:
        Tracker(uri).experiment_id("race")
        out.put("ok")
    except BaseException as e:  # noqa: BLE001 - reported to the parent
        out.put(f"{type(e).__name__}: {e}")


def test_two_commands_on_a_fresh_database(tmp_path):
    """Two processes opening one new SQLite file at the same moment used to fail one of
    them with an alembic migration error; the file lock serialises the creation."""
    uri = f"sqlite:///{tmp_path / 'fresh.db'}"
    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_open_tracker, args=(uri, barrier, out)) for _ in range(2)]
    for p in procs:
        p.start()
    results = [out.get(timeout=240) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert results == ["ok", "ok"], results
    assert len(MlflowClient(uri).search_experiments(filter_string="name = 'race'")) == 1


def test_task_dead_for_good_is_marked_failed(tiny_config, tmp_path):
    """A worker lost more often than Ray retries leaves its run `running` in the store;
    the driver records it `failed` with the cause, in the store and in MLflow."""
    v = _variant(tiny_config)
    store = TrajectoryStore(str(tmp_path / "s"))
    _stored(store, v, status="running")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    summary = SweepSummary("tiny", store.url)
    cause = "The worker died unexpectedly while executing this task."
    _record({"run_id": v.run_id, "status": "failed", "error": cause + "\nmore"}, store, Tracker(uri), summary)
    run = store.open_run(v.run_id)
    assert run.status == "failed" and run.attrs["error"] == f"task died: {cause}"
    assert summary.failed == {v.run_id: cause + "\nmore"}
    [rec] = _records(uri, v.sweep)
    assert rec.data.tags["kma.status"] == "failed" and rec.info.status == "FAILED"
    assert rec.data.tags["kma.error"] == f"task died: {cause}"
    # a finished run is never downgraded
    other = config.expand(config.load(tiny_config()))[1]
    _stored(store, other)
    assert store.mark_failed(other.run_id, "late") is False and store.status(other.run_id) == "complete"


@pytest.fixture(autouse=True)
def _quiet_mlflow(monkeypatch):
    monkeypatch.setenv("MLFLOW_LOGGING_LEVEL", "WARNING")
