"""Loss functions by name: ``build_loss(name, **params) -> callable(pred, target)``.

To add a loss, register a factory that takes keyword parameters and returns a callable
``(pred, target) -> scalar tensor``::

    @register(LOSSES, "my_loss")
    def _my_loss(*, scale: float = 1.0):
        return lambda pred, target: scale * (pred - target).pow(2).mean()

Unknown names and unknown parameters are :class:`~pipeline.errors.ConfigError`.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ..errors import ConfigError
from .registry import check_params, lookup, register

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
LOSSES: dict[str, Callable[..., Loss]] = {}


def build_loss(name: str, **params) -> Loss:
    """The loss ``name`` configured with ``params``.

    Parameters
    ----------
    name : str
        A key of :data:`LOSSES`: ``mse``, ``l1``, ``huber``, ``cross_entropy``,
        ``sobolev`` (H^-s on a uniform grid: :mod:`pipeline.training.sobolev`).
    **params
        Factory keywords (e.g. ``delta`` for ``huber``, ``label_smoothing`` for
        ``cross_entropy``).
    """
    factory = lookup(LOSSES, name, "loss")
    check_params(factory, params, f"loss {name!r}")
    return factory(**params)


@register(LOSSES, "mse")
def _mse() -> Loss:
    """Mean squared error; ``pred`` and ``target`` of equal shape ``(N, out_dim)``."""
    return nn.MSELoss()


@register(LOSSES, "l1")
def _l1() -> Loss:
    """Mean absolute error."""
    return nn.L1Loss()


@register(LOSSES, "huber")
def _huber(*, delta: float = 1.0) -> Loss:
    """Huber loss: quadratic below ``delta``, linear above."""
    if not delta > 0:
        raise ConfigError(f"huber delta must be > 0, got {delta}")
    return nn.HuberLoss(delta=float(delta))


@register(LOSSES, "cross_entropy")
def _cross_entropy(*, label_smoothing: float = 0.0) -> Loss:
    """Cross-entropy on logits ``(N, C)`` against int64 labels ``(N,)``."""
    if not 0.0 <= label_smoothing < 1.0:
        raise ConfigError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
    return nn.CrossEntropyLoss(label_smoothing=float(label_smoothing))


@register(LOSSES, "sobolev")
def _sobolev(*, s: float, mse_weight: float = 0.0) -> Loss:
    """H^-s loss on the uniform grid, optionally blended with MSE
    (:class:`~pipeline.training.sobolev.SobolevLoss`); steps full-batch in grid order."""
    from .sobolev import SobolevLoss

    return SobolevLoss(float(s), float(mse_weight))


def build_loss_spec(spec) -> Loss:
    """The loss of a sweep variant's ``loss``: a plain name (``"mse"``) or a mapping
    model with a ``name`` (:class:`~pipeline.config.SobolevLossSpec`)."""
    if isinstance(spec, str):
        return build_loss(spec)
    params = spec.model_dump(exclude={"name"}) if hasattr(spec, "model_dump") else {
        k: v for k, v in dict(spec).items() if k != "name"}
    name = spec.name if hasattr(spec, "name") else dict(spec)["name"]
    return build_loss(name, **params)
