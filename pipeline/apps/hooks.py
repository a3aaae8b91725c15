"""The training hooks a variant's config asks for (``prune:``, ``accelerate:``,
``freeze:``), and the events they record for the store.

Each builder here (:func:`pruner`, ...) is named once, by its option's declaration in
:class:`pipeline.config.policies.TrainingOptions`; :func:`training_hooks` builds the
callbacks for :func:`pipeline.training.loop.train` from a resolved
:class:`~pipeline.config.Variant` and the parts the runner built;
:func:`hook_records` gathers what they recorded into the run's metadata:
``events`` (``[{"kind": "prune" | "jump" | "freeze", "snapshot": i, "epoch": e, ...}]``, ``i`` the
first snapshot after the event; the analysis never lets a window straddle one) and,
for acceleration, ``jump_attempts`` (every attempt with its outcome), for freezing,
``freeze_decisions`` (every decision, also those that froze nothing).
"""

from __future__ import annotations


EVAL_BATCH = 1024  # samples the accelerator's loss check uses (the first training ones; validation with scope: layer)


def pruner(cfg, model, optimizer, task, loss_fn, layout, device):
    from .prune import Pruner

    return Pruner(model, optimizer, layout, cfg)


def accelerator(cfg, model, optimizer, task, loss_fn, layout, device):
    from .accelerate import Accelerator, LayerAccelerator, batch_loss

    if cfg.scope == "layer":   # the jump is checked on held-out (validation) samples
        x, y = task.x_val[:EVAL_BATCH].to(device), task.y_val[:EVAL_BATCH].to(device)
        return LayerAccelerator(model, optimizer, layout, cfg, batch_loss(model, loss_fn, x, y))
    x = task.x_train[:EVAL_BATCH].to(device)
    y = task.y_train[:EVAL_BATCH].to(device)
    return Accelerator(model, optimizer, layout, cfg, batch_loss(model, loss_fn, x, y))


def freezer(cfg, model, optimizer, task, loss_fn, layout, device):
    from .freeze import Freezer

    return Freezer(model, optimizer, layout, cfg)


def training_hooks(variant, model, optimizer, task, loss_fn, layout, device) -> list:
    """Callbacks of the variant's options that are training callbacks (those whose
    :class:`~pipeline.config.policies.TrainingOption` names a builder, such as
    :func:`pruner`), in the order the options are declared; empty when none is set."""
    declared = variant.option_fields()
    return [declared[name].build(cfg, model, optimizer, task, loss_fn, layout, device)
            for name, cfg in variant.options().items() if declared[name].build is not None]


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


__all__ = ["training_hooks", "hook_records", "pruner", "accelerator", "freezer", "EVAL_BATCH"]
