"""Leases: which live process is training (or ingesting) a run.

A sweep claims every run it is about to train by writing ``leases/<run_id>.json`` in the
store::

    {"owner": "<host>:<pid>:<token>", "host": str, "pid": int, "sweep": str,
     "heartbeat": <unix seconds>, "timeout": <seconds>}

and renews the heartbeat every ``timeout / 6`` seconds from a background thread
(:class:`LeaseKeeper`) until the run's result is recorded; then it deletes the lease.
A claim is *live* while its heartbeat is younger than its timeout (default
:data:`DEFAULT_TIMEOUT` = 90 s, heartbeat every 15 s; ``$KMA_LEASE_TIMEOUT`` overrides)
and, when the holder is on this host, its process still exists. So:

- a second sweep of the same variants skips the runs a live sweep holds (and says so);
- a sweep that died (killed, machine lost) stops renewing, and its claims expire: the
  next sweep takes them over; on the same host a dead holder's claim expires at once;
- ``kma runs`` shows a ``running`` run without a live lease as ``interrupted``.

Lease writes are idempotent (the holder rewrites its own document), and a lease lives
outside ``runs/<run_id>/``, so a Ray task that retries and wipes its unfinished run
keeps the claim. Claiming writes with create-if-absent and reads the lease back, so two
sweeps racing for one free run agree on a single holder on stores whose backend declares
an atomic create (``Capabilities.conditional_create``: local disk; S3 through a
conditional PUT, :func:`_create`); heartbeats are wall-clock, so hosts sharing a store need synchronised clocks.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass

from .protocol import capabilities_of
from .runids import check_run_id

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 90.0


@functools.lru_cache(maxsize=1)
def _host() -> str:
    return socket.gethostname()


def lease_timeout() -> float:
    """``$KMA_LEASE_TIMEOUT`` seconds (at least 1), else :data:`DEFAULT_TIMEOUT`."""
    try:
        return max(1.0, float(os.environ.get("KMA_LEASE_TIMEOUT", DEFAULT_TIMEOUT)))
    except ValueError:
        return DEFAULT_TIMEOUT


def _key(run_id: str) -> str:
    return f"leases/{check_run_id(run_id)}.json"


@dataclass
class Lease:
    owner: str
    host: str
    pid: int
    sweep: str
    heartbeat: float
    timeout: float

    def live(self, now: float | None = None) -> bool:
        """Heartbeat younger than the timeout and, on this host, the holder still exists."""
        now = time.time() if now is None else now
        if now - self.heartbeat > self.timeout:
            return False
        if self.host == _host() and self.pid != os.getpid():
            try:
                os.kill(self.pid, 0)
            except ProcessLookupError:
                return False
            except PermissionError:
                pass  # exists, owned by another user
        return True

    def describe(self, now: float | None = None) -> str:
        age = (time.time() if now is None else now) - self.heartbeat
        return f"sweep {self.sweep!r} on {self.host} (pid {self.pid}), heartbeat {age:.0f}s ago"


def read(store, run_id: str) -> Lease | None:
    """The run's lease, or None (absent or unreadable: unreadable counts as free)."""
    try:
        raw = store.get_bytes(_key(run_id))
    except Exception:  # noqa: BLE001 - unreadable, transient: treated as no claim
        return None
    if raw is None:
        return None
    try:
        d = json.loads(raw)
        return Lease(str(d["owner"]), str(d["host"]), int(d["pid"]), str(d.get("sweep", "")),
                     float(d["heartbeat"]), float(d["timeout"]))
    except (ValueError, KeyError, TypeError):
        return None


def is_live(store, run_id: str) -> bool:
    lease = read(store, run_id)
    return lease is not None and lease.live()


def _create(store, key: str, data: bytes) -> None:
    """Write ``key`` only if absent: the store's create-if-absent, atomic where its backend
    declares ``conditional_create`` (local disk; S3, a conditional PUT), a check then a
    write elsewhere (the read-back in :meth:`LeaseKeeper.claim` then narrows the race to a
    few milliseconds)."""
    store.set_bytes(key, data, exclusive=True)


class LeaseKeeper:
    """The claims one process holds, with a heartbeat thread renewing them.

    Use as a context manager: leaving it stops the heartbeat and releases every claim
    still held (best effort; a claim not released expires on its own).
    """

    def __init__(self, store, sweep: str, *, timeout: float | None = None):
        self.store, self.sweep = store, sweep
        self.timeout = float(timeout) if timeout else lease_timeout()
        self.owner = f"{_host()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
        self.held: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if not capabilities_of(store).conditional_create:
            log.info("store %s: no atomic create; racing claims are settled by reading them back",
                     getattr(store, "url", store))

    def _doc(self) -> bytes:
        return json.dumps({"owner": self.owner, "host": _host(), "pid": os.getpid(), "sweep": self.sweep,
                           "heartbeat": time.time(), "timeout": self.timeout}).encode()

    def claim(self, run_id: str) -> Lease | None:
        """Claim ``run_id``. Returns None when this keeper now holds it, or the live
        lease of the other holder (then nothing is written)."""
        key = _key(run_id)
        current = read(self.store, run_id)
        if current is not None and current.owner != self.owner:
            if current.live():
                return current
            log.info("run %s: taking over an expired claim (%s)", run_id, current.describe())
            try:
                self.store.delete_key(key)
            except FileNotFoundError:
                pass
        if current is None or current.owner != self.owner:
            _create(self.store, key, self._doc())
        else:
            self.store.set_bytes(key, self._doc())
        after = read(self.store, run_id)
        if after is not None and after.owner != self.owner and after.live():
            return after  # another sweep won the race
        if after is None or after.owner != self.owner:  # store without atomic create
            self.store.set_bytes(key, self._doc())
        with self._lock:
            self.held.add(run_id)
        return None

    def release(self, run_id: str) -> None:
        """Drop the claim (only if this keeper still holds it)."""
        with self._lock:  # (the heartbeat writes under the same lock: no renewal after this)
            self.held.discard(run_id)
            try:
                current = read(self.store, run_id)
                if current is not None and current.owner == self.owner:
                    self.store.delete_key(_key(run_id))
            except Exception as e:  # noqa: BLE001 - it expires on its own
                log.warning("run %s: could not release its lease (%s)", run_id, e)

    def renew(self) -> None:
        """Rewrite the heartbeat of every held claim (one small write each)."""
        with self._lock:
            held = sorted(self.held)
        for rid in held:
            with self._lock:
                if rid not in self.held:
                    continue  # released meanwhile
                try:
                    self.store.set_bytes(_key(rid), self._doc())
                except Exception as e:  # noqa: BLE001 - retried on the next beat
                    log.warning("run %s: lease heartbeat failed (%s)", rid, e)

    def _beat(self) -> None:
        while not self._stop.wait(self.timeout / 6):
            self.renew()

    def __enter__(self) -> "LeaseKeeper":
        self._thread = threading.Thread(target=self._beat, daemon=True, name="kma-lease-heartbeat")
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        for rid in sorted(self.held):
            self.release(rid)
