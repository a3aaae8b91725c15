"""The training hooks a variant's config asks for (``prune:``, ``accelerate:``,
``freeze:``), and the events they record for the store.

:func:`training_hooks` builds the callbacks for :func:`pipeline.training.loop.train`
from a resolved :class:`~pipeline.config.Variant` and the parts the runner built;
:func:`hook_records` gathers what they recorded into the run's metadata:
``events`` (``[{"kind": "prune" | "jump" | "freeze", "snapshot": i, "epoch": e, ...}]``, ``i`` the
first snapshot after the event; the analysis never lets a window straddle one) and,
for acceleration, ``jump_attempts`` (every attempt with its outcome), for freezing,
``freeze_decisions`` (every decision, also those that froze nothing).
"""

from __future__ import annotations


EVAL_BATCH = 1024  # training samples the accelerator's loss check uses (the first ones)


def training_hooks(variant, model, optimizer, task, loss_fn, layout, device) -> list:
    """Callbacks for ``variant.prune`` / ``accelerate`` / ``freeze`` (empty when all are off)."""
    hooks = []
    prune = getattr(variant, "prune", None)
    accelerate = getattr(variant, "accelerate", None)
    if prune is not None:
        from .prune import Pruner

        hooks.append(Pruner(model, optimizer, layout, prune))
    if accelerate is not None:
        from .accelerate import Accelerator, batch_loss

        x = task.x_train[:EVAL_BATCH].to(device)
        y = task.y_train[:EVAL_BATCH].to(device)
        hooks.append(Accelerator(model, optimizer, layout, accelerate, batch_loss(model, loss_fn, x, y)))
    freeze = getattr(variant, "freeze", None)
    if freeze is not None:   # last: its step post-hook restores frozen weights after the others
        from .freeze import Freezer

        hooks.append(Freezer(model, optimizer, layout, freeze))
    return hooks


def hook_records(hooks) -> dict:
    """``{"events": [...], "jump_attempts": [...]}`` for the run's metadata; ``{}`` when
    there are no hooks (runs without them store exactly what they stored before)."""
    if not hooks:
        return {}
    events = sorted((e for h in hooks for e in getattr(h, "events", [])), key=lambda e: e["snapshot"])
    out = {"events": events}
    attempts = [a for h in hooks for a in getattr(h, "log", [])]
    if attempts:
        out["jump_attempts"] = attempts
    decisions = [d for h in hooks for d in getattr(h, "decisions", [])]
    if decisions:
        out["freeze_decisions"] = decisions
    return out


__all__ = ["training_hooks", "hook_records", "EVAL_BATCH"]
