"""The store on S3-compatible object storage: a real S3 API server (moto's standalone
server, started here as a process on loopback) reached through s3fs, as on a cluster."""

import json
import os
import re
import subprocess
import sys
import time

import numpy as np
import pytest

from pipeline.storage.layout import Layout
from pipeline.storage.store import TrajectoryStore

from conftest import kma_cmd

s3fs = pytest.importorskip("s3fs")


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory):
    """moto's server on a port the OS picks (``-p 0``), read back from its own log line:
    no window in which another process can take a port chosen here."""
    log = tmp_path_factory.mktemp("moto") / "server.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([f"{sys.prefix}/bin/moto_server", "-H", "127.0.0.1", "-p", "0"],
                                stdout=subprocess.DEVNULL, stderr=out)
    try:
        port = _wait_for(lambda: _listening_port(log, proc), "S3 server did not start")
    except BaseException:
        proc.kill()
        raise
    env = {"AWS_ACCESS_KEY_ID": "kma", "AWS_SECRET_ACCESS_KEY": "kma-secret",
           "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_DEFAULT_REGION": "us-east-1"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    fs.mkdir("kma")
    yield env
    proc.terminate()
    proc.wait(timeout=30)
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def _listening_port(log, proc) -> int | None:
    """The port in werkzeug's ``Running on http://127.0.0.1:PORT`` line, once printed."""
    assert proc.poll() is None, f"moto_server exited: {log.read_text()[-500:]}"
    m = re.search(r"Running on http://127\.0\.0\.1:(\d+)", log.read_text())
    return int(m.group(1)) if m else None


def _wait_for(probe, what, limit_s=60.0):
    """Poll ``probe()`` until it returns something (a start-up wait, not a measurement)."""
    deadline = time.monotonic() + limit_s
    while (found := probe()) is None:
        assert time.monotonic() < deadline, what
        time.sleep(0.1)
    return found


def test_store_round_trip_on_s3(s3_server):
    layout = Layout.from_named_shapes([("a.weight", (5000,)), ("b.weight", (300,))])
    X = np.random.default_rng(0).standard_normal((6, layout.size)).astype(np.float32)
    store = TrajectoryStore("s3://kma/unit")
    store.check_writable()
    half = store.create_run("r", layout, capacity=4)  # an attempt that dies midway
    half.append(X[0])
    assert store.status("r") == "running"
    w = store.create_run("r", layout, capacity=4)  # wipes it, grows past capacity
    for x in X:
        w.append(x)
    w.finish("complete")
    run = TrajectoryStore("s3://kma/unit", read_only=True).open_run("r")
    assert run.status == "complete" and run.n_snapshots == 6 and run.missing_chunks() == []
    np.testing.assert_array_equal(run.weights().compute(), X)


@pytest.mark.slow
def test_sweep_and_analyze_on_s3(s3_server, tiny_config, tmp_path, kma_env):
    env = {**kma_env, **s3_server}
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    r = subprocess.run(kma_cmd("sweep", tiny_config(), "--store", "s3://kma/sweeps", "--tracking-uri", uri),
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    runs = TrajectoryStore("s3://kma/sweeps", read_only=True).runs()
    assert len(runs) == 2 and {i.status for i in runs} == {"complete"}
    out = tmp_path / "a.json"
    r = subprocess.run(kma_cmd("analyze", "--store", "s3://kma/sweeps", "--window", "6", "--stride", "3",
                               "--json", out, "--tracking-uri", uri), capture_output=True, text=True,
                       env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    rows = json.loads(out.read_text())["runs"]
    assert {row["run_id"] for row in rows} == {i.run_id for i in runs}
    assert all(row["window"][1] - row["window"][0] == 6 for row in rows)
