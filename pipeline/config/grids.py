"""The network and optimizer sections of a sweep: grids of values (``depth: [2, 4]``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from .base import FloatGrid, IntGrid, NameGrid, _as_list, _Strict


class ModelGrid(_Strict):
    family: Literal["mlp", "cnn", "hier"] = "mlp"
    depth: IntGrid = 2
    width: IntGrid = 32
    activation: NameGrid = "tanh"

    @field_validator("depth", "width")
    @classmethod
    def _positive(cls, v):
        if any(int(x) < 1 for x in _as_list(v)):
            raise ValueError("must be >= 1")
        return v


class OptimizerGrid(_Strict):
    name: NameGrid = "adam"
    lr: FloatGrid = 1e-3
    momentum: float = Field(0.0, ge=0.0, lt=1.0)
    weight_decay: float = Field(0.0, ge=0.0)

    @field_validator("lr")
    @classmethod
    def _lr_positive(cls, v):
        if any(float(x) <= 0 for x in _as_list(v)):
            raise ValueError("learning rate must be > 0")
        return v
