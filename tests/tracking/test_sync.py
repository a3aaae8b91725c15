"""`kma sync` against a real SQLite MLflow: after the database is deleted, a sync rebuilds
what the sweep registered (training records, analyses as child runs, ingested runs); a
second sync adds nothing; then a half-written record is repaired. (One test: the
fixture trains and analyses, which is the expensive part.)"""

from __future__ import annotations

import subprocess

import pytest
import torch
from mlflow.tracking import MlflowClient

from pipeline import config
from pipeline.workflows.analyze import AnalysisParams, analyze_runs
from pipeline.console import Console
from pipeline.workflows.ingest import ingest
from pipeline.training.runner import run_variant
from pipeline.storage.store import TrajectoryStore
from pipeline.workflows.sync import register_run, sync_store
from pipeline.tracking.tracker import TAG_STORE, Tracker

from conftest import kma_cmd


def _state(uri):
    """Everything registered, independent of MLflow's own ids and timestamps."""
    client = MlflowClient(uri)
    out = {}
    for exp in client.search_experiments():
        recs = client.search_runs([exp.experiment_id], max_results=1000)
        by_id = {r.info.run_id: r for r in recs}
        for r in recs:
            t = r.data.tags
            parent = by_id.get(t.get("mlflow.parentRunId"))
            key = (exp.name, t["kma.kind"], t["kma.run_id"], t.get("kma.analysis_id"))
            assert key not in out, f"duplicate record {key}"
            out[key] = {
                "status": r.info.status,
                "tags": {k: v for k, v in t.items() if k.startswith("kma.")},
                "params": dict(r.data.params),
                "metrics": {m: [(h.step, h.value) for h in client.get_metric_history(r.info.run_id, m)]
                            for m in r.data.metrics},
                "parent": parent and parent.data.tags["kma.run_id"],
                "artifacts": sorted(a.path for a in client.list_artifacts(r.info.run_id)),
            }
    return out


@pytest.fixture
def populated(tiny_config, tmp_path):
    """Two trained variants registered and analysed as a sweep does it, plus an ingested run."""
    cfg = tiny_config(epochs=4)
    store_url = str(tmp_path / "store")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri)
    store = TrajectoryStore(store_url)
    for v in config.expand(config.load(cfg)):
        assert run_variant(v, store_url)["status"] == "complete"
        assert register_run(tracker, store, v.run_id)
    files = []
    for i in range(3):
        files.append(tmp_path / f"c{i}.pt")
        torch.save({"w": torch.full((2, 2), float(i)) + torch.eye(2) * i ** 2}, files[-1])
    ingest(files, store_url, "imported")
    assert register_run(tracker, store, "imported")
    report = analyze_runs(store, None, AnalysisParams(), tracker=tracker, console=Console(quiet=True))
    assert set(report.values()) == {None} and len(report) == 3
    return store_url, uri, tmp_path


def test_sync_rebuilds_what_the_sweep_registered(populated, kma_env):
    store_url, uri, tmp_path = populated
    registered = _state(uri)
    assert len([k for k in registered if k[1] == "training"]) == 3
    assert len([k for k in registered if k[1] == "analysis"]) == 3

    # the database is lost; rebuild into a fresh one (at a new path: this process's MLflow
    # keeps a connection to the deleted file)
    (tmp_path / "mlflow.db").unlink()
    uri = f"sqlite:///{tmp_path / 'rebuilt.db'}"
    r = subprocess.run(kma_cmd("sync", "--store", store_url, "--tracking-uri", uri),
                       capture_output=True, text=True, env=kma_env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "3 runs and 3 analysis records written" in r.stderr, r.stderr
    rebuilt = _state(uri)
    assert rebuilt.keys() == registered.keys()
    for key, want in registered.items():
        got = rebuilt[key]
        assert got["status"] == want["status"] and got["tags"] == want["tags"], key
        assert got["params"] == want["params"] and got["parent"] == want["parent"], key
        assert got["artifacts"] == want["artifacts"], key
        assert got["metrics"].keys() == want["metrics"].keys(), key
        for m, series in want["metrics"].items():
            assert [s for s, _ in got["metrics"][m]] == [s for s, _ in series], (key, m)
            assert [v for _, v in got["metrics"][m]] == pytest.approx([v for _, v in series], rel=1e-9), (key, m)

    # a second sync writes nothing
    ids = {r.info.run_id for e in MlflowClient(uri).search_experiments()
           for r in MlflowClient(uri).search_runs([e.experiment_id])}
    again = sync_store(store_url, uri, console=Console(quiet=True))
    assert again.runs == [] and again.analyses == [] and again.unchanged == 6 and again.skipped == {}
    assert {r.info.run_id for e in MlflowClient(uri).search_experiments()
            for r in MlflowClient(uri).search_runs([e.experiment_id])} == ids

    _repairs_a_half_written_record(store_url, uri)


def _repairs_a_half_written_record(store_url, uri):
    client = MlflowClient(uri)
    tracker = Tracker(uri)
    store = TrajectoryStore(store_url)
    [rec] = tracker.find("ingested", "imported", store=store.location)
    client.delete_run(rec.info.run_id)
    # the registration was killed right after creating the record
    half = client.create_run(tracker.experiment_id("ingested"), run_name="imported", tags={
        "kma.run_id": "imported", "kma.kind": "training", TAG_STORE: store.location,
        "kma.status": "complete", "kma.trajectory_uri": store.open_run("imported").uri}).info.run_id
    # and an analysis registration killed half-way (of another run)
    other = next(i.run_id for i in store.runs() if i.run_id != "imported")
    exp = store.open_run(other).attrs["sweep"]
    [arec] = tracker.find(exp, other, kind="analysis", store=store.location)
    aid = arec.data.tags["kma.analysis_id"]
    client.delete_run(arec.info.run_id)
    half_analysis = client.create_run(tracker.experiment_id(exp), tags={
        "kma.run_id": other, "kma.kind": "analysis", "kma.analysis_id": aid, TAG_STORE: store.location}).info.run_id
    report = sync_store(store_url, uri, console=Console(quiet=True))
    assert report.runs == ["imported"] and report.analyses == [f"{other}/{aid}"]
    [afixed] = tracker.find(exp, other, kind="analysis", store=store.location)
    assert afixed.info.run_id != half_analysis and afixed.info.status == "FINISHED" and afixed.data.metrics
    [fixed] = tracker.find("ingested", "imported", store=store.location)
    assert fixed.info.status == "FINISHED" and fixed.info.run_id != half
    assert fixed.data.params["n_parameters"] == "4" and fixed.data.params["source"] == "ingest"
    [child] = tracker.find("ingested", "imported", kind="analysis", store=store.location)
    assert child.data.tags["mlflow.parentRunId"] == fixed.info.run_id
