"""Registries of tasks, models, initializations, losses and optimizers."""

import math

import pytest
import torch

from pipeline.errors import ConfigError
from pipeline.training.inits import INITS, LARGE_STD, SMALL_STD, apply_init
from pipeline.training.losses import LOSSES, build_loss
from pipeline.training.models import ACTIVATIONS, MODELS, build_model
from pipeline.training.optim import OPTIMIZERS, build_optimizer
from pipeline.training.tasks import TASKS, build_task


# -- unknown names list the known ones -------------------------------------------------------
@pytest.mark.parametrize(
    "call, registry",
    [
        (lambda: build_task("nope", 0), TASKS),
        (lambda: build_model("nope", 4, 2, 1, 8, "relu"), MODELS),
        (lambda: build_model("mlp", 4, 2, 1, 8, "nope"), ACTIVATIONS),
        (lambda: apply_init(torch.nn.Linear(2, 2), "nope", torch.Generator()), INITS),
        (lambda: build_loss("nope"), LOSSES),
        (lambda: build_optimizer("nope", [torch.nn.Parameter(torch.zeros(1))], 0.1), OPTIMIZERS),
    ],
)
def test_unknown_name_lists_known(call, registry):
    with pytest.raises(ConfigError) as exc:
        call()
    message = str(exc.value)
    assert "'nope'" in message
    assert all(name in message for name in registry)


def test_registries_hold_the_promised_names():
    assert {"multiscale", "digits", "blobs"} <= set(TASKS)
    assert {"mlp", "cnn"} <= set(MODELS)
    assert {"relu", "tanh", "gelu", "sigmoid", "silu", "identity", "linear"} <= set(ACTIVATIONS)
    assert {"kaiming", "xavier", "orthogonal", "default", "zeros", "constant",
            "large_variance", "small_variance"} <= set(INITS)
    assert {"mse", "cross_entropy", "l1", "huber"} <= set(LOSSES)
    assert {"sgd", "adam", "adamw", "rmsprop"} <= set(OPTIMIZERS)


# -- tasks ----------------------------------------------------------------------------------
def test_multiscale_shapes_target_and_noise():
    freqs, amps, n = [1.0, 8.0], [1.0, 0.1], 200
    clean = build_task("multiscale", 3, n_points=n, frequencies=freqs, amplitudes=amps)
    noisy = build_task("multiscale", 3, n_points=n, frequencies=freqs, amplitudes=amps, noise=0.5)
    assert clean.kind == "regression" and (clean.in_dim, clean.out_dim) == (1, 1)
    assert clean.x_train.shape == (160, 1) and clean.x_val.shape == (40, 1)
    assert clean.y_train.dtype == torch.float32 and clean.grid.shape == (n, 1)
    x = clean.grid[:, 0].double()
    expected = torch.sin(2 * math.pi * x) + 0.1 * torch.sin(2 * math.pi * 8 * x)
    torch.testing.assert_close(clean.clean[:, 0].double(), expected, atol=1e-6, rtol=0)
    assert float(x.min()) == 0.0 and float(x.max()) < 1.0
    # same split for the same seed; noise on training targets only
    torch.testing.assert_close(noisy.x_train, clean.x_train)
    torch.testing.assert_close(noisy.y_val, clean.y_val)
    assert 0.3 < float((noisy.y_train - clean.y_train).std()) < 0.7
    other = build_task("multiscale", 4, n_points=n, frequencies=freqs, amplitudes=amps)
    assert not torch.equal(other.x_train, clean.x_train)


@pytest.mark.parametrize(
    "params, word",
    [
        ({"frequencies": [1, 2], "amplitudes": [1]}, "amplitudes"),
        ({"noise": -0.1}, "noise"),
        ({"val_fraction": 1.5}, "val_fraction"),
        ({"phases": [0.0]}, "phases"),
        ({"n_pionts": 10}, "n_pionts"),
    ],
)
def test_multiscale_bad_params_name_the_parameter(params, word):
    with pytest.raises(ConfigError, match=word):
        build_task("multiscale", 0, **params)


def test_classification_tasks():
    digits = build_task("digits", 0)
    assert digits.kind == "classification" and (digits.in_dim, digits.out_dim) == (64, 10)
    assert digits.n_train + digits.n_val == 1797 and digits.input_shape == (1, 8, 8)
    assert digits.y_train.dtype == torch.int64 and digits.x_train.dtype == torch.float32
    assert abs(float(digits.x_train.mean())) < 0.05  # standardized with training stats
    blobs = build_task("blobs", 1, n_samples=100, n_features=4, n_classes=3)
    assert blobs.x_train.shape == (80, 4) and blobs.out_dim == 3
    assert set(blobs.y_train.tolist()) == {0, 1, 2}
    with pytest.raises(ConfigError, match="n_classes"):
        build_task("blobs", 0, n_classes=1)


# -- models ---------------------------------------------------------------------------------
def test_mlp_names_and_shapes():
    model = build_model("mlp", 3, 2, depth=3, width=5, activation="gelu")
    names = [n for n, _ in model.named_parameters()]
    assert names == [
        "layers.0.weight", "layers.0.bias", "layers.1.weight", "layers.1.bias",
        "layers.2.weight", "layers.2.bias", "out.weight", "out.bias",
    ]
    assert model(torch.zeros(7, 3)).shape == (7, 2)
    assert build_model("mlp", 3, 1, 0, 5, "relu")(torch.zeros(2, 3)).shape == (2, 1)


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_every_activation_builds(activation):
    model = build_model("mlp", 2, 1, 1, 4, activation)
    assert model.activation == activation
    assert torch.isfinite(model(torch.randn(3, 2))).all()


def test_cnn_on_digit_shapes():
    model = build_model("cnn", 64, 10, depth=2, width=4, activation="relu")
    names = [n for n, _ in model.named_parameters()]
    assert names[0] == "layers.0.weight" and names[-1] == "out.bias"
    assert model.layers[0].weight.shape == (4, 1, 3, 3)
    assert model(torch.zeros(5, 64)).shape == (5, 10)
    assert build_model("cnn", (1, 8, 8), 10, 1, 4, "tanh")(torch.zeros(2, 1, 8, 8)).shape == (2, 10)
    with pytest.raises(ConfigError, match="square"):
        build_model("cnn", 10, 2, 1, 4, "relu")


def test_model_bad_sizes():
    with pytest.raises(ConfigError, match="width"):
        build_model("mlp", 3, 1, 1, 0, "relu")
    with pytest.raises(ConfigError, match="depth"):
        build_model("mlp", 3, 1, -1, 4, "relu")


# -- initializations ------------------------------------------------------------------------
def _weights(model):
    return [p for p in model.parameters() if p.dim() >= 2]


def _biases(model):
    return [p for n, p in model.named_parameters() if n.endswith("bias")]


def _init(scheme, activation="relu", seed=0, width=256):
    model = build_model("mlp", 64, 10, 2, width, activation)
    return apply_init(model, scheme, torch.Generator().manual_seed(seed)).requires_grad_(False)


def test_init_zeros_constant():
    model = _init("zeros")
    assert all(torch.count_nonzero(p) == 0 for p in model.parameters())
    model = _init("constant")
    assert all(torch.all(w == 0.5) for w in _weights(model))
    assert all(torch.count_nonzero(b) == 0 for b in _biases(model))


def test_init_variances():
    model = _init("small_variance")
    std = float(model.layers[1].weight.std())
    assert abs(std - SMALL_STD) / SMALL_STD < 0.05
    assert float(_init("large_variance").layers[1].weight.std()) == pytest.approx(LARGE_STD, rel=0.05)
    # kaiming normal, relu, fan_in 256: std sqrt(2 / 256)
    kaiming = _init("kaiming").layers[1].weight
    assert float(kaiming.std()) == pytest.approx(math.sqrt(2 / 256), rel=0.05)
    # xavier uniform, tanh gain 5/3: std gain * sqrt(2 / (fan_in + fan_out))
    xavier = _init("xavier", "tanh").layers[1].weight
    assert float(xavier.std()) == pytest.approx(5 / 3 * math.sqrt(2 / 512), rel=0.05)


def test_init_orthogonal():
    model = _init("orthogonal", "identity")
    w = model.layers[1].weight  # square, gain 1
    torch.testing.assert_close(w @ w.T, torch.eye(w.shape[0]), atol=1e-4, rtol=0)
    w0 = model.layers[0].weight  # 256 × 64: orthonormal columns
    torch.testing.assert_close(w0.T @ w0, torch.eye(64), atol=1e-4, rtol=0)
    assert all(torch.count_nonzero(b) == 0 for b in _biases(model))


def test_init_default_matches_pytorch_bounds_and_is_seeded():
    model = _init("default", width=64)
    bound = 1 / math.sqrt(64)
    assert float(model.layers[1].weight.abs().max()) <= bound
    assert 0 < float(model.layers[1].bias.abs().max()) <= bound
    again = _init("default", width=64)
    other = _init("default", width=64, seed=1)
    assert torch.equal(model.out.weight, again.out.weight)
    assert not torch.equal(model.out.weight, other.out.weight)


@pytest.mark.parametrize("scheme", sorted(INITS))
def test_every_init_runs_on_cnn_and_is_reproducible(scheme):
    def make():
        m = build_model("cnn", 64, 10, 2, 3, "relu")
        return apply_init(m, scheme, torch.Generator().manual_seed(5))

    a, b = make(), make()
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)


# -- losses and optimizers -------------------------------------------------------------------
def test_losses():
    pred, target = torch.tensor([[1.0], [3.0]]), torch.tensor([[0.0], [0.0]])
    assert float(build_loss("mse")(pred, target)) == pytest.approx(5.0)
    assert float(build_loss("l1")(pred, target)) == pytest.approx(2.0)
    assert float(build_loss("huber", delta=1.0)(pred, target)) == pytest.approx((0.5 + 2.5) / 2)
    logits, labels = torch.tensor([[10.0, 0.0], [0.0, 10.0]]), torch.tensor([0, 1])
    assert float(build_loss("cross_entropy")(logits, labels)) < 1e-3
    with pytest.raises(ConfigError, match="delat"):
        build_loss("huber", delat=1.0)
    with pytest.raises(ConfigError, match="delta"):
        build_loss("huber", delta=-1.0)


def test_optimizers():
    for name in OPTIMIZERS:
        p = torch.nn.Parameter(torch.ones(3))
        opt = build_optimizer(name, [p], 0.1)
        p.sum().backward()
        opt.step()
        assert float(p.detach().sum()) < 3.0
    opt = build_optimizer("sgd", [torch.nn.Parameter(torch.ones(1))], 0.1, momentum=0.9)
    assert opt.param_groups[0]["momentum"] == 0.9
    with pytest.raises(ConfigError, match="momentun"):
        build_optimizer("sgd", [torch.nn.Parameter(torch.ones(1))], 0.1, momentun=0.9)
    with pytest.raises(ConfigError, match="lr"):
        build_optimizer("adam", [torch.nn.Parameter(torch.ones(1))], 0.0)
    with pytest.raises(ConfigError, match="momentum"):
        build_optimizer("sgd", [torch.nn.Parameter(torch.ones(1))], 0.1, momentum=-1.0)
