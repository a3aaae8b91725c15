"""The schema's base: strict models, and the grid fields (one value or a list of them).

Every model forbids unknown keys: a typo is an error naming its path
(``model.widht: unknown key``), never a silently ignored value.
"""

from __future__ import annotations

import math
from typing import Annotated, ClassVar, Union

from pydantic import BaseModel, BeforeValidator, ConfigDict


class _Strict(BaseModel):
    # strict: "32" is not an integer, 1 is not True; a non-finite float is refused
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)

    # The fields a run id hashed when the identity rule was set: they always
    # enter the identity, at their defaults too, so that the ids of existing runs stay.
    # A field added later enters only when it differs from its default (see identity()).
    ID_KEYS_V1: ClassVar[frozenset[str]] = frozenset()
    # Per field, the value that stays out of the identity when it is not the default
    # (a field whose new default changes the trajectory: the old value keeps old ids).
    ID_DEFAULTS: ClassVar[dict] = {}



def _as_list(v) -> list:
    return list(v) if isinstance(v, (list, tuple)) else [v]


def _show(x) -> str:
    if isinstance(x, str):
        return f"the string {x[:40]!r}"
    return f"{type(x).__name__} {str(x)[:40]}"


_KIND_NAMES = {int: "an integer", float: "a number", str: "a name"}


def _is_kind(x, kind) -> bool:
    if isinstance(x, bool):
        return False
    if kind is float:
        return isinstance(x, (int, float)) and math.isfinite(x)
    return isinstance(x, kind)


def _grid_check(kind):
    """A grid field holds one value or a non-empty list of values, each of ``kind``."""

    def check(v):
        if isinstance(v, list) and not v:
            raise ValueError("empty list: give at least one value (a list sweeps over its values)")
        for x in _as_list(v):
            if not _is_kind(x, kind):
                raise ValueError(f"expected {_KIND_NAMES[kind]} or a list of them, got {_show(x)}")
        return v

    return BeforeValidator(check)


IntGrid = Annotated[Union[int, list[int]], _grid_check(int)]
FloatGrid = Annotated[Union[float, list[float]], _grid_check(float)]
NameGrid = Annotated[Union[str, list[str]], _grid_check(str)]
