"""Loading a sweep: YAML, ``KEY=VALUE`` overrides, validation with one-line errors
naming the path, and the checks across keys (grid lists, grid losses, registry names)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from ..errors import ConfigError, plural
from ..yamlload import join_path, load_file, load_text
from .base import _as_list, _show
from .losses import GRID_LOSSES, GRID_TASKS, loss_label, loss_name
from .sweep import SweepConfig, _axes


_TYPE_ERRORS = {"int_type", "float_type", "string_type", "bool_type", "list_type", "dict_type",
                "model_type", "int_from_float", "literal_error", "finite_number"}


def _format_error(source: str, err: ValidationError) -> str:
    first = err.errors()[0]
    path = join_path([p for p in first["loc"] if not _is_tag(p)])
    kind = first["type"]
    if kind == "extra_forbidden":
        msg = "unknown key"
    else:
        msg = first["msg"].removeprefix("Value error, ")
        if kind in _TYPE_ERRORS and "input" in first:
            msg += f", got {_show(first['input'])}"
    more = f" (and {plural(len(err.errors()) - 1, 'more problem')})" if len(err.errors()) > 1 else ""
    return f"{source}: {path or '<top>'}: {msg}{more}"


_TAGS = {"multiscale", "digits", "blobs"}


def _is_tag(p) -> bool:
    """A union member's tag in an error location (``list[int]``, ``multiscale``)."""
    return isinstance(p, str) and (p in _TAGS or "[" in p or p in {"int", "float", "str", "bool"})


def parse_overrides(overrides: list[str] | None, source: str = "override") -> dict:
    """``["model.depth=[2,4]", "epochs=3"]`` → nested dict (values parsed as YAML)."""
    out: dict = {}
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"{source}: override {item!r}: expected KEY=VALUE, e.g. epochs=5")
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        if not all(p.strip() for p in parts):
            raise ConfigError(f"{source}: override {item!r}: expected KEY=VALUE with a dotted key, "
                              "e.g. model.depth=4")
        parsed = load_text(value, f"{source}: {key.strip()}", what=f"override value {value!r} is not valid YAML")
        node = out
        for p in parts[:-1]:
            child = node.setdefault(p, {})
            if not isinstance(child, dict):  # `a=1 a.b=2`: the later override wins
                child = node[p] = {}
            node = child
        node[parts[-1]] = parsed
    return out


def _merge(base: dict, over: dict) -> dict:
    merged = dict(base)
    for k, v in over.items():
        merged[k] = _merge(merged[k], v) if isinstance(v, dict) and isinstance(merged.get(k), dict) else v
    return merged


def _check_finite(data: Any, source: str, path: list) -> None:
    """Every number in the raw config is finite (``.nan``/``.inf`` are YAML floats)."""
    if isinstance(data, float) and not math.isfinite(data):
        raise ConfigError(f"{source}: {join_path(path) or '<top>'}: must be a finite number, got {data}")
    if isinstance(data, dict):
        for k, v in data.items():
            _check_finite(v, source, [*path, k])
    elif isinstance(data, list):
        for i, v in enumerate(data):
            _check_finite(v, source, [*path, i])


def validate(data: Any, source: str = "config", *, names: bool = True) -> SweepConfig:
    """Validate a mapping into a :class:`SweepConfig`; ConfigError with the path if not.

    ``names=False`` leaves the registry names (which import torch, seconds) to a later
    :func:`check_names`, so that a grid can be counted and refused at once.
    """
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of keys to values at the top level")
    _check_finite(data, source, [])
    try:
        cfg = SweepConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_error(source, err)) from None
    _check_axes(cfg, source)
    _check_grid_losses(cfg, source)
    if names:
        check_names(cfg, source)
    return cfg


def load(path: str | Path, overrides: list[str] | None = None, *, names: bool = True) -> SweepConfig:
    """Read, merge ``KEY=VALUE`` overrides into, and validate a sweep YAML file."""
    path = Path(path)
    data = load_file(path)
    over = parse_overrides(overrides, str(path))
    if data is None:
        data = {}
    if isinstance(data, dict):
        data = _merge(data, over)
    return validate(data, str(path), names=names)


def _check_axes(cfg: SweepConfig, source: str) -> None:
    """No value twice in a grid list (it would train the same variant twice)."""
    for path, values in _axes(cfg):
        seen = set()
        for x in values:
            if x in seen:
                shown = repr(loss_label(x)) if isinstance(x, BaseModel) else repr(x)
                raise ConfigError(f"{source}: {path}: {shown} is listed twice; a grid lists each value once")
            seen.add(x)


def _check_grid_losses(cfg: SweepConfig, source: str) -> None:
    """A loss that needs the grid (sobolev) needs a grid task that trains on the whole
    grid, in full-batch steps (so that every loss of the sweep takes the same steps)."""
    for loss in _as_list(cfg.loss):
        if loss_name(loss) not in GRID_LOSSES:
            continue
        label, task = loss_label(loss), cfg.task
        if task.name not in GRID_TASKS:
            raise ConfigError(f"{source}: loss: {label} needs a task on a uniform grid "
                              f"({', '.join(GRID_TASKS)}); task {task.name!r} has none")
        fixes = []
        if task.val != "fresh_noise":
            fixes.append("task.val: fresh_noise (train on the whole grid, validate on a fresh noise draw)")
        if cfg.batch_size < task.n_points:
            fixes.append(f"batch_size >= {task.n_points} (task.n_points: it steps full-batch)")
        if fixes:
            raise ConfigError(f"{source}: loss: {label} needs the whole grid in order; set "
                              + " and ".join(fixes))


def check_names(cfg: SweepConfig, source: str) -> None:
    """Registry names (activation, init, optimizer, loss) must exist."""
    from ..training import inits
    from ..training import losses
    from ..training import models
    from ..training import optim

    checks = [
        ("model.activation", cfg.model.activation, models.ACTIVATIONS),
        ("init", cfg.init, inits.INITS),
        ("optimizer.name", cfg.optimizer.name, optim.OPTIMIZERS),
        ("loss", [loss_name(x) for x in _as_list(cfg.loss)], losses.LOSSES),
    ]
    for path, value, registry in checks:
        for name in _as_list(value):
            if name not in registry:
                known = ", ".join(sorted(registry))
                raise ConfigError(f"{source}: {path}: unknown name {name!r}; known: {known}")
    fallback = cfg.on_bad_init.fallback_init if cfg.on_bad_init is not None else None
    if fallback is not None and fallback not in inits.INITS:
        known = ", ".join(sorted(inits.INITS))
        raise ConfigError(f"{source}: on_bad_init.fallback_init: unknown name {fallback!r}; known: {known}")
    _check_policies_fire(cfg, source)
    if cfg.model.family == "cnn" and cfg.task.name != "digits":
        raise ConfigError(f"{source}: model.family: 'cnn' needs an image task (digits)")


def _check_policies_fire(cfg, source: str) -> None:
    """A policy option that needs more snapshots than a run takes can never fire: refused,
    naming the run's snapshot count (known when snapshots are taken per epoch)."""
    if cfg.snapshot.unit != "epoch":
        return
    taken = 1 + cfg.epochs // cfg.snapshot.every
    declared = cfg.option_fields()
    needs = [(f"{name}.{declared[name].needs}", getattr(opt, declared[name].needs))
             for name, opt in cfg.options().items() if declared[name].needs]
    for key, need in needs:
        if need and need > taken:
            raise ConfigError(f"{source}: {key}: {need} snapshots, but a run takes only {taken} "
                              f"(epochs {cfg.epochs}, snapshot.every {cfg.snapshot.every}), so it never "
                              "fires; lower it or train longer")
