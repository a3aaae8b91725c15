"""The store on S3-compatible object storage: a real S3 API server (moto's standalone
server, started here as a process on loopback) reached through s3fs, as on a cluster."""

import json
import subprocess

import numpy as np
import pytest

from pipeline.storage.layout import Layout
from pipeline.storage.store import TrajectoryStore

from conftest import kma_cmd
from services import s3_server  # noqa: F401  (a fixture)

s3fs = pytest.importorskip("s3fs")


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


def test_a_recorder_on_s3(s3_server):
    """A user's loop recorded straight into object storage: the lease is taken with S3's
    conditional create, the verdict while training reads the rows in the bucket and those
    still buffered, and the run reads back exactly."""
    import torch

    from pipeline.errors import KMAError
    from pipeline.record import Recorder

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    x = torch.randn(32, 3)
    rows = []
    with Recorder("s3://kma/loops", "rec", tracking_uri=False, config={"epochs": 12}) as rec:
        with pytest.raises(KMAError, match="run rec: already being recorded by"):
            Recorder("s3://kma/loops", "rec", tracking_uri=False)
        for epoch in range(13):
            if epoch:
                loss = (net(x) ** 2).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
            rec.snapshot(net, epoch=epoch, metrics={"train_loss": loss} if epoch else None)
            rows.append(torch.cat([p.detach().reshape(-1) for p in net.parameters()]).numpy().copy())
            if epoch == 8:
                assert rec.verdict()["n_snapshots"] == 9
    run = TrajectoryStore("s3://kma/loops", read_only=True).open_run("rec")
    assert run.status == "complete" and run.missing_chunks() == []
    np.testing.assert_array_equal(run.weights().compute(), np.stack(rows))
