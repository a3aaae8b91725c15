"""Named registries: look a builder up by name, call it with checked keyword parameters.

Shared by tasks, models, initializations, losses and optimizers so that every unknown
name lists the known ones and every unknown or invalid parameter is a
:class:`~pipeline.errors.ConfigError` naming it.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Mapping

from ..errors import ConfigError, plural


def lookup(registry: Mapping[str, Any], name: str, what: str) -> Any:
    """Return ``registry[name]``; unknown name → ConfigError listing the known names."""
    try:
        return registry[name]
    except (KeyError, TypeError):
        known = ", ".join(sorted(registry))
        raise ConfigError(f"unknown {what} {name!r}; known {what}s: {known}") from None


def check_params(fn: Callable, params: Mapping[str, Any], what: str,
                 reserved: tuple[str, ...] = ()) -> None:
    """Raise ConfigError if ``params`` holds a keyword that ``fn`` does not accept.

    ``reserved`` keywords are passed by the caller itself and are not accepted in
    ``params``.
    """
    sig = inspect.signature(fn)
    if any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
        return
    accepted = [
        n for n, p in sig.parameters.items()
        if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and n not in reserved
    ]
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ConfigError(
            f"unknown {plural(len(unknown), 'parameter', count=False)} {', '.join(unknown)} for {what}; "
            f"accepted: {', '.join(accepted) or '(none)'}"
        )


def register(registry: dict[str, Any], name: str) -> Callable:
    """Decorator adding a builder to ``registry`` under ``name`` (no silent overwrite)."""

    def deco(fn):
        if name in registry:
            raise ValueError(f"{name!r} is already registered")
        registry[name] = fn
        return fn

    return deco
