"""The packed trainer runs the options the trainers wire (``stop``, ``on_bad_init``) for
each member as the unpacked trainer runs them: a member stops at the epoch its unpacked
run stops (same seed, same snapshots), masked like a diverged member while the others
train on; a bad initialization ends attempt 0 inside the pack and the restart trains
after it, linked as an unpacked chain is. Tolerance as in test_packed.py."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline import config
from pipeline.storage.store import TrajectoryStore
from pipeline.training.packing import plan_packs, run_pack
from pipeline.training.runner import run_variant

ATOL = 1e-5


def _variants(**over):
    d = dict(name="phooks", seeds=[0, 1],
             task={"name": "multiscale", "n_points": 64, "frequencies": [1.0, 4.0],
                   "amplitudes": [1.0, 0.3], "noise": 0.1},
             model={"depth": 1, "width": 8, "activation": "tanh"}, init=["kaiming", "xavier"],
             optimizer={"name": "sgd", "lr": [0.05, 0.2]}, loss="mse", epochs=12, batch_size=64,
             analysis={"enabled": False})
    d.update(over)
    return config.expand(config.SweepConfig.model_validate(d, strict=False))


def _same_run(a, b):
    assert (a.status, a.n_snapshots) == (b.status, b.n_snapshots), a.run_id
    np.testing.assert_allclose(b.weights().compute(), a.weights().compute(), rtol=0, atol=ATOL)
    for k in ("snapshot_epochs", "epochs_run", "steps", "stopped_early"):
        assert a.attrs[k] == b.attrs[k], (a.run_id, k)
    for k in a.metrics:
        np.testing.assert_allclose(b.metrics[k], a.metrics[k], rtol=1e-4, atol=1e-6, err_msg=k)


@pytest.mark.parametrize("rule", ["v1", "v2", "v3"])
def test_spectral_stop_per_member_as_unpacked(tmp_path, rule):
    vs = _variants(stop={"window": 6, "every": 1, "rule": rule})
    assert [len(p) for p in plan_packs(vs)] == [8]
    for v in vs:
        run_variant(v, str(tmp_path / "a"))
    res = run_pack(vs, str(tmp_path / "b"))
    assert [s["run_id"] for s in res["attempts"]] == [v.run_id for v in vs]
    a_store, b_store = TrajectoryStore(str(tmp_path / "a")), TrajectoryStore(str(tmp_path / "b"))
    stopped = 0
    for v in vs:
        a, b = a_store.open_run(v.run_id), b_store.open_run(v.run_id)
        _same_run(a, b)
        assert b.attrs["stop"] == a.attrs["stop"]            # where and why, or "budget"
        assert b.attrs["packed"]["members"] == 8
        if b.attrs["stopped_early"]:
            stopped += 1
            assert b.status == "complete" and b.attrs["epochs_run"] < v.epochs
            assert b.attrs["stop"]["reason"] == "converged"
            assert b.n_snapshots == b.attrs["stop"]["snapshot"] + 1 == b.attrs["epochs_run"] + 1
    assert 0 < stopped < len(vs)       # some members stop, the others train their whole budget


def test_bad_init_restart_inside_a_pack_as_unpacked(tmp_path):
    vs = _variants(init=["zeros", "kaiming"], seeds=[0], epochs=10,
                   on_bad_init={"action": "restart", "max_restarts": 1, "fallback_init": "kaiming", "after": 5})
    assert [len(p) for p in plan_packs(vs)] == [4]
    want = [a for v in vs for a in run_variant(v, str(tmp_path / "a"))["attempts"]]
    res = run_pack(vs, str(tmp_path / "b"))
    assert [(s["run_id"], s["status"]) for s in res["attempts"]] == [(s["run_id"], s["status"]) for s in want]
    assert sorted(s["status"] for s in want) == ["bad_init", "bad_init", "complete", "complete",
                                                 "complete", "complete"]
    a_store, b_store = TrajectoryStore(str(tmp_path / "a")), TrajectoryStore(str(tmp_path / "b"))
    assert sorted(b_store.run_ids()) == sorted(a_store.run_ids())
    for rid in a_store.run_ids():
        a, b = a_store.open_run(rid), b_store.open_run(rid)
        _same_run(a, b)
        for k in ("bad_init_action", "restarted_as", "restart_of", "variant_run_id", "attempt", "bad_init_at"):
            assert a.attrs.get(k) == b.attrs.get(k), (rid, k)
        assert a.attrs["bad_init_verdict"]["bad_init"] == b.attrs["bad_init_verdict"]["bad_init"]
    # a re-run of the pack trains nothing: every chain is read back
    again = run_pack(vs, str(tmp_path / "b"))
    assert [(s["run_id"], s["status"], s["seconds"]) for s in again["attempts"]] == [
        (s["run_id"], s["status"], 0.0) for s in want]
