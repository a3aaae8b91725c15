"""Freezing converged weights: the motion bound against a float64 reference, nothing frozen
on an unreliable spectrum, frozen weights constant in the stored trajectory (real store)
with the metric matching, the optimizer unable to move them, and one-line config errors."""

import subprocess

import numpy as np
import pytest
import torch

from conftest import kma_cmd
from pipeline import config
from pipeline.workflows.analyze import event_breaks
from pipeline.apps.freeze import Freezer, converged_mask, remaining_motion
from pipeline.errors import ConfigError
from pipeline.storage.layout import Layout
from pipeline.storage.store import TrajectoryStore
from pipeline.training.loop import train
from pipeline.training.losses import build_loss
from pipeline.training.optim import build_optimizer
from pipeline.training.runner import build_parts, run_variant


def test_motion_bound_matches_a_float64_reference():
    """``x_t = x* + v μ^t`` stored as float32: the weights with ``v = 0`` are predicted not
    to move, the others to move ``|v| μ^(W-1) (1 - μ^H)`` (float64, by hand)."""
    rng = np.random.default_rng(2)
    P, W, H, mu = 300, 8, 5, 0.7
    x_star = rng.standard_normal(P)
    v = np.where(np.arange(P) < P // 2, 0.0, rng.standard_normal(P))
    Y = np.stack([x_star + v * mu ** t for t in range(W)]).astype(np.float32)
    motion, info = remaining_motion(Y, H, rank=2)
    assert info["n_certified"] == 2
    ref = np.abs(v) * mu ** (W - 1) * (1 - mu ** H)
    np.testing.assert_allclose(motion, ref, rtol=1e-3, atol=2e-5)
    # the converged half and only it (|v| > 0.05 on the others) is frozen at tol 1e-3
    frozen = converged_mask(motion, Y[-1], Layout.from_named_shapes([("w", (P,))]), 1e-3)
    moving = ref > 1e-2
    assert frozen[: P // 2].all() and not frozen[moving].any()


def test_converged_mask_scales_by_each_tensors_rms():
    layout = Layout.from_named_shapes([("a.weight", (2, 2)), ("b.weight", (4,))])
    x = np.array([3, -4, 3, 4, 0.03, -0.04, 0.03, 0.04])          # RMS 3.5 and 0.035
    motion = np.array([0.03, 0.04, 0.0, 0.035, 0.0003, 0.0004, 0.0, 0.00035])
    np.testing.assert_array_equal(converged_mask(motion, x, layout, 0.01),
                                  [True, False, True, True, True, False, True, True])


@pytest.mark.parametrize("kind", ["iid", "random walk"])
def test_unreliable_spectrum_freezes_nothing(tiny_config, kind):
    """Noise as the window (no certified pair): no weight frozen, no event, the decision
    recorded with its reason, the model untouched."""
    v = config.expand(config.load(tiny_config(
        model={"family": "mlp", "depth": 2, "width": 8, "activation": "tanh"},
        freeze={"after": 8, "window": 8, "every": 4, "tol": 0.5})))[0]
    task, model, layout = build_parts(v)
    opt = build_optimizer("adam", model.parameters(), 0.01)
    before = {k: p.detach().clone() for k, p in model.named_parameters()}
    fr = Freezer(model, opt, layout, v.freeze)
    rng = np.random.default_rng(3)
    steps = rng.standard_normal((16, layout.size))
    Y = steps if kind == "iid" else np.cumsum(steps, axis=0)
    for t, y in enumerate(Y.astype(np.float32)):
        fr.on_snapshot(torch.from_numpy(y), t, t)
    assert [d["snapshot"] for d in fr.decisions] == [8, 12, 16]
    assert all(d["n_new"] == 0 and d["reason"] == "no certified mode" for d in fr.decisions)
    assert not fr.frozen_.any() and fr.frozen_fraction == 0.0 and fr.events == []
    assert all(torch.equal(before[k], p) for k, p in model.named_parameters())


def test_optimizer_cannot_move_frozen_weights(tiny_config):
    """Full-batch SGD with momentum and weight decay (smooth enough for certified modes):
    frozen entries stay bit for bit, their momentum buffers are zero, the others train."""
    v = config.expand(config.load(tiny_config(
        model={"family": "mlp", "depth": 2, "width": 8, "activation": "tanh"},
        epochs=16, freeze={"after": 6, "window": 6, "every": 3, "tol": 0.05})))[0]
    task, model, layout = build_parts(v)
    opt = build_optimizer("sgd", model.parameters(), 0.1, momentum=0.5, weight_decay=0.01)
    fr = Freezer(model, opt, layout, v.freeze)
    snaps = []
    res = train(model, task, build_loss("mse"), opt, epochs=v.epochs, batch_size=64,
                snapshot_every=1, snapshot_unit="epoch", layout=layout,
                sink=lambda flat, epoch, step: snaps.append(flat.numpy().copy()),
                generator=torch.Generator().manual_seed(0), callbacks=[fr])
    assert res.status == "complete" and fr.events, fr.decisions
    Y = np.stack(snaps)
    assert 0 < fr.frozen_fraction < 1 and fr.frozen_fraction == fr.frozen_.mean()
    for s in np.unique(fr.frozen_at_[fr.frozen_]):               # frozen from their freeze on
        cols = fr.frozen_at_ == s
        assert (Y[s - 1:, cols] == Y[s - 1, cols]).all()
    first = fr.events[0]["snapshot"]
    assert (Y[-1, ~fr.frozen_] != Y[first - 1, ~fr.frozen_]).mean() > 0.9   # others train
    for name, m in fr.keep.items():
        buf = opt.state[fr.params[name]]["momentum_buffer"]
        assert (buf[m == 0] == 0).all()


def test_frozen_weights_are_constant_in_the_stored_trajectory(tiny_config, tmp_path):
    """Real run into a real store: the weights constant from each freeze on number exactly
    the frozen fraction the metric reports; events split the analysis windows."""
    v = config.expand(config.load(tiny_config(
        model={"family": "mlp", "depth": 2, "width": 8, "activation": "tanh"},
        optimizer={"name": "sgd", "lr": 0.1, "momentum": 0.5, "weight_decay": 0.01},
        batch_size=64, epochs=16, freeze={"after": 6, "window": 6, "every": 4, "tol": 0.05})))[0]
    out = run_variant(v, str(tmp_path / "s"))
    assert out["status"] == "complete", out["error"]
    run = TrajectoryStore(str(tmp_path / "s")).open_run(v.run_id)
    W = run.weights().compute()                                   # float32, as stored
    events = run.attrs["events"]
    assert events and all(e["kind"] == "freeze" for e in events)
    assert [d["snapshot"] for d in run.attrs["freeze_decisions"]] == [6, 10, 14]
    P = W.shape[1]
    # weights that never change from snapshot s - 1 on, for each event's snapshot s:
    # at least the count frozen by then (a trained weight that happens not to move at all
    # over >= 3 epochs of Adam would be a coincidence), and at the last event exactly it
    for e in events:
        s = e["snapshot"]
        const = int((W[s - 1:] == W[s - 1]).all(axis=0).sum())
        assert const >= round(e["frozen_fraction"] * P)
    last = events[-1]
    assert int((W[last["snapshot"] - 1:] == W[last["snapshot"] - 1]).all(axis=0).sum()) == \
        round(last["frozen_fraction"] * P)
    ff = run.metrics["frozen_fraction"]
    assert ff[-1] == pytest.approx(last["frozen_fraction"]) and ff[0] == 0.0
    assert all(a <= b for a, b in zip(ff, ff[1:]))                # never unfrozen
    assert event_breaks(run.attrs) == tuple(e["snapshot"] for e in events)


def test_freeze_config_errors_are_one_line(tiny_config, tmp_path, kma_env):
    for freeze, msg in [({"after": 6, "window": 8}, "freeze: window"),
                        ({"after": 6, "tol": -1.0}, "freeze.tol"),
                        ({"after": 6, "tolerance": 0.1}, "freeze.tolerance"),
                        ({"window": 6}, "freeze.after")]:
        with pytest.raises(ConfigError, match=msg):
            config.load(tiny_config(freeze=freeze))
    proc = subprocess.run(kma_cmd("sweep", tiny_config(freeze={"after": 6, "every": 0}),
                                  "--store", tmp_path / "s"),
                          capture_output=True, text=True, env=kma_env, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kma: error:") and "freeze.every" in lines[0]
    assert not (tmp_path / "s").exists()
    # absent = off and out of the run id; set, it enters
    plain = config.expand(config.load(tiny_config()))[0]
    frozen = config.expand(config.load(tiny_config(freeze={"after": 6})))[0]
    assert "freeze" not in plain.identity() and frozen.identity()["freeze"] == {"after": 6}
    assert frozen.run_id != plain.run_id
