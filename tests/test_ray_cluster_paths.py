"""The multi-node pieces of :mod:`pipeline.ray_cluster` that need no cluster: paths made
absolute, custom resources validated and kept out of run ids, refused on a local Ray,
Ray's errors described by their cause. (The cluster itself: ``test_ray_multinode.py``.)"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from conftest import kma_cmd
from pipeline import config
from pipeline.errors import KMAError
from pipeline.ray_cluster import failure_line, ray_failure
from pipeline.storage.location import StoreLocation
from pipeline.tracking.uri import absolute_tracking_uri
from services import s3_server  # noqa: F401


def test_local_paths_made_absolute_urls_kept(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert StoreLocation("kma-store").absolute() == str(tmp_path / "kma-store")
    assert StoreLocation("file://rel/s").absolute() == str(tmp_path / "rel" / "s")
    assert StoreLocation("/abs/s").absolute() == "/abs/s"
    assert StoreLocation("s3://bucket/p").absolute() == "s3://bucket/p"
    assert absolute_tracking_uri("sqlite:///mlflow.db") == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert absolute_tracking_uri(f"sqlite:///{tmp_path}/x.db") == f"sqlite:///{tmp_path}/x.db"
    for uri in ("sqlite:///:memory:", "http://mlflow:5000", "postgresql://u@h/db"):
        assert absolute_tracking_uri(uri) == uri


def test_custom_resources_validated_and_not_in_run_ids(tiny_config):
    plain = config.expand(config.load(tiny_config()))
    placed = config.expand(config.load(tiny_config(resources={"num_cpus": 1, "custom": {"node2": 0.5}})))
    assert [v.run_id for v in placed] == [v.run_id for v in plain]  # execution-only
    assert placed[0].resources.custom == {"node2": 0.5}
    for bad in ({"node2": 0}, {"GPU": 1}):
        with pytest.raises(KMAError, match="resources.custom"):
            config.load(tiny_config(resources={"num_cpus": 1, "custom": bad}))


def test_custom_resource_refused_on_a_local_ray(tiny_config, tmp_path, kma_env):
    cfg = tiny_config(resources={"num_cpus": 1, "custom": {"node2": 1}})
    r = subprocess.run(kma_cmd("sweep", cfg, "--store", tmp_path / "s", "--tracking-uri",
                               f"sqlite:///{tmp_path / 'm.db'}"), capture_output=True, text=True,
                       env=kma_env, timeout=300)
    assert r.returncode == 2, r.stderr
    [line] = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert line.startswith("kma: error: ") and "resources.custom.node2" in line and "local Ray" in line, line
    assert not Path(tmp_path / "s").exists()


def test_ray_errors_described_by_their_cause():
    exc = pytest.importorskip("ray.exceptions")
    crashed = ray_failure(exc.WorkerCrashedError())
    assert crashed["type"] == "WorkerCrashedError" and crashed["message"].startswith("The worker died")
    wrapped = exc.RayTaskError("run_on_node", "Traceback ...", ValueError("bad value"), pid=7, ip="10.0.0.2")
    got = ray_failure(wrapped)
    assert (got["type"], got["message"], got["node_ip"]) == ("ValueError", "bad value", "10.0.0.2")
    assert failure_line(got) == "ValueError: bad value (node 10.0.0.2)"
    assert failure_line({"type": "OSError", "message": "m", "node_ip": "h", "node_id": "0123456789"}) == \
        "OSError: m (node h, id 01234567)"


def test_store_or_database_in_a_jobs_scratch_copy_refused(tiny_config, tmp_path, kma_env):
    """``ray job submit --working-dir .`` runs the driver in Ray's temporary copy of the
    folder (``<session>/runtime_resources/working_dir_files/_ray_pkg_*``): the default
    store and ``./mlflow.db`` would be deleted with the session. Refused, nothing written."""
    scratch = tmp_path / "session_x" / "runtime_resources" / "working_dir_files" / "_ray_pkg_1"
    scratch.mkdir(parents=True)
    cfg = tiny_config()
    for args, what in ((["--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}"], "store"),
                       (["--store", tmp_path / "s"], "MLflow database")):
        r = subprocess.run(kma_cmd("sweep", cfg, *args), cwd=scratch, capture_output=True, text=True,
                           env=kma_env, timeout=300)
        assert r.returncode == 2, r.stderr
        [line] = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert line.startswith(f"kma: error: {what} {scratch}/") and "temporary copy" in line, line
        assert list(scratch.iterdir()) == [] and not (tmp_path / "s").exists()


def test_lease_claim_on_s3_is_a_conditional_write(s3_server, monkeypatch):
    """Two drivers on different machines racing for one run on S3: the claim is a
    conditional PUT (If-None-Match), so the second cannot replace the first's lease even
    inside the window where both saw no lease (simulated: the second's first look finds
    none, and zarr's existence check answers "absent"; with zarr's check-then-write both
    would hold the run)."""
    import json

    from zarr.storage import FsspecStore

    from pipeline.storage import lease
    from pipeline.storage.store import TrajectoryStore

    store = TrajectoryStore("s3://kma/lease-race")
    assert store.capabilities.conditional_create          # what the S3 backend declares
    rid = "mlp-d1-w8-tanh-kaiming-adam-s0-0123456789"
    first, second = lease.LeaseKeeper(store, "a"), lease.LeaseKeeper(store, "b")
    assert first.claim(rid) is None

    async def absent(self, key):
        return False

    real_read, looks = lease.read, []

    def first_look_finds_none(st, r):
        looks.append(r)
        return None if len(looks) == 1 else real_read(st, r)

    monkeypatch.setattr(FsspecStore, "exists", absent)
    monkeypatch.setattr(lease, "read", first_look_finds_none)
    holder = second.claim(rid)
    assert len(looks) == 2  # looked, wrote (conditionally), read back
    assert holder is not None and holder.owner == first.owner and rid not in second.held
    assert json.loads(store.get_bytes(f"leases/{rid}.json"))["owner"] == first.owner
