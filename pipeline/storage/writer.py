"""Writing a run's trajectory: the group and weights array of a new run, and the
:class:`RunWriter` that streams snapshots into it and records the final status.

:meth:`pipeline.storage.store.TrajectoryStore.create_run` checks the id and wipes an
unfinished earlier attempt, then calls :func:`new_run` here. The status is the last thing
a writer sets: a run is ``complete`` only after its weights and metrics are written.
"""

from __future__ import annotations

import datetime as _dt
import functools
import queue
import subprocess
import threading
import time
from pathlib import Path

import numpy as np

from .. import __version__
from ..errors import StoreError
from .layout import Layout

# bad_init: ended by the bad-initialization policy (on_bad_init: restart or stop), a result
STATUSES = ("running", "complete", "diverged", "failed", "bad_init")
# shown by `kma runs` (never stored): "running" without a live lease, i.e. left by a dead driver
INTERRUPTED = "interrupted"
FINISHED = ("complete", "diverged", "bad_init")  # runs a re-run does not redo
BUFFER_BYTES = 128 * 2**20  # snapshots buffered in memory before a chunk row is written
_P_CHUNK = 2**18  # parameters per chunk column


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """Package version plus the git commit of the source tree, when there is one (asked
    once per process: the code a process runs does not change under it)."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    except Exception:  # noqa: BLE001 - no git is fine
        sha = ""
    return f"{__version__}+{sha}" if sha else __version__


# new runs' weight chunks carry a CRC32C (the ``crc32c`` codec); runs written before it,
# without one, are read as they are
CHECKSUMS = True


def _crc32c():
    from zarr.codecs import Crc32cCodec

    return Crc32cCodec()


def _runs_group(store):
    """The store's ``runs`` group, created if absent. Tasks starting together on a fresh
    store race to create it: zarr's ``require_group`` looks, then creates without
    overwrite, so the loser of the race gets ``ContainsGroupError`` for a group that now
    exists (a sweep's run was marked ``failed`` for it on S3); it is then opened."""
    from zarr.errors import ContainsGroupError

    for attempt in range(5):
        try:
            return store.root.require_group("runs")
        except ContainsGroupError:
            try:
                return store.root["runs"]
            except KeyError:   # an eventually consistent listing: look again
                time.sleep(0.2 * (attempt + 1))
    return store.root["runs"]


def new_run(store, run_id: str, layout: Layout, *, config: dict | None, capacity: int | None,
            dtype: str, extra: dict | None) -> "RunWriter":
    """Create ``runs/<run_id>`` in ``store`` (its group, a ``weights`` array of
    ``capacity`` rows × ``layout.size`` columns, status ``running``) and return its writer;
    the caller has checked the id and removed any earlier attempt."""
    runs = _runs_group(store)
    # The group's metadata, with every attribute, is ONE write (and the first key of
    # the run): a process killed at any point of creation leaves either no run, a
    # whole "running" one, or (local disk, killed inside that write) a folder with
    # nothing in it but zarr's temporary file, which store.cut_short recognises.
    attrs = {
        "status": "running",
        "run_id": run_id,
        "layout": layout.to_records(),
        "config": config or {},
        "code_version": code_version(),
        "stored_dtype": dtype,
        "n_snapshots": 0,
        "created": _now(),
        "updated": _now(),
        **(extra or {}),
    }
    group = runs.create_group(run_id, overwrite=True, attributes=attrs)
    p = max(layout.size, 1)
    storage = "uint16" if dtype == "bfloat16" else dtype
    itemsize = np.dtype(storage).itemsize
    t_chunk = int(max(1, min(64, BUFFER_BYTES // (2 * p * itemsize))))
    cap = int(capacity) if capacity else t_chunk
    group.create_array(
        "weights",
        shape=(cap, layout.size),
        chunks=(t_chunk, min(layout.size, _P_CHUNK) or 1),
        dtype=storage,
        # a lost chunk must read as NaN, never as plausible zeros; and every chunk is
        # written, even an all-zero one, so missing_chunks() can tell loss from zeros
        fill_value=0 if storage == "uint16" else float("nan"),
        # a CRC32C after each chunk: a flipped bit is named when the chunk is read
        # (chunkmap verifies it on mapped reads too); cost on jobs/bench/snapshot_overhead.py
        compressors=[_crc32c()] if CHECKSUMS else None,
        overwrite=True,
        config={"write_empty_chunks": True},
    )
    return RunWriter(store, run_id, group, layout, dtype, t_chunk)


class RunWriter:
    """Streams snapshots of one run into its weights array.

    Snapshots are buffered in memory and written a chunk row at a time by a background
    thread, so training overlaps with I/O. :meth:`finish` flushes, waits for the writes
    and only then records the final status.
    """

    def __init__(self, store, run_id, group, layout, dtype, t_chunk):
        self.store, self.run_id, self.group, self.layout = store, run_id, group, layout
        self.dtype, self.t_chunk = dtype, t_chunk
        self.array = group["weights"]
        self._np_dtype = np.uint16 if dtype == "bfloat16" else np.dtype(dtype)
        self._buf = np.empty((t_chunk, layout.size), self._np_dtype)
        self._fill = 0
        self._written = 0  # rows handed to the writer thread
        self.epochs: list[int] = []
        self.steps: list[int] = []
        self._queue: queue.Queue = queue.Queue(maxsize=1)
        # Buffers come back from the writer thread once written and are reused: a fresh
        # np.empty per flush costs page faults on every touch (~5 ms per 40 MB row).
        # At most three exist: one filling, one queued, one being written.
        self._spare: queue.SimpleQueue = queue.SimpleQueue()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._drain, daemon=True, name=f"kma-writer-{run_id}")
        self._thread.start()
        self._closed = False

    @property
    def n_snapshots(self) -> int:
        return self._written + self._fill

    def reserve(self) -> np.ndarray | None:
        """The buffer row the next snapshot goes to (float32 storage only), so a
        producer can fill it in place; :meth:`append` of that row then copies nothing.
        Valid until the next :meth:`append`."""
        return self._buf[self._fill] if self.dtype == "float32" else None

    def append(self, flat, *, epoch: int = 0, step: int = 0) -> None:
        """Append one snapshot (1-D, length ``layout.size``; torch tensor or numpy)."""
        if self._error is not None:
            raise StoreError(f"run {self.run_id}: writing failed ({self._error})")
        x = flat.numpy() if hasattr(flat, "numpy") and not isinstance(flat, np.ndarray) else flat
        if x.shape != (self.layout.size,):
            raise ValueError(f"snapshot has shape {x.shape}, expected ({self.layout.size},)")
        target = self._buf[self._fill]
        if self.dtype == "bfloat16":
            target[...] = _f32_to_bf16(x)
        elif x.__array_interface__["data"][0] != target.__array_interface__["data"][0]:
            # (same address: the producer filled the row in place via reserve())
            target[...] = x
        self._fill += 1
        self.epochs.append(int(epoch))
        self.steps.append(int(step))
        if self._fill == self.t_chunk:
            self._flush()

    __call__ = append  # a writer is a snapshot sink

    def append_rows(self, rows, epochs, steps) -> None:
        """Append ``k`` snapshots at once: ``rows`` ``(k, layout.size)`` float32 numpy
        (any strides, e.g. one member's rows of a packed task's buffer), copied straight
        into the chunk buffer; ``epochs``, ``steps``: ``k`` ints each."""
        if self._error is not None:
            raise StoreError(f"run {self.run_id}: writing failed ({self._error})")
        k = rows.shape[0]
        if rows.shape[1:] != (self.layout.size,) or len(epochs) != k or len(steps) != k:
            raise ValueError(f"rows have shape {rows.shape}, expected (k, {self.layout.size}) with k epochs and steps")
        i = 0
        while i < k:
            take = min(k - i, self.t_chunk - self._fill)
            target = self._buf[self._fill:self._fill + take]
            target[...] = _f32_to_bf16(rows[i:i + take]) if self.dtype == "bfloat16" else rows[i:i + take]
            self._fill += take
            i += take
            if self._fill == self.t_chunk:
                self._flush()
        self.epochs.extend(int(e) for e in epochs)
        self.steps.extend(int(s) for s in steps)

    def _flush(self) -> None:
        if self._fill == 0:
            return
        self._queue.put((self._written, self._buf, self._fill))
        self._written += self._fill
        try:
            self._buf = self._spare.get_nowait()
        except queue.Empty:
            self._buf = np.empty_like(self._buf)
        self._fill = 0

    def pending(self) -> tuple[int, np.ndarray]:
        """``(k, rows)``: wait until the first ``k`` snapshots — every full chunk row handed
        to the writer thread — are in the store, and return a float32 copy of the rows
        after them, still buffered (``(n_snapshots - k, layout.size)``). Nothing is
        written: a reader of a run still being written sees all of it this way
        (:meth:`pipeline.record.Recorder.verdict`) without a partial chunk written twice."""
        if self._error is not None:
            raise StoreError(f"run {self.run_id}: writing failed ({self._error})")
        if not self._closed:
            done = threading.Event()
            self._queue.put(("wait", done))
            done.wait()
        if self._error is not None:
            raise StoreError(f"run {self.run_id}: writing failed ({self._error})")
        rows = self._buf[:self._fill]
        rows = _bf16_to_f32(rows) if self.dtype == "bfloat16" else rows.astype(np.float32)
        return self._written, rows

    def _write(self, start: int, rows) -> None:
        stop = start + rows.shape[0]
        if stop > self.array.shape[0]:
            grow = max(stop, 2 * self.array.shape[0])
            self.array.resize((grow, self.array.shape[1]))
        self.array[start:stop] = rows

    def _drain(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            if item[0] == "wait":   # pending(): everything queued before is written
                item[1].set()
                continue
            start, buf, n = item
            try:
                self._write(start, buf[:n])
            except BaseException as e:  # noqa: BLE001 - surfaced on the next call
                self._error = e
            self._spare.put(buf)

    def _join(self) -> None:
        if not self._closed:
            self._flush()
            self._queue.put(None)
            self._thread.join()
            self._closed = True
        if self._error is not None:
            raise StoreError(f"run {self.run_id}: writing failed ({self._error})")

    def finish(self, status: str, *, metrics: dict | None = None, extra: dict | None = None) -> None:
        """Flush every snapshot, then record metrics and the final ``status`` (``running``:
        everything written, the run left unfinished, e.g. interrupted)."""
        if status not in STATUSES:
            raise ValueError(f"unknown status {status!r}")
        try:
            self._join()
        except StoreError:
            status = "failed"
            raise
        finally:
            self.group.update_attributes(
                {
                    "n_snapshots": self.n_snapshots,
                    "snapshot_epochs": self.epochs,
                    "snapshot_steps": self.steps,
                    "metrics": _json_safe(metrics or {}),
                    "updated": _now(),
                    **(extra or {}),
                }
            )
            # the status goes last: a run is only "complete" once everything is written
            # ("running": written and closed, not finished: an interrupted Recorder's run)
            self.group.update_attributes({"status": status, **({"finished": _now()} if status != "running" else {})})

    def abort(self, reason: str) -> None:
        """Mark the run failed (best effort); a re-run redoes it."""
        try:
            self._join()
        except StoreError:
            pass
        self.group.update_attributes({"status": "failed", "error": reason[:500], "updated": _now()})


def _bf16_to_f32(bits: np.ndarray) -> np.ndarray:
    """bfloat16 bit patterns (uint16) → float32 (exact)."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


def _f32_to_bf16(x: np.ndarray) -> np.ndarray:
    """Round-to-nearest-even float32 → bfloat16 bit pattern (uint16)."""
    b = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounding = ((b >> 16) & 1) + np.uint32(0x7FFF)
    return ((b + rounding) >> 16).astype(np.uint16)


def _json_safe(obj):
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return float(obj) if np.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj
