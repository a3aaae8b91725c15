"""``kma analyze`` / ``kma sync`` run from another directory use the MLflow database the
store's sweep registered with (recorded in the store), not a new ``./mlflow.db``."""

from __future__ import annotations

import subprocess

import torch
from mlflow.tracking import MlflowClient

from pipeline.storage.store import TrajectoryStore
from pipeline.tracking.tracker import tracking_uri_for

from conftest import kma_cmd


def _ingested(tmp_path, kma_env):
    torch.manual_seed(0)
    net = torch.nn.Linear(4, 3)
    files = []
    for i in range(6):
        with torch.no_grad():
            for p in net.parameters():
                p.mul_(0.9).add_(0.01 * torch.randn_like(p))
        files.append(tmp_path / f"c{i}.pt")
        torch.save({k: v.clone() for k, v in net.state_dict().items()}, files[-1])
    store = tmp_path / "store"
    out = subprocess.run(kma_cmd("ingest", *files, "--store", store, "--run-id", "ext"),
                         env=kma_env, cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return store


def test_commands_elsewhere_use_the_recorded_tracking_uri(tmp_path, kma_env):
    store = _ingested(tmp_path, kma_env)
    db = tmp_path / "proj" / "mlflow.db"
    db.parent.mkdir()
    uri = f"sqlite:///{db}"
    s = TrajectoryStore(str(store))
    s.remember_tracking_uri(uri)
    s.remember_tracking_uri("postgresql://kma:secret@db/mlflow")   # a password is never stored
    assert TrajectoryStore(str(store), read_only=True).tracking_uri == uri

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for cmd in (("sync", "--store", store), ("analyze", "--store", store, "--no-per-layer")):
        out = subprocess.run(kma_cmd(*cmd), env=kma_env, cwd=elsewhere, capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
    assert not (elsewhere / "mlflow.db").exists()
    runs = MlflowClient(tracking_uri=uri).search_runs(
        [e.experiment_id for e in MlflowClient(tracking_uri=uri).search_experiments()],
        filter_string="tags.`kma.run_id` = 'ext'")
    assert len(runs) == 2          # the training record (sync) and its analysis (analyze)


def test_explicit_and_environment_uris_win(tmp_path, monkeypatch):
    class Recorded:
        tracking_uri = "sqlite:////recorded.db"

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking_uri_for(None, Recorded()) == "sqlite:////recorded.db"
    assert tracking_uri_for("sqlite:////flag.db", Recorded()) == "sqlite:////flag.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////env.db")
    assert tracking_uri_for(None, Recorded()) == "sqlite:////env.db"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert tracking_uri_for(None, None).endswith("mlflow.db")
