"""Loss values of a sweep: plain names, or mappings validated by their schema
(``{name: sobolev, s: 1.0}``), their names and canonical labels."""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import BeforeValidator, Field, ValidationError

from ..yamlload import join_path
from .base import _show, _Strict


class SobolevLossSpec(_Strict):
    """``loss: {name: sobolev, s: 1.0, mse_weight: 0.0}``: the H^-s loss on the task's
    uniform grid, blended with ``mse_weight`` × MSE (:mod:`pipeline.training.sobolev`)."""

    name: Literal["sobolev"]
    s: float = Field(ge=0.0)
    mse_weight: float = Field(0.0, ge=0.0, le=1.0)


LossSpec = SobolevLossSpec             # losses configured by a mapping (name → schema below)
LOSS_SPECS: dict[str, type[_Strict]] = {"sobolev": SobolevLossSpec}
GRID_TASKS = ("multiscale",)          # tasks whose data live on a uniform grid
GRID_LOSSES = ("sobolev",)            # losses that need that grid, whole and in order


def _loss_entry(x):
    """One loss of a grid: a name, or a mapping → its schema; ``{name: mse}`` is ``mse``."""
    if isinstance(x, str) and x in LOSS_SPECS:  # `loss: sobolev` is {name: sobolev}: needs its s
        x = {"name": x}
    if isinstance(x, str) or isinstance(x, tuple(LOSS_SPECS.values())):
        return x
    if not isinstance(x, dict):
        raise ValueError(f"expected a loss name, a mapping such as {{name: sobolev, s: 1.0}} "
                         f"or a list of them, got {_show(x)}")
    name = x.get("name")
    if not isinstance(name, str):
        raise ValueError("a loss mapping needs a name, e.g. {name: sobolev, s: 1.0}")
    if set(x) == {"name"} and name not in LOSS_SPECS:
        return name
    if name not in LOSS_SPECS:
        raise ValueError(f"loss {name!r} takes no parameters; give its plain name "
                         f"(mappings configure: {', '.join(LOSS_SPECS)})")
    try:
        return LOSS_SPECS[name].model_validate(x)
    except ValidationError as err:
        first = err.errors()[0]
        where = join_path(list(first["loc"]))
        msg = "unknown key" if first["type"] == "extra_forbidden" else first["msg"]
        raise ValueError(f"{name}: {where}: {msg}") from None


def _loss_grid_check(v):
    if isinstance(v, list):
        if not v:
            raise ValueError("empty list: give at least one value (a list sweeps over its values)")
        return [_loss_entry(x) for x in v]
    return _loss_entry(v)


LossValue = Union[str, SobolevLossSpec]
LossGrid = Annotated[Union[str, SobolevLossSpec, list[Union[str, SobolevLossSpec]]],
                     BeforeValidator(_loss_grid_check)]


def loss_name(loss) -> str:
    """The registry name of a loss value (a name, a spec model or its dumped mapping)."""
    if isinstance(loss, str):
        return loss
    return str(loss["name"] if isinstance(loss, dict) else loss.name)


def loss_label(loss) -> str:
    """A loss's canonical label: ``mse``, ``sobolev(s=1)``, ``sobolev(s=2,mse_weight=0.5)``
    (parameters at their defaults left out); what ``kma compare --by loss`` groups by and
    the MLflow param ``loss`` of a variant whose loss is a mapping."""
    if isinstance(loss, str):
        return loss
    d = dict(loss) if isinstance(loss, dict) else loss.model_dump()
    name = str(d.pop("name"))
    spec = LOSS_SPECS.get(name)
    parts = []
    for k, v in d.items():
        field = spec.model_fields.get(k) if spec else None
        if field is not None and not field.is_required() and v == field.get_default():
            continue
        parts.append(f"{k}={v:g}" if isinstance(v, (int, float)) and not isinstance(v, bool) else f"{k}={v}")
    return f"{name}({','.join(parts)})" if parts else name
