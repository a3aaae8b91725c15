"""on_bad_init: restart end to end (local Ray, Zarr on disk, SQLite MLflow): both attempts
stored and registered, linked, listed by ``kma runs``; a second sweep trains nothing."""

import subprocess

import pytest
from mlflow.tracking import MlflowClient

from pipeline import config
from pipeline.storage.store import TrajectoryStore

from conftest import kma_cmd

pytestmark = pytest.mark.slow


def test_restarted_variant_keeps_both_attempts_everywhere(tiny_config, tmp_path, kma_env):
    cfg = tiny_config(init=["zeros", "kaiming"], model={**{"family": "mlp", "width": 8, "activation": "tanh"},
                                                        "depth": 2},
                      on_bad_init={"action": "restart", "max_restarts": 1, "fallback_init": "xavier", "after": 4},
                      analysis={"enabled": True, "window": 6, "stride": 3})
    store, uri = tmp_path / "store", f"sqlite:///{tmp_path / 'mlflow.db'}"
    bad, good = (v.run_id for v in config.expand(config.load(cfg)))
    sweep = kma_cmd("sweep", cfg, "--store", store, "--tracking-uri", uri)
    r = subprocess.run(sweep, capture_output=True, text=True, env=kma_env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "2 variants, 0 already finished, 2 to train" in r.stderr
    # the stopped attempt has 4 snapshots, too few for the 6-snapshot window: said, not failed
    assert f"run {bad}: bad init after 4 snapshots, too few to analyse" in r.stderr

    st = TrajectoryStore(str(store))
    status = {i.run_id: i.status for i in st.runs()}
    assert status == {bad: "bad_init", bad + "-r1": "complete", good: "complete"}
    assert st.open_run(bad + "-r1").config["init"] == "xavier"
    assert st.open_run(bad + "-r1").list_analyses() and st.open_run(good).list_analyses()

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("tiny")
    found = {m.data.tags["kma.run_id"]: m for m in
             client.search_runs([exp.experiment_id], "tags.`kma.kind` = 'training'")}
    assert sorted(found) == sorted(status)
    assert found[bad].info.status == "KILLED" and found[bad].data.tags["kma.status"] == "bad_init"
    assert found[bad].data.tags["kma.restarted_as"] == bad + "-r1"
    assert found[bad].data.tags["kma.bad_init_action"] == "restarted"
    assert found[bad + "-r1"].data.tags["kma.restart_of"] == bad
    assert found[bad + "-r1"].info.status == "FINISHED"
    assert found[bad + "-r1"].data.params["init"] == "xavier"
    assert found[bad + "-r1"].info.run_name.endswith("-r1")
    assert found[bad].info.run_name + "-r1" != found[bad + "-r1"].info.run_name  # init differs in the name

    listing = subprocess.run(kma_cmd("runs", "--store", store), capture_output=True, text=True,
                             env=kma_env, timeout=120)
    assert listing.returncode == 0, listing.stderr
    assert "bad_init" in listing.stdout and f"  {bad} -> {bad}-r1" in listing.stdout

    finished = {rid: st.open_run(rid).attrs["finished"] for rid in status}
    again = subprocess.run(sweep, capture_output=True, text=True, env=kma_env, timeout=300)
    assert again.returncode == 0, again.stderr
    assert "2 variants, 2 already finished, 0 to train" in again.stderr
    assert {rid: st.open_run(rid).attrs["finished"] for rid in status} == finished
    assert len(client.search_runs([exp.experiment_id], "tags.`kma.kind` = 'training'")) == 3
