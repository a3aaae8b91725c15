"""The on_bad_init policy in the task body (no Ray): restart keeps both attempts linked
and a re-run trains nothing; stop stops; continue only records; run ids hold."""

import numpy as np
import pytest

from pipeline import config
from pipeline.errors import ConfigError
from pipeline.storage.store import TrajectoryStore
from pipeline.training.restart import attempt_ids, init_seed, variant_done
from pipeline.training.runner import run_variant

from conftest import TINY

BASE = {**TINY, "model": {**TINY["model"], "depth": 2}, "epochs": 10}


def _variant(init="zeros", **policy):
    data = {**BASE, "init": init}
    if policy:
        data["on_bad_init"] = policy
    return config.expand(config.validate(data))[0]


def test_restart_keeps_both_attempts_linked_and_a_rerun_trains_nothing(tmp_path):
    v = _variant(action="restart", max_restarts=2, fallback_init="kaiming", after=5)
    url = str(tmp_path / "s")
    out = run_variant(v, url)
    root, r1 = v.run_id, v.run_id + "-r1"
    assert [a["run_id"] for a in out["attempts"]] == [root, r1]
    assert [a["status"] for a in out["attempts"]] == ["bad_init", "complete"]
    st = TrajectoryStore(url)
    first, second = st.open_run(root), st.open_run(r1)
    # attempt 0 stopped at its verdict, after 5 snapshots (epoch 4 of 10)
    assert first.status == "bad_init" and first.n_snapshots == 5 and first.attrs["epochs_run"] == 4
    assert first.attrs["restarted_as"] == r1 and first.attrs["bad_init_action"] == "restarted"
    assert first.attrs["bad_init_verdict"]["bad_init"] and first.attrs["bad_init_at"]["epoch"] == 4
    # attempt 1: the fallback init, a fresh seed, the whole budget, linked back
    assert second.status == "complete" and second.n_snapshots == v.epochs + 1
    assert second.attrs["restart_of"] == root and second.attrs["variant_run_id"] == root
    assert second.config["init"] == "kaiming" and second.config["attempt"] == 1
    assert second.attrs["bad_init_verdict"]["bad_init"] is False and second.attrs["bad_init_action"] == "none"
    assert not np.allclose(second.weights().compute()[0], 0.0)
    assert init_seed(config.Variant.model_validate(second.config)) != v.torch_seed
    assert attempt_ids(st, root) == [root, r1] and variant_done(st, root)
    assert {i.run_id: i.restart_of for i in st.runs()} == {root: None, r1: root}

    finished = {rid: st.open_run(rid).attrs["finished"] for rid in (root, r1)}
    again = run_variant(v, url)
    assert [(a["run_id"], a["status"], a["seconds"]) for a in again["attempts"]] == [
        (root, "bad_init", 0.0), (r1, "complete", 0.0)]
    assert {rid: st.open_run(rid).attrs["finished"] for rid in (root, r1)} == finished


def test_an_interrupted_chain_resumes_at_its_unfinished_attempt(tmp_path):
    v = _variant(action="restart", max_restarts=1, fallback_init="xavier", after=4)
    url = str(tmp_path / "s")
    run_variant(v, url)
    st = TrajectoryStore(url)
    r1 = v.run_id + "-r1"
    st.delete_run(r1)                       # the task died before the restart finished
    assert not variant_done(st, v.run_id)
    finished = st.open_run(v.run_id).attrs["finished"]
    out = run_variant(v, url)
    assert [a["status"] for a in out["attempts"]] == ["bad_init", "complete"]
    assert st.open_run(v.run_id).attrs["finished"] == finished   # attempt 0 not retrained
    assert st.open_run(r1).status == "complete" and variant_done(st, v.run_id)


def test_stop_stops_and_continue_only_records(tmp_path):
    stop = _variant(action="stop", after=4)
    out = run_variant(stop, str(tmp_path / "a"))
    run = TrajectoryStore(str(tmp_path / "a")).open_run(stop.run_id)
    assert out["status"] == "bad_init" and [a["run_id"] for a in out["attempts"]] == [stop.run_id]
    assert run.status == "bad_init" and run.n_snapshots == 4 and run.attrs["stopped_early"]
    assert run.attrs["bad_init_action"] == "stopped" and "restarted_as" not in run.attrs
    assert TrajectoryStore(str(tmp_path / "a")).run_ids() == [stop.run_id]

    cont = _variant(action="continue", after=4)
    out = run_variant(cont, str(tmp_path / "b"))
    run = TrajectoryStore(str(tmp_path / "b")).open_run(cont.run_id)
    assert out["status"] == "complete" and run.n_snapshots == cont.epochs + 1
    assert run.attrs["bad_init_verdict"]["bad_init"] and run.attrs["bad_init_action"] == "continued"

    good = _variant(init="kaiming", action="stop", after=4)
    out = run_variant(good, str(tmp_path / "c"))
    assert out["status"] == "complete" and out["n_snapshots"] == good.epochs + 1


def test_rule_v2_judges_with_the_second_version(tmp_path):
    """``rule: v2``: the second detector (gain and lr-normalised motion) in the task; a
    zero start whose hidden layers never move is bad, a small-variance start that grows
    out of the origin is not (the first version flags it: growth)."""
    from pipeline.apps import badinit

    zeros = _variant(action="restart", rule="v2", fallback_init="kaiming", after=6)
    out = run_variant(zeros, str(tmp_path / "a"))
    st = TrajectoryStore(str(tmp_path / "a"))
    first = st.open_run(zeros.run_id)
    assert [a["status"] for a in out["attempts"]] == ["bad_init", "complete"]
    verdict = first.attrs["bad_init_verdict"]
    assert verdict["bad_init_version"] == 2 and verdict["bad_init_reasons"] == ["small gain, not escaping"]
    # the task's verdict is detect_run_v2's on the stored first snapshots
    assert badinit.detect_run_v2(first, 6)["bad_init"] is True
    small_v2 = _variant(init="small_variance", action="stop", rule="v2", after=6)
    small_v1 = _variant(init="small_variance", action="stop", rule="v1", after=6)
    assert run_variant(small_v2, str(tmp_path / "b"))["status"] == "complete"
    assert run_variant(small_v1, str(tmp_path / "c"))["status"] == "bad_init"
    assert small_v2.run_id != small_v1.run_id and small_v1.on_bad_init.rule == "v1"
    assert "rule" not in small_v1.identity()["on_bad_init"]


def test_rule_v3_judges_with_the_loss_at_the_end_of_the_kth_epoch(tmp_path):
    """The default rule (v3): the detector reads the training losses of the epochs the K
    snapshots span (at the end of the K-th snapshot's epoch) against the task's chance level
    (the targets' variance for MSE, recorded as ``chance_loss``); a zero start whose loss
    sits at chance stops there, a kaiming restart trains on, and the stored run's verdict
    (``detect_run_v3``) agrees with the task's."""
    from pipeline.apps import badinit_loss
    from pipeline.training.restart import variant_chance

    zeros = _variant(action="restart", fallback_init="kaiming", after=5)
    assert zeros.on_bad_init.rule == "v3"
    out = run_variant(zeros, str(tmp_path / "a"))
    st = TrajectoryStore(str(tmp_path / "a"))
    first, second = st.open_run(zeros.run_id), st.open_run(zeros.run_id + "-r1")
    assert [a["status"] for a in out["attempts"]] == ["bad_init", "complete"]
    v = first.attrs["bad_init_verdict"]
    assert v["bad_init_version"] == 3 and v["bad_init_basis"] == "loss" and "at chance" in v["bad_init_reasons"]
    assert v["loss_features"]["n"] == 4 and first.attrs["bad_init_at"]["epoch"] == 4
    assert first.n_snapshots == 5 and first.attrs["epochs_run"] == 4
    chance = variant_chance(zeros)
    assert first.attrs["chance_loss"] == pytest.approx(chance) and v["loss_features"]["chance"] == pytest.approx(chance)
    assert v["loss_features"]["last"] == pytest.approx(first.metrics["train_loss"][3])
    assert second.attrs["bad_init_verdict"]["bad_init"] is False
    offline = badinit_loss.detect_run_v3(first, 5)
    assert offline["bad_init"] is True and offline["bad_init_reasons"] == v["bad_init_reasons"]
    assert offline["loss_features"] == v["loss_features"]


def test_policy_enters_the_run_id_only_when_set():
    plain = _variant()
    assert plain.on_bad_init is None and "on_bad_init" not in plain.identity()
    assert "attempt" not in plain.identity()
    with_policy = _variant(action="stop")
    assert with_policy.run_id != plain.run_id
    with pytest.raises(ConfigError, match="on_bad_init.fallback_init: unknown name 'nope'"):
        _variant(action="restart", fallback_init="nope")
    with pytest.raises(ConfigError, match="on_bad_init.after"):
        _variant(action="restart", after=2)
    with pytest.raises(ConfigError, match=r"on_bad_init.after: 12 snapshots, but a run takes only 11"):
        _variant(action="stop", after=12)
