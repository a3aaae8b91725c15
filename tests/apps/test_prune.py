"""Pruning: the promised sparsity, a mask held fixed while training goes on, pruned
weights zero in the stored trajectory (real store), Koopman end points against a float64
reference, and analysis windows that never straddle the prune."""

import numpy as np
import pytest
import torch

from pipeline import config
from pipeline.workflows.analyze import AnalysisParams, event_breaks, fit_run
from pipeline.apps.prune import Pruner, koopman_endpoint, prunable_ranges, prune_mask
from pipeline.errors import ConfigError
from pipeline.koopman.windows import plan_windows
from pipeline.storage.store import TrajectoryStore
from pipeline.training.loop import train
from pipeline.training.losses import build_loss
from pipeline.training.optim import build_optimizer
from pipeline.training.runner import build_parts, run_variant


def test_mask_prunes_exactly_the_fraction_globally_or_per_layer():
    rng = np.random.default_rng(0)
    scores = rng.random(100)
    ranges = [("a.weight", 0, 40), ("b.weight", 50, 100)]        # 40:50 a bias: kept
    g = prune_mask(scores, ranges, 0.3, "global")
    assert (~g).sum() == 27 and g[40:50].all()
    thresh = np.sort(np.concatenate([scores[:40], scores[50:]]))[27]
    assert (scores[~g] < thresh).all()                          # the 27 smallest
    per = prune_mask(scores, ranges, 0.3, "layer")
    assert (~per[:40]).sum() == 12 and (~per[50:]).sum() == 15 and per[40:50].all()


def test_koopman_end_point_is_the_fixed_point():
    """On ``x_t = x* + v μ^t`` (float32 as stored) the mode of λ ≈ 1 times its amplitude
    is ``x*`` (float64 reference): Koopman pruning ranks by where the weights go,
    magnitude pruning by where they are."""
    rng = np.random.default_rng(1)
    P = 200
    x_star = rng.standard_normal(P)
    v = rng.standard_normal(P) * 3
    Y = np.stack([x_star + v * 0.7 ** t for t in range(8)]).astype(np.float32)
    end, info = koopman_endpoint(Y, rank=2)
    assert abs(complex(*info["eigenvalue"]) - 1) < 1e-4
    np.testing.assert_allclose(end, np.abs(x_star), rtol=1e-3, atol=1e-4)
    ranges = [("w", 0, P)]
    kmp = prune_mask(end, ranges, 0.5)
    assert np.array_equal(kmp, prune_mask(np.abs(x_star), ranges, 0.5))
    assert not np.array_equal(kmp, prune_mask(np.abs(Y[-1]), ranges, 0.5))


def _variant(tiny_config, **prune):
    path = tiny_config(model={"family": "mlp", "depth": 2, "width": 8, "activation": "tanh"},
                       epochs=14, prune={"method": "koopman", "sparsity": 0.6, "after": 6,
                                         "window": 5, **prune})
    return config.expand(config.load(path))[0]


def test_training_goes_on_with_the_mask_fixed_and_optimizer_state_zeroed(tiny_config):
    v = _variant(tiny_config)
    task, model, layout = build_parts(v)
    opt = build_optimizer("adam", model.parameters(), 0.01)
    pruner = Pruner(model, opt, layout, v.prune)
    snaps = []
    res = train(model, task, build_loss("mse"), opt, epochs=v.epochs, batch_size=16,
                snapshot_every=1, snapshot_unit="epoch", layout=layout,
                sink=lambda flat, epoch, step: snaps.append(flat.numpy().copy()),
                generator=torch.Generator().manual_seed(0), callbacks=[pruner])
    assert res.status == "complete" and res.epochs_run == v.epochs
    Y = np.stack(snaps)
    n = sum(b - a for _, a, b in pruner.ranges)
    assert (~pruner.keep_).sum() == round(0.6 * n)
    assert (Y[6:, ~pruner.keep_] == 0).all()                  # zero from the prune on
    assert (Y[6:, pruner.keep_] != 0).mean() > 0.99
    assert not np.array_equal(Y[6], Y[-1])                    # the kept weights still train
    # pruned at the end of epoch 5 (after its snapshot, the 6th): epochs 5.. report it
    assert res.history["sparsity"] == [0.0] * 4 + [pruner.sparsity] * 10
    for name, m in pruner.masks.items():                      # Adam's moments of pruned weights
        state = opt.state[pruner.params[name]]
        assert (state["exp_avg"][m == 0] == 0).all() and (state["exp_avg_sq"][m == 0] == 0).all()
    assert [e["snapshot"] for e in pruner.events] == [6]


@pytest.mark.parametrize("method", ["koopman", "magnitude"])
def test_pruned_weights_are_zero_in_the_stored_trajectory(tiny_config, tmp_path, method):
    v = _variant(tiny_config, method=method, scope="layer")
    out = run_variant(v, str(tmp_path / "s"))
    assert out["status"] == "complete", out["error"]
    run = TrajectoryStore(str(tmp_path / "s")).open_run(v.run_id)
    W = run.weights().compute()                                # float32, as stored
    (event,) = run.attrs["events"]
    assert event["kind"] == "prune" and event["snapshot"] == 6 and event["method"] == method
    for name, a, b in prunable_ranges(run.layout):
        zero = W[6:, a:b] == 0
        k = round(0.6 * (b - a))
        assert (zero.sum(axis=1) >= k).all()                   # the promised sparsity, per layer
        assert (zero == zero[0]).all() and zero[0].sum() >= k  # the same weights, every snapshot
        assert (W[:6, a:b] != 0).mean() > 0.99                 # not before the prune
    assert run.metrics["sparsity"][-1] == pytest.approx(event["sparsity"])
    # the analysis never lets a window straddle the prune
    assert event_breaks(run.attrs) == (6,)
    est = fit_run(run, AnalysisParams(window=4, stride=2, per_layer=False))
    assert est.windows_ and all(b <= 6 or a >= 6 for a, b in est.windows_)
    assert est.windows_[-1][1] == run.n_snapshots


def test_window_plan_splits_at_events():
    assert plan_windows(15, 4, 2, breaks=[6]) == [(0, 4), (2, 6), (6, 10), (8, 12), (10, 14), (11, 15)]
    assert plan_windows(15, "all", breaks=[6, 40]) == [(0, 6), (6, 15)]
    assert plan_windows(15, 7, breaks=[6]) == [(6, 13), (8, 15)]    # [0, 6) holds no window of 7
    assert plan_windows(12, "auto", breaks=[]) == plan_windows(12, "auto")
    with pytest.raises(ValueError, match="every stretch"):
        plan_windows(10, 6, breaks=[5])


def test_bad_prune_configs_name_their_key(tiny_config):
    for prune, msg in [({"method": "koopman", "sparsity": 1.0, "after": 6}, "prune.sparsity"),
                       ({"method": "random", "sparsity": 0.5, "after": 6}, "prune.method"),
                       ({"method": "koopman", "sparsity": 0.5, "after": 4, "window": 5}, "prune: window"),
                       ({"method": "koopman", "sparsity": 0.5}, "prune.after")]:
        with pytest.raises(ConfigError, match=msg):
            config.load(tiny_config(prune=prune))
    with pytest.raises(ConfigError, match="prune and accelerate together"):
        config.load(tiny_config(prune={"method": "koopman", "sparsity": 0.5, "after": 6},
                                accelerate={"window": 5, "every": 5, "horizon": 5}))
    # absent = off and out of the run id; set, it enters
    plain = config.expand(config.load(tiny_config()))[0]
    assert "prune" not in plain.identity() and "accelerate" not in plain.identity()
    assert _variant(tiny_config).run_id != plain.run_id
