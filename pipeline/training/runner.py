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
from typing import TYPE_CHECKING

import torch

from ..errors import ConfigError, KMAError
from .inits import apply_init
from ..storage.layout import Layout
from .losses import build_loss_spec
from .sobolev import task_callbacks
from .models import build_model
from .optim import build_optimizer
from ..storage.store import FINISHED, TrajectoryStore
from .tasks import build_task
from .loop import train
from .restart import BAD_INIT, BadInitMonitor, attempt_id, attempt_variant, init_seed, task_chance, variant_chance
from ..apps.hooks import hook_records, training_hooks

if TYPE_CHECKING:  # a type only: the workflows validate configs, training takes them
    from ..config import Variant

log = logging.getLogger(__name__)

# The training options the trainers wire themselves, unpacked (here) and packed
# (pipeline.training.packing): ``stop`` (stop_monitor, stop_record), ``on_bad_init``
# (BadInitMonitor, run_with_policy). The others name their callback's builder where they
# are declared (pipeline.config.policies.TrainingOptions).
TRAINER_OPTIONS = ("stop", "on_bad_init")


def check_wired(variant: Variant) -> None:
    """Raise :class:`ConfigError` when an option set on ``variant`` has no builder and is
    not one the trainers wire: it would be ignored."""
    declared = variant.option_fields()
    for name in variant.options():
        if declared[name].build is None and name not in TRAINER_OPTIONS:
            raise ConfigError(f"training option {name!r} names no callback builder and no trainer "
                              f"wires it ({', '.join(TRAINER_OPTIONS)}): it would be ignored")


def pick_device(num_gpus: float) -> str:
    return "cuda" if num_gpus > 0 and torch.cuda.is_available() else "cpu"


def build_parts(variant: Variant, device: str = "cpu"):
    """(task data, model, layout) for a variant, initialised from its seed."""
    task_params = variant.task.model_dump(exclude={"name"})
    task = build_task(variant.task.name, seed=variant.torch_seed, **task_params)
    model = build_model(
        variant.family, task.in_dim, task.out_dim, variant.depth, variant.width, variant.activation
    )
    gen = torch.Generator().manual_seed(init_seed(variant))
    apply_init(model, variant.init, gen)
    model.to(device)
    layout = Layout.from_named_shapes((n, p.shape) for n, p in model.named_parameters())
    if variant.snapshot.layers != "all":
        layout = layout.select(variant.snapshot.layers)
    return task, model, layout


def variant_layout(variant: Variant):
    """The variant's snapshot :class:`~pipeline.storage.layout.Layout`, from its model built
    on the ``meta`` device (no memory, no compute)."""
    task = build_task(variant.task.name, seed=0, **variant.task.model_dump(exclude={"name"}))
    with torch.device("meta"):
        model = build_model(variant.family, task.in_dim, task.out_dim, variant.depth, variant.width,
                            variant.activation)
    layout = Layout.from_named_shapes((n, p.shape) for n, p in model.named_parameters())
    return layout if variant.snapshot.layers == "all" else layout.select(variant.snapshot.layers)


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


def run_variant(variant: Variant, store_url: str, callbacks=()) -> dict:
    """Train ``variant`` and stream its trajectory into ``store_url``.

    Returns ``{"run_id", "status", "metrics", "n_snapshots", "seconds", "error"}``.
    """
    check_wired(variant)
    if variant.on_bad_init is not None:  # the detector watches; a restart trains linked attempts
        return run_with_policy(variant, store_url, callbacks)
    return train_attempt(variant, variant.run_id, store_url, callbacks)


def train_attempt(variant: Variant, run_id: str, store_url: str, callbacks=(), *,
                  attrs: dict | None = None, judge=None) -> dict:
    """Train ``variant`` into the store as run ``run_id`` (the body of :func:`run_variant`).

    ``attrs``: attributes stored with the run from its creation (restart links);
    ``judge(result) -> (status, attrs)``: the final status and attributes to record
    (the bad-initialization policy's verdict); default the training result's status.
    """
    t0 = time.perf_counter()
    store = TrajectoryStore(store_url)
    if store.status(run_id) in FINISHED:
        return summary_of_stored(store.open_run(run_id))
    device = pick_device(variant.resources.num_gpus)
    torch.set_num_threads(max(1, int(variant.resources.num_cpus)))
    task, model, layout = build_parts(variant, device)
    writer = store.create_run(
        run_id,
        layout,
        config=variant.model_dump(mode="json"),
        capacity=variant.snapshot_capacity(),
        dtype=variant.snapshot.dtype,
        extra={"device": device, "sweep": variant.sweep, "t_start": time.time(),
               "chance_loss": task_chance(task, variant.loss), **(attrs or {})},
    )
    try:
        loss_fn = build_loss_spec(variant.loss)
        kw = {"weight_decay": variant.weight_decay}
        if variant.optimizer in ("sgd", "rmsprop"):
            kw["momentum"] = variant.momentum
        optimizer = build_optimizer(variant.optimizer, model.parameters(), variant.lr, **kw)
        monitor = stop_monitor(variant, layout)
        if monitor is not None:
            callbacks = (*callbacks, monitor)
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
            callbacks=[*task_callbacks(model, task, device), *callbacks, *hooks],  # clean_error first
        )
        extra = {"epochs_run": result.epochs_run, "steps": result.steps,
                 "stopped_early": bool(getattr(result, "stopped_early", False)), "t_end": time.time()}
        extra.update(hook_records(hooks))   # events (prune, Koopman jumps) for the analysis
        status = result.status
        if monitor is not None:
            extra["stop"] = stop_record(monitor, result)
        if judge is not None:
            status, more = judge(result)
            extra.update(more)
        writer.finish(status, metrics=result.history, extra=extra)
        return _summary(run_id, status, result.history, writer.n_snapshots, time.perf_counter() - t0)
    except Exception as e:  # noqa: BLE001 - recorded as a failed run, redone on re-run
        reason = f"{type(e).__name__}: {e}"
        log.error("run %s failed: %s\n%s", run_id, reason, traceback.format_exc())
        writer.abort(reason)
        return _summary(run_id, "failed", {}, writer.n_snapshots, time.perf_counter() - t0,
                        error=reason if isinstance(e, KMAError) else reason + "\n" + traceback.format_exc())


def stop_monitor(variant: Variant, layout=None):
    """The in-task :class:`~pipeline.training.monitor.SpectrumMonitor` of the sweep option
    ``stop: {rule, when: converged, window, every}`` (None when the option is absent):
    the spectra of the last ``window`` snapshots, cut at the verdicts' threshold, every
    ``every`` snapshots, judged by the second-version verdict (``rule: v2``: whole
    network and every layer of ``layout``, the losses, the rest of the budget) or the
    first version's criterion (``rule: v1``: the whole network's certified share at 1)."""
    if variant.stop is None:
        return None
    from ..apps.convergence import VERDICT_CUT, Criterion
    from .monitor import SpectrumMonitor

    if variant.stop.rule == "v1":
        return SpectrumMonitor(window=variant.stop.window, every=variant.stop.every,
                               threshold=VERDICT_CUT, criterion=Criterion())
    from ..apps.horizon import HorizonCriterion
    from ..koopman.core import dtype_roundoff

    capacity = variant.snapshot_capacity()   # snapshot.unit epoch: SweepConfig refuses v2 otherwise
    return SpectrumMonitor(window=variant.stop.window, every=variant.stop.every,
                           threshold=VERDICT_CUT, horizon=HorizonCriterion(),
                           groups=layout.layer_ranges() if layout is not None else None,
                           budget_snapshots=capacity, budget_epochs=variant.epochs,
                           unit_roundoff=dtype_roundoff(variant.snapshot.dtype))


def stop_record(monitor, result) -> dict:
    """What the store (run attribute ``stop``) and MLflow (tags ``kma.stop.*``) keep:
    where and why training stopped, or that it ran its full budget."""
    if result.stopped_early and monitor.stop_point is not None:
        return dict(monitor.stop_point)
    rec = {"when": "converged", "rule": "v1" if monitor.horizon is None else "v2",
           "reason": "budget" if result.status == "complete" else result.status,
           "snapshot": None, "epoch": None, "window": monitor.window, "every": monitor.every}
    if monitor.verdict is not None:    # v2: the class the last window read as
        rec["class"] = monitor.verdict["class"]
    if monitor.stop_point is not None:   # held only at the last epoch: nothing left to save
        rec.update(converged_at=monitor.stop_point["converged_at"],
                   converged_epoch=monitor.stop_point["converged_epoch"])
    return rec


def summary_of_stored(run) -> dict:
    """The summary of a run already finished in the store (nothing trained now)."""
    return _summary(run.run_id, run.status, run.metrics, run.n_snapshots, 0.0)


def _summary(run_id, status, metrics, n_snapshots, seconds, error=None) -> dict:
    return {
        "run_id": run_id,
        "status": status,
        "metrics": metrics,
        "n_snapshots": int(n_snapshots),
        "seconds": float(seconds),
        "error": error,
    }


def run_with_policy(variant, store_url: str, callbacks=()) -> dict:
    """Train ``variant`` and, as its ``on_bad_init`` policy says, its restart attempts.

    Returns attempt 0's summary (as :func:`run_variant`) with
    ``"attempts"``: the summaries of every attempt of the chain, in order (attempts
    already finished in the store are read back, not retrained).
    """
    policy = variant.on_bad_init
    root = variant.run_id
    last = policy.max_restarts if policy.action == "restart" else 0
    store = TrajectoryStore(store_url)
    layout = variant_layout(variant)
    groups = layout.layer_ranges()
    summaries: list[dict] = []
    for k in range(last + 1):
        rid = attempt_id(root, k)
        if store.status(rid) in FINISHED:          # a re-run: this attempt is done
            run = store.open_run(rid)
            summaries.append(summary_of_stored(run))
            if run.status == BAD_INIT and run.attrs.get("restarted_as"):
                continue
            break
        v = attempt_variant(variant, k)
        monitor = BadInitMonitor(policy.after, groups, policy.action, rule=policy.rule, layout=layout, lr=v.lr,
                                 chance=variant_chance(v) if policy.rule == "v3" else None)
        next_id = attempt_id(root, k + 1) if k < last else None
        links = {"variant_run_id": root, "attempt": k}
        if k:
            links["restart_of"] = attempt_id(root, k - 1)
        summary = train_attempt(v, rid, store_url, [*callbacks, monitor], attrs=links,
                                judge=lambda result, m=monitor, n=next_id: m.judge(result, n))
        summaries.append(summary)
        if summary["status"] != BAD_INIT or next_id is None:
            break
        log.info("run %s: bad initialization; restarting as %s", rid, next_id)
    return {**summaries[0], "attempts": summaries}
