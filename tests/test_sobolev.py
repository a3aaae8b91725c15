"""The H^-s loss against its definition (a dense float64 DFT computed here), its
gradients against finite differences, its documented invariances; the clean-error
metrics; the fresh-noise validation; full-batch grid-order training with it."""

import math

import numpy as np
import pytest
import torch

from pipeline.errors import ConfigError
from pipeline.storage.layout import Layout
from pipeline.training.losses import build_loss, build_loss_spec
from pipeline.training.loop import train
from pipeline.training.models import build_model
from pipeline.training.sobolev import (
    SobolevLoss, band_errors, clean_errors, hminus_loss, task_callbacks)
from pipeline.training.tasks import build_task


def _reference(r: np.ndarray, s: float) -> float:
    """(1/n²) Σ_k ŵ_k |r̂_k|² over all n DFT bins, ŵ = w / mean(w), w_k = (1 + k²)^-s with
    k the signed frequency (|k| ≤ n/2), by a dense DFT matrix in float64."""
    r = np.asarray(r, dtype=np.float64)
    n = r.shape[0]
    j = np.arange(n)
    F = np.exp(-2j * np.pi * np.outer(j, j) / n)
    k = np.minimum(j, n - j).astype(np.float64)
    w = (1 + k**2) ** (-s)
    w = w / w.mean()
    power = np.abs(F @ r.reshape(n, -1)) ** 2
    return float((w[:, None] * power).sum(0).mean() / n**2)


def _f32(a) -> torch.Tensor:
    return torch.as_tensor(np.asarray(a, dtype=np.float32))


@pytest.mark.parametrize("n", [32, 33])
@pytest.mark.parametrize("s", [0.0, 0.5, 1.0, 2.0])
def test_matches_the_dense_definition(n, s):
    rng = np.random.default_rng(1)
    pred, target = rng.standard_normal((n, 2)).astype(np.float32), rng.standard_normal((n, 2)).astype(np.float32)
    got = float(hminus_loss(_f32(pred), _f32(target), s))
    ref = _reference(pred.astype(np.float64) - target.astype(np.float64), s)
    assert got == pytest.approx(ref, rel=1e-5)


@pytest.mark.parametrize("n", [64, 65])
@pytest.mark.parametrize("k", [1, 3, 10, 20])
def test_a_sinusoid_costs_its_normalised_weight_times_its_mse(n, k):
    s = 1.5
    x = np.arange(n) / n
    r = (0.7 * np.sin(2 * np.pi * k * x + 0.3)).astype(np.float32)
    kk = np.minimum(np.arange(n), n - np.arange(n))
    w = (1.0 + kk**2) ** (-s)
    expect = (1 + k**2) ** (-s) / w.mean() * float(np.mean(r.astype(np.float64) ** 2))
    got = float(hminus_loss(_f32(r), torch.zeros(n), s))
    assert got == pytest.approx(expect, rel=1e-5)
    # the lowest frequency costs more than under MSE, a high one far less
    mse = float(np.mean(r.astype(np.float64) ** 2))
    assert got > mse if k == 1 else (got < 0.01 * mse if k == 20 else True)


def test_s_zero_is_mse_and_a_flat_spectrum_is_its_mse_for_any_s():
    rng = np.random.default_rng(2)
    r = rng.standard_normal(50).astype(np.float32)
    mse = float(np.mean(r.astype(np.float64) ** 2))
    assert float(hminus_loss(_f32(r), torch.zeros(50), 0.0)) == pytest.approx(mse, rel=1e-6)
    impulse = np.zeros(50, dtype=np.float32)
    impulse[7] = 3.0  # |r̂_k| = 3 at every k
    for s in (0.5, 1.0, 3.0):
        assert float(hminus_loss(_f32(impulse), torch.zeros(50), s)) == pytest.approx(9.0 / 50, rel=1e-6)
    # white noise: its MSE in expectation (mean over many draws)
    noise = rng.standard_normal((256, 400)).astype(np.float32)
    vals = hminus_loss(_f32(noise), torch.zeros(256, 400), 1.0)
    assert float(vals) == pytest.approx(float(np.mean(noise.astype(np.float64) ** 2)), rel=0.05)


def test_invariances():
    rng = np.random.default_rng(3)
    r = torch.as_tensor(rng.standard_normal(40), dtype=torch.float64)
    z = torch.zeros(40, dtype=torch.float64)
    base = float(hminus_loss(r, z, 1.0))
    assert float(hminus_loss(torch.roll(r, 11), z, 1.0)) == pytest.approx(base, rel=1e-12)   # shift
    reflected = r[(-torch.arange(40)) % 40]
    assert float(hminus_loss(reflected, z, 1.0)) == pytest.approx(base, rel=1e-12)           # reflection
    assert float(hminus_loss(-r, z, 1.0)) == pytest.approx(base, rel=1e-12)                  # sign
    assert float(hminus_loss(2.5 * r, z, 1.0)) == pytest.approx(6.25 * base, rel=1e-12)      # quadratic
    # only the residual counts: adding the same signal to prediction and target changes nothing
    sig = torch.sin(torch.arange(40, dtype=torch.float64))
    assert float(hminus_loss(r + sig, sig, 1.0)) == pytest.approx(base, rel=1e-12)
    # not the resolution: the same sinusoid costs more on a finer grid (documented)
    coarse, fine = (torch.sin(2 * math.pi * 2 * torch.arange(n, dtype=torch.float64) / n) for n in (32, 128))
    assert float(hminus_loss(fine, 0 * fine, 1.0)) > 3 * float(hminus_loss(coarse, 0 * coarse, 1.0))


def test_gradients_match_finite_differences():
    rng = np.random.default_rng(4)
    for n in (16, 17):
        pred = torch.tensor(rng.standard_normal((n, 2)), dtype=torch.float64, requires_grad=True)
        target = torch.tensor(rng.standard_normal((n, 2)), dtype=torch.float64)
        for loss in (SobolevLoss(1.0), SobolevLoss(2.0, mse_weight=0.3), SobolevLoss(0.5, mse_weight=1.0)):
            assert torch.autograd.gradcheck(lambda p: loss(p, target), (pred,), eps=1e-6, atol=1e-8)


def test_blend_and_registry():
    rng = np.random.default_rng(5)
    p, t = (torch.tensor(rng.standard_normal((24, 1))) for _ in range(2))
    mse = float((p - t).pow(2).mean())
    h = float(hminus_loss(p, t, 2.0))
    assert float(SobolevLoss(2.0, 0.25)(p, t)) == pytest.approx(0.25 * mse + 0.75 * h, rel=1e-12)
    assert float(build_loss("sobolev", s=2.0, mse_weight=0.25)(p, t)) == pytest.approx(0.25 * mse + 0.75 * h)
    from pipeline.config import SobolevLossSpec

    assert float(build_loss_spec(SobolevLossSpec(name="sobolev", s=2.0))(p, t)) == pytest.approx(h)
    for bad in ({"s": -1.0}, {"s": 1.0, "mse_weight": 1.5}):
        with pytest.raises(ConfigError):
            build_loss("sobolev", **bad)


def test_clean_errors_per_frequency():
    n = 128
    x = torch.arange(n, dtype=torch.float64).unsqueeze(1) / n
    clean = torch.sin(2 * math.pi * x) + 0.5 * torch.sin(2 * math.pi * 4 * x) + 0.25 * torch.sin(2 * math.pi * 16 * x)
    # the f=4 component off by 0.1 in amplitude and a shift in phase; f=16 missing; f=1 exact
    pred = torch.sin(2 * math.pi * x) + 0.4 * torch.sin(2 * math.pi * 4 * x + 0.2)
    got = clean_errors(pred.float(), clean.float(), x.float(), [1.0, 4.0, 16.0])
    err4 = abs(0.4 * np.exp(0.2j) - 0.5) / 0.5
    assert got["clean_error_f1"] == pytest.approx(0.0, abs=1e-6)
    assert got["clean_error_f4"] == pytest.approx(err4, rel=1e-5)
    assert got["clean_error_f16"] == pytest.approx(1.0, rel=1e-5)
    ref = float(np.linalg.norm((pred - clean).numpy()) / np.linalg.norm(clean.numpy()))
    assert got["clean_error"] == pytest.approx(ref, rel=1e-5)


def test_fresh_noise_keeps_the_grid_and_redraws_the_noise():
    kw = dict(n_points=64, frequencies=[1.0, 4.0], amplitudes=[1.0, 0.5], noise=2.0)
    t = build_task("multiscale", seed=3, val="fresh_noise", **kw)
    assert torch.equal(t.x_train, t.grid) and torch.equal(t.x_val, t.grid)   # whole grid, in order
    n_tr, n_va = t.y_train - t.clean, t.y_val - t.clean
    assert 1.5 < float(n_tr.std()) < 2.5 and 1.5 < float(n_va.std()) < 2.5
    assert abs(float(np.corrcoef(n_tr.ravel(), n_va.ravel())[0, 1])) < 0.3     # independent draws
    split = build_task("multiscale", seed=3, **kw)                             # the default: today's split
    assert split.n_train == 51 and split.n_val == 13
    assert torch.equal(split.y_val, split.clean[((split.x_val * 64).round().long()).ravel()])


class _Recording(SobolevLoss):
    """The real loss, keeping the inputs of every call (to see what the loop feeds it)."""

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.seen = []

    def forward(self, pred, target):
        self.seen.append(target.detach().clone())
        return super().forward(pred, target)


def test_training_steps_full_batch_in_grid_order_and_logs_clean_error():
    torch.manual_seed(0)
    task = build_task("multiscale", seed=0, n_points=32, frequencies=[1.0, 3.0], amplitudes=[1.0, 0.5],
                      noise=1.0, val="fresh_noise")
    model = build_model("mlp", 1, 1, 2, 8, "tanh")
    layout = Layout.from_named_shapes((k, p.shape) for k, p in model.named_parameters())
    loss = _Recording(1.0)
    res = train(model, task, loss, torch.optim.Adam(model.parameters(), lr=1e-2), epochs=4, batch_size=32,
                snapshot_every=1, snapshot_unit="epoch", layout=layout, sink=lambda *a, **k: None,
                generator=torch.Generator().manual_seed(1), callbacks=task_callbacks(model, task))
    assert res.status == "complete" and res.steps == 4                       # one step per epoch
    train_calls = [y for y in loss.seen if torch.equal(y, task.y_train)]
    assert len(train_calls) == 4                                             # whole grid, grid order
    for key in ("clean_error", "clean_error_f1", "clean_error_f3"):
        assert len(res.history[key]) == 4
    # the last logged clean error is the model's, on the grid, against the clean target
    with torch.no_grad():
        pred = model(task.grid)
    ref = float(np.linalg.norm((pred - task.clean).numpy()) / np.linalg.norm(task.clean.numpy()))
    assert res.history["clean_error"][-1] == pytest.approx(ref, rel=1e-5)


def test_band_errors_match_a_dense_dft_and_split_in_band_from_fitted_noise():
    from pipeline.training.sobolev import band_errors
    n = 256
    x = torch.arange(n, dtype=torch.float64) / n
    clean = torch.sin(2 * torch.pi * 3 * x) + 0.5 * torch.cos(2 * torch.pi * 20 * x + 0.3)
    # error: 10% of the f=3 component (in phase), none at 20, noise of std 0.1 at f=60
    err = 0.1 * torch.sin(2 * torch.pi * 3 * x) + 0.1 * 2 ** 0.5 * torch.sin(2 * torch.pi * 60 * x)
    pred = (clean + err).float()                       # float32 in, float64 inside
    got = band_errors(pred, clean.float(), [0, 10, 40, n // 2 + 1])
    # dense float64 reference: the DFT as a matrix
    j = torch.arange(n, dtype=torch.float64)
    F = torch.exp(-2j * torch.pi * torch.outer(j, j) / n)
    E, C = F @ (pred.double() - clean).to(F.dtype), F @ clean.to(F.dtype)
    kk = torch.minimum(j, n - j)                       # |k| of each full-FFT bin
    def rel(lo, hi, whole=False):
        b = (kk >= lo) & (kk < hi)
        den = C.abs().pow(2).sum() if whole else C[b].abs().pow(2).sum()
        return float((E[b].abs().pow(2).sum() / den).sqrt())
    assert got[0] == pytest.approx(rel(0, 10), rel=1e-5)
    assert got[0] == pytest.approx(0.1, rel=1e-4)      # 10% of the f=3 component
    assert got[1] == pytest.approx(0.0, abs=1e-6)      # nothing wrong at 20
    # band 40..128 has no clean power: error relative to the whole clean norm
    assert got[2] == pytest.approx(rel(40, n // 2 + 1, whole=True), rel=1e-5)
    assert got[2] == pytest.approx(0.1 / float(clean.pow(2).mean().sqrt()), rel=1e-4)


def test_wiener_target_removes_white_noise_and_keeps_strong_lines():
    from pipeline.training.sobolev import wiener_target
    g = torch.Generator().manual_seed(0)
    n = 4096
    x = torch.arange(n, dtype=torch.float64) / n
    clean = torch.sin(2 * torch.pi * 2 * x) + 0.5 * torch.sin(2 * torch.pi * 9 * x)
    noisy = clean + 1.5 * torch.randn(n, generator=g, dtype=torch.float64)
    filt = wiener_target(noisy.float().unsqueeze(1))
    assert filt.shape == (n, 1) and filt.dtype == torch.float32
    before = float((noisy - clean).norm() / clean.norm())
    after = float((filt.reshape(-1).double() - clean).norm() / clean.norm())
    assert before > 1.5 and after < 0.15 * before


def test_scales_experiment_case_runs_and_reports_every_method_per_scale():
    """Smoke test of jobs/experiments/sobolev_scales.py: a few epochs of one case."""
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parents[1] / "jobs" / "experiments" / "sobolev_scales.py"
    spec = importlib.util.spec_from_file_location("sobolev_scales", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    torch.set_num_threads(1)
    r = mod.run_case("pink", 2.0, seed=0, epochs=4, every=2)
    assert set(r["methods"]) == {"mse", "mse_es", "mse_wd", "wiener", "hm0.5", "hm1", "hm2"}
    for m in r["methods"].values():
        assert set(m["final"]) == {"total", "f1", "f4", "f16", "f48", "above"}
        assert all(math.isfinite(v) and v >= 0 for v in m["final"].values())
    assert r["methods"]["mse_wd"]["wd"] in mod.WDS
    assert r["methods"]["mse_es"]["epoch"] in (0, 2, 4)
    # untrained nets on a noisy target are far from the clean signal
    assert r["methods"]["mse"]["final"]["total"] > 0.3
    table = mod.tables([r])
    assert "| H^-1, last epoch |" in table and "pink 2×" in table


def test_scales_experiment_offgrid_target_leaks_and_is_measured_against_the_whole_signal():
    """--offgrid: the target's lines shift off the FFT grid (leakage above the band), the
    per-scale errors use the shifted frequencies and "above" stays relative to ‖clean‖."""
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parents[1] / "jobs" / "experiments" / "sobolev_scales.py"
    spec = importlib.util.spec_from_file_location("sobolev_scales", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    x, on = mod.target()
    _, off = mod.target(0.37)
    assert mod.freqs(0.37) == (1.37, 4.37, 16.37, 48.37)
    # on the grid nothing of the clean target is above k = 64; off it, leakage is
    assert mod.above_band(torch.zeros(mod.N, dtype=torch.float64), on) < 1e-12
    assert mod.above_band(torch.zeros(mod.N, dtype=torch.float64), off) > 1e-3
    # above_band agrees with band_errors wherever the clean band is empty
    pred = on + 0.1 * torch.randn(mod.N, generator=torch.Generator().manual_seed(0),
                                  dtype=torch.float64)
    assert mod.above_band(pred, on) == pytest.approx(
        band_errors(pred, on, [64, mod.N // 2 + 1])[0], rel=1e-9)
    assert float((off - on).norm() / on.norm()) > 0.1
    # the per-scale metric sees the shifted line exactly: the clean target has no error
    ce = clean_errors(off, off, x, mod.freqs(0.37))
    assert all(v < 1e-12 for v in ce.values())
    torch.set_num_threads(1)
    r = mod.run_case("white", 1.0, seed=0, epochs=2, every=1, offgrid=0.37)
    assert r["offgrid"] == 0.37
    assert set(r["methods"]["hm1"]["final"]) == {"total", "f1", "f4", "f16", "f48", "above"}
    assert "off the grid: f + 0.37 bin" in mod.tables([r])
    side = mod.versus([r], [r])
    assert "| MSE on Wiener-filtered target | " in side and "white 1×" in side
    assert mod.main(["--offgrid", "1.5"]) == 2
