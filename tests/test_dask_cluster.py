"""`kma analyze --scheduler tcp://...` on a real dask.distributed cluster (a scheduler and
a worker started here as separate processes) and `--scheduler processes`, with the same
results as threads."""

import json
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from pipeline.layout import Layout
from pipeline.store import TrajectoryStore

from conftest import kma_cmd


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def dask_cluster(tmp_path):
    port = _free_port()
    addr = f"tcp://127.0.0.1:{port}"
    bindir = f"{sys.prefix}/bin"
    procs = [subprocess.Popen([f"{bindir}/dask", "scheduler", "--host", "127.0.0.1", "--port", str(port),
                               "--dashboard-address", ":0"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    procs.append(subprocess.Popen([f"{bindir}/dask", "worker", addr, "--nthreads", "1", "--nworkers", "1",
                                   "--memory-limit", "2GiB", "--dashboard-address", ":0",
                                   "--local-directory", str(tmp_path / "dw")],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    from distributed import Client

    deadline = time.time() + 60
    while True:
        try:
            with Client(addr, timeout=5) as c:
                if c.scheduler_info()["workers"]:
                    break
        except OSError:
            pass
        assert time.time() < deadline, "dask cluster did not start"
        time.sleep(0.5)
    yield addr
    for p in procs:
        p.terminate()
    for p in procs:
        p.wait(timeout=30)


def test_analyze_on_dask_cluster_matches_threads(tmp_path, kma_env, dask_cluster):
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
    r = subprocess.run(kma_cmd("analyze", "--store", tmp_path / "s", "--no-mlflow", "--scheduler",
                               f"tcp://127.0.0.1:{_free_port()}"), capture_output=True, text=True,
                       env=kma_env, timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].startswith("kma: error: Dask scheduler")
    assert "Traceback" not in r.stderr
