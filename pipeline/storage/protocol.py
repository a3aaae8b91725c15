"""What the trajectory store needs of a storage backend, and what each backend can do.

A backend is a zarr store (``get``, ``set``, ``delete``, listings: :class:`Backend`) that
declares its :class:`Capabilities`. Callers ask :func:`capabilities_of` instead of
looking at a URL's prefix; a backend module is the only place that knows its storage
(local disk: :mod:`.local`; fsspec object stores, S3 among them: :mod:`.remote`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, AsyncIterator, Protocol, runtime_checkable


@dataclass(frozen=True)
class Capabilities:
    """What a backend guarantees.

    - ``conditional_create``: ``set_if_not_exists`` is atomic across processes and
      machines (two writers cannot both create a key); without it, a check then a write.
    - ``listing``: keys under a prefix can be listed (consistently with earlier writes).
    - ``atomic_replace``: ``set`` of an existing key replaces it whole: a reader sees the
      old object or the new one, never a part.
    """

    conditional_create: bool
    listing: bool
    atomic_replace: bool


NONE = Capabilities(conditional_create=False, listing=False, atomic_replace=False)


@runtime_checkable
class Backend(Protocol):
    """The part of a zarr store the trajectory store uses, plus its capabilities."""

    capabilities: Capabilities

    async def get(self, key: str, prototype: Any, byte_range: Any = None) -> Any: ...
    async def set(self, key: str, value: Any) -> None: ...
    async def set_if_not_exists(self, key: str, value: Any) -> None: ...
    async def delete(self, key: str) -> None: ...
    def list_prefix(self, prefix: str) -> AsyncIterator[str]: ...
    def list_dir(self, prefix: str) -> AsyncIterator[str]: ...


def capabilities_of(store: Any) -> Capabilities:
    """A backend's declared capabilities; a store that declares none is assumed to have none."""
    caps = getattr(store, "capabilities", None)
    return caps if isinstance(caps, Capabilities) else NONE
