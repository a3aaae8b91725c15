"""KMA against the tracking stack of a cluster, for real on loopback: ``mlflow server``
backed by PostgreSQL (Debian's, run as its own user) with artifacts proxied to an S3
server (moto), and the trajectory store on that S3 server too (``tests/services.py``).

One sweep (module fixture) is reused by several checks; the fault test runs its own
sweep against its own server on the same PostgreSQL, stops that server mid-sweep, and
repairs with ``kma sync`` once it is back. Without PostgreSQL these tests skip (fail in
CI, where .ci/run installs it)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from conftest import TINY, kma_cmd
from services import mlflow_server, need, postgres_server, s3_server  # noqa: F401

try:
    import psycopg2   # the [test] extra installs it (and s3fs)
    import s3fs  # noqa: F401
except ImportError as e:
    need(f"{e.name} is not installed (pip install -e '.[test]')")

pytestmark = pytest.mark.slow

STORE = "s3://kma/pg-sweep"
ANALYSIS = {"enabled": True, "window": 6, "stride": 3}


def _config(tmp, name: str, analysis: bool):
    """The tiny 2-variant sweep, with or without its default analysis (6-snapshot windows)."""
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump({**TINY, "name": name, "epochs": 8,
                                    "analysis": ANALYSIS if analysis else {"enabled": False}}))
    return path


def _env(s3_env):
    import os

    from conftest import REPO

    env = {**os.environ, **s3_env, "PYTHONUNBUFFERED": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _records(uri: str, experiment: str) -> dict:
    """``(kind, run_id, analysis_id) -> [mlflow run]`` of an experiment (duplicates kept)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return {}
    out: dict = {}
    for r in client.search_runs([exp.experiment_id], max_results=1000):
        t = r.data.tags
        out.setdefault((t["kma.kind"], t["kma.run_id"], t.get("kma.analysis_id")), []).append(r)
    return out


def _s3_keys(prefix: str) -> list[str]:
    import s3fs

    return s3fs.S3FileSystem(skip_instance_cache=True).find(prefix)


@pytest.fixture(scope="module")
def pg_sweep(mlflow_server, s3_server, tmp_path_factory):
    """``kma sweep`` of 2 variants into the S3 store, registering in the PG-backed server,
    run from an empty scratch working directory (as ``ray job submit`` runs a driver)."""
    tmp = tmp_path_factory.mktemp("pg-sweep")
    cwd = tmp / "job-cwd"
    cwd.mkdir()
    r = subprocess.run(kma_cmd("sweep", _config(tmp, "pgsweep", analysis=False), "--store", STORE,
                               "--tracking-uri", mlflow_server.uri),
                       capture_output=True, text=True, env=_env(s3_server), cwd=cwd, timeout=400)
    return {"r": r, "cwd": cwd, "tmp": tmp, "env": _env(s3_server)}


def test_sweep_registers_in_postgres_with_artifacts_on_s3(pg_sweep, mlflow_server, postgres_server):
    from mlflow.tracking import MlflowClient

    from pipeline.storage.store import TrajectoryStore

    r = pg_sweep["r"]
    assert r.returncode == 0, r.stderr[-3000:]
    store = TrajectoryStore(STORE, read_only=True)
    runs = store.runs()
    assert len(runs) == 2 and {i.status for i in runs} == {"complete"}
    assert store.tracking_uri == mlflow_server.uri   # later commands find this server

    recs = _records(mlflow_server.uri, "pgsweep")
    assert set(recs) == {("training", i.run_id, None) for i in runs}, set(recs)
    training = {k[1]: v for k, v in recs.items()}
    assert all(len(v) == 1 for v in recs.values()), "duplicate MLflow records"
    client = MlflowClient(mlflow_server.uri)
    for rid, (rec,) in training.items():
        assert rec.info.status == "FINISHED"
        assert rec.data.params["run_id"] == rid and rec.data.params["epochs"] == "8"
        history = client.get_metric_history(rec.info.run_id, "train_loss")
        assert [m.step for m in history] == list(range(1, 9))
        stored = store.open_run(rid).metrics["train_loss"]
        assert [m.value for m in history] == pytest.approx(stored)
        assert rec.info.artifact_uri.startswith("mlflow-artifacts:/")   # proxied by the server
        assert [a.path for a in client.list_artifacts(rec.info.run_id)] == ["config.yaml"]
        assert f"mlflow-artifacts/{rec.info.experiment_id}/{rec.info.run_id}/artifacts/config.yaml" \
            in _s3_keys("mlflow-artifacts")

    # the records live in PostgreSQL (not in a file the server fell back to)
    with psycopg2.connect(host="127.0.0.1", port=postgres_server.port, user="kma", dbname="mlflow") as con:
        with con.cursor() as cur:
            cur.execute("select count(*) from runs r join experiments e using (experiment_id) "
                        "where e.name = 'pgsweep' and r.lifecycle_stage = 'active'")
            assert cur.fetchone()[0] == 2
    # nothing in the job's working directory, nor in the server's
    assert list(pg_sweep["cwd"].iterdir()) == []
    assert list(mlflow_server.workdir.iterdir()) == []


def test_analyze_registers_on_the_server(pg_sweep, mlflow_server):
    """``kma analyze``: one analysis record per run, a child of its training record, with
    its figures on S3 via the server; the tracking URI comes from the store (no flag)."""
    from mlflow.tracking import MlflowClient

    assert pg_sweep["r"].returncode == 0
    cwd = pg_sweep["tmp"] / "analyze-cwd"
    cwd.mkdir()
    r = subprocess.run(kma_cmd("analyze", "--store", STORE, "--window", "6", "--stride", "3"),
                       capture_output=True, text=True, env=pg_sweep["env"], cwd=cwd, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    recs = _records(mlflow_server.uri, "pgsweep")
    assert all(len(v) == 1 for v in recs.values()), "duplicate MLflow records"
    assert sorted(k[0] for k in recs) == ["analysis", "analysis", "training", "training"]
    client = MlflowClient(mlflow_server.uri)
    for (kind, rid, _), (child,) in recs.items():
        if kind != "analysis":
            continue
        assert child.info.status == "FINISHED"
        assert child.data.tags["mlflow.parentRunId"] == recs[("training", rid, None)][0].info.run_id
        figs = [a.path for a in client.list_artifacts(child.info.run_id)]
        assert any(f.endswith(".png") for f in figs), figs
        keys = _s3_keys(f"mlflow-artifacts/{child.info.experiment_id}/{child.info.run_id}")
        assert sorted(k.rsplit("/", 1)[1] for k in keys) == sorted(figs)
    assert list(cwd.iterdir()) == [] and list(mlflow_server.workdir.iterdir()) == []


def test_mlflow_server_down_during_a_sweep(mlflow_server, s3_server, tmp_path):
    """The server is killed after the sweep has started: training goes on and is kept in
    the store, the sweep ends with one line (exit 1, no traceback); once
    the server is back (same port), ``kma sync`` registers everything, and a second sync
    adds nothing. (Last in the module: it stops the module's server and restarts it.)"""
    server = mlflow_server
    store = "s3://kma/fault-sweep"
    env = _env(s3_server)
    cwd = tmp_path / "job-cwd"
    cwd.mkdir()
    cfg = _config(tmp_path, "faultsweep", analysis=False)
    proc = None
    try:
        proc = subprocess.Popen(kma_cmd("sweep", cfg, "--store", store, "--tracking-uri", server.uri),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=cwd)
        lines = []
        for line in proc.stderr:   # the sweep has checked the server and is about to start Ray
            lines.append(line)
            if "to train;" in line:
                break
        assert "2 to train" in "".join(lines), "".join(lines)
        server.stop(kill=True)   # before any result: Ray has not even started yet
        rest = proc.stderr.read()
        proc.stdout.read()
        assert proc.wait(timeout=400) == 1, "".join(lines) + rest
        err = "".join(lines) + rest
        assert "Traceback" not in err, err
        last = [ln for ln in err.splitlines() if ln.strip()][-1]
        assert last.startswith(f"kma: error: MLflow server {server.uri} stopped answering ("), last
        assert "2 runs trained and kept in the store but not registered" in last
        assert f"kma sync --store {store} --tracking-uri {server.uri}" in last

        from pipeline.storage.store import TrajectoryStore

        st = TrajectoryStore(store, read_only=True)
        # a run that is not complete says why (its task's own error: registration never sets a status)
        assert {i.status for i in st.runs()} == {"complete"} and len(st.runs()) == 2, \
            [(i.run_id, i.status, i.error) for i in st.runs()]
        assert list(cwd.iterdir()) == []

        server.start()   # back, on the same port
        assert _records(server.uri, "faultsweep") == {}
        r = subprocess.run(kma_cmd("sync", "--store", store), capture_output=True, text=True, env=env,
                           cwd=cwd, timeout=300)   # the URI recorded in the store
        assert r.returncode == 0, r.stderr[-3000:]
        recs = _records(server.uri, "faultsweep")
        assert set(recs) == {("training", i.run_id, None) for i in st.runs()}
        assert all(len(v) == 1 and v[0].info.status == "FINISHED" for v in recs.values())
        before = {k: v[0].info.run_id for k, v in recs.items()}

        from pipeline.console import Console
        from pipeline.workflows.sync import sync_store

        again = sync_store(store, console=Console(quiet=True))   # a second sync: nothing to write
        assert again.runs == [] and again.analyses == [] and again.unchanged == 2 and not again.skipped
        after = _records(server.uri, "faultsweep")
        assert {k: v[0].info.run_id for k, v in after.items()} == before
        assert all(len(v) == 1 for v in after.values())
        assert list(cwd.iterdir()) == []
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
        if server.proc is None:
            server.start()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
