"""Packed variants (issue 14): a packed member trains the trajectory its unpacked run
trains, stores it as its own run, diverges alone, and re-runs per member.

Tolerance: the stored float32 trajectories are compared entry by entry with
``atol = 1e-5`` on weights of size ~1-3. The packed model computes the same sums in a
different order (a batched matmul over members, a per-member loss reduction), so the two
differ by float32 rounding (~6e-8 relative per operation), carried through at most ~50
optimizer steps here; measured differences are <= 2.4e-7 (a few ulps). A wrong batch
order, data split, learning rate or optimizer formula moves the weights by >= 1e-3 at
the first step (lr 3e-3 and more), far outside the tolerance.
"""

from __future__ import annotations

import numpy as np
import pytest

from pipeline import config
from pipeline.storage.store import TrajectoryStore
from pipeline.ray_cluster import run_pack_task
from pipeline.training.packing import plan_packs, run_pack, why_unpacked
from pipeline.training.runner import run_variant

ATOL = 1e-5


def _variants(**over):
    d = dict(name="packed", seeds=[0, 1],
             task={"name": "multiscale", "n_points": 64, "frequencies": [1.0, 4.0],
                   "amplitudes": [1.0, 0.3], "noise": 0.1},
             model={"depth": 2, "width": 8, "activation": "tanh"}, init=["kaiming", "xavier"],
             optimizer={"name": "adam", "lr": [0.01, 0.003]}, loss=["mse", "huber"],
             epochs=6, batch_size=16, analysis={"enabled": False})
    d.update(over)
    return config.expand(config.SweepConfig.model_validate(d, strict=False))


def _assert_same_runs(vs, url_a, url_b):
    a_store, b_store = TrajectoryStore(url_a), TrajectoryStore(url_b)
    for v in vs:
        a, b = a_store.open_run(v.run_id), b_store.open_run(v.run_id)
        assert (a.status, a.n_snapshots) == (b.status, b.n_snapshots), v.run_id
        wa, wb = a.weights().compute(), b.weights().compute()
        assert wa.dtype == wb.dtype == np.float32
        np.testing.assert_allclose(wb, wa, rtol=0, atol=ATOL, err_msg=v.run_id)
        assert a.attrs["snapshot_epochs"] == b.attrs["snapshot_epochs"]
        assert a.attrs["snapshot_steps"] == b.attrs["snapshot_steps"]
        assert a.attrs["epochs_run"] == b.attrs["epochs_run"]
        assert a.attrs["steps"] == b.attrs["steps"]
        assert sorted(a.metrics) == sorted(b.metrics)
        for k in a.metrics:
            np.testing.assert_allclose(b.metrics[k], a.metrics[k], rtol=1e-4, atol=1e-6, err_msg=k)


def test_packed_members_match_unpacked_adam_regression(tmp_path):
    """16 members: 2 inits x 2 lrs x 2 losses x 2 seeds (own split, noise, batch order);
    64 points: 51 training samples, so the last batch of each epoch is short."""
    vs = _variants()
    assert [len(p) for p in plan_packs(vs)] == [16]
    for v in vs:
        assert run_variant(v, str(tmp_path / "a"))["status"] == "complete"
    res = run_pack(vs, str(tmp_path / "b"))
    assert [s["run_id"] for s in res["attempts"]] == [v.run_id for v in vs]
    assert {s["status"] for s in res["attempts"]} == {"complete"}
    _assert_same_runs(vs, str(tmp_path / "a"), str(tmp_path / "b"))
    # the members really differ (a pack of copies would pass the comparison too)
    b = TrajectoryStore(str(tmp_path / "b"))
    ends = [b.open_run(v.run_id).weights().compute()[-1] for v in vs]
    assert min(np.abs(ends[i] - ends[j]).max() for i in range(16) for j in range(i)) > 1e-3


@pytest.mark.parametrize("opt", [
    {"name": "sgd", "lr": [0.05, 0.2], "momentum": 0.9, "weight_decay": 1e-3},
    {"name": "adamw", "lr": [0.01, 0.003], "weight_decay": 0.05},
])
def test_packed_classification_step_snapshots(tmp_path, opt):
    """cross_entropy on blobs, snapshots every 3 optimizer steps, SGD+momentum / AdamW."""
    vs = _variants(task={"name": "blobs", "n_samples": 80, "n_features": 6, "n_classes": 3},
                   optimizer=opt, loss="cross_entropy", init="kaiming", epochs=4,
                   snapshot={"every": 3, "unit": "step"}, model={"depth": 1, "width": 8,
                                                                  "activation": "relu"})
    assert len(vs) == 4
    for v in vs:
        run_variant(v, str(tmp_path / "a"))
    run_pack(vs, str(tmp_path / "b"))
    _assert_same_runs(vs, str(tmp_path / "a"), str(tmp_path / "b"))
    assert "val_accuracy" in TrajectoryStore(str(tmp_path / "b")).open_run(vs[0].run_id).metrics


def test_diverged_member_is_masked_others_train_on(tmp_path):
    """SGD at lr 1e4 diverges; its pack mates at lr 0.05 train to the end and match
    their unpacked runs, and the diverged member stops where its unpacked run stops."""
    vs = _variants(optimizer={"name": "sgd", "lr": [0.05, 1e4]}, loss="mse", init="kaiming",
                   model={"depth": 2, "width": 8, "activation": "relu"})
    for v in vs:
        run_variant(v, str(tmp_path / "a"))
    res = run_pack(vs, str(tmp_path / "b"))
    status = {s["run_id"]: s["status"] for s in res["attempts"]}
    assert sorted(status.values()) == ["complete", "complete", "diverged", "diverged"]
    assert all(status[v.run_id] == ("diverged" if v.lr > 1 else "complete") for v in vs)
    _assert_same_runs(vs, str(tmp_path / "a"), str(tmp_path / "b"))
    b = TrajectoryStore(str(tmp_path / "b"))
    for v in vs:
        run = b.open_run(v.run_id)
        if v.lr > 1:
            assert run.attrs["epochs_run"] < v.epochs and "diverged_because" in run.attrs
        else:
            assert run.attrs["epochs_run"] == v.epochs


def test_rerun_trains_only_unfinished_members(tmp_path):
    vs = _variants(seeds=[0], loss="mse", init="kaiming")        # 2 members: 2 lrs
    url = str(tmp_path / "s")
    first = run_pack(vs, url)
    store = TrajectoryStore(url)
    kept = store.open_run(vs[0].run_id).weights().compute()
    lost = store.open_run(vs[1].run_id).weights().compute()
    # as a task that died mid-training leaves it (the store's own attribute)
    store.root["runs"][vs[1].run_id].attrs.update({"status": "running"})
    assert store.status(vs[1].run_id) == "running"
    again = run_pack_task([v.model_dump(mode="json") for v in vs], url)
    assert [s["status"] for s in again["attempts"]] == ["complete", "complete"]
    assert again["attempts"][0]["seconds"] == 0.0          # read back, not retrained
    assert again["attempts"][1]["seconds"] > 0.0           # retrained
    np.testing.assert_array_equal(TrajectoryStore(url).open_run(vs[0].run_id).weights().compute(), kept)
    # the one unfinished member retrains alone (unpacked): the same trajectory again
    np.testing.assert_allclose(TrajectoryStore(url).open_run(vs[1].run_id).weights().compute(),
                               lost, rtol=0, atol=ATOL)
    assert first["attempts"][1]["n_snapshots"] == again["attempts"][1]["n_snapshots"]


def test_plan_packs_groups_by_architecture_and_excludes_control_flow():
    vs = _variants(model={"depth": [1, 2], "width": 8, "activation": "tanh"})   # 2 x 16
    packs = plan_packs(vs, "auto", 5)
    assert sorted(len(p) for p in packs) == [4, 4, 4, 4, 4, 4, 4, 4]
    for p in packs:
        assert len({v.depth for v in p}) == 1
    assert sorted(v.run_id for p in packs for v in p) == sorted(v.run_id for v in vs)
    assert all(len(p) == 1 for p in plan_packs(vs, "off", 32))
    pruned = _variants(prune={"method": "magnitude", "sparsity": 0.5, "after": 4, "window": 3})
    assert why_unpacked(pruned[0]) and all(len(p) == 1 for p in plan_packs(pruned))
    stopped = _variants(stop={"window": 6, "every": 2})      # the packed trainer runs it
    assert why_unpacked(stopped[0]) is None and [len(p) for p in plan_packs(stopped)] == [16]
    sob = _variants(loss={"name": "sobolev", "s": 1.0}, task={"name": "multiscale", "n_points": 64,
                                                               "val": "fresh_noise"})
    assert all(len(p) == 1 for p in plan_packs(sob))


def test_pack_options_are_execution_only_and_validated(tiny_config):
    from pipeline.errors import ConfigError

    path = tiny_config(seeds=[0, 1])
    ids = [v.run_id for v in config.expand(config.load(path))]
    for over in (["pack=off"], ["pack_max=1"], ["pack=auto", "pack_max=7"]):
        cfg = config.load(path, over)
        assert [v.run_id for v in config.expand(cfg)] == ids, over
    assert config.load(path, ["pack=off"]).pack == "off" and config.load(path).pack_max == 32
    for bad in (["pack=maybe"], ["pack_max=0"]):
        with pytest.raises(ConfigError, match="pack"):
            config.load(path, bad)


def test_spread_fills_idle_slots_but_keeps_packs_large():
    from pipeline.training.packing import spread

    vs = _variants(seeds=[0, 1, 2, 3])                      # one architecture: 32 variants
    packs = plan_packs(vs, "auto", 32)
    assert [len(p) for p in packs] == [32]
    assert [len(p) for p in spread(packs, 2)] == [16, 16]
    assert sorted(len(p) for p in spread(packs, 3)) == [8, 8, 16]
    assert [len(p) for p in spread(packs, 64)] == [4] * 8      # never below 4 members
    assert [len(p) for p in spread(packs, 1)] == [32]
    assert sorted(v.run_id for p in spread(packs, 5) for v in p) == sorted(v.run_id for v in vs)


def test_some_layers_over_several_chunk_rows(tmp_path):
    """snapshot.layers names two layers (the snapshot is a column subset of the packed
    parameters) and 70 epochs fill more than one chunk row (64 snapshots) of the store."""
    vs = _variants(seeds=[0], loss="mse", init="kaiming", epochs=70,
                   snapshot={"every": 1, "unit": "epoch", "layers": ["layers.1", "out"]})
    assert len(vs) == 2
    for v in vs:
        run_variant(v, str(tmp_path / "a"))
    run_pack(vs, str(tmp_path / "b"))
    _assert_same_runs(vs, str(tmp_path / "a"), str(tmp_path / "b"))
    run = TrajectoryStore(str(tmp_path / "b")).open_run(vs[0].run_id)
    assert run.n_snapshots == 71 and run.layout.layers == ["layers.1", "out"]


def test_wide_variants_are_not_packed():
    wide = _variants(model={"depth": 1, "width": 512, "activation": "tanh"}, seeds=[0], loss="mse")
    assert "width 512" in why_unpacked(wide[0]) and all(len(p) == 1 for p in plan_packs(wide))
    assert why_unpacked(_variants(model={"depth": 1, "width": 256, "activation": "tanh"})[0]) is None
