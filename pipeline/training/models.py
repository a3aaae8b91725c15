"""Model families, by name: a multilayer perceptron and a small CNN.

Module names are stable so that parameter names (and hence layers in the trajectory
layout) read the same in every run: hidden layers are ``layers.0``, ``layers.1``, ...,
the readout is ``out``. Parameter names are ``layers.0.weight``, ``out.bias`` etc.
Activations hold no parameters and do not appear in the layout.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
from torch import nn

from ..errors import ConfigError
from .registry import lookup, register

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "gelu": nn.GELU,
    "sigmoid": nn.Sigmoid,
    "silu": nn.SiLU,
    "identity": nn.Identity,
    "linear": nn.Identity,
}

MODELS: dict[str, Callable[..., nn.Module]] = {}


def build_activation(name: str) -> nn.Module:
    """A fresh activation module by name; unknown → ConfigError listing known ones."""
    return lookup(ACTIVATIONS, name, "activation")()


def build_model(family: str, in_dim: int | Sequence[int], out_dim: int, depth: int,
                width: int, activation: str = "relu") -> nn.Module:
    """Build a model of ``family`` (``mlp`` or ``cnn``).

    Parameters
    ----------
    family : str
        Registered family name.
    in_dim : int or sequence of int
        Input features (flat), or the sample shape ``(C, H, W)`` for ``cnn``; a flat
        ``in_dim`` for ``cnn`` must be a perfect square (one channel).
    out_dim : int
        Outputs (classes for classification).
    depth : int
        Hidden layers (``mlp``) or convolution layers (``cnn``), ``>= 0``.
    width : int
        Hidden units (``mlp``) or channels (``cnn``), ``>= 1``.
    activation : str
        A name in :data:`ACTIVATIONS`.

    The returned model carries ``model.activation`` (the name), used by
    :func:`pipeline.training.inits.apply_init` for gains.
    """
    builder = lookup(MODELS, family, "model family")
    if int(depth) < 0:
        raise ConfigError(f"depth must be >= 0, got {depth}")
    if int(width) < 1:
        raise ConfigError(f"width must be >= 1, got {width}")
    if int(out_dim) < 1:
        raise ConfigError(f"out_dim must be >= 1, got {out_dim}")
    build_activation(activation)  # validates the name
    return builder(in_dim, int(out_dim), int(depth), int(width), activation)


@register(MODELS, "mlp")
class MLP(nn.Module):
    """``depth`` hidden Linear layers of ``width`` units with one activation, then ``out``.

    Input ``(N, in_dim)`` (further dims are flattened), output ``(N, out_dim)``.
    """

    def __init__(self, in_dim, out_dim: int, depth: int, width: int, activation: str):
        super().__init__()
        in_features = int(math.prod(in_dim)) if isinstance(in_dim, (tuple, list)) else int(in_dim)
        if in_features < 1:
            raise ConfigError(f"in_dim must be >= 1, got {in_dim}")
        self.activation = activation
        dims = [in_features] + [width] * depth
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.act = build_activation(activation)
        self.out = nn.Linear(dims[-1], out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        for layer in self.layers:
            x = self.act(layer(x))
        return self.out(x)


@register(MODELS, "cnn")
class CNN(nn.Module):
    """``depth`` 3×3 convolutions (``width`` channels, padding 1), then a Linear ``out``.

    Input ``(N, C*H*W)`` or ``(N, C, H, W)``; output ``(N, out_dim)``. Sized for small
    images such as the 8×8 digits (no pooling).
    """

    def __init__(self, in_dim, out_dim: int, depth: int, width: int, activation: str):
        super().__init__()
        if isinstance(in_dim, (tuple, list)):
            if len(in_dim) != 3:
                raise ConfigError(f"cnn needs in_dim (C, H, W), got {tuple(in_dim)}")
            shape = tuple(int(s) for s in in_dim)
        else:
            side = math.isqrt(int(in_dim))
            if side * side != int(in_dim):
                raise ConfigError(
                    f"cnn needs a square single-channel input, in_dim={in_dim} is not a square"
                )
            shape = (1, side, side)
        self.activation = activation
        self.input_shape = shape
        channels = [shape[0]] + [width] * depth
        self.layers = nn.ModuleList(
            nn.Conv2d(a, b, kernel_size=3, padding=1) for a, b in zip(channels[:-1], channels[1:])
        )
        self.act = build_activation(activation)
        self.out = nn.Linear(channels[-1] * shape[1] * shape[2], out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(x.shape[0], *self.input_shape)
        for layer in self.layers:
            x = self.act(layer(x))
        return self.out(x.flatten(1))


HIER_RATIO = 8.0   # stage k of ``hier`` sees x at frequency HIER_RATIO**k (cycles per x unit)


@register(MODELS, "hier")
class Hier(nn.Module):
    """A hierarchical stack in which depth is scale: stage ``k`` sees the input only
    through its phase at frequency ``F_k = HIER_RATIO**k`` (period ``1/F_k`` in x units),
    ``e_k(x) = [sin 2πF_k x, cos 2πF_k x]``, and adds ``width`` features
    ``act(layers.k(e_k(x)))``; the readout ``out`` is linear in the features of all
    stages, so the output is a sum of per-stage terms (a coarse-to-fine expansion, as in
    hierarchical SVR: Mohr et al., Entropy 2021). A stage can represent periodic
    functions of period ``1/F_k`` (a few harmonics of ``F_k``: as many as ``width``
    allows), nothing coarser: a finer scale needs another stage.

    Input ``(N, in_dim)`` (each feature encoded), output ``(N, out_dim)``; ``depth >= 1``
    stages; parameters ``layers.k.weight`` ``(width, 2 in_dim)``, ``out.weight``
    ``(out_dim, depth · width)``.
    """

    def __init__(self, in_dim, out_dim: int, depth: int, width: int, activation: str):
        super().__init__()
        in_features = int(math.prod(in_dim)) if isinstance(in_dim, (tuple, list)) else int(in_dim)
        if in_features < 1:
            raise ConfigError(f"in_dim must be >= 1, got {in_dim}")
        if depth < 1:
            raise ConfigError(f"hier needs depth >= 1 (one stage per scale), got {depth}")
        self.activation = activation
        self.register_buffer("freqs", torch.tensor([HIER_RATIO ** k for k in range(depth)]),
                             persistent=False)
        self.layers = nn.ModuleList(nn.Linear(2 * in_features, width) for _ in range(depth))
        self.act = build_activation(activation)
        self.out = nn.Linear(depth * width, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        feats = []
        for f, layer in zip(self.freqs, self.layers):
            phase = 2 * math.pi * f * x
            feats.append(self.act(layer(torch.cat([torch.sin(phase), torch.cos(phase)], dim=1))))
        return self.out(torch.cat(feats, dim=1))
