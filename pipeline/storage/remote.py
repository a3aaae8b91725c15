"""Object storage as the store meets it on a cluster: retries, credentials, one-line errors.

A remote store (``s3://``, ``gs://``, any fsspec URL) is a zarr ``FsspecStore`` wrapped in
a :class:`RemoteStore`, which adds two things and nothing else:

- **Retries, in one place.** A request that fails because the object store cannot be
  reached (connection refused or reset, a timeout, a 5xx answer) is retried with
  exponential backoff (0.5 s, doubling, at most 8 s between tries) for at most
  ``KMA_STORE_RETRY_SECONDS`` (default 60 s) per request, each wait logged as a warning
  (at most one line a second per store). botocore's own retries are switched off
  (:func:`storage_options`: one attempt per request), so a request is never retried by
  two layers at once; s3fs keeps its retries of throttling answers (``SlowDown``). When the
  time is up the request fails with :class:`StoreUnreachable`, one line; each write is a
  whole object, so what was written before stays whole (a run cut short is re-trained or
  re-ingested by the next attempt; an analysis cut short is never listed as current).
  A missing bucket, refused credentials or no credentials are not retried.
- **Credentials never travel.** A pickled :class:`RemoteStore` is its URL and nothing
  more: the Dask graph shipped to workers, a Ray task's arguments, anything that pickles
  a zarr array of the store carries no key, secret or ``storage_options`` (fsspec would
  otherwise pickle its filesystem with whatever ``FSSPEC_S3_*`` put into it). Each
  process that unpickles one builds its own filesystem from its own environment: AWS_*
  variables, ``~/.aws``, an instance or pod role (botocore's credential chain).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import time
from typing import Any

from zarr.storage import WrapperStore

from ..errors import StoreError
from .protocol import Capabilities

log = logging.getLogger(__name__)

RETRY_ENV = "KMA_STORE_RETRY_SECONDS"
DEFAULT_RETRY_S = 60.0
_FIRST_WAIT_S, _MAX_WAIT_S = 0.5, 8.0
# fsspec protocols whose PUT replaces an object whole (a reader sees the old or the new one)
_WHOLE_OBJECT = {"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "memory"}


class StoreUnreachable(StoreError):
    """The object store stayed unreachable for the whole retry budget."""


def retry_budget() -> float:
    """Seconds a request may keep retrying (``KMA_STORE_RETRY_SECONDS``, default 60)."""
    raw = os.environ.get(RETRY_ENV, "")
    try:
        return max(0.0, float(raw)) if raw.strip() else DEFAULT_RETRY_S
    except ValueError:
        raise StoreError(f"{RETRY_ENV}={raw!r}: expected a number of seconds") from None


def storage_options(url: str) -> dict | None:
    """The fsspec options KMA passes for ``url``: no credentials, ever (those come from
    each node's environment). For S3: fail a connection within 10 s and let botocore try
    each request once (:class:`RemoteStore` retries)."""
    if url.startswith(("s3://", "s3a://")):
        return {"config_kwargs": {"connect_timeout": 10, "retries": {"total_max_attempts": 1}}}
    return None


# --------------------------------------------------------------------------- what is transient
_TRANSIENT_NAMES = {
    # botocore: no connection, connection dropped, timeouts (ConnectionError, HTTPClientError)
    "EndpointConnectionError", "ConnectionClosedError", "ConnectTimeoutError", "ReadTimeoutError",
    "ProxyConnectionError", "HTTPClientError", "ConnectionError",
    # aiohttp / asyncio / fsspec
    "ClientConnectorError", "ClientConnectionError", "ServerDisconnectedError", "ClientOSError",
    "ServerTimeoutError", "ClientPayloadError", "FSTimeoutError", "IncompleteRead",
}
_TRANSIENT_CODES = {"InternalError", "ServiceUnavailable", "SlowDown", "RequestTimeout", "503", "500"}


def is_transient(e: BaseException) -> bool:
    """True for a failure to reach the store (worth retrying), looking through the
    chain of causes (s3fs turns botocore errors into ``OSError`` with the cause kept).
    Missing buckets, access denied and missing credentials are not transient."""
    seen = 0
    while e is not None and seen < 8:
        if isinstance(e, (ConnectionError, TimeoutError, asyncio.TimeoutError)):
            return True
        if any(c.__name__ in _TRANSIENT_NAMES for c in type(e).__mro__):
            return True
        response = getattr(e, "response", None)
        if isinstance(response, dict):
            err = response.get("Error") or {}
            status = (response.get("ResponseMetadata") or {}).get("HTTPStatusCode") or 0
            if str(err.get("Code")) in _TRANSIENT_CODES or int(status) >= 500:
                return True
        e, seen = e.__cause__ or e.__context__, seen + 1
    return False


def cause_line(e: BaseException) -> str:
    """``EndpointConnectionError: Could not connect to ...`` (the first line, shortened)."""
    text = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


# --------------------------------------------------------------------------- the store
class RemoteStore(WrapperStore):
    """A zarr store on object storage that retries what fails to reach it and pickles
    as its URL (module docstring). Built by :func:`open_remote`."""

    def __init__(self, store, url: str, read_only: bool = False):
        super().__init__(store)
        self.url = url
        self._ro = read_only
        self._last_log = 0.0

    # -- pickling: the URL only --------------------------------------------------------
    def __reduce__(self):
        return _reopen, (self.url, self._ro)

    def _with_store(self, store):
        return type(self)(store, self.url, bool(store.read_only))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RemoteStore) and self.url == other.url and self._ro == other._ro

    def __hash__(self) -> int:
        return hash((self.url, self._ro))

    def __repr__(self) -> str:
        return f"RemoteStore({self.url!r})"

    __str__ = __repr__

    # -- capabilities -----------------------------------------------------------------
    @property
    def _protocols(self) -> set[str]:
        protocols = getattr(getattr(self._store, "fs", None), "protocol", ())
        return set(protocols if isinstance(protocols, (tuple, list)) else (protocols,))

    @property
    def capabilities(self) -> Capabilities:
        """S3 creates a key atomically (a conditional PUT, :meth:`_create`); every object
        store lists and replaces whole objects; other fsspec filesystems promise neither."""
        whole = bool(self._protocols & _WHOLE_OBJECT)
        return Capabilities(conditional_create="s3" in self._protocols, listing=True, atomic_replace=whole)

    # -- retries --------------------------------------------------------------------
    async def _retry(self, what: str, call):
        budget = retry_budget()
        t0 = time.monotonic()
        wait, tries = _FIRST_WAIT_S, 0
        while True:
            try:
                return await call()
            except Exception as e:  # noqa: BLE001 - classified below; the rest re-raised as is
                tries += 1
                if isinstance(e, StoreError) or not is_transient(e):
                    raise
                spent = time.monotonic() - t0
                if spent + wait > budget:
                    raise StoreUnreachable(
                        f"store {self.url}: unreachable for {spent:.0f} s ({tries} tries of {what}; {cause_line(e)}); "
                        f"what was written before is kept; run the command again when the store is back "
                        f"(retry time: {RETRY_ENV}, now {budget:g} s)") from None
                now = time.monotonic()
                if now - self._last_log >= 1.0:
                    self._last_log = now
                    log.warning("store %s: unreachable (%s); retrying %s in %.1f s (try %d, %.0f s of %g s)",
                                self.url, cause_line(e), what, wait, tries, spent, budget)
                await asyncio.sleep(wait)
                wait = min(2 * wait, _MAX_WAIT_S)

    async def get(self, key, prototype, byte_range=None):
        return await self._retry(f"a read of {key}", lambda: self._store.get(key, prototype, byte_range))

    async def get_partial_values(self, prototype, key_ranges):
        key_ranges = list(key_ranges)
        return await self._retry("a read", lambda: self._store.get_partial_values(prototype, key_ranges))

    async def exists(self, key):
        return await self._retry(f"a check of {key}", lambda: self._store.exists(key))

    async def set(self, key, value):
        await self._retry(f"a write of {key}", lambda: self._store.set(key, value))

    async def set_if_not_exists(self, key, value):
        return await self._retry(f"a write of {key}", lambda: self._create(key, value))

    async def _create(self, key, value):
        """Write ``key`` only if absent. On S3 a conditional PUT (``If-None-Match: *``, AWS
        S3 since 2024, MinIO, moto): atomic, so two writers on different machines cannot
        both create it; elsewhere (and where the endpoint refuses conditional writes)
        zarr's create-if-absent, a check then a write on object stores."""
        if self.capabilities.conditional_create:
            try:
                await self._store.fs._pipe_file(f"{self._store.path.rstrip('/')}/{key}", value.to_bytes(), mode="create")
                return
            except FileExistsError:
                return  # another writer created it first
            except Exception as e:  # noqa: BLE001 - transient: retried; refused: the plain way
                if is_transient(e):
                    raise
                log.debug("conditional write of %s refused (%s); create-if-absent instead", key, e)
        await self._store.set_if_not_exists(key, value)

    async def _set_many(self, values):
        for key, value in values:
            await self.set(key, value)

    async def delete(self, key):
        await self._retry(f"a delete of {key}", lambda: self._store.delete(key))

    async def delete_dir(self, prefix):
        await self._retry(f"a delete of {prefix}", lambda: self._store.delete_dir(prefix))

    async def _listed(self, what: str, listing):
        async def collect():
            return [k async for k in listing()]
        return await self._retry(what, collect)

    async def list(self):
        for k in await self._listed("a listing", self._store.list):
            yield k

    async def list_prefix(self, prefix):
        for k in await self._listed(f"a listing of {prefix}", lambda: self._store.list_prefix(prefix)):
            yield k

    async def list_dir(self, prefix):
        for k in await self._listed(f"a listing of {prefix}", lambda: self._store.list_dir(prefix)):
            yield k

    async def _get_many(self, requests):
        for key, prototype, byte_range in requests:
            yield key, await self.get(key, prototype, byte_range)


def missing_bucket(store: RemoteStore) -> str | None:
    """The bucket of an ``s3://`` store when it does not exist (None otherwise, or when
    that cannot be told): a clearer line than "no KMA store here"."""
    if not store.url.startswith(("s3://", "s3a://")):
        return None
    from zarr.core.sync import sync

    bucket = store.url.split("://", 1)[1].split("/", 1)[0]
    fs = store._store.fs
    try:
        sync(fs._call_s3("head_bucket", Bucket=bucket))
    except Exception as e:  # noqa: BLE001 - only a clear "no such bucket" counts
        if isinstance(e, FileNotFoundError) or "NoSuchBucket" in str(e) or "Not Found" in str(e) or "404" in str(e):
            return bucket
    return None


class _DroppedConnectionNoise(logging.Filter):
    """aiohttp writes a request body in a task of its own; when the connection drops
    under it (the outage :class:`RemoteStore` retries), asyncio logs that task's error
    with a traceback ("Task exception was never retrieved"). The request itself fails
    and is retried: drop that line, keep every other asyncio error."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not ("never retrieved" in str(record.msg) and exc is not None and is_transient(exc))


def _quiet_dropped_connections() -> None:
    logger = logging.getLogger("asyncio")
    if not any(isinstance(f, _DroppedConnectionNoise) for f in logger.filters):
        logger.addFilter(_DroppedConnectionNoise())


def open_remote(url: str, *, read_only: bool = False) -> RemoteStore:
    """A :class:`RemoteStore` for ``url`` built from this process' environment (its
    filesystem, its credentials). Raises ``ImportError``/``ValueError`` for an unknown
    protocol or a missing library (the caller names the store)."""
    from zarr.storage import FsspecStore

    _quiet_dropped_connections()
    inner = FsspecStore.from_url(url, read_only=read_only, storage_options=storage_options(url))
    return RemoteStore(inner, url, read_only)


@functools.lru_cache(maxsize=16)
def _reopen(url: str, read_only: bool) -> RemoteStore:
    """Unpickling a :class:`RemoteStore` on a worker: one store per URL and process."""
    return open_remote(url, read_only=read_only)


def reopen(url: str, read_only: bool = False) -> RemoteStore:
    """What a worker gets for a pickled store (public for tests)."""
    return _reopen(url, read_only)


__all__: list[Any] = ["RemoteStore", "StoreUnreachable", "is_transient", "open_remote", "retry_budget",
                      "storage_options", "RETRY_ENV"]
