"""An analysis' MLflow record starts and ends when the analysis did (recorded in the
store as ``t_start``/``t_end``), not when it was registered; ``kma sync`` rebuilds the
same times from the store. Real SQLite MLflow, real Zarr store, no Ray."""

from __future__ import annotations

import io
import time

import numpy as np
from mlflow.tracking import MlflowClient

from pipeline.workflows.analyze import analyze_runs
from pipeline.config import AnalysisParams
from pipeline.console import Console
from pipeline.storage.layout import Layout
from pipeline.storage.store import TrajectoryStore
from pipeline.workflows.sync import analysis_times, sync_store
from pipeline.tracking.tracker import Tracker


def _stored_run(store, rid="r", T=30):
    rng = np.random.default_rng(3)
    A = np.linalg.qr(rng.standard_normal((10, 10)))[0] * 0.98
    x = rng.standard_normal(10)
    w = store.create_run(rid, Layout.from_named_shapes([("a.weight", (4,)), ("b.weight", (6,))]),
                         config={"depth": 2}, capacity=T, extra={"sweep": "times"})
    for _ in range(T):
        w.append(x.astype(np.float32))
        x = A @ x
    w.finish("complete", metrics={"train_loss": [1.0, 0.5]})


def _analysis_record(uri):
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("times")
    (rec,) = client.search_runs([exp.experiment_id], "tags.`kma.kind` = 'analysis'")
    return rec


def test_analysis_record_carries_the_analysis_start_and_end(tmp_path):
    store = TrajectoryStore(str(tmp_path / "store"))
    _stored_run(store)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    before = time.time()
    params = AnalysisParams(window=10, stride=5)
    report = analyze_runs(store, ["r"], params, tracker=Tracker(uri), console=Console(stream=io.StringIO()))
    after = time.time()
    assert report == {"r": None}

    info = store.open_run("r").analysis_info(params.analysis_id)
    assert before <= info["t_start"] < info["t_end"] <= after       # stored with the analysis
    start, end = analysis_times(info)
    assert (start, end) == (int(info["t_start"] * 1000), int(info["t_end"] * 1000))

    rec = _analysis_record(uri)
    assert (rec.info.start_time, rec.info.end_time) == (start, end)
    # the record was registered after the analysis ended (figures, metrics, upload):
    # its times are the analysis', not the registration's
    logged = max(m.timestamp for m in MlflowClient(uri).get_metric_history(rec.info.run_id, "all/rank"))
    assert logged >= end

    # the record lost and rebuilt from the store by kma sync: the same start and end
    MlflowClient(uri).delete_run(rec.info.run_id)
    report = sync_store(str(tmp_path / "store"), uri, console=Console(quiet=True))
    assert report.analyses == [f"r/{params.analysis_id}"]
    rec2 = _analysis_record(uri)
    assert rec2.info.run_id != rec.info.run_id
    assert (rec2.info.start_time, rec2.info.end_time) == (start, end)


def test_older_analysis_without_times_falls_back_to_its_creation():
    assert analysis_times({"created": "2026-01-02T03:04:05+00:00"}) == (1767323045000, None)
    assert analysis_times({}) == (None, None)
