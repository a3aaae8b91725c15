"""`kma depth`: scales and depth of a target from its Hankel-DMD spectrum (issue 12)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.apps.depth import filter_scales, recommend_depth
from pipeline.errors import KMAError
from pipeline.cli import main
from pipeline.training.models import HIER_RATIO, build_model

REPO = Path(__file__).resolve().parents[2]
N = 256
X = np.arange(N) / N
CASES = {  # number of scales: (frequencies in cycles per unit x, amplitudes)
    1: ([1.0], [1.0]),
    2: ([1.0, 4.0], [1.0, 0.5]),
    3: ([1.0, 4.0, 16.0], [1.0, 0.5, 0.25]),
}


def signal(freqs, amps, noise=0.0, seed=0):
    """float32 samples, as a store or an .npy of float32 holds them; ``noise`` is a
    multiple of the clean signal's standard deviation."""
    y = sum(a * np.sin(2 * np.pi * f * X + 0.3 * i) for i, (f, a) in enumerate(zip(freqs, amps)))
    y = y + noise * y.std() * np.random.default_rng(seed).standard_normal(N)
    return y.astype(np.float32)


def assert_periods(scales, freqs, rtol):
    assert len(scales) == len(freqs)
    np.testing.assert_allclose(scales, [1.0 / f for f in freqs], rtol=rtol)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_clean_signals_give_one_stage_per_scale(k):
    freqs, amps = CASES[k]
    r = recommend_depth(signal(freqs, amps))
    assert r.depth == k
    assert_periods(r.scales, freqs, rtol=1e-5)              # largest first
    assert r.fourier["depth"] == k and r.agree
    kept = [c for c in r.candidates if c["kept"]]
    np.testing.assert_allclose(sorted(c["amplitude"] for c in kept), sorted(amps), rtol=1e-3)


def test_eigenvalues_match_a_float64_reference():
    """Hankel DMD of float32 samples against the exact shift eigenvalues e^{±2πi f dx}
    and a dense float64 least-squares shift operator computed here."""
    freqs, amps = CASES[3]
    y32 = signal(freqs, amps)
    r = recommend_depth(y32)
    lam = np.array([complex(*z) for c in r.candidates for z in c["eigenvalues"]])
    exact = np.exp(2j * np.pi * np.outer([1, -1], freqs).ravel() / N)
    assert lam.size == exact.size
    for z in exact:
        assert np.min(np.abs(lam - z)) < 1e-5
    # reference: plain exact DMD (Tu et al. 2014) of the same Hankel matrix, dense float64
    y = y32.astype(np.float64) - y32.astype(np.float64).mean()
    H = np.lib.stride_tricks.sliding_window_view(y, N // 2).T
    U, sv, Vh = np.linalg.svd(H[:, :-1], full_matrices=False)
    U, sv, Vh = U[:, :6], sv[:6], Vh[:6]
    ref = np.linalg.eigvals(U.T @ H[:, 1:] @ Vh.T / sv)
    for z in ref:
        assert np.min(np.abs(lam - z)) < 1e-9


@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("seed", range(4))
def test_moderate_noise_neither_invents_nor_loses_scales(k, seed):
    freqs, amps = CASES[k]
    r = recommend_depth(signal(freqs, amps, noise=0.5, seed=seed))
    assert r.depth == k
    assert_periods(r.scales, freqs, rtol=0.05)


@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("seed", range(4))
def test_heavy_noise_never_invents_a_scale(k, seed):
    """Noise 3x the signal's std hides fine scales; every scale reported is a true one."""
    freqs, amps = CASES[k]
    r = recommend_depth(signal(freqs, amps, noise=3.0, seed=seed))
    assert len(r.scales) <= k
    for s in r.scales:
        assert min(abs(s * f - 1) for f in freqs) < 0.15, (s, freqs)
    for s in r.fourier["scales"]:
        assert min(abs(s * f - 1) for f in freqs) < 0.15, (s, freqs)


def test_white_noise_has_no_scales():
    found = [s for s in range(40) if recommend_depth(
        np.random.default_rng(s).standard_normal(N).astype(np.float32)).scales]
    assert found == []


def test_filter_scales_is_the_decay_rule():
    # kept: 1; 0.6 too close (1/0.6 < 2); 0.5 kept; 0.3 too close to 0.5; 0.2 kept
    assert filter_scales([0.3, 1.0, 0.6, 0.5, 0.2], decay=2.0) == [1.0, 0.5, 0.2]
    assert filter_scales([1.0, 0.6], decay=1.5) == [1.0, 0.6]
    assert filter_scales([]) == []


def test_close_scales_are_merged_by_the_decay_ratio():
    r = recommend_depth(signal([4.0, 5.0], [1.0, 0.8]))
    assert [round(c["period"], 4) for c in r.candidates if c["kept"]] == [0.25, 0.2]
    assert r.depth == 1 and r.scales == pytest.approx([0.25])
    assert recommend_depth(signal([4.0, 5.0], [1.0, 0.8]), decay=1.2).depth == 2


def test_a_trend_is_one_coarse_scale():
    """A linear trend (two near-equal real eigenvalues at 1, whose fitted amplitudes
    cancel) counts once, as the domain; the sine beside it is the second scale."""
    y = (3 * X + 0.3 * np.sin(2 * np.pi * 16 * X)).astype(np.float32)
    r = recommend_depth(y)
    assert r.depth == 2 and r.scales == pytest.approx([1.0, 1 / 16], rel=1e-6)
    trend = r.candidates[0]
    assert len(trend["eigenvalues"]) == 2 and trend["amplitude"] == pytest.approx(3 / np.sqrt(6), rel=1e-3)


def test_dx_sets_the_units():
    r = recommend_depth(signal(*CASES[2]), dx=0.5)      # the grid spans 128 x units
    assert_periods(r.scales, [1 / 128, 4 / 128], rtol=1e-5)


# --------------------------------------------------------------------------- CLI
def test_cli_signal_json(tmp_path, capsys):
    np.save(tmp_path / "y.npy", signal(*CASES[3], noise=0.2))
    rc = main(["depth", "--signal", str(tmp_path / "y.npy"), "--dx", "0.01", "--json", str(tmp_path / "o.json")])
    assert rc == 0
    out = capsys.readouterr().out
    assert "recommended depth: 3" in out
    doc = json.loads((tmp_path / "o.json").read_text())
    assert doc["depth"] == 3 and doc["dx"] == 0.01 and doc["n_samples"] == N
    assert doc["scales"] == sorted(doc["scales"], reverse=True)
    assert_periods(doc["scales"], [f / (N * 0.01) for f in CASES[3][0]], rtol=0.03)
    assert doc["rank_gavish_donoho"] == 6 and doc["fourier"]["depth"] == 3
    assert doc["source"] == {"signal": str(tmp_path / "y.npy")}
    assert all({"period", "amplitude", "residual_bound", "kept"} <= set(c) for c in doc["candidates"])


def test_cli_config_uses_the_training_samples(tmp_path, capsys, tiny_config):
    path = tiny_config(task={"name": "multiscale", "n_points": 128, "frequencies": [1.0, 8.0],
                             "amplitudes": [1.0, 0.4], "noise": 0.2})
    rc = main(["depth", str(path), "--json", str(tmp_path / "o.json")])
    assert rc == 0
    doc = json.loads((tmp_path / "o.json").read_text())
    assert doc["depth"] == 2 and doc["n_samples"] == 128 and doc["dx"] == pytest.approx(1 / 128)
    assert doc["source"]["filled"] == round(128 * 0.2)           # validation points
    assert doc["source"]["task"]["noise"] == 0.2
    assert doc["noise_std"] > 0.1                               # the noise is in the samples
    rc = main(["depth", str(path), "task.frequencies=[2.0]", "task.amplitudes=[1.0]"])
    assert rc == 0 and "recommended depth: 1" in capsys.readouterr().out


def test_a_spurious_mode_beside_a_true_scale_does_not_drop_it(tmp_path):
    """configs/depth.yaml with frequencies 1 and 64: the rank keeps one uncertified real
    eigenvalue next to the period-1 pair; it is dropped alone, the pair stays a scale."""
    rc = main(["depth", str(REPO / "configs" / "depth.yaml"), "task.frequencies=[1.0,64.0]",
               "task.amplitudes=[1.0,0.25]", "--json", str(tmp_path / "o.json")])
    doc = json.loads((tmp_path / "o.json").read_text())
    assert rc == 0 and doc["depth"] == 2
    assert doc["scales"] == pytest.approx([1.0, 1 / 64], rel=1e-3)
    at_one = [c for c in doc["candidates"] if abs(c["period"] - 1) < 1e-3]
    assert sorted(c["kept"] for c in at_one) == [False, True]
    assert [c["dropped"] for c in at_one if not c["kept"]] == ["residual"]


@pytest.mark.parametrize("make, args, message", [
    (None, ["--signal", "{d}/missing.npy"], "missing.npy: no such file"),
    (lambda d: np.save(d / "y.npy", np.zeros((4, 32))), ["--signal", "{d}/y.npy"], "expected a 1-D array"),
    (lambda d: np.save(d / "y.npy", np.r_[np.zeros(30), np.nan]), ["--signal", "{d}/y.npy"],
     "1 non-finite values (NaN or inf), the first at index 30"),
    (lambda d: np.save(d / "y.npy", np.zeros(5)), ["--signal", "{d}/y.npy"], "5 samples; at least 16"),
    (lambda d: np.save(d / "y.npy", np.zeros(20, complex)), ["--signal", "{d}/y.npy"], "expected real numbers"),
    (lambda d: (d / "y.npy").write_text("not an array"), ["--signal", "{d}/y.npy"], "not a NumPy .npy file"),
    (lambda d: np.savez(d / "y.npz", a=np.zeros(20), b=np.zeros(20)), ["--signal", "{d}/y.npz"], ".npz archive"),
    (lambda d: np.save(d / "y.npy", np.zeros(32)), ["--signal", "{d}/y.npy", "--dx", "-1"], "--dx -1.0: must be"),
    (lambda d: np.save(d / "y.npy", np.zeros(32)), ["--signal", "{d}/y.npy", "--decay", "1"], "--decay 1.0"),
    (lambda d: np.save(d / "y.npy", np.zeros(32)), ["--signal", "{d}/y.npy", "--json", "{d}"], "is a folder"),
    (None, [], "give a sweep CONFIG or --signal"),
    (lambda d: (d / "c.yaml").write_text("name: x\ntask: {name: digits}\n"), ["{d}/c.yaml"],
     "does not live on a 1-D grid"),
    (lambda d: (d / "c.yaml").write_text("name: x\n"), ["{d}/c.yaml", "--dx", "0.1"], "--dx applies to --signal only"),
    (None, ["{d}/nope.yaml"], "no such config file"),
])
def test_cli_bad_input_is_one_line_exit_2(tmp_path, capsys, make, args, message):
    if make is not None:
        make(tmp_path)
    rc = main(["depth", *(a.format(d=tmp_path) for a in args)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and err[0].startswith("kma: error: ") and message in err[0], err
    assert not list(tmp_path.glob("*.json"))


# --------------------------------------------------------------------------- model
def test_hier_stage_k_sees_period_ratio_to_the_minus_k():
    torch.manual_seed(0)
    x = torch.linspace(0, 1, 50).unsqueeze(1)
    m1 = build_model("hier", 1, 1, depth=1, width=4, activation="tanh")
    assert torch.allclose(m1(x), m1(x + 1.0), atol=1e-5)       # stage 0: period 1
    m2 = build_model("hier", 1, 1, depth=2, width=4, activation="tanh")
    with torch.no_grad():
        m2.out.weight[:, :4] = 0                                 # stage 1 alone
    assert torch.allclose(m2(x), m2(x + 1.0 / HIER_RATIO), atol=1e-5)
    assert not torch.allclose(m2(x), m2(x + 0.5 / HIER_RATIO), atol=1e-3)
    names = [n for n, _ in m2.named_parameters()]
    assert names == ["layers.0.weight", "layers.0.bias", "layers.1.weight", "layers.1.bias",
                     "out.weight", "out.bias"]


def test_transition_depth_is_where_extra_depth_stops_halving_the_error():
    from pipeline.apps.depth import transition_depth

    # a drop at 3, then flat (noise within 2x): the transition is 3
    assert transition_depth([1, 2, 3, 4, 5], [1.0, 0.9, 1e-3, 8e-4, 1.1e-3]) == 3
    # a late second drop counts: depth 2 is not the transition because depth 5 is 10x lower
    assert transition_depth([1, 2, 3, 4, 5], [1.0, 0.1, 0.1, 0.1, 0.01]) == 5
    # flat from the start; a stricter gain moves it
    assert transition_depth([1, 2, 3], [1.0, 0.6, 0.55]) == 1
    assert transition_depth([1, 2, 3], [1.0, 0.6, 0.55], gain=0.3) == 2
    # below the floor, halving does not count
    assert transition_depth([1, 2, 3, 4], [1e-4, 4e-5, 1.5e-5, 5e-6]) == 4
    assert transition_depth([1, 2, 3, 4], [1e-4, 4e-5, 1.5e-5, 5e-6], floor=1e-3) == 1
    assert transition_depth([1, 2, 3, 4], [0.5, 2e-3, 5e-5, 1e-5], floor=1e-3) == 2
    # error rising with depth: the shallowest
    assert transition_depth([2, 4, 6], [0.1, 0.2, 0.3]) == 2
    with pytest.raises(KMAError):
        transition_depth([1, 2], [1.0])
    with pytest.raises(KMAError):
        transition_depth([2, 1], [1.0, 0.5])
    with pytest.raises(KMAError):
        transition_depth([1, 2], [1.0, 0.5], gain=1.5)
