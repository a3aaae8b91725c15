"""Per-layer, per-step Koopman acceleration (``accelerate: {scope: layer}``; Dogra &
Redman, NeurIPS 2020): the extrapolation against a dense float64 reference on a
synthetic trajectory whose layers follow known affine maps, the certified horizon
choice, and the config's identity rule (old settings keep old run ids)."""

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from torch import nn

from pipeline.apps.accelerate import (LayerAccelerator, batch_loss, candidate_horizons, jump_bound,
                                      layer_fits, layer_jump)
from pipeline.config import AccelerateConfig
from pipeline.config.sweep import identity
from pipeline.storage.layout import Layout
from pipeline.training.loop import train
from pipeline.training.tasks import TaskData

EIGS = [(0.95, 0.8, 0.5, -0.3), (0.9, 0.6, 0.2)]   # per layer: the map's eigenvalues


def _map(rng, eigs):
    p = len(eigs)
    S = rng.standard_normal((p, p)) + 3 * np.eye(p)
    return S @ np.diag(eigs) @ np.linalg.inv(S), rng.standard_normal(p)


def _trajectory(W=14):
    """Two layers (sizes 4 and 3), ``x_{t+1} = A_l x_t + c_l`` each; float32 as stored."""
    rng = np.random.default_rng(0)
    maps = [_map(rng, e) for e in EIGS]
    x = [rng.standard_normal(len(e)) * 3 for e in EIGS]
    snaps = []
    for _ in range(W):
        snaps.append(np.concatenate(x))
        x = [A @ xi + c for (A, c), xi in zip(maps, x)]
    ranges = [("a", 0, 4), ("b", 4, 7)]
    return np.asarray(snaps, np.float32), ranges, maps


@pytest.mark.parametrize("H", [1, 7, 200])
def test_layer_jump_matches_dense_float64_reference(H):
    Y, ranges, maps = _trajectory()
    fits = layer_fits(Y, ranges, rank=4)
    delta = layer_jump(fits, H, Y.shape[1])
    Y64 = Y.astype(np.float64)
    for l, ((_, a, b), (A_true, c)) in enumerate(zip(ranges, maps)):
        D = np.diff(Y64[:, a:b], axis=0)                      # updates of the stored weights
        A = D[1:].T @ np.linalg.pinv(D[:-1].T)                # dense least-squares operator
        ref, d = np.zeros(b - a), D[-1]
        for _h in range(H):                                   # x_{T+H} - x_T = Σ_h A^h d_T
            d = A @ d
            ref += d
        np.testing.assert_allclose(delta[a:b], ref, rtol=1e-6, atol=1e-6 * np.abs(ref).max())
        # and the true map's future from the stored last point (float32 rounding only)
        x = Y64[-1, a:b]
        for _ in range(H):
            x = A_true @ x + c
        np.testing.assert_allclose(Y64[-1, a:b] + delta[a:b], x, atol=2e-5 * np.abs(x).max())
        fit = next(f for f in fits if f["start"] == a)
        np.testing.assert_allclose(np.sort(fit["eigenvalues"].real), np.sort(EIGS[l]),
                                   atol=1e-4)


def test_growing_mode_is_held_and_bound_grows_with_horizon():
    rng = np.random.default_rng(1)
    A, c = _map(rng, (1.05, 0.5, 0.3))
    x, snaps = rng.standard_normal(3), []
    for _ in range(12):
        snaps.append(x.copy())
        x = A @ x + c
    Y = np.asarray(snaps, np.float32)
    fits = layer_fits(Y, [("a", 0, 3)], rank=3)
    assert np.abs(fits[0]["eigenvalues"]).max() > 1.0
    delta = layer_jump(fits, 1000, 3)
    assert np.isfinite(delta).all() and np.abs(delta).max() < 1e3     # 1.05^1000 never used
    # noisy data: the bound is positive and does not shrink as the horizon grows
    Yn = Y + np.random.default_rng(2).standard_normal(Y.shape).astype(np.float32) * 1e-3
    fn = layer_fits(Yn, [("a", 0, 3)], rank=2)
    bounds = [jump_bound(fn, h) for h in (1, 4, 16, 64)]
    assert bounds[0] > 0 and all(b2 >= b1 for b1, b2 in zip(bounds, bounds[1:]))
    assert candidate_horizons(100) == [100, 50, 25, 12, 6, 3, 1]


def test_old_settings_keep_their_identity_and_layer_options_enter_it():
    old = AccelerateConfig(window=8, every=8, horizon=8)
    assert identity(old) == {"window": 8, "every": 8, "horizon": 8}
    new = AccelerateConfig(window=20, every=20, horizon=400, scope="layer", horizon_rule="certified")
    assert identity(new)["scope"] == "layer" and identity(new)["horizon_rule"] == "certified"
    with pytest.raises(ValidationError, match="scope: layer"):
        AccelerateConfig(window=8, every=8, horizon=8, horizon_rule="certified")


def test_certified_layer_acceleration_in_the_training_loop():
    """Full-batch GD on least squares (an affine map per step): per-layer jumps with the
    certified horizon reach the optimum in far fewer steps, every jump lowering the loss."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((64, 8)).astype(np.float32)
    yv = (X @ rng.standard_normal(8)).astype(np.float32)[:, None]
    task = TaskData(torch.from_numpy(X), torch.from_numpy(yv), torch.from_numpy(X), torch.from_numpy(yv),
                    "regression", 8, 1)
    w_star = np.linalg.lstsq(X.astype(np.float64), yv[:, 0].astype(np.float64), rcond=None)[0]

    def run(cfg):
        torch.manual_seed(0)
        model = nn.Linear(8, 1, bias=False)
        layout = Layout.from_named_shapes((n, p.shape) for n, p in model.named_parameters())
        opt = torch.optim.SGD(model.parameters(), lr=0.02)
        loss = nn.MSELoss()
        hooks = [LayerAccelerator(model, opt, layout, cfg, batch_loss(model, loss, task.x_val, task.y_val))] if cfg else []
        snaps = []
        train(model, task, loss, opt, epochs=300, batch_size=64, snapshot_every=1, snapshot_unit="step",
              layout=layout, sink=lambda f, epoch, step: snaps.append(f.numpy().copy()),
              generator=torch.Generator().manual_seed(0), callbacks=hooks)
        err = np.linalg.norm(np.asarray(snaps, np.float64) - w_star, axis=1) / np.linalg.norm(w_star)
        hit = np.flatnonzero(err <= 1e-3)
        return (int(hit[0]) if hit.size else None), hooks

    n_plain, _ = run(None)
    n_fast, (acc,) = run(AccelerateConfig(window=12, every=12, horizon=512, scope="layer",
                                          horizon_rule="certified", bound_tol=0.01))
    assert n_plain is not None and n_fast is not None and n_fast < n_plain / 2, (n_fast, n_plain)
    assert acc.events and all(e["loss_after"] < e["loss_before"] for e in acc.events)
    assert acc.seconds > 0
