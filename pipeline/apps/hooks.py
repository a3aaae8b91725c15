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


def _pruner(cfg, model, optimizer, task, loss_fn, layout, device):
    from .prune import Pruner

    return Pruner(model, optimizer, layout, cfg)


def _accelerator(cfg, model, optimizer, task, loss_fn, layout, device):
    from .accelerate import Accelerator, batch_loss

    x = task.x_train[:EVAL_BATCH].to(device)
    y = task.y_train[:EVAL_BATCH].to(device)
    return Accelerator(model, optimizer, layout, cfg, batch_loss(model, loss_fn, x, y))


def _freezer(cfg, model, optimizer, task, loss_fn, layout, device):
    from .freeze import Freezer

    return Freezer(model, optimizer, layout, cfg)


# The training options that are training callbacks: option name -> builder
# ``(config, model, optimizer, task, loss_fn, layout, device) -> callback``, in the order
# the callbacks run (freeze last: its step post-hook restores frozen weights after the
# others). The options themselves are declared in pipeline.config.policies.TrainingOptions.
HOOKS = {"prune": _pruner, "accelerate": _accelerator, "freeze": _freezer}


def training_hooks(variant, model, optimizer, task, loss_fn, layout, device) -> list:
    """Callbacks for the variant's options in :data:`HOOKS` (empty when all are off)."""
    options = variant.options()
    return [build(options[name], model, optimizer, task, loss_fn, layout, device)
            for name, build in HOOKS.items() if name in options]


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


__all__ = ["HOOKS", "training_hooks", "hook_records", "EVAL_BATCH"]
