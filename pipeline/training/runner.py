"""Train one variant into the store: the body of a sweep's Ray task (no Ray here).

Builds the task, model, initialization, loss and optimizer named by the resolved
:class:`~pipeline.config.Variant`, opens the run in the trajectory store (wiping an
unfinished earlier attempt, so a retry is safe), trains with the store's writer as the
snapshot sink, and records the final status. Returns a small summary for the driver,
which alone talks to MLflow.
"""

from __future__ import annotations

import logging
import time
import traceback

import torch

from ..config import Variant
from ..errors import KMAError
from .inits import apply_init
from ..storage.layout import Layout
from .losses import build_loss
from .models import build_model
from .optim import build_optimizer
from ..storage.store import FINISHED, TrajectoryStore
from .tasks import build_task
from .loop import train
from ..apps.hooks import hook_records, training_hooks

log = logging.getLogger(__name__)


def pick_device(num_gpus: float) -> str:
    return "cuda" if num_gpus > 0 and torch.cuda.is_available() else "cpu"


def build_parts(variant: Variant, device: str = "cpu"):
    """(task data, model, layout) for a variant, initialised from its seed."""
    task_params = variant.task.model_dump(exclude={"name"})
    task = build_task(variant.task.name, seed=variant.torch_seed, **task_params)
    model = build_model(
        variant.family, task.in_dim, task.out_dim, variant.depth, variant.width, variant.activation
    )
    gen = torch.Generator().manual_seed(variant.torch_seed)
    apply_init(model, variant.init, gen)
    model.to(device)
    layout = Layout.from_named_shapes((n, p.shape) for n, p in model.named_parameters())
    if variant.snapshot.layers != "all":
        layout = layout.select(variant.snapshot.layers)
    return task, model, layout


def preflight(variants: list[Variant]) -> dict[str, tuple[int, int]]:
    """Check, before anything trains, that every variant's model builds and its snapshot
    layers exist (models are built on the ``meta`` device: no memory, no compute).

    Returns ``{run_id: (parameters of the model, parameters in its snapshots)}``.
    """
    seen: dict = {}
    sizes: dict[str, tuple[int, int]] = {}
    for v in variants:
        key = (v.task.model_dump_json(), v.family, v.depth, v.width, v.activation,
               str(v.snapshot.layers))
        if key not in seen:
            task = build_task(v.task.name, seed=0, **v.task.model_dump(exclude={"name"}))
            with torch.device("meta"):
                model = build_model(v.family, task.in_dim, task.out_dim, v.depth, v.width, v.activation)
            layout = Layout.from_named_shapes((n, p.shape) for n, p in model.named_parameters())
            n_model = layout.size
            if v.snapshot.layers != "all":
                try:
                    layout = layout.select(v.snapshot.layers)
                except KMAError as e:
                    raise KMAError(f"snapshot.layers of {v.run_id}: {e}") from None
            seen[key] = (int(n_model), int(layout.size))
        sizes[v.run_id] = seen[key]
    return sizes


def run_variant(variant: Variant | dict, store_url: str, callbacks=()) -> dict:
    """Train ``variant`` and stream its trajectory into ``store_url``.

    Returns ``{"run_id", "status", "metrics", "n_snapshots", "seconds", "error"}``.
    """
    variant = Variant.model_validate(variant) if isinstance(variant, dict) else variant
    run_id = variant.run_id
    t0 = time.perf_counter()
    store = TrajectoryStore(store_url)
    if store.status(run_id) in FINISHED:
        run = store.open_run(run_id)
        return _summary(run_id, run.status, run.metrics, run.n_snapshots, 0.0)
    device = pick_device(variant.resources.num_gpus)
    torch.set_num_threads(max(1, int(variant.resources.num_cpus)))
    task, model, layout = build_parts(variant, device)
    writer = store.create_run(
        run_id,
        layout,
        config=variant.model_dump(mode="json"),
        capacity=variant.snapshot_capacity(),
        dtype=variant.snapshot.dtype,
        extra={"device": device, "sweep": variant.sweep, "t_start": time.time()},
    )
    try:
        loss_fn = build_loss(variant.loss)
        kw = {"weight_decay": variant.weight_decay}
        if variant.optimizer in ("sgd", "rmsprop"):
            kw["momentum"] = variant.momentum
        optimizer = build_optimizer(variant.optimizer, model.parameters(), variant.lr, **kw)
        hooks = training_hooks(variant, model, optimizer, task, loss_fn, layout, device)  # prune/accelerate
        result = train(
            model,
            task,
            loss_fn,
            optimizer,
            epochs=variant.epochs,
            batch_size=variant.batch_size,
            snapshot_every=variant.snapshot.every,
            snapshot_unit=variant.snapshot.unit,
            layout=layout,
            sink=writer,
            device=device,
            generator=torch.Generator().manual_seed(variant.torch_seed + 1),
            callbacks=[*callbacks, *hooks],
        )
        extra = {"epochs_run": result.epochs_run, "steps": result.steps,
                 "stopped_early": bool(getattr(result, "stopped_early", False)), "t_end": time.time()}
        extra.update(hook_records(hooks))   # events (prune, Koopman jumps) for the analysis
        writer.finish(result.status, metrics=result.history, extra=extra)
        return _summary(run_id, result.status, result.history, writer.n_snapshots, time.perf_counter() - t0)
    except Exception as e:  # noqa: BLE001 - recorded as a failed run, redone on re-run
        reason = f"{type(e).__name__}: {e}"
        log.error("run %s failed: %s\n%s", run_id, reason, traceback.format_exc())
        writer.abort(reason)
        return _summary(run_id, "failed", {}, writer.n_snapshots, time.perf_counter() - t0,
                        error=reason if isinstance(e, KMAError) else reason + "\n" + traceback.format_exc())


def _summary(run_id, status, metrics, n_snapshots, seconds, error=None) -> dict:
    return {
        "run_id": run_id,
        "status": status,
        "metrics": metrics,
        "n_snapshots": int(n_snapshots),
        "seconds": float(seconds),
        "error": error,
    }
