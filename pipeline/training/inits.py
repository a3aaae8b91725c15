"""Named weight initializations, applied in place with an explicit ``torch.Generator``.

Each scheme initializes every weight matrix / kernel (parameters with ``ndim >= 2``) and
its bias. Biases are set to zero except by ``default``, which reproduces PyTorch's own
``Linear``/``Conv`` initialization (but drawn from the given generator, so a run is
reproducible from its seed). Parameters with ``ndim < 2`` that are not biases (e.g.
normalization scales) are left alone.

Good schemes: ``kaiming`` (He et al. 2015, normal, fan-in), ``kaiming_uniform``,
``xavier`` (Glorot & Bengio 2010, uniform), ``xavier_normal``, ``orthogonal`` (Saxe et al.
2014), ``default``. Deliberately bad ones, for detecting bad initializations from the
Koopman spectrum: ``zeros``, ``constant`` (all weights 0.5), ``large_variance``
(normal, std 3.0), ``small_variance`` (normal, std 1e-4).
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from .registry import lookup, register

# scheme(weight, bias_or_None, generator, nonlinearity) -> None, in place, under no_grad
INITS: dict[str, Callable[..., None]] = {}

CONSTANT_VALUE = 0.5
LARGE_STD = 3.0
SMALL_STD = 1e-4

# torch.nn.init.calculate_gain names for our activations
_GAIN_NAME = {
    "relu": "relu", "gelu": "relu", "silu": "relu",
    "tanh": "tanh", "sigmoid": "sigmoid", "identity": "linear", "linear": "linear",
}


def apply_init(model: nn.Module, scheme: str, generator: torch.Generator) -> nn.Module:
    """Initialize ``model``'s weights in place with ``scheme``; returns ``model``.

    Parameters
    ----------
    model : nn.Module
        Its ``activation`` attribute (a name, set by :func:`pipeline.training.models.build_model`)
        chooses the gain; ``linear`` when absent.
    scheme : str
        A name in :data:`INITS`; unknown → ConfigError listing the known ones.
    generator : torch.Generator
        Source of all random draws (on the parameters' device).
    """
    init = lookup(INITS, scheme, "initialization")
    nonlinearity = _GAIN_NAME.get(getattr(model, "activation", "linear"), "linear")
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, weight in params.items():
            if weight.dim() < 2:
                continue
            prefix = name.rsplit(".", 1)[0] + "." if "." in name else ""
            bias = params.get(prefix + "bias")
            init(weight, bias, generator, nonlinearity)
    return model


def _zero(bias):
    if bias is not None:
        bias.zero_()


def _fan_in(weight: torch.Tensor) -> int:
    return int(weight.shape[1] * math.prod(weight.shape[2:]))


@register(INITS, "default")
def _default(weight, bias, generator, nonlinearity):
    """PyTorch's Linear/Conv reset: U(±1/sqrt(fan_in)) for weights and biases."""
    nn.init.kaiming_uniform_(weight, a=math.sqrt(5), generator=generator)
    if bias is not None:
        bound = 1.0 / math.sqrt(_fan_in(weight)) if _fan_in(weight) > 0 else 0.0
        nn.init.uniform_(bias, -bound, bound, generator=generator)


@register(INITS, "kaiming")
def _kaiming(weight, bias, generator, nonlinearity):
    nn.init.kaiming_normal_(weight, mode="fan_in", nonlinearity=nonlinearity,
                            generator=generator)
    _zero(bias)


@register(INITS, "kaiming_uniform")
def _kaiming_uniform(weight, bias, generator, nonlinearity):
    nn.init.kaiming_uniform_(weight, mode="fan_in", nonlinearity=nonlinearity,
                             generator=generator)
    _zero(bias)


@register(INITS, "xavier")
def _xavier(weight, bias, generator, nonlinearity):
    nn.init.xavier_uniform_(weight, gain=nn.init.calculate_gain(nonlinearity),
                            generator=generator)
    _zero(bias)


@register(INITS, "xavier_normal")
def _xavier_normal(weight, bias, generator, nonlinearity):
    nn.init.xavier_normal_(weight, gain=nn.init.calculate_gain(nonlinearity),
                           generator=generator)
    _zero(bias)


@register(INITS, "orthogonal")
def _orthogonal(weight, bias, generator, nonlinearity):
    nn.init.orthogonal_(weight, gain=nn.init.calculate_gain(nonlinearity), generator=generator)
    _zero(bias)


@register(INITS, "zeros")
def _zeros(weight, bias, generator, nonlinearity):
    weight.zero_()
    _zero(bias)


@register(INITS, "constant")
def _constant(weight, bias, generator, nonlinearity):
    weight.fill_(CONSTANT_VALUE)
    _zero(bias)


@register(INITS, "large_variance")
def _large_variance(weight, bias, generator, nonlinearity):
    nn.init.normal_(weight, 0.0, LARGE_STD, generator=generator)
    _zero(bias)


@register(INITS, "small_variance")
def _small_variance(weight, bias, generator, nonlinearity):
    nn.init.normal_(weight, 0.0, SMALL_STD, generator=generator)
    _zero(bias)
