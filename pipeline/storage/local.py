"""The local-disk backend: zarr's ``LocalStore`` with its capabilities declared. A local
store creates a key exclusively (``O_EXCL``), lists its folders, and replaces a file
whole (written beside it, then renamed over it)."""

from __future__ import annotations

from zarr.storage import LocalStore

from .protocol import Capabilities


class LocalBackend(LocalStore):
    """zarr's ``LocalStore``, declaring what local disk guarantees."""

    capabilities = Capabilities(conditional_create=True, listing=True, atomic_replace=True)
