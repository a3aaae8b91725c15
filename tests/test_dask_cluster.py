"""`kma analyze` on real clusters: `--scheduler tcp://...` on a dask.distributed scheduler
with two memory-limited workers (separate processes, tests/services.py), also on a
trajectory larger than a worker's memory limit; `--scheduler processes`; and
`--scheduler ray` (Dask-on-Ray) — each with the same results as threads. And what the
Dask graph shipped to workers carries: the store's URL, never a credential."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from pipeline.storage.layout import Layout
from pipeline.storage.store import TrajectoryStore

from conftest import REPO, kma_cmd, refusing_port
from services import dask_cluster, s3_server  # noqa: F401  (fixtures)


def test_analyze_on_dask_cluster_matches_threads(tmp_path, kma_env, dask_cluster):
    dask_cluster = dask_cluster["address"]
    rng = np.random.default_rng(0)
    P, T = 3000, 24
    V = np.linalg.qr(rng.standard_normal((P, 3)))[0]
    lam = np.array([0.97, 0.9, 0.6])
    X = np.stack([1.0 + V @ (lam ** t) for t in range(T)]).astype(np.float32)
    layout = Layout.from_named_shapes([("a.weight", (1000,)), ("b.weight", (2000,))])
    w = TrajectoryStore(str(tmp_path / "s")).create_run("r", layout, extra={"sweep": "d"})
    for x in X:
        w.append(x)
    w.finish("complete")
    out = {}
    for sched in ("threads", "processes", dask_cluster):
        path = tmp_path / f"{sched[:1]}.json"
        r = subprocess.run(kma_cmd("analyze", "--store", tmp_path / "s", "--window", "12", "--stride", "6",
                                   "--per-layer", "--no-mlflow", "--scheduler", sched, "--json", path),
                           capture_output=True, text=True, env=kma_env, timeout=180)
        assert r.returncode == 0, r.stderr
        out[sched] = json.loads(path.read_text())["runs"]
    a = out["threads"]
    for b in (out["processes"], out[dask_cluster]):
        assert len(a) == len(b) == 3 * 3
        for ra, rb in zip(a, b):
            assert (ra["layer"], ra["window"]) == (rb["layer"], rb["window"])
            np.testing.assert_allclose(ra["eigenvalues"], rb["eigenvalues"], atol=1e-8)
    eig = np.array([complex(*z) for z in a[0]["eigenvalues"]])
    res = np.array(a[0]["residuals"])
    for known in (0.6, 0.9, 0.97, 1.0):  # the constant part gives λ = 1
        i = np.argmin(abs(eig - known))
        assert abs(eig[i] - known) < 1e-4 and res[i] < 1e-3


def test_unreachable_dask_scheduler_is_one_line(tmp_path, kma_env):
    TrajectoryStore(str(tmp_path / "s"))
    with refusing_port() as held:
        r = subprocess.run(kma_cmd("analyze", "--store", tmp_path / "s", "--no-mlflow", "--scheduler",
                                   f"tcp://127.0.0.1:{held.getsockname()[1]}"), capture_output=True, text=True,
                           env=kma_env, timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].startswith("kma: error: Dask scheduler")
    assert "Traceback" not in r.stderr


# --------------------------------------------------------------------------- larger than a worker
def _known_system(P: int, T: int, seed: int = 0):
    """``x_t = 1 + Σ_k λ_k^t v_k`` (λ = 0.97, 0.9, 0.6; the constant gives λ = 1): the
    exact eigenvalues of every window are known, a dense float64 reference."""
    rng = np.random.default_rng(seed)
    V = rng.standard_normal((3, P)).astype(np.float32)
    lam = np.array([0.97, 0.9, 0.6])
    return lam, (lambda t: (1.0 + (lam[:, None] ** t * V).sum(axis=0)).astype(np.float32))


def _worker_peaks(client) -> dict:
    """Each worker's peak resident memory so far (bytes; Linux's VmHWM)."""
    def peak():
        with open("/proc/self/status") as f:
            return 1024 * int(next(l for l in f if l.startswith("VmHWM")).split()[1])
    return client.run(peak)


def test_trajectory_larger_than_a_worker_memory(tmp_path, kma_env, dask_cluster):
    """A float32 trajectory larger than a worker's memory limit is analysed on the
    cluster; the spectrum is the known one; no worker was restarted (the nanny
    restarts a worker past 95% of its limit) and none peaked above its limit."""
    P, T = 2_500_000, 40
    limit, client = dask_cluster["memory_limit"], dask_cluster["client"]
    lam, x_at = _known_system(P, T)
    layout = Layout.from_named_shapes([("a.weight", (P // 4,)), ("b.weight", (P - P // 4,))])
    w = TrajectoryStore(str(tmp_path / "s")).create_run("big", layout, extra={"sweep": "d"})
    for t in range(T):
        w.append(x_at(t))
    w.finish("complete")
    nbytes = TrajectoryStore(str(tmp_path / "s")).open_run("big").weights().nbytes
    assert nbytes == T * P * 4 > limit, (nbytes, limit)
    path = tmp_path / "big.json"
    r = subprocess.run(kma_cmd("analyze", "--store", tmp_path / "s", "--window", "20", "--stride", "20",
                               "--no-per-layer", "--no-mlflow", "--scheduler", dask_cluster["address"],
                               "--json", path), capture_output=True, text=True, env=kma_env, timeout=300)
    assert r.returncode == 0, r.stderr
    rows = json.loads(path.read_text())["runs"]
    assert [row["window"] for row in rows] == [[0, 20], [20, 40]]
    eig = np.array([complex(*z) for z in rows[0]["eigenvalues"]])
    res = np.array(rows[0]["residuals"])
    for known in (*lam, 1.0):
        i = np.argmin(abs(eig - known))
        assert abs(eig[i] - known) < 1e-4 and res[i] < 1e-3, (known, eig, res)
    assert client.run(os.getpid) == dask_cluster["pids"], "a worker was restarted (killed for memory?)"
    peaks = _worker_peaks(client)
    assert len(peaks) == 2 and all(p < limit for p in peaks.values()), (peaks, limit)
    assert "exceeded 95% memory budget" not in dask_cluster["log"].read_text()


# --------------------------------------------------------------------------- credentials
def test_dask_graph_carries_the_store_url_not_credentials(s3_server, dask_cluster, tmp_path, monkeypatch):
    """With the secret in ``FSSPEC_S3_*`` (which fsspec puts into every S3 filesystem it
    builds, and fsspec pickles a filesystem with its options), the graph of an analysis of
    an ``s3://`` store holds the store's URL and no trace of the secret, and the workers
    (credentials in their own environment only) read the store and give the known result."""
    import cloudpickle
    import fsspec.config
    import s3fs

    from pipeline.workflows.analyze import analyze_store
    from pipeline.config import AnalysisParams
    from pipeline.storage import remote

    secret = "kma-SECRET-in-fsspec-env-0123456789"
    url = f"s3://kma/graph-{tmp_path.name}"
    P, T = 5000, 24
    lam, x_at = _known_system(P, T, seed=1)
    layout = Layout.from_named_shapes([("a.weight", (2000,)), ("b.weight", (3000,))])
    w = TrajectoryStore(url).create_run("r", layout, extra={"sweep": "d"})
    for t in range(T):
        w.append(x_at(t))
    w.finish("complete")

    monkeypatch.setenv("FSSPEC_S3_KEY", s3_server["AWS_ACCESS_KEY_ID"])
    monkeypatch.setenv("FSSPEC_S3_SECRET", secret)
    monkeypatch.setattr(fsspec.config, "conf", {})
    fsspec.config.set_conf_env(fsspec.config.conf)      # what importing fsspec does with FSSPEC_*
    assert fsspec.config.conf["s3"]["secret"] == secret
    s3fs.S3FileSystem.clear_instance_cache()
    remote._reopen.cache_clear()
    store = TrajectoryStore(url)
    assert store._zstore._store.fs.secret == secret     # the client's filesystem does hold it

    graphs = []

    def shipping(dsk, keys, **kwargs):                   # what dask.compute hands a scheduler
        graphs.append(cloudpickle.dumps(dsk))
        return dask_cluster["client"].get(dsk, keys, **kwargs)

    params = AnalysisParams.from_flags(method="qr", rank=None, tol=None, threshold=None, window=12, stride=12,
                                       per_layer=False, modes=False, seed=0)
    out = tmp_path / "g.json"
    report = analyze_store(url, None, params, tracking_uri=None, json_path=str(out), scheduler=shipping)
    assert report == {"r": None}
    assert graphs and all(url.encode() in g for g in graphs[:1])
    assert not any(secret.encode() in g for g in graphs)
    row = json.loads(out.read_text())["runs"][0]
    eig = np.array([complex(*z) for z in row["eigenvalues"]])
    for known in (*lam, 1.0):
        assert np.min(abs(eig - known)) < 1e-4


# --------------------------------------------------------------------------- Dask-on-Ray
def test_scheduler_ray_runs_the_graph_on_ray(tmp_path, monkeypatch):
    """``kma analyze --scheduler ray`` (a local Ray started and stopped by the command):
    every Dask task ran inside a Ray task (a callback Ray's Dask scheduler calls before
    each task, in the worker, records its Ray task id and process), and the spectra equal
    the threaded scheduler's."""
    pytest.importorskip("ray")
    from ray.util.dask import RayDaskCallback

    from pipeline.cli import main

    lam, x_at = _known_system(3000, 24, seed=2)
    layout = Layout.from_named_shapes([("a.weight", (1000,)), ("b.weight", (2000,))])
    w = TrajectoryStore(str(tmp_path / "s")).create_run("r", layout, extra={"sweep": "d"})
    for t in range(24):
        w.append(x_at(t))
    w.finish("complete")
    marks = tmp_path / "marks"
    marks.mkdir()
    monkeypatch.setenv("PYTHONPATH", str(REPO))   # the Ray workers import this checkout's pipeline

    class InRayTask(RayDaskCallback):
        def _ray_pretask(self, key, object_refs):
            import os as _os

            import ray as _ray

            (marks / f"{_os.getpid()}-{_ray.get_runtime_context().get_task_id()}").touch()

    import cloudpickle
    cloudpickle.register_pickle_by_value(sys.modules[__name__])   # the callback travels by value
    try:
        args = ["analyze", "--store", str(tmp_path / "s"), "--window", "12", "--stride", "6", "--no-mlflow"]
        with InRayTask():
            assert main([*args, "--scheduler", "ray", "--json", str(tmp_path / "ray.json")]) == 0
        assert main([*args, "--json", str(tmp_path / "threads.json")]) == 0
    finally:
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    import ray
    assert not ray.is_initialized()                 # the command stopped the Ray it started
    ran = [m.name.split("-", 1) for m in marks.iterdir()]
    assert len(ran) >= 3                            # the pass' tasks and its reductions
    assert all(pid != str(os.getpid()) and tid != "None" for pid, tid in ran)
    a = json.loads((tmp_path / "ray.json").read_text())["runs"]
    b = json.loads((tmp_path / "threads.json").read_text())["runs"]
    assert len(a) == len(b) == 3 * 3
    for ra, rb in zip(a, b):
        assert (ra["layer"], ra["window"]) == (rb["layer"], rb["window"])
        np.testing.assert_allclose(ra["eigenvalues"], rb["eigenvalues"], atol=1e-10)


def test_scheduler_ray_address_unreachable_is_one_line(tmp_path, capsys):
    """``--scheduler ray:HOST:PORT`` connects as ``kma sweep --ray-address`` does: a Ray
    address that refuses is one line, exit 2, before the store is opened."""
    from pipeline.cli import main

    with refusing_port() as held:
        addr = f"127.0.0.1:{held.getsockname()[1]}"
        rc = main(["analyze", "--store", str(tmp_path / "nowhere"), "--no-mlflow", "--scheduler", f"ray:{addr}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err == [f"kma: error: Ray at {addr}: unreachable (Connection refused)"], err
    assert not (tmp_path / "nowhere").exists()
