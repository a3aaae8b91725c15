"""Koopman acceleration on a convex toy whose Koopman eigenvalues are known, and its
guards: no certified mode → no jump; a jump that raises the loss → weights restored.

Toy: least squares ``(1/n)||A w - b||²`` by full-batch gradient descent (the real
training loop, SGD, one snapshot per step). With ``M = (2/n) AᵀA`` the iteration is
``w_{t+1} - w* = (I - η M)(w_t - w*)``: the trajectory's Koopman eigenvalues are 1 (the
fixed point ``w*``) and ``1 - η μ`` for the eigenvalues ``μ`` of ``M``. ``A`` is built
with three distinct singular values, so the trajectory spans four directions
(``w*`` and one per eigenspace; from a generic start — from ``w_0 = 0`` it would span
three, where no linear map fits the affine iteration).
"""

import numpy as np
import pytest
import torch
from torch import nn

from pipeline.apps.accelerate import Accelerator, batch_loss, koopman_jump
from pipeline.config import RELIABLE_RESIDUAL, AccelerateConfig
from pipeline.koopman import KoopmanDMD
from pipeline.storage.layout import Layout
from pipeline.training.loop import train
from pipeline.training.tasks import TaskData

P, N, LR = 30, 60, 0.05
RATES = np.array([0.5, 0.9, 0.98])          # 1 - η μ: the known eigenvalues besides 1


def _toy():
    rng = np.random.default_rng(0)
    U, _ = np.linalg.qr(rng.standard_normal((N, P)))
    V, _ = np.linalg.qr(rng.standard_normal((P, P)))
    mu = np.repeat((1 - RATES) / LR, [10, 10, 10])            # eigenvalues of M
    A = U @ np.diag(np.sqrt(mu * N / 2)) @ V.T                # (2/n) AᵀA = V diag(mu) Vᵀ
    b = rng.standard_normal(N)
    A32, b32 = A.astype(np.float32), b.astype(np.float32)
    w_star = np.linalg.lstsq(A32.astype(np.float64), b32.astype(np.float64), rcond=None)[0]
    M = (2 / N) * A32.astype(np.float64).T @ A32.astype(np.float64)
    task = TaskData(torch.from_numpy(A32), torch.from_numpy(b32[:, None]), torch.from_numpy(A32),
                    torch.from_numpy(b32[:, None]), "regression", P, 1)
    return task, w_star, M


def _run(task, steps, hooks_for=None):
    """GD on the toy; returns the snapshots (float32, as a store keeps them) and the hooks."""
    model = nn.Linear(P, 1, bias=False)
    with torch.no_grad():      # a generic start: w_0 - w* has a part in every eigenspace
        model.weight.copy_(torch.from_numpy(np.random.default_rng(2).standard_normal((1, P)).astype(np.float32)))
    layout = Layout.from_named_shapes((n, p.shape) for n, p in model.named_parameters())
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    loss = nn.MSELoss()
    hooks = hooks_for(model, opt, layout, loss) if hooks_for else []
    snaps = []
    res = train(model, task, loss, opt, epochs=steps, batch_size=N, snapshot_every=1,
                snapshot_unit="step", layout=layout,
                sink=lambda flat, epoch, step: snaps.append(flat.numpy().copy()),
                generator=torch.Generator().manual_seed(0), callbacks=hooks)
    assert res.status == "complete"
    return np.stack(snaps), hooks


def _steps_to(Y, w_star, tol=1e-3):
    err = np.linalg.norm(Y.astype(np.float64) - w_star, axis=1) / np.linalg.norm(w_star)
    hit = np.flatnonzero(err <= tol)
    return int(hit[0]) if hit.size else None


def test_window_spectrum_is_the_known_one():
    task, w_star, M = _toy()
    Y, _ = _run(task, 12)
    delta, info = koopman_jump(Y[1:11], horizon=50, rank=4)
    # float64 reference: 1 and 1 - η eig(M) of the float32 problem
    known = np.sort(np.concatenate([[1.0], np.unique(np.round(1 - LR * np.linalg.eigvalsh(M), 6))]))
    res = KoopmanDMD(rank=4).fit(Y[1:11]).results_[0]
    assert res.reliable(RELIABLE_RESIDUAL).all()
    np.testing.assert_allclose(np.sort(res.eigenvalues.real), known, atol=1e-4)
    np.testing.assert_allclose(res.eigenvalues.imag, 0, atol=1e-6)
    # the jump uses the certified non-growing ones: the three rates (and 1 when |λ| <= 1)
    used = np.sort(np.array([complex(*z) for z in info["eigenvalues"]]).real)
    assert info["n_certified"] in (3, 4)
    np.testing.assert_allclose(used[:3], known[:3], atol=1e-4)
    # the jump lands near the point gradient descent reaches 50 steps later
    Y60, _ = _run(task, 60)
    ahead = Y[10].astype(np.float64) + delta
    assert np.linalg.norm(ahead - Y60[60]) < 1e-3 * np.linalg.norm(Y60[60] - Y[10])


def test_acceleration_reaches_the_optimum_in_fewer_steps():
    task, w_star, _ = _toy()
    plain, _ = _run(task, 400)
    cfg = AccelerateConfig(window=10, every=10, horizon=200, rank=4)
    fast, (acc,) = _run(task, 400, lambda m, o, lay, loss: [
        Accelerator(m, o, lay, cfg, batch_loss(m, loss, task.x_train, task.y_train))])
    n_plain, n_fast = _steps_to(plain, w_star), _steps_to(fast, w_star)
    assert n_plain is not None and n_fast is not None
    assert n_fast < n_plain / 2, (n_fast, n_plain)
    assert acc.events and all(e["loss_after"] < e["loss_before"] for e in acc.events)
    assert np.isfinite(fast).all()
    # each jump is an event at the first snapshot after it
    assert [e["snapshot"] for e in acc.events] == [a["snapshot"] for a in acc.log if a["outcome"] == "jump"]


def test_noise_trajectory_gives_no_jump_and_untouched_weights():
    rng = np.random.default_rng(1)
    Y = rng.standard_normal((10, 50)).astype(np.float32)
    delta, info = koopman_jump(Y, horizon=100)
    assert delta is None and info["n_certified"] == 0
    # the callback on the same noise: skipped every time, weights bit for bit as set
    model = nn.Linear(50, 1, bias=False)
    layout = Layout.from_named_shapes((n, p.shape) for n, p in model.named_parameters())
    acc = Accelerator(model, torch.optim.SGD(model.parameters(), lr=0.1), layout,
                      AccelerateConfig(window=5, every=1, horizon=100), lambda: 0.0)
    for t, y in enumerate(Y):
        with torch.no_grad():
            model.weight.copy_(torch.from_numpy(y)[None])
        acc.on_snapshot(torch.from_numpy(y), 0, t)
        assert np.array_equal(model.weight.detach().numpy()[0], y)
    assert not acc.events and [a["outcome"] for a in acc.log] == ["skipped"] * 6


def test_a_jump_that_raises_the_loss_is_undone_exactly():
    """The check says every jump makes things worse: all are rejected and training is
    bit-for-bit plain gradient descent (weights and optimizer untouched)."""
    task, _, _ = _toy()
    plain, _ = _run(task, 60)
    cfg = AccelerateConfig(window=10, every=10, horizon=200, rank=4)
    worse = iter(range(10**6))                       # a rising "loss": after > before always
    guarded, (acc,) = _run(task, 60, lambda m, o, lay, loss: [
        Accelerator(m, o, lay, cfg, lambda: float(next(worse)))])
    assert acc.log and all(a["outcome"] == "rejected" for a in acc.log)
    assert not acc.events
    assert np.array_equal(guarded, plain)


@pytest.mark.parametrize("state", ["keep", "reset"])
def test_optimizer_state_kept_or_reset(state):
    """An accepted jump keeps the optimizer's moments (``keep``) or clears them so the
    optimizer starts afresh from the jumped weights (``reset``)."""
    task, w_star, _ = _toy()
    Y, _ = _run(task, 12)
    model = nn.Linear(P, 1, bias=False)
    layout = Layout.from_named_shapes((n, p.shape) for n, p in model.named_parameters())
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(task.x_train).sum().backward()
    opt.step()                                              # Adam state: step, exp_avg, exp_avg_sq
    before = {k: v.clone() for k, v in opt.state[model.weight].items()}
    acc = Accelerator(model, opt, layout, AccelerateConfig(window=10, every=10, horizon=200, rank=4,
                                                           optimizer_state=state),
                      batch_loss(model, nn.MSELoss(), task.x_train, task.y_train))
    for t, y in enumerate(Y[1:11]):
        with torch.no_grad():
            model.weight.copy_(torch.from_numpy(y)[None])
        acc.on_snapshot(torch.from_numpy(y), 0, t)
    assert [a["outcome"] for a in acc.log] == ["jump"] and len(acc.events) == 1
    jumped = model.weight.detach().numpy()[0].astype(np.float64)
    assert np.linalg.norm(jumped - w_star) < 0.05 * np.linalg.norm(Y[10] - w_star)
    if state == "reset":
        assert len(opt.state) == 0
    else:
        assert all(torch.equal(opt.state[model.weight][k], v) for k, v in before.items())
