"""Structured Koopman pruning: the future-weight score, unit indexing, the shrunk MLP."""

import copy
import itertools

import numpy as np
import pytest
import torch
from torch import nn

from pipeline.apps.unit_prune import (
    layer_ranges,
    mlp_units,
    predict_weights,
    select_units,
    shrink_mlp,
    unit_scores,
)

SIZES = [2, 3, 1]          # P = 2*3 + 3 + 3*1 + 1 = 13


def trajectory(W=8):
    """Unit 0 large now but decaying to 0 (λ = 0.8); unit 1 small now, heading to a large
    fixed point (λ = 0.95); unit 2 constant and moderate. Returns (Y (W, P) float32, the
    float64 closed form x(t) as a function)."""
    units = mlp_units(SIZES)[0]
    P = layer_ranges(SIZES)[-1][1]
    x_inf, v1, v2 = np.zeros(P), np.zeros(P), np.zeros(P)
    x_inf[units[1]] = 2.0
    v2[units[1]] = -1.9                     # unit 1: 0.1 at t = 0 -> 2.0
    v1[units[0]] = 6.0                      # unit 0: 6.0 at t = 0 -> 0
    x_inf[units[2]] = 1.0
    x_inf[P - 1] = 0.3                      # output bias
    x = lambda t: x_inf + v1 * 0.8 ** t + v2 * 0.95 ** t
    return np.stack([x(t) for t in range(W)]).astype(np.float32), x


def test_unit_indices_match_torch_flattening():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
    flat = torch.nn.utils.parameters_to_vector(m.parameters()).detach().numpy()
    u = mlp_units(SIZES)[0]
    for j in range(3):
        want = np.concatenate([m[0].weight[j].detach().numpy(), [m[0].bias[j].item()],
                               m[2].weight[:, j].detach().numpy()])
        np.testing.assert_array_equal(flat[u[j]], want)


def test_koopman_ranks_a_decaying_unit_low_where_magnitude_ranks_it_high():
    Y, x = trajectory()
    units = mlp_units(SIZES)
    mag, _ = unit_scores("magnitude", units, Y)
    koop, info = unit_scores("koopman", units, Y, horizon=200, rank=3)
    assert np.argmax(mag[0]) == 0 and np.argmin(mag[0]) == 1   # current: unit 0 largest
    assert np.argmin(koop[0]) == 0 and np.argmax(koop[0]) == 1  # future: unit 0 smallest
    assert info["used"] >= 2            # 0.8, 0.95 (λ = 1 moves nothing either way)
    assert select_units(mag, 1 / 3)[0].tolist() == [0, 2]
    assert select_units(koop, 1 / 3)[0].tolist() == [1, 2]
    # the prediction against the float64 closed form, W - 1 + H steps after the start
    pred, _ = predict_weights(Y, 200, rank=3)
    np.testing.assert_allclose(pred, x(7 + 200), atol=2e-4)
    pred, _ = predict_weights(Y, 5, rank=3, groups=layer_ranges(SIZES))
    np.testing.assert_allclose(pred, x(7 + 5), atol=2e-4)


def test_certified_only_on_noise_predicts_nothing():
    rng = np.random.default_rng(0)
    Y = rng.standard_normal((12, 13)).astype(np.float32)
    pred, info = predict_weights(Y, 100, residual_tol=0.01)
    assert info["used"] == 0
    np.testing.assert_array_equal(pred, Y[-1].astype(np.float64))


def test_shrunk_mlp_computes_the_kept_units_exactly():
    torch.manual_seed(1)
    m = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 2))
    keep = [np.array([0, 2, 5]), np.array([1, 4])]
    # reference: zero the dropped units' outgoing columns in the full model
    ref = nn.Sequential(*[type(l)() if not isinstance(l, nn.Linear) else l for l in m])
    with torch.no_grad():
        ref[2].weight[:, [1, 3, 4]] = 0
        ref[4].weight[:, [0, 2, 3]] = 0
    small = shrink_mlp(m, keep)
    assert [l.weight.shape for l in small if isinstance(l, nn.Linear)] == [(3, 4), (2, 3), (2, 2)]
    xb = torch.randn(7, 4)
    torch.testing.assert_close(small(xb), ref(xb))


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown method"):
        unit_scores("nope", mlp_units(SIZES), np.zeros((4, 13)))
    with pytest.raises(ValueError, match="sparsity"):
        select_units([np.ones(3)], 1.0)
    with pytest.raises(ValueError, match="hidden layer"):
        mlp_units([3, 1])


def test_experiment_script_tiny(tmp_path, kma_env):
    """jobs/experiments/prune_units.py end to end on a tiny setting: every arm trains a
    physically smaller network, and bad input is one line and exit 2."""
    import json
    import subprocess
    import sys

    from conftest import REPO
    script = str(REPO / "jobs" / "experiments" / "prune_units.py")
    out = tmp_path / "pu.json"
    proc = subprocess.run(
        [sys.executable, script, "--seeds", "1", "--tasks", "digits", "--width", "16",
         "--epochs", "3", "--prune-epochs", "1", "--sparsities", "0.5", "--window", "6",
         "--out", str(out)], capture_output=True, text=True, env=kma_env, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads(out.read_text())["tasks"]["digits"]["rows"]
    assert [r["method"] for r in rows] == ["unpruned", "magnitude", "random", "koopman",
                                          "koopman-layer"]
    assert all(0.0 < r["test_acc"] <= 1.0 for r in rows)
    assert [r["jaccard_vs_magnitude"] for r in rows[:2]] == [1.0, 1.0]
    bad = subprocess.run([sys.executable, script, "--sparsities", "1.5"], capture_output=True,
                         text=True, env=kma_env, timeout=120, check=False)
    assert bad.returncode == 2 and bad.stderr.strip().startswith("kma: error:")
    assert "Traceback" not in bad.stderr


# ---- CNN channels -------------------------------------------------------------------

def tiny_cnn(seed=0, width=5, depth=2):
    from pipeline.training.models import build_model
    torch.manual_seed(seed)
    return build_model("cnn", 36, 3, depth, width, "relu")     # 1x6x6 input, 3 outputs


def test_channel_groups_are_each_filter_and_bias_in_the_flat_vector():
    from pipeline.apps.unit_prune import conv_channels, module_ranges
    m = tiny_cnn()
    flat = torch.nn.utils.parameters_to_vector(m.parameters()).detach().numpy()
    groups = conv_channels(m)
    assert [len(g) for g in groups] == [5, 5]
    for conv, layer in zip(m.layers, groups):
        for j, ix in enumerate(layer):
            want = np.concatenate([conv.weight[j].detach().numpy().ravel(), [conv.bias[j].item()]])
            np.testing.assert_array_equal(flat[ix], want)
    # every conv parameter in exactly one group; the readout in none
    all_ix = np.concatenate([ix for layer in groups for ix in layer])
    n_conv = sum(p.numel() for c in m.layers for p in c.parameters())
    assert sorted(all_ix.tolist()) == list(range(n_conv))
    # per-layer ranges: conv 0, conv 1, out (weight + bias each), covering the vector
    r = module_ranges(m)
    assert r[0] == (0, 5 * 9 + 5) and r[1] == (50, 50 + 5 * 5 * 9 + 5)
    assert r[-1][1] == flat.size and all(a[1] == b[0] for a, b in itertools.pairwise(r))
    # the MLP's ranges agree with layer_ranges
    mlp = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
    assert module_ranges(mlp) == layer_ranges([4, 6, 2])


def test_shrunk_cnn_equals_the_masked_full_cnn():
    from pipeline.apps.unit_prune import shrink_cnn
    m = tiny_cnn(seed=3, width=6, depth=3)
    keep = [np.array([0, 2, 5]), np.array([1, 4]), np.array([0, 1, 3, 5])]
    small = shrink_cnn(m, keep)
    assert [tuple(c.weight.shape) for c in small.layers] == [(3, 1, 3, 3), (2, 3, 3, 3),
                                                             (4, 2, 3, 3)]
    assert small.out.weight.shape == (3, 4 * 36)
    # reference 1: the full network with the dropped channels' filters and biases zeroed
    # (ReLU(0) = 0, so a dropped channel contributes nothing downstream)
    masked = copy.deepcopy(m)
    with torch.no_grad():
        for conv, k in zip(masked.layers, keep):
            drop = np.setdiff1d(np.arange(conv.out_channels), k)
            conv.weight[drop] = 0
            conv.bias[drop] = 0
    xb = torch.randn(7, 36)
    torch.testing.assert_close(small(xb), masked(xb), rtol=1e-5, atol=1e-6)
    # the pruning changed the function (a test that could fail)
    assert (small(xb) - m(xb)).abs().max() > 1e-3
    # reference 2: any activation; the dropped channels' outgoing slices zeroed instead
    from pipeline.training.models import build_model
    torch.manual_seed(4)
    t = build_model("cnn", 36, 3, 2, 4, "tanh")
    keep2 = [np.array([1, 3]), np.array([0, 2, 3])]
    ref = copy.deepcopy(t)
    with torch.no_grad():
        ref.layers[1].weight[:, [0, 2]] = 0
        ref.out.weight.view(3, 4, 36)[:, [1]] = 0
    torch.testing.assert_close(shrink_cnn(t, keep2)(xb), ref(xb), rtol=1e-5, atol=1e-6)
    # the original is untouched
    assert m.layers[0].weight.shape == (6, 1, 3, 3)


def test_channel_scores_use_the_unit_machinery():
    """Koopman channel scores: a channel whose filter decays ranks low although it is the
    largest now (the MLP closed-form test, on a CNN's flat layout)."""
    from pipeline.apps.unit_prune import conv_channels, module_ranges
    m = tiny_cnn(width=3, depth=1)
    ch = conv_channels(m)
    P = module_ranges(m)[-1][1]
    x_inf, v1, v2 = np.zeros(P), np.zeros(P), np.zeros(P)
    x_inf[ch[0][1]] = 1.0
    v2[ch[0][1]] = -0.95           # channel 1: small now, large later
    v1[ch[0][0]] = 3.0             # channel 0: large now, decaying
    x_inf[ch[0][2]] = 0.5
    x = lambda t: x_inf + v1 * 0.8 ** t + v2 * 0.95 ** t
    Y = np.stack([x(t) for t in range(8)]).astype(np.float32)
    mag, _ = unit_scores("magnitude", ch, Y)
    koop, _ = unit_scores("koopman", ch, Y, horizon=200, rank=3)
    assert select_units(mag, 1 / 3)[0].tolist() == [0, 2]
    assert select_units(koop, 1 / 3)[0].tolist() == [1, 2]


def test_shrink_cnn_bad_arguments():
    from pipeline.apps.unit_prune import conv_channels, shrink_cnn
    m = tiny_cnn()
    with pytest.raises(ValueError, match="keep list per convolution"):
        shrink_cnn(m, [np.arange(3)])
    with pytest.raises(ValueError, match="distinct"):
        shrink_cnn(m, [np.array([0, 0]), np.arange(2)])
    with pytest.raises(ValueError, match="CNN"):
        conv_channels(nn.Sequential(nn.Linear(2, 2)))


def test_channel_groups_with_outgoing_weights():
    from pipeline.apps.unit_prune import conv_channels
    m = tiny_cnn(width=4, depth=2)
    flat = torch.nn.utils.parameters_to_vector(m.parameters()).detach().numpy()
    g = conv_channels(m, outgoing=True)
    c0, c1 = m.layers
    for j in range(4):
        want0 = np.concatenate([c0.weight[j].detach().numpy().ravel(), [c0.bias[j].item()],
                                c1.weight[:, j].detach().numpy().ravel()])
        np.testing.assert_array_equal(flat[g[0][j]], want0)
        want1 = np.concatenate([c1.weight[j].detach().numpy().ravel(), [c1.bias[j].item()],
                                m.out.weight.view(3, 4, 36)[:, j].detach().numpy().ravel()])
        np.testing.assert_array_equal(flat[g[1][j]], want1)


def test_experiment_script_cnn_tiny(tmp_path, kma_env):
    """--model cnn: every arm prunes half the channels of each convolution and trains the
    smaller CNN; an MLP-only task is refused in one line."""
    import json
    import subprocess
    import sys

    from conftest import REPO
    script = str(REPO / "jobs" / "experiments" / "prune_units.py")
    out = tmp_path / "pc.json"
    proc = subprocess.run(
        [sys.executable, script, "--model", "cnn", "--seeds", "1", "--width", "4",
         "--epochs", "2", "--prune-epochs", "1", "--sparsities", "0.5", "--window", "6",
         "--channel-group", "full", "--out", str(out)],
        capture_output=True, text=True, env=kma_env, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(out.read_text())["tasks"]["digits"]
    rows = res["rows"]
    assert [r["method"] for r in rows] == ["unpruned", "magnitude", "random", "koopman",
                                          "koopman-layer"]
    assert rows[0]["kept"] == [4, 4] and all(r["kept"] == [2, 2] for r in rows[1:])
    assert all(0.0 < r["test_acc"] <= 1.0 for r in rows)
    assert 0.0 < res["mac_ratio"]["0.5"] < 0.5          # conv 1 costs (1/2)², the rest 1/2
    bad = subprocess.run([sys.executable, script, "--model", "cnn", "--tasks", "regression"],
                         capture_output=True, text=True, env=kma_env, timeout=120, check=False)
    assert bad.returncode == 2 and bad.stderr.strip().startswith("kma: error:")
    assert "Traceback" not in bad.stderr
