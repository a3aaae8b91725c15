"""Optimizers by name: ``build_optimizer(name, params, lr, **kw)``.

=========  =====================  ===============================================
name       torch class            keywords (defaults)
=========  =====================  ===============================================
sgd        ``torch.optim.SGD``    momentum (0.0), nesterov, weight_decay, dampening
adam       ``torch.optim.Adam``   betas, eps, weight_decay, amsgrad
adamw      ``torch.optim.AdamW``  betas, eps, weight_decay (0.01), amsgrad
rmsprop    ``torch.optim.RMSprop``  alpha, eps, momentum, weight_decay, centered
=========  =====================  ===============================================
"""

from __future__ import annotations

from typing import Iterable

import torch

from ..errors import ConfigError, plural
from .registry import lookup

OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "sgd": torch.optim.SGD,
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "rmsprop": torch.optim.RMSprop,
}

_ALLOWED = {
    "sgd": {"momentum", "nesterov", "weight_decay", "dampening"},
    "adam": {"betas", "eps", "weight_decay", "amsgrad"},
    "adamw": {"betas", "eps", "weight_decay", "amsgrad"},
    "rmsprop": {"alpha", "eps", "momentum", "weight_decay", "centered"},
}


def build_optimizer(name: str, params: Iterable, lr: float, **kw) -> torch.optim.Optimizer:
    """Optimizer ``name`` over ``params`` with learning rate ``lr``.

    Raises
    ------
    ConfigError
        Unknown optimizer (lists the known ones), unknown keyword, or a value the
        optimizer rejects (e.g. ``lr <= 0``, negative momentum).
    """
    cls = lookup(OPTIMIZERS, name, "optimizer")
    unknown = sorted(set(kw) - _ALLOWED[name])
    if unknown:
        raise ConfigError(
            f"unknown {plural(len(unknown), 'parameter', count=False)} {', '.join(unknown)} for optimizer {name!r}; "
            f"accepted: lr, {', '.join(sorted(_ALLOWED[name]))}"
        )
    if not lr > 0:
        raise ConfigError(f"optimizer lr must be > 0, got {lr}")
    if "betas" in kw:
        kw["betas"] = tuple(kw["betas"])
    try:
        return cls(params, lr=float(lr), **kw)
    except ValueError as exc:  # torch's own range checks ("Invalid momentum value: -1")
        raise ConfigError(f"optimizer {name!r}: {exc}") from None
