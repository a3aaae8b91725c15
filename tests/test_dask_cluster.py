"""`kma analyze --scheduler tcp://...` on a real dask.distributed cluster (a scheduler and
a worker started here as separate processes) and `--scheduler processes`, with the same
results as threads."""

import json
import subprocess
import sys
import time

import numpy as np
import pytest

from pipeline.storage.layout import Layout
from pipeline.storage.store import TrajectoryStore

from conftest import kma_cmd, refusing_port


@pytest.fixture
def dask_cluster(tmp_path):
    """A scheduler on a port the OS picks (``--port 0``), its address read back from the
    scheduler file it writes (no port chosen here that another process could take), and
    one worker that finds it through the same file."""
    sched_file = tmp_path / "scheduler.json"
    bindir = f"{sys.prefix}/bin"
    procs = [subprocess.Popen([f"{bindir}/dask", "scheduler", "--host", "127.0.0.1", "--port", "0",
                               "--dashboard-address", ":0", "--scheduler-file", str(sched_file)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    procs.append(subprocess.Popen([f"{bindir}/dask", "worker", "--scheduler-file", str(sched_file),
                                   "--nthreads", "1", "--nworkers", "1",
                                   "--memory-limit", "2GiB", "--dashboard-address", ":0",
                                   "--local-directory", str(tmp_path / "dw")],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    from distributed import Client

    try:
        deadline = time.monotonic() + 60  # a start-up wait, not a measurement
        addr = None
        while True:
            for p in procs:
                assert p.poll() is None, f"dask process exited with {p.returncode}"
            try:
                addr = addr or json.loads(sched_file.read_text())["address"]
                with Client(addr, timeout=5) as c:
                    if c.scheduler_info()["workers"]:
                        break
            except (OSError, ValueError, KeyError):  # file not (fully) written yet; not up yet
                pass
            assert time.monotonic() < deadline, "dask cluster did not start"
            time.sleep(0.5)
        assert addr.startswith("tcp://127.0.0.1:") and not addr.endswith(":0"), addr
        yield addr
    finally:
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
    with refusing_port() as held:
        r = subprocess.run(kma_cmd("analyze", "--store", tmp_path / "s", "--no-mlflow", "--scheduler",
                                   f"tcp://127.0.0.1:{held.getsockname()[1]}"), capture_output=True, text=True,
                           env=kma_env, timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].startswith("kma: error: Dask scheduler")
    assert "Traceback" not in r.stderr
