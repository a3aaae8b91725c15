"""The body of a sweep task, without Ray: training into the store, divergence, retries."""

import numpy as np

from pipeline import config
from pipeline.training.runner import run_variant
from pipeline.storage.store import TrajectoryStore


def test_run_variant_stores_complete_trajectory(tiny_config, tmp_path):
    v = config.expand(config.load(tiny_config()))[0]
    out = run_variant(v, str(tmp_path / "s"))
    assert out["status"] == "complete" and out["error"] is None
    run = TrajectoryStore(str(tmp_path / "s")).open_run(v.run_id)
    assert run.status == "complete"
    assert run.n_snapshots == v.epochs + 1
    assert len(run.metrics["train_loss"]) == v.epochs
    assert run.metrics["train_loss"][-1] < run.metrics["train_loss"][0]
    W = run.weights().compute()
    assert np.isfinite(W).all() and not np.allclose(W[0], W[-1])
    assert run.config["depth"] == v.depth and run.attrs["sweep"] == "tiny"


def test_divergence_keeps_trajectory_so_far(tiny_config, tmp_path):
    path = tiny_config(optimizer={"name": "sgd", "lr": 50.0}, init="large_variance", epochs=30)
    v = config.expand(config.load(path))[0]
    out = run_variant(v, str(tmp_path / "s"))
    assert out["status"] == "diverged"
    run = TrajectoryStore(str(tmp_path / "s")).open_run(v.run_id)
    assert run.status == "diverged"
    assert 1 <= run.n_snapshots < v.epochs + 1
    assert np.isfinite(run.weights().compute()).all()
    assert len(run.metrics["train_loss"]) < v.epochs


def test_retry_is_idempotent(tiny_config, tmp_path):
    """A retried task over a half-written run starts clean; over a finished one, no-op."""
    v = config.expand(config.load(tiny_config()))[0]
    store = TrajectoryStore(str(tmp_path / "s"))
    from pipeline.training.runner import build_parts

    _, _, layout = build_parts(v)
    w = store.create_run(v.run_id, layout, capacity=3)
    w.append(np.full(layout.size, 7.0, np.float32))  # a worker died here
    first = run_variant(v, store.url)
    run = store.open_run(v.run_id)
    assert first["status"] == "complete" and run.n_snapshots == v.epochs + 1
    assert not (run.weights().compute()[0] == 7.0).all()
    finished = run.attrs["finished"]
    again = run_variant(v, store.url)
    assert again["status"] == "complete" and again["seconds"] == 0.0
    assert store.open_run(v.run_id).attrs["finished"] == finished


def test_same_variant_same_trajectory(tiny_config, tmp_path):
    v = config.expand(config.load(tiny_config()))[0]
    run_variant(v, str(tmp_path / "a"))
    run_variant(v, str(tmp_path / "b"))
    a = TrajectoryStore(str(tmp_path / "a")).open_run(v.run_id).weights().compute()
    b = TrajectoryStore(str(tmp_path / "b")).open_run(v.run_id).weights().compute()
    np.testing.assert_array_equal(a, b)


def test_in_place_snapshots_equal_copied_ones(tiny_config, tmp_path):
    """Snapshots flattened straight into the writer's buffer (RunWriter.reserve) are the
    same as those handed over by copy through a plain sink."""
    import torch

    from pipeline.training.losses import build_loss
    from pipeline.training.optim import build_optimizer
    from pipeline.training.runner import build_parts
    from pipeline.training.loop import train

    v = config.expand(config.load(tiny_config(epochs=5)))[0]
    out = {}
    for kind in ("copy", "reserve"):
        task, model, layout = build_parts(v)
        store = TrajectoryStore(str(tmp_path / kind))
        writer = store.create_run("r", layout, capacity=6)
        sink = writer if kind == "reserve" else (lambda flat, epoch, step: writer.append(flat.clone()))
        train(model, task, build_loss("mse"), build_optimizer("adam", model.parameters(), 0.01),
              epochs=5, batch_size=16, snapshot_every=1, snapshot_unit="epoch", layout=layout,
              sink=sink, generator=torch.Generator().manual_seed(0))
        writer.finish("complete")
        out[kind] = store.open_run("r").weights().compute()
        final = layout.flatten(dict(model.named_parameters())).numpy()
        np.testing.assert_array_equal(out[kind][-1], final)
    np.testing.assert_array_equal(out["copy"], out["reserve"])
    assert out["copy"].shape == (6, layout.size)
