"""A sweep on a real two-node Ray cluster on loopback (``ray start`` head + a second node
with its own working directory, token authentication on), trajectories on the moto S3
server, MLflow a PostgreSQL-backed ``mlflow server`` with artifacts on S3
(:func:`tracking_uri`); the first test's trajectories are then analysed on a
dask.distributed cluster and with Dask-on-Ray on the same two-node cluster: the issue's
whole chain in one test.

The tasks are found and held mid-training by the test seam of a sweep's Ray task
(:mod:`pipeline.seams`, ``$KMA_TEST_TASK_HOOK``, set on both nodes by the fixture):
after its third snapshot a task writes ``<hook>/<run_id>.<pid>`` (content: its node id)
and waits while ``<hook>/<run_id>.hold`` or ``<hook>/all.hold`` exists. So the placement,
the second sweep and the kills happen at known points, with no timing assumption.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml

from conftest import TINY, kma_cmd
from pipeline import config
from pipeline.storage.store import TrajectoryStore
from services import _wait_for, dask_cluster, mlflow_server, postgres_server, ray_cluster, s3_server  # noqa: F401

pytestmark = pytest.mark.slow

EPOCHS = 6


@pytest.fixture(scope="module")
def tracking_uri(mlflow_server):
    """The MLflow the sweeps register in: a cluster's tracking server, ``mlflow server``
    on PostgreSQL with its artifacts on the S3 server (tests/services.py)."""
    return mlflow_server.uri


def _config(tmp_path, name, **updates) -> tuple[Path, list[str]]:
    """A tiny sweep YAML and its variants' run ids (in grid order). One task per variant
    (``pack: off``): these tests place, hold and kill single variants' tasks."""
    data = {**TINY, "name": name, "epochs": EPOCHS, "pack": "off", **updates}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path, [v.run_id for v in config.expand(config.load(path))]


def _kma() -> list[str]:
    kma = Path(sys.prefix) / "bin" / "kma"
    return [str(kma)] if kma.exists() else kma_cmd()


def _env(cluster, **more) -> dict:
    """A client's environment: the cluster's token, this repository first on the path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "MLFLOW_TRACKING"))}
    repo = str(Path(__file__).resolve().parents[1])
    env.update(cluster.env, PYTHONPATH=repo + os.pathsep + os.environ.get("PYTHONPATH", ""), **more)
    return env


def _submit(cluster, *kma_args) -> subprocess.Popen:
    """``ray job submit -- kma sweep ...`` to the head's job server (waits for the job)."""
    cmd = [f"{sys.prefix}/bin/ray", "job", "submit", "--address", cluster.dashboard, "--", *_kma(),
           "sweep", *map(str, kma_args)]
    return subprocess.Popen(cmd, env=_env(cluster), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _sweep(cluster, *args, env=None, cwd=None, timeout=300):
    """``kma sweep ... --ray-address GCS``: a driver on this machine, tasks on the cluster."""
    return subprocess.run([*_kma(), "sweep", *map(str, args), "--ray-address", cluster.gcs],
                          env=env or _env(cluster), cwd=cwd, capture_output=True, text=True, timeout=timeout)


def _reset_hook(cluster) -> Path:
    shutil.rmtree(cluster.hook, ignore_errors=True)
    cluster.hook.mkdir()
    return cluster.hook


def _reports(hook: Path, run_id: str | None = None) -> dict[int, tuple[str, str]]:
    """``{pid: (run_id, node_id)}`` of the tasks that reached the hook."""
    out = {}
    for p in hook.iterdir():
        rid, _, pid = p.name.rpartition(".")
        if pid.isdigit() and (run_id is None or rid == run_id):
            out[int(pid)] = (rid, p.read_text())
    return out


def _training_runs(uri, experiment) -> dict[str, int]:
    """``{kma run id: number of MLflow training runs}``."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    counts: dict[str, int] = {}
    for m in client.search_runs([exp.experiment_id], "tags.`kma.kind` = 'training'") if exp else []:
        counts[m.data.tags["kma.run_id"]] = counts.get(m.data.tags["kma.run_id"], 0) + 1
    return counts


def _status(store_url: str, run_id: str) -> str | None:
    try:
        return TrajectoryStore(store_url, read_only=True).status(run_id)
    except Exception:  # noqa: BLE001 - no store yet
        return None


def _one_line_error(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert "Traceback" not in stderr, stderr[-3000:]
    errors = [ln for ln in lines if ln.startswith("kma: error: ")]
    assert len(errors) == 1, stderr[-3000:]
    return errors[0]


# --------------------------------------------------------------------------- tests
def test_token_missing_is_named(ray_cluster, tmp_path):
    """Token authentication (on in the fixture, as ``RAY_AUTH_MODE=token`` with a token
    file): a client without the token is refused in one line that names the token, not a
    bare "cannot connect". (A wrong token meets the same refusal, ``InvalidAuthToken:
    Authentication token is missing or incorrect``: not run again here, each costs Ray's
    ~20 s of retries.)"""
    cfg, _ = _config(tmp_path, "tok", seeds=[9], model={**TINY["model"], "depth": [1]})
    home = tmp_path / "home"  # no ~/.ray/auth_token there
    home.mkdir()
    env = {k: v for k, v in _env(ray_cluster).items() if not k.startswith("RAY_AUTH")}
    r = _sweep(ray_cluster, cfg, "--store", "s3://kma/tok", "--tracking-uri", f"sqlite:///{tmp_path}/t.db",
               env={**env, "HOME": str(home)})
    assert r.returncode == 2, r.stderr[-3000:]
    line = _one_line_error(r.stderr)
    assert ray_cluster.gcs in line and "token" in line.lower(), line


def test_job_on_two_nodes_second_sweep_and_worker_kill(ray_cluster, tmp_path, tracking_uri, dask_cluster):
    """``ray job submit -- kma sweep`` on the S3 store: tasks run on both nodes; a second
    sweep of the same variants started meanwhile (another driver) trains nothing and
    names the runs the live sweep holds; a worker SIGKILLed mid-epoch is retried by Ray
    and its trajectory is the one an undisturbed training gives (no snapshot doubled or
    missing, metrics aligned); every run is stored complete and registered once."""
    cfg, ids = _config(tmp_path, "twonode", seeds=[0, 1])
    store_url = "s3://kma/twonode"
    hook = _reset_hook(ray_cluster)
    (hook / "all.hold").touch()
    job = _submit(ray_cluster, cfg, "--store", store_url, "--tracking-uri", tracking_uri)
    try:
        # each node has one CPU: two tasks start, one on each node, and are held there
        held = _wait_for(lambda: r if len(r := _reports(hook)) == 2 else None, "two tasks did not start",
                         limit_s=300)
        assert {node for _, node in held.values()} == set(ray_cluster.node_ids.values()), held
        # each node's tasks run in that node's working directory: a relative path differs
        where = {node: psutil.Process(p).cwd() for p, (_, node) in held.items()}
        assert where == {ray_cluster.node_ids["head"]: str(ray_cluster.head_dir),
                         ray_cluster.node_ids["node2"]: str(ray_cluster.node2_dir)}, where

        second = _sweep(ray_cluster, cfg, "--store", store_url, "--tracking-uri", tracking_uri)
        assert second.returncode == 0, second.stderr[-3000:]
        assert "4 held by another live sweep, 0 to train" in second.stderr, second.stderr[-3000:]
        assert "held: " in second.stderr and "(pid " in second.stderr

        # SIGKILL the worker on node2 mid-training; Ray runs the task again (after the
        # queued ones: wait until node2's CPU is busy again, then let everything go)
        pid, (victim, _) = next((p, v) for p, v in held.items() if v[1] == ray_cluster.node_ids["node2"])
        psutil.Process(pid).kill()
        _wait_for(lambda: len(_reports(hook)) > 2 or None, "nothing started after the kill", limit_s=300)
    finally:
        (hook / "all.hold").unlink()
        out, _ = job.communicate(timeout=400)
    assert job.returncode == 0, out[-3000:]
    assert "trained 4, skipped 0" in out and "failed 0" in out, out[-3000:]

    assert [p for p in _reports(hook, victim) if p != pid], "the killed task was not run again"
    st = TrajectoryStore(store_url, read_only=True)
    runs = {i.run_id: i for i in st.runs()}
    assert sorted(runs) == sorted(ids) and {i.status for i in runs.values()} == {"complete"}
    for rid in ids:
        run = st.open_run(rid)
        assert run.attrs["snapshot_epochs"] == list(range(EPOCHS + 1)), (rid, run.attrs["snapshot_epochs"])
        assert len(run.metrics["train_loss"]) == EPOCHS
    assert _training_runs(tracking_uri, "twonode") == {rid: 1 for rid in ids}

    # the killed run's trajectory equals an undisturbed training of the same variant
    import numpy as np

    from pipeline.training.runner import run_variant

    variant = next(v for v in config.expand(config.load(cfg)) if v.run_id == victim)
    local = tmp_path / "reference"
    assert run_variant(variant, str(local))["status"] == "complete"
    ref = TrajectoryStore(str(local), read_only=True).open_run(victim)
    got = st.open_run(victim)
    np.testing.assert_array_equal(got.weights(), ref.weights())
    assert got.metrics == ref.metrics

    # the job's trajectories analysed on dask.distributed (two memory-limited workers),
    # registered on the PostgreSQL-backed server, and again with Dask-on-Ray on the same
    # two-node Ray cluster: the same spectra
    out = {}
    for name, sched, more in (("dask", dask_cluster["address"], ["--tracking-uri", tracking_uri]),
                              ("ray", f"ray:{ray_cluster.gcs}", ["--no-mlflow"])):
        r = subprocess.run([*_kma(), "analyze", "--store", store_url, "--scheduler", sched, "--window", "all",
                            "--json", str(tmp_path / f"{name}.json"), *more],
                           env=_env(ray_cluster), capture_output=True, text=True, timeout=400)
        assert r.returncode == 0, (name, r.stderr[-3000:])
        assert "Traceback" not in r.stderr, (name, r.stderr[-3000:])
        out[name] = json.loads((tmp_path / f"{name}.json").read_text())["runs"]
    assert len(out["dask"]) == len(out["ray"]) > 0
    assert {e["run_id"] for e in out["dask"]} == set(ids)
    for a, b in zip(out["dask"], out["ray"]):
        assert (a["run_id"], a["layer"], a["window"]) == (b["run_id"], b["layer"], b["window"])
        za, zb = (np.sort_complex(np.round(np.array(e["eigenvalues"]) @ [1, 1j], 6)) for e in (a, b))
        np.testing.assert_allclose(za, zb, atol=1e-5)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name("twonode")
    analyses = client.search_runs([exp.experiment_id], "tags.`kma.kind` = 'analysis'")
    assert {m.data.tags["kma.run_id"] for m in analyses} == set(ids)


def test_driver_killed_mid_sweep(ray_cluster, tmp_path, tracking_uri):
    """The driver SIGKILLed with one run finished and one mid-training: ``kma runs`` shows
    the cut-off run as interrupted (not running); the re-run trains only that one; MLflow
    holds one training run per variant."""
    cfg, (done, cut) = _config(tmp_path, "driverkill", seeds=[3])
    store_url = "s3://kma/driverkill"
    hook = _reset_hook(ray_cluster)
    (hook / f"{cut}.hold").touch()
    driver = subprocess.Popen([*_kma(), "sweep", str(cfg), "--store", store_url, "--tracking-uri", tracking_uri,
                               "--ray-address", ray_cluster.gcs], env=_env(ray_cluster),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(lambda: _reports(hook, cut) and _status(store_url, done) == "complete" or None,
                  "one run did not finish while the other was held", limit_s=300)
        # registered right after: polled once a second (SQLite: the driver is its writer)
        _wait_for(lambda: _training_runs(tracking_uri, "driverkill").get(done) or time.sleep(1.0),
                  "the finished run was not registered", limit_s=300)
    except AssertionError:
        driver.kill()
        raise AssertionError(f"{_reports(hook)}; the driver said: {driver.communicate(timeout=60)[1][-3000:]}")
    driver.kill()
    driver.communicate(timeout=60)
    worker = psutil.Process(next(iter(_reports(hook, cut))))
    worker.wait(timeout=120)  # Ray ends a dead driver's tasks
    (hook / f"{cut}.hold").unlink()

    shown = subprocess.run([*_kma(), "runs", "--store", store_url, "--json"], env=_env(ray_cluster),
                           capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0, shown.stderr
    assert {r["run_id"]: r["status"] for r in json.loads(shown.stdout)} == {done: "complete", cut: "interrupted"}

    r = _sweep(ray_cluster, cfg, "--store", store_url, "--tracking-uri", tracking_uri)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "1 already finished, 1 to train" in r.stderr and "trained 1," in r.stderr, r.stderr[-3000:]
    st = TrajectoryStore(store_url, read_only=True)
    assert {i.run_id: i.status for i in st.runs()} == {done: "complete", cut: "complete"}
    assert st.open_run(cut).attrs["snapshot_epochs"] == list(range(EPOCHS + 1))
    assert _training_runs(tracking_uri, "driverkill") == {done: 1, cut: 1}


def test_failure_on_one_node_named_with_its_node(ray_cluster, tmp_path, tracking_uri):
    """node2 without its S3 credentials (its credentials file gone): a variant placed there
    by a custom resource fails; the sweep's summary names the cause and node2 in one line
    (no ``ray::run_variant()``), and the store's record of the run carries it."""
    cfg, (rid,) = _config(tmp_path, "nocreds", seeds=[4], model={**TINY["model"], "depth": [1]},
                          resources={"num_cpus": 1, "custom": {"node2": 1}})
    store_url = "s3://kma/nocreds"
    _reset_hook(ray_cluster)
    away = ray_cluster.credentials.with_suffix(".away")
    ray_cluster.credentials.rename(away)
    try:
        job = _submit(ray_cluster, cfg, "--store", store_url, "--tracking-uri", tracking_uri)
        out, _ = job.communicate(timeout=400)
    finally:
        away.rename(ray_cluster.credentials)
    assert job.returncode != 0, out[-3000:]
    node2 = ray_cluster.node_ids["node2"]
    line = next((ln for ln in out.splitlines() if f"failed: {rid}: " in ln), None)
    assert line is not None, out[-3000:]
    print(line)
    assert "credentials" in line.lower() and f"id {node2[:8]})" in line and "ray::" not in line, line
    assert "Traceback" not in out

    run = TrajectoryStore(store_url, read_only=True).open_run(rid)
    assert run.status == "failed" and run.n_snapshots == 0
    failure = run.attrs["failure"]
    assert failure["node_id"] == node2 and "credentials" in failure["message"].lower(), failure
    assert run.attrs["error"] in line
    assert _training_runs(tracking_uri, "nocreds") == {rid: 1}  # registered, as FAILED
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    [rec] = client.search_runs([client.get_experiment_by_name("nocreds").experiment_id])
    assert rec.info.status == "FAILED" and rec.data.tags["kma.status"] == "failed"


def test_local_store_refused_on_two_nodes_unless_shared(ray_cluster, tmp_path, tracking_uri):
    """A relative store path on a two-node cluster is refused in one line (exit 2, no run
    written); with ``--shared-store`` (every node mounts it: here the same disk) the path
    and a relative SQLite URI are made absolute on the driver, so both nodes write into
    the driver's folder, not into their own working directories."""
    cfg, ids = _config(tmp_path, "localstore", seeds=[5])
    here = tmp_path / "driver"
    here.mkdir()
    r = _sweep(ray_cluster, cfg, "--store", "runs-here", "--tracking-uri", "sqlite:///here.db", cwd=here)
    assert r.returncode == 2, r.stderr[-3000:]
    line = _one_line_error(r.stderr)
    assert f"store {here / 'runs-here'} is a local path" in line and "2 nodes" in line, line
    assert "s3://" in line and "--shared-store" in line, line
    # (the store and MLflow are checked, and created, before Ray is asked: no run in them)
    assert TrajectoryStore(str(here / "runs-here"), read_only=True).runs() == []

    _reset_hook(ray_cluster)
    r = _sweep(ray_cluster, cfg, "--store", "runs-here", "--tracking-uri", "sqlite:///here.db", "--shared-store",
               cwd=here)
    assert r.returncode == 0, r.stderr[-3000:]
    st = TrajectoryStore(str(here / "runs-here"), read_only=True)
    assert {i.run_id: i.status for i in st.runs()} == {rid: "complete" for rid in ids}
    assert _training_runs(f"sqlite:///{here / 'here.db'}", "localstore") == {rid: 1 for rid in ids}
    for node_dir in (ray_cluster.head_dir, ray_cluster.node2_dir):
        assert not (node_dir / "runs-here").exists() and not (node_dir / "here.db").exists()
    # both nodes trained (one CPU each, two tasks at once)
    assert {node for _, node in _reports(ray_cluster.hook).values()} == set(ray_cluster.node_ids.values())
