"""The training loop: learning, snapshot policies and contents, divergence, callbacks."""

import pytest
import torch

from pipeline.errors import ConfigError
from pipeline.training.inits import apply_init
from pipeline.storage.layout import Layout
from pipeline.training.losses import build_loss
from pipeline.training.models import build_model
from pipeline.training.optim import build_optimizer
from pipeline.training.tasks import build_task
from pipeline.training.loop import Callback, TrainResult, train


class Recorder:
    """A sink that keeps every snapshot with its (epoch, step)."""

    def __init__(self):
        self.flats, self.keys = [], []

    def __call__(self, flat, *, epoch, step):
        self.flats.append(flat)
        self.keys.append((epoch, step))


def _run(task_name="multiscale", *, family="mlp", depth=2, width=16, activation="tanh",
         init="xavier", loss="mse", optimizer="adam", lr=1e-2, epochs=3, batch_size=32,
         every=1, unit="epoch", layers=None, callbacks=(), task_params=None, seed=0,
         opt_params=None):
    task_params = {"n_points": 128} if task_params is None else task_params
    task = build_task(task_name, seed, **task_params)
    model = build_model(family, task.in_dim, task.out_dim, depth, width, activation)
    apply_init(model, init, torch.Generator().manual_seed(seed))
    layout = Layout.from_named_shapes((n, p.shape) for n, p in model.named_parameters())
    if layers:
        layout = layout.select(layers)
    sink = Recorder()
    result = train(
        model, task, build_loss(loss),
        build_optimizer(optimizer, model.parameters(), lr, **(opt_params or {})),
        epochs=epochs, batch_size=batch_size, snapshot_every=every, snapshot_unit=unit,
        layout=layout, sink=sink, generator=torch.Generator().manual_seed(seed + 1),
        callbacks=callbacks,
    )
    return result, sink, model, layout, task


def test_learns_multiscale():
    result, *_ = _run(epochs=30, width=32, task_params={"n_points": 256})
    assert isinstance(result, TrainResult) and result.status == "complete"
    loss = result.history["train_loss"]
    assert len(loss) == 30 and len(result.history["val_loss"]) == 30
    assert loss[-1] < 0.3 * loss[0]
    assert "val_accuracy" not in result.history


def test_learns_digits():
    result, *_ = _run("digits", task_params={}, loss="cross_entropy", width=32, epochs=3,
                      lr=3e-3, init="kaiming", activation="relu")
    h = result.history
    assert set(h) == {"train_loss", "val_loss", "train_accuracy", "val_accuracy"}
    assert h["train_loss"][-1] < h["train_loss"][0]
    assert h["val_accuracy"][-1] > 0.85


def test_cnn_trains_on_digits():
    result, sink, *_ = _run("digits", task_params={"val_fraction": 0.5}, family="cnn",
                            depth=1, width=4, loss="cross_entropy", epochs=2, lr=3e-3,
                            init="kaiming", activation="relu")
    assert result.status == "complete" and result.history["val_accuracy"][-1] > 0.6


def test_epoch_policy_count_and_order():
    result, sink, _, _, task = _run(epochs=5, every=2, batch_size=30)
    per_epoch = -(-task.n_train // 30)
    assert sink.keys == [(0, 0), (2, 2 * per_epoch), (4, 4 * per_epoch)]
    assert result.n_snapshots == 3 and result.steps == 5 * per_epoch and result.epochs_run == 5


def test_step_policy_count_and_order():
    result, sink, _, _, task = _run(epochs=2, every=3, unit="step", batch_size=16)
    per_epoch = -(-task.n_train // 16)  # 103 training points → 7 steps per epoch
    total = 2 * per_epoch
    steps = [0] + list(range(3, total + 1, 3))
    epochs = [0] + [(s - 1) // per_epoch + 1 for s in steps[1:]]
    assert sink.keys == list(zip(epochs, steps))
    assert result.n_snapshots == len(steps) and result.steps == total


def test_snapshot_contents_match_parameters():
    task = build_task("multiscale", 0, n_points=64)
    model = build_model("mlp", 1, 1, 2, 8, "tanh")
    full = Layout.from_named_shapes((n, p.shape) for n, p in model.named_parameters())
    layout = full.select(["layers.1", "out"])
    initial = {n: p.detach().clone() for n, p in model.named_parameters()}
    sink = Recorder()
    train(model, task, build_loss("mse"), build_optimizer("sgd", model.parameters(), 0.1),
          epochs=2, batch_size=16, snapshot_every=1, snapshot_unit="epoch", layout=layout,
          sink=sink, generator=torch.Generator().manual_seed(0))
    assert len(sink.flats) == 3
    for flat in sink.flats:
        assert flat.device.type == "cpu" and flat.dtype == torch.float32
        assert flat.is_contiguous() and flat.shape == (layout.size,)
        assert not flat.requires_grad
    expected_first = torch.cat([initial[n].reshape(-1) for n in layout.names])
    torch.testing.assert_close(sink.flats[0], expected_first, rtol=0, atol=0)
    final = dict(model.named_parameters())
    torch.testing.assert_close(sink.flats[-1], layout.flatten(final).cpu(), rtol=0, atol=0)
    # snapshots are copies, not views of the live weights
    assert not torch.equal(sink.flats[0], sink.flats[-1])
    unflat = layout.unflatten(sink.flats[-1])
    torch.testing.assert_close(unflat["out.weight"], final["out.weight"].detach())


def test_reproducible_from_seeds():
    _, a, *_ = _run(epochs=2)
    _, b, *_ = _run(epochs=2)
    assert all(torch.equal(x, y) for x, y in zip(a.flats, b.flats))


@pytest.mark.parametrize(
    "kw",
    [
        dict(lr=10.0, epochs=20),  # blows up after a few epochs
        dict(lr=1e4, init="large_variance", activation="relu", epochs=20, unit="step"),
    ],
)
def test_divergence_stops_without_nonfinite_snapshots(kw):
    result, sink, *_ = _run(optimizer="sgd", **kw)
    assert result.status == "diverged" and result.message
    assert result.epochs_run == len(result.history["train_loss"]) < 20
    assert len(result.history["val_loss"]) == result.epochs_run
    assert result.n_snapshots == len(sink.flats) == len(sink.keys)
    assert sink.keys[0] == (0, 0)  # the initial weights, then one snapshot per completed period
    if kw.get("unit", "epoch") == "epoch":
        assert [e for e, _ in sink.keys] == list(range(result.epochs_run + 1))
    else:
        assert [s for _, s in sink.keys] == list(range(len(sink.keys)))
    assert len(sink.keys) >= 2  # these settings diverge only after the first update
    assert all(torch.isfinite(f).all() for f in sink.flats)


def test_nonfinite_initial_weights_emit_nothing():
    task = build_task("multiscale", 0, n_points=32)
    model = build_model("mlp", 1, 1, 1, 4, "tanh")
    with torch.no_grad():
        model.out.weight[0, 0] = float("nan")
    layout = Layout.from_named_shapes((n, p.shape) for n, p in model.named_parameters())
    sink = Recorder()
    result = train(model, task, build_loss("mse"), build_optimizer("sgd", model.parameters(), 0.1),
                   epochs=2, batch_size=8, snapshot_every=1, snapshot_unit="epoch",
                   layout=layout, sink=sink, generator=torch.Generator())
    assert result.status == "diverged" and result.n_snapshots == 0 and sink.flats == []


def test_callback_stops_early_and_sees_snapshots():
    class StopAfter(Callback):
        def __init__(self):
            self.seen, self.epochs = [], []

        def on_snapshot(self, flat, epoch, step):
            self.seen.append((epoch, step))

        def on_epoch_end(self, epoch, history):
            self.epochs.append((epoch, len(history["train_loss"])))
            return epoch == 3

    class OnlyEpochEnd:  # hooks are optional; None means go on
        def on_epoch_end(self, epoch, history):
            return None

    stopper = StopAfter()
    result, sink, *_ = _run(epochs=10, callbacks=[OnlyEpochEnd(), stopper])
    assert result.status == "complete" and result.stopped_early
    assert result.epochs_run == 3 and len(result.history["val_loss"]) == 3
    assert stopper.epochs == [(1, 1), (2, 2), (3, 3)]
    assert stopper.seen == sink.keys and len(sink.keys) == 4


def test_bad_arguments():
    with pytest.raises(ConfigError, match="snapshot_unit"):
        _run(unit="batch")
    with pytest.raises(ConfigError, match="snapshot_every"):
        _run(every=0)
