"""Which variants train packed, and how a pack trains.

``pack: auto`` (the default) groups a sweep's variants by :func:`pack_key` (everything
but initialization, seed, learning rate and loss) into packs of at most ``pack_max``
members, split evenly (32 members as 16 + 16 with ``pack_max: 16``, 20 as 10 + 10 with
``pack_max: 16``); one pack is one Ray task holding the variant's ``resources`` once.
Variants with a training option the packed trainer does not run (each option says so where
it is declared, :class:`~pipeline.config.policies.TrainingOptions`: it runs the spectral
``stop`` and ``on_bad_init``, whose restart attempts train unpacked after the pack; not the
training callbacks ``prune``, ``accelerate``, ``freeze``), a full-batch H^-s loss (a mapping), a family
other than ``mlp`` (``cnn``, ``hier``), a width above :data:`MAX_PACKED_WIDTH`, an
activation without a written-out derivative, or an optimizer other than sgd/adam/adamw
are not packed: they run as before, one task each (see :func:`why_unpacked`; the plan logs
one line per reason).
``pack: off`` packs nothing. The driver then spreads packs over idle task slots
(:func:`spread`).
"""

from __future__ import annotations

import logging
import time
import traceback
from typing import TYPE_CHECKING

import torch

from ..errors import KMAError
from ..storage.store import FINISHED, TrajectoryStore
from .packed import (PACKABLE_ACTIVATIONS, PACKABLE_FAMILIES, PACKABLE_LOSSES, PACKABLE_OPTIMIZERS,
                     PackedOptimizer, build_packed, train_packed)
from .restart import BAD_INIT, BadInitMonitor, attempt_id, task_chance
from .runner import (_summary, check_wired, pick_device, run_with_policy, stop_monitor, stop_record,
                     summary_of_stored)

if TYPE_CHECKING:  # a type only: the workflows validate configs, training takes them
    from ..config import Variant

log = logging.getLogger(__name__)

DEFAULT_PACK_MAX = 32
MIN_MEMBERS = 4   # spread() never splits a pack below this many members
MAX_PACKED_WIDTH = 256   # wider MLPs train unpacked: 1.5x at 256 measured, memory x members


def why_unpacked(v: Variant) -> str | None:
    """Why ``v`` cannot be packed (None when it can)."""
    for opt in v.unpacked_options():   # declared packed=False where the option is declared
        return f"{opt} changes one member's control flow"
    if v.family not in PACKABLE_FAMILIES:
        return f"family {v.family} is not packed"
    if not isinstance(v.loss, str) or v.loss not in PACKABLE_LOSSES:
        return "the loss is not one of " + ", ".join(PACKABLE_LOSSES)
    if v.width > MAX_PACKED_WIDTH:
        return (f"width {v.width} > {MAX_PACKED_WIDTH}: packing gains little there (docs: Packed "
                "variants) and a pack holds every member's weights and optimizer state")
    if v.activation not in PACKABLE_ACTIVATIONS:
        return f"activation {v.activation} is not packed"
    if v.optimizer not in PACKABLE_OPTIMIZERS:
        return f"optimizer {v.optimizer} is not packed"
    if getattr(v, "attempt", 0):
        return "a restart attempt"
    return None


def pack_key(v: Variant):
    """What packed members share (None: ``v`` is not packable)."""
    if why_unpacked(v) is not None:
        return None
    return (v.sweep, v.task.model_dump_json(), v.family, v.depth, v.width, v.activation,
            v.batch_size, v.epochs, v.snapshot.model_dump_json(), v.optimizer, v.momentum,
            v.weight_decay, v.resources.model_dump_json())


def plan_packs(variants: list[Variant], pack: str = "auto", pack_max: int = DEFAULT_PACK_MAX
               ) -> list[list[Variant]]:
    """The sweep's tasks: lists of variants, in the variants' order of first appearance;
    a one-element list is trained unpacked (:func:`pipeline.training.runner.run_variant`)."""
    if pack == "off" or pack_max <= 1:
        return [[v] for v in variants]
    groups: dict = {}
    tasks: list = []
    alone: dict[str, list[str]] = {}
    for v in variants:
        key = pack_key(v)
        if key is None:
            tasks.append([v])
            alone.setdefault(why_unpacked(v), []).append(v.run_id)
            continue
        if key not in groups:
            groups[key] = []
            tasks.append(groups[key])   # placeholder, split below
        groups[key].append(v)
    for why, ids in alone.items():
        log.info("%d variant%s train%s unpacked: %s (first: %s)", len(ids), "s" if len(ids) > 1 else "",
                 "" if len(ids) > 1 else "s", why, ids[0])
    out = []
    for t in tasks:
        if len(t) <= pack_max:
            out.append(t)
            continue
        out.extend(_split(t, -(-len(t) // pack_max)))
    return out


def _split(members: list, k: int) -> list[list]:
    """``members`` in ``k`` consecutive packs whose sizes differ by at most one."""
    size, extra = divmod(len(members), k)
    out, start = [], 0
    for i in range(k):
        stop = start + size + (1 if i < extra else 0)
        out.append(members[start:stop])
        start = stop
    return out


def spread(tasks: list[list], slots: int, min_members: int = MIN_MEMBERS) -> list[list]:
    """``tasks`` re-split so that ``slots`` tasks can run at once where there are fewer
    tasks than that: the largest pack is split evenly in two (both halves at least
    ``min_members``) until there are ``slots`` tasks or no pack can be split. With enough
    tasks to fill the slots nothing changes (a larger pack costs less per member)."""
    tasks = [list(t) for t in tasks]
    while len(tasks) < slots:
        big = max(range(len(tasks)), key=lambda i: len(tasks[i]), default=None)
        if big is None or len(tasks[big]) < 2 * min_members:
            break
        tasks[big:big + 1] = _split(tasks[big], 2)
    return tasks


def run_pack(variants: list[Variant], store_url: str) -> dict:
    """Train ``variants`` (one :func:`pack_key`) packed into ``store_url``: each member is
    its own run (own writer, metrics, status); finished members are skipped, unfinished
    ones (re)trained. Returns ``{"run_id", "status": "packed", "attempts": [summary, ...]}``."""
    t0 = time.perf_counter()
    store = TrajectoryStore(store_url)
    done = [v for v in variants if store.status(v.run_id) in FINISHED]
    todo = [v for v in variants if store.status(v.run_id) not in FINISHED]
    summaries = {v.run_id: summary_of_stored(store.open_run(v.run_id)) for v in done}
    label = f"pack:{variants[0].run_id}+{len(variants) - 1}"
    for v in todo:
        check_wired(v)
    if len(todo) == 1:
        from .runner import run_variant

        summaries[todo[0].run_id] = run_variant(todo[0], store_url)
    elif todo:
        summaries.update(_train_members(todo, store, t0))
    attempts = []
    for v in variants:
        one = summaries[v.run_id]
        if (one["status"] == BAD_INIT and "attempts" not in one and v.on_bad_init is not None
                and v.on_bad_init.action == "restart"):
            # attempt 0 is stored: the chain's restarts train unpacked (or are read back)
            one = run_with_policy(v, store_url)
        attempts.extend(one.get("attempts") or [one])
    return {"run_id": label, "status": "packed", "attempts": attempts}


def _train_members(todo: list[Variant], store, t0) -> dict:
    v0 = todo[0]
    device = pick_device(v0.resources.num_gpus)
    torch.set_num_threads(max(1, int(v0.resources.num_cpus)))
    tasks, model, layout = build_packed(todo, device)
    writers = []
    hooks = [_MemberHooks(v, layout, t) for v, t in zip(todo, tasks)]
    try:
        for v, h in zip(todo, hooks):
            writers.append(store.create_run(
                v.run_id, layout, config=v.model_dump(mode="json"), capacity=v.snapshot_capacity(),
                dtype=v.snapshot.dtype,
                extra={"device": device, "sweep": v.sweep, "t_start": time.time(), "chance_loss": h.chance,
                       "packed": {"members": len(todo), "index": len(writers)}, **h.links}))
        optimizer = PackedOptimizer(v0.optimizer, model.flat, model.grad, [v.lr for v in todo],
                                    momentum=v0.momentum if v0.optimizer == "sgd" else 0.0,
                                    weight_decay=v0.weight_decay)
        results = train_packed(
            model, tasks, [v.loss for v in todo], optimizer, epochs=v0.epochs,
            batch_size=v0.batch_size, snapshot_every=v0.snapshot.every,
            snapshot_unit=v0.snapshot.unit, layout=layout, sinks=writers, device=device,
            generators=[torch.Generator().manual_seed(v.torch_seed + 1) for v in todo],
            callbacks=[h.callbacks for h in hooks])
    except Exception as e:  # noqa: BLE001 - every member recorded failed, redone on re-run
        reason = f"{type(e).__name__}: {e}"
        log.error("pack of %d failed: %s\n%s", len(todo), reason, traceback.format_exc())
        out = {}
        for v, w in zip(todo, writers):
            w.abort(reason)
        for v in todo:
            out[v.run_id] = _summary(v.run_id, "failed", {}, 0, time.perf_counter() - t0,
                                     error=reason if isinstance(e, KMAError) else
                                     reason + "\n" + traceback.format_exc())
        return out
    out = {}
    seconds = time.perf_counter() - t0
    for v, w, r, h in zip(todo, writers, results, hooks):
        try:
            status, more = h.finish(r)
            w.finish(status, metrics=r.history,
                     extra={"epochs_run": r.epochs_run, "steps": r.steps, "stopped_early": bool(r.stopped_early),
                            "t_end": time.time(), **({"diverged_because": r.message} if r.message else {}),
                            **more})
            out[v.run_id] = _summary(v.run_id, status, r.history, w.n_snapshots, seconds)
        except Exception as e:  # noqa: BLE001 - this member failed writing; the others stand
            out[v.run_id] = _summary(v.run_id, "failed", {}, w.n_snapshots, seconds,
                                     error=f"{type(e).__name__}: {e}")
    return out


class _MemberHooks:
    """The callbacks of one packed member's options (those the trainers wire:
    :data:`pipeline.training.runner.TRAINER_OPTIONS`), built and recorded as
    :func:`pipeline.training.runner.train_attempt` builds and records them for a variant
    trained alone: the spectral stop's monitor (run attribute ``stop``) and attempt 0 of
    the bad-initialization policy (links, verdict, status ``bad_init``)."""

    def __init__(self, v: Variant, layout, task=None):
        self.monitor = stop_monitor(v, layout)
        self.chance = task_chance(task, v.loss) if task is not None else None
        self.bad = self.next_id = None
        self.links: dict = {}
        if v.on_bad_init is not None:
            policy = v.on_bad_init
            self.bad = BadInitMonitor(policy.after, layout.layer_ranges(), policy.action,
                                      rule=policy.rule, layout=layout, lr=v.lr, chance=self.chance)
            self.links = {"variant_run_id": v.run_id, "attempt": 0}
            if policy.action == "restart":
                self.next_id = attempt_id(v.run_id, 1)
        self.callbacks = [c for c in (self.monitor, self.bad) if c is not None]

    def finish(self, result) -> tuple[str, dict]:
        """The member's final status and the attributes its options record."""
        status, extra = result.status, {}
        if self.monitor is not None:
            extra["stop"] = stop_record(self.monitor, result)
        if self.bad is not None:
            status, more = self.bad.judge(result, self.next_id)
            extra.update(more)
        return status, extra
