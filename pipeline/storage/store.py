"""Trajectory store on Zarr v3: the source of truth for every run.

Layout under the store root (a local path or any fsspec URL)::

    runs/<run_id>/            group; attrs: status, config, layout, code_version,
                              n_snapshots, snapshot_epochs, snapshot_steps, metrics, ...
    runs/<run_id>/weights     array (snapshot × parameter), float32 by default,
                              chunks (t_chunk, p_chunk): tall-skinny column blocks
    runs/<run_id>/analyses/<analysis_id>/   results written by ``kma analyze``
    leases/<run_id>.json      the claim of the sweep training that run (owner, heartbeat;
                              see :mod:`pipeline.storage.lease`), outside the run's prefix so
                              that wiping an unfinished attempt keeps it

The verbs are few (:meth:`TrajectoryStore.create_run`, :meth:`RunWriter.append`,
:meth:`RunWriter.finish`, :meth:`TrajectoryStore.open_run`, :meth:`TrajectoryStore.runs`).
A run is ``complete`` only after its weights and metrics are written: the status is the
last thing a writer sets. Creating a run over one that is not ``complete`` deletes the
old prefix first, so a retried or re-run task always starts clean (writes are safe to
repeat), and each run has exactly one writer (its own array: no shared chunks).
Metadata is written whole: a run's group with all its attributes in one write, every
later attribute change in one write (zarr's ``attrs.update`` would rewrite ``zarr.json``
once per key), and a wipe removes the group's ``zarr.json`` last; so a process killed at
any point leaves a whole run or one :func:`pipeline.storage.health.cut_short` recognises.

Run ids follow :mod:`pipeline.storage.runids`: every write or delete checks its id first and
touches only ``runs/<run_id>/`` (and that run's lease), never a path an id could
escape to. Ids outside the rule already in a store stay listable and readable.
"""

from __future__ import annotations

import datetime as _dt
import logging
import queue
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..errors import KMAError, RunNotFound, StoreError
from .layout import Layout
from .runids import check_run_id, is_valid

log = logging.getLogger(__name__)

# bad_init: ended by the bad-initialization policy (on_bad_init: restart or stop), a result
STATUSES = ("running", "complete", "diverged", "failed", "bad_init")
# shown by `kma runs` (never stored): "running" without a live lease, i.e. left by a dead driver
INTERRUPTED = "interrupted"
FINISHED = ("complete", "diverged", "bad_init")  # runs a re-run does not redo
BUFFER_BYTES = 128 * 2**20  # snapshots buffered in memory before a chunk row is written
_P_CHUNK = 2**18  # parameters per chunk column


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def code_version() -> str:
    """Package version plus the git commit of the source tree, when there is one."""
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


def make_store(url: str, *, read_only: bool = False, create: bool = True):
    """Turn a path or URL into a zarr store, once, at the edge (``create=False``: a
    local folder that does not exist is an error, not created)."""
    import zarr.storage

    url = str(url)
    if "://" not in url or url.startswith("file://"):
        # absolute: zarr's LocalStore.list_prefix strips its root with str.replace, which
        # mangles keys under a relative root ("s/runs/a" -> "runa"): chunks look missing
        path = Path(url.removeprefix("file://")).expanduser().absolute()
        if not read_only and create:
            try:
                path.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise StoreError(f"store {url}: cannot create directory ({e.strerror})") from None
        elif not path.exists():
            raise StoreError(f"store {url}: no such directory")
        return zarr.storage.LocalStore(path, read_only=read_only)
    # an unreachable endpoint fails within seconds, not botocore's default minute per try
    options = {"config_kwargs": {"connect_timeout": 10}} if url.startswith(("s3://", "s3a://")) else None
    try:
        store = zarr.storage.FsspecStore.from_url(url, read_only=read_only, storage_options=options)
    except (ImportError, ValueError) as e:
        raise StoreError(f"store {url}: {e}") from None
    _probe(store, url)
    return store


def _probe(store, url: str) -> None:
    """One request to a remote store, so that missing credentials or a dead endpoint are
    one line here, not a traceback from the first of many concurrent reads."""
    from zarr.core.sync import sync

    try:
        sync(store.exists("zarr.json"))
    except Exception as e:  # noqa: BLE001 - botocore, aiohttp, gcsfs...: any failure is "unreachable"
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        hint = ""
        if type(e).__name__ in ("NoCredentialsError", "PartialCredentialsError"):
            hint = "; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE"
        raise StoreError(f"store {url}: cannot reach it ({type(e).__name__}: {first}){hint}") from None


def check_shareable(url: str) -> None:
    """A store other processes (Ray tasks) can reach: not ``memory://``."""
    if str(url).startswith("memory://"):
        raise StoreError(f"store {url}: a memory:// store lives in one process; "
                         "Ray tasks need a path or object store")


def canonical_url(url: str) -> str:
    """The store's location as recorded elsewhere (MLflow tags): local paths absolute,
    URLs without a trailing slash."""
    url = str(url)
    if "://" not in url or url.startswith("file://"):
        return str(Path(url.removeprefix("file://")).expanduser().resolve())
    return url.rstrip("/")


@dataclass
class RunInfo:
    run_id: str
    status: str
    n_snapshots: int
    n_parameters: int
    created: str | None
    updated: str | None
    id_ok: bool = True  # False: an id from before the run-id rule (readable, not writable)
    error: str | None = None
    restart_of: str | None = None  # a restart attempt: the attempt it replaced (on_bad_init)


class Run:
    """Read access to one stored run."""

    def __init__(self, store: "TrajectoryStore", run_id: str, group):
        self.store = store
        self.run_id = run_id
        self.group = group
        self.attrs: dict[str, Any] = dict(group.attrs)

    @property
    def status(self) -> str:
        return self.attrs.get("status", "running")

    @property
    def layout(self) -> Layout:
        return Layout.from_records(self.attrs["layout"])

    @property
    def config(self) -> dict:
        return self.attrs.get("config", {})

    @property
    def metrics(self) -> dict[str, list]:
        return self.attrs.get("metrics", {})

    @property
    def n_snapshots(self) -> int:
        return int(self.attrs.get("n_snapshots", 0))

    @property
    def uri(self) -> str:
        return f"{self.store.location}/runs/{self.run_id}"

    def weights_array(self):
        """The zarr array (capacity rows; only the first ``n_snapshots`` are data)."""
        try:
            return self.group["weights"]
        except KeyError:
            raise StoreError(f"run {self.run_id}: no weights array") from None

    def missing_chunks(self) -> list[str]:
        """Chunk keys of the first ``n_snapshots`` rows that are absent from the store."""
        from zarr.core.sync import sync

        arr = self.weights_array()
        tc, pc = arr.chunks
        rows = -(-self.n_snapshots // tc)
        cols = -(-arr.shape[1] // pc)
        prefix = f"runs/{self.run_id}/weights/"
        zstore = self.store._zstore

        async def _ls():
            return {k.removeprefix(prefix) async for k in zstore.list_prefix(prefix + "c/")}

        present = sync(_ls())
        return [f"c/{i}/{j}" for i in range(rows) for j in range(cols) if f"c/{i}/{j}" not in present]

    def weights(self, dtype=np.float32):
        """Snapshots as a lazy Dask array of shape (n_snapshots, n_parameters)."""
        return self.trajectory(dtype).array

    def trajectory(self, dtype=np.float32, rows: int | None = None):
        """The run's trajectory as the analysis engine reads it.

        A :class:`pipeline.koopman.Trajectory`: the first ``rows`` snapshots (default
        all ``n_snapshots``) as a lazy dask array ``(rows, n_parameters)`` of ``dtype``,
        how a task of a pass loads one chunk (chunk files mapped when the store is local
        and uncompressed, else read through zarr), whether re-loading is cheap, and the
        layers (``layout.layer_ranges()``) as its groups.
        """
        from .chunkmap import mappable, mapped_trajectory, zarr_trajectory

        rows = self.n_snapshots if rows is None else int(rows)
        arr = self.weights_array()
        if mappable(arr):   # local and uncompressed: chunk files mapped, no decode copies
            traj = mapped_trajectory(arr, rows)
        else:
            traj = zarr_trajectory(arr, rows)
        if self.attrs.get("stored_dtype") == "bfloat16":
            traj = traj.converted(_bf16_to_f32, np.float32)
        if traj.dtype != dtype:
            traj = traj.converted(_Cast(dtype), dtype)
        return traj.with_groups(self.layout.layer_ranges() if "layout" in self.attrs else None)


    # -- analyses ----------------------------------------------------------------
    # runs/<id>/analyses/<analysis_id>/: attrs status ("writing" until the last write,
    # then "complete"), params, created, and what the writer adds (layers, n_snapshots,
    # modes_layers); one group per layer of small arrays; modes/<layer>.{real,imag}.

    def list_analyses(self) -> dict[str, dict]:
        """``{analysis_id: its stored params}`` of the completely written analyses (one
        left ``writing`` by an interrupted or failed writer is never listed)."""
        try:
            group = self.group["analyses"]
        except KeyError:
            return {}
        out = {}
        for aid in sorted(group.group_keys()):
            attrs = group[aid].attrs
            if attrs.get("status") == "complete":
                out[aid] = dict(attrs.get("params", {}))
        return out

    def analysis_info(self, analysis_id: str) -> dict:
        """The attributes of a complete analysis (params, layers, n_snapshots, ...)."""
        return dict(self._analysis_group(analysis_id).attrs)

    def read_analysis(self, analysis_id: str) -> tuple[dict, dict[str, dict[str, np.ndarray]]]:
        """``(attrs, {layer: {array name: values}})`` of a complete analysis."""
        g = self._analysis_group(analysis_id)
        attrs = dict(g.attrs)
        layers = {}
        for layer in attrs.get("layers", []):
            lg = g[layer]
            layers[layer] = {name: lg[name][...] for name in lg.array_keys()}
        return attrs, layers

    def write_analysis(self, analysis_id: str, params: dict, layers: dict[str, dict[str, np.ndarray]],
                       *, modes: dict | None = None, attrs: dict | None = None) -> None:
        """Write an analysis whole, replacing one of the same id: status ``writing``
        first, ``complete`` last. ``modes``: ``{layer: complex dask array (k × P)}``
        stored as float32 real and imaginary parts; ``t_end`` (Unix seconds) records when
        it was completely written (a caller records ``t_start`` in ``attrs``). If any write fails, the
        half-written analysis is removed (best effort; if that fails too its status
        stays ``writing``, which :meth:`list_analyses` never lists) and the error is
        raised again."""
        try:
            analyses = self.group.require_group("analyses")
            if analysis_id in analyses:
                del analyses[analysis_id]
            g = analyses.create_group(analysis_id, attributes={"status": "writing", "params": params,
                                                               "created": _now()})
            for layer, arrays in layers.items():
                lg = g.create_group(layer)
                for name, arr in arrays.items():
                    lg.create_array(name, data=arr)
            for layer, arr in (modes or {}).items():
                import dask.array as da

                mg = g.require_group("modes")
                chunks = (arr.shape[0], min(arr.shape[1], _P_CHUNK))
                for part, values in (("real", arr.real), ("imag", arr.imag)):
                    da.to_zarr(values.astype(np.float32), mg.create_array(
                        f"{layer}.{part}", shape=arr.shape, chunks=chunks, dtype="float32"))
            g.update_attributes({**(attrs or {}), "status": "complete", "layers": list(layers),
                                 "modes_layers": list(modes or {}), "t_end": time.time()})
        except Exception:
            self.delete_analysis(analysis_id, quiet=True)
            raise

    def delete_analysis(self, analysis_id: str, *, quiet: bool = False) -> None:
        """Remove an analysis (``quiet``: a failure is only logged)."""
        try:
            analyses = self.group["analyses"]
            if analysis_id in analyses:
                del analyses[analysis_id]
        except Exception:  # noqa: BLE001 - quiet: the store is failing already; the status says it
            if not quiet:
                raise
            log.debug("run %s: could not remove analysis %s", self.run_id, analysis_id)

    def _analysis_group(self, analysis_id: str):
        try:
            g = self.group[f"analyses/{analysis_id}"]
        except KeyError:
            raise StoreError(f"run {self.run_id}: no analysis {analysis_id}") from None
        if g.attrs.get("status") != "complete":
            raise StoreError(f"run {self.run_id}: analysis {analysis_id} is incomplete "
                             f"(status {g.attrs.get('status')}); run kma analyze again")
        return g


class _Cast:
    """Picklable ``astype`` of one block."""

    def __init__(self, dtype):
        self.dtype = np.dtype(dtype)

    def __call__(self, block: np.ndarray) -> np.ndarray:
        return block.astype(self.dtype)


def _bf16_to_f32(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32)


def _f32_to_bf16(x: np.ndarray) -> np.ndarray:
    """Round-to-nearest-even float32 → bfloat16 bit pattern (uint16)."""
    b = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounding = ((b >> 16) & 1) + np.uint32(0x7FFF)
    return ((b + rounding) >> 16).astype(np.uint16)


class TrajectoryStore:
    """A Zarr hierarchy holding the runs of any number of sweeps.

    Parameters
    ----------
    url : str
        Local path, ``file://``, ``memory://``, ``s3://`` or any fsspec URL.
    read_only : bool
        Open without creating anything.
    create : bool
        Create the store when there is none (False: a missing store is an error, so
        a mistyped path never becomes a new empty store).
    """

    def __init__(self, url: str, *, read_only: bool = False, create: bool = True):
        import zarr

        self.url = str(url)
        self.location = canonical_url(self.url)
        self.read_only = read_only
        self._zstore = make_store(self.url, read_only=read_only, create=create)
        try:
            self.root = zarr.open_group(self._zstore, mode="r" if read_only else "a" if create else "r+")
        except FileNotFoundError:
            raise StoreError(f"store {self.url}: no KMA store here") from None
        except PermissionError:
            raise StoreError(f"store {self.url}: permission denied") from None
        except OSError as e:
            raise StoreError(f"store {self.url}: {e.strerror or e}") from None

    # -- listing -------------------------------------------------------------------
    def run_ids(self) -> list[str]:
        """Ids of every run prefix (listed from the store, so corrupt runs show too)."""
        from zarr.core.sync import sync

        async def _ls():
            return [k async for k in self._zstore.list_dir("runs")]

        return sorted(k.rstrip("/") for k in sync(_ls()) if k.rstrip("/") != "zarr.json")

    def status(self, run_id: str) -> str | None:
        """Status of a run, or None if there is no (readable) run of that id."""
        try:
            return self._group(run_id).attrs.get("status", "running")
        except KMAError:  # not found, unreadable, or an id no run can have
            return None

    def runs(self) -> list[RunInfo]:
        """Every run prefix, with its status; a ``running`` run that no live sweep holds
        (see :mod:`pipeline.storage.lease`) is reported as ``interrupted``, and so is one
        whose creation was cut short (:func:`pipeline.storage.health.cut_short`)."""
        from .health import CUT_SHORT, cut_short
        from .lease import is_live

        out = []
        for rid in self.run_ids():
            try:
                attrs = dict(self._group(rid, checked=False).attrs)
            except StoreError:
                attrs = None
            if not attrs and cut_short(self, rid):  # a killed creation: unfinished, nothing lost
                out.append(RunInfo(rid, "running" if is_live(self, rid) else INTERRUPTED, 0, 0, None, None,
                                   is_valid(rid), CUT_SHORT))
                continue
            if attrs is None:
                out.append(RunInfo(rid, "corrupt", 0, 0, None, None, is_valid(rid)))
                continue
            try:  # garbled attributes list the run as corrupt, never a traceback
                n_params = sum(int(r["size"]) for r in attrs.get("layout", []))
                n_snapshots = int(attrs.get("n_snapshots", 0))
            except (ValueError, TypeError, KeyError):
                out.append(RunInfo(rid, "corrupt", 0, 0, None, None, is_valid(rid)))
                continue
            # every writer sets a status at once: a run without one is damaged, not running
            status = attrs.get("status", "corrupt")
            # a restart attempt is trained under its variant's lease (pipeline.training.restart)
            if status == "running" and not is_live(self, str(attrs.get("variant_run_id") or rid)):
                status = INTERRUPTED
            out.append(RunInfo(rid, status, n_snapshots, n_params, attrs.get("created"),
                               attrs.get("updated"), is_valid(rid), attrs.get("error"),
                               attrs.get("restart_of") if isinstance(attrs.get("restart_of"), str) else None))
        return out

    # -- reading -------------------------------------------------------------------
    def _group(self, run_id: str, *, checked: bool = True):
        if checked:  # an id outside the rule names a run only if the store lists it
            check_run_id(run_id, listed=self.run_ids)
        try:
            return self.root[f"runs/{run_id}"]
        except KeyError:
            raise RunNotFound(f"run {run_id}: not in store {self.url}") from None
        except Exception as e:  # noqa: BLE001 - unreadable metadata
            raise StoreError(f"run {run_id}: unreadable metadata ({e})") from None

    def open_run(self, run_id: str) -> Run:
        return Run(self, run_id, self._group(run_id))

    # -- writing -------------------------------------------------------------------
    def delete_run(self, run_id: str) -> None:
        """Remove ``runs/<run_id>/`` and nothing else (the id must follow the rule)."""
        self._require_writable()
        self._wipe(run_id)

    def mark_failed(self, run_id: str, cause: str) -> bool:
        """Record that the run's task died for good (status ``failed``, ``error``), if the
        run exists and is not finished. Returns whether it was marked."""
        check_run_id(run_id)
        self._require_writable()
        try:
            group = self._group(run_id)
        except KMAError:
            return False
        if group.attrs.get("status", "running") in FINISHED:
            return False
        group.update_attributes({"status": "failed", "error": cause[:500], "updated": _now()})
        return True

    def create_run(
        self,
        run_id: str,
        layout: Layout,
        *,
        config: dict | None = None,
        capacity: int | None = None,
        dtype: str = "float32",
        extra: dict | None = None,
    ) -> "RunWriter":
        """Start a run (wiping any earlier, unfinished attempt) and return its writer.

        Raises :class:`StoreError` if a finished run of that id exists: delete it first.
        """

        check_run_id(run_id)
        self._require_writable()
        prev = self.status(run_id)
        if prev in FINISHED:
            raise StoreError(f"run {run_id}: already {prev} in {self.url}")
        if prev is not None or self._exists(run_id):
            log.info("run %s: removing an unfinished earlier attempt (%s)", run_id, prev)
            self._wipe(run_id)
        runs = self.root.require_group("runs")
        # The group's metadata, with every attribute, is ONE write (and the first key of
        # the run): a process killed at any point of creation leaves either no run, a
        # whole "running" one, or (local disk, killed inside that write) a folder with
        # nothing in it but zarr's temporary file, which health.cut_short recognises.
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
            compressors=None,
            overwrite=True,
            config={"write_empty_chunks": True},
        )
        return RunWriter(self, run_id, group, layout, dtype, t_chunk)

    def _exists(self, run_id: str) -> bool:
        """Whether anything at all is stored under ``runs/<run_id>/`` (whole or not)."""
        from zarr.core.sync import sync

        async def _first():
            async for _ in self._zstore.list_prefix(f"runs/{run_id}/"):
                return True
            return False

        try:
            return sync(_first())
        except Exception:  # noqa: BLE001 - an unreadable prefix still "exists"
            return True

    def _wipe(self, run_id: str) -> None:
        """Delete ``runs/<run_id>/`` with its group metadata last, so that a process
        killed midway leaves the run as it was (unfinished, some chunks gone: a re-run
        redoes it) or nothing but empty folders, never data without its metadata. A
        finished run (``delete_run``: ``kma ingest --overwrite``) is set ``running`` first,
        so that a kill midway does not leave a "complete" run with missing chunks."""
        from zarr.core.sync import sync

        # defence in depth: only ever a single valid component under runs/
        check_run_id(run_id)
        prefix = f"runs/{run_id}/"
        try:
            group = self.root[f"runs/{run_id}"]
            if group.attrs.get("status") in FINISHED:
                group.update_attributes({"status": "running", "updated": _now()})
        except Exception:  # noqa: BLE001 - no readable group: nothing to downgrade
            pass

        async def _children():
            return [k async for k in self._zstore.list_dir(prefix)]

        for name in (n.rstrip("/") for n in sync(_children())):
            if name == "zarr.json":
                continue
            try:
                sync(self._zstore.delete_dir(f"{prefix}{name}/"))  # weights/, analyses/
            except ValueError:  # (LocalStore refuses a file here)
                pass
            sync(self._zstore.delete(prefix + name))  # a file (a temporary one of zarr's)
        sync(self._zstore.delete(prefix + "zarr.json"))
        sync(self._zstore.delete_dir(prefix))

    # -- small documents outside the zarr hierarchy (leases) ---------------------------
    def get_bytes(self, key: str) -> bytes | None:
        from zarr.core.buffer import default_buffer_prototype
        from zarr.core.sync import sync

        buf = sync(self._zstore.get(key, prototype=default_buffer_prototype()))
        return None if buf is None else buf.to_bytes()

    def set_bytes(self, key: str, data: bytes, *, exclusive: bool = False) -> None:
        from zarr.core.buffer import default_buffer_prototype
        from zarr.core.sync import sync

        self._require_writable()
        buf = default_buffer_prototype().buffer.from_bytes(data)
        sync(self._zstore.set_if_not_exists(key, buf) if exclusive else self._zstore.set(key, buf))

    def delete_key(self, key: str) -> None:
        from zarr.core.sync import sync

        self._require_writable()
        sync(self._zstore.delete(key))

    # -- the MLflow database this store's runs were registered in ------------------------
    @property
    def tracking_uri(self) -> str | None:
        """The tracking URI the last sweep into this store registered with (None if none):
        ``kma analyze``/``kma sync`` default to it, so running them from another directory
        finds the same MLflow instead of creating ``./mlflow.db``."""
        uri = self.root.attrs.get("tracking_uri")
        return uri if isinstance(uri, str) and uri else None

    def remember_tracking_uri(self, uri: str) -> None:
        """Record ``uri`` for later commands (never one that carries a password)."""
        from urllib.parse import urlsplit

        if self.read_only or not uri or self.tracking_uri == uri:
            return
        try:
            if urlsplit(uri).password:
                return
        except ValueError:
            return
        self.root.attrs["tracking_uri"] = uri

    def check_writable(self) -> None:
        """Write and remove a probe key: an unwritable store fails here, before work."""
        from zarr.core.buffer import default_buffer_prototype
        from zarr.core.sync import sync

        self._require_writable()
        probe = ".kma-write-probe"
        try:
            buf = default_buffer_prototype().buffer.from_bytes(b"ok")
            sync(self._zstore.set(probe, buf))
            sync(self._zstore.delete(probe))
        except Exception as e:  # noqa: BLE001 - any backend error means "not writable"
            raise StoreError(f"store {self.url}: not writable ({getattr(e, 'strerror', None) or e})") from None

    def _require_writable(self):
        if self.read_only:
            raise StoreError(f"store {self.url}: opened read-only")


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

    def _drain(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            start, buf, n = item
            try:
                stop = start + n
                if stop > self.array.shape[0]:
                    grow = max(stop, 2 * self.array.shape[0])
                    self.array.resize((grow, self.array.shape[1]))
                self.array[start:stop] = buf[:n]
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
        """Flush every snapshot, then record metrics and the final ``status``."""
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
            self.group.update_attributes({"status": status, "finished": _now()})

    def abort(self, reason: str) -> None:
        """Mark the run failed (best effort); a re-run redoes it."""
        try:
            self._join()
        except StoreError:
            pass
        self.group.update_attributes({"status": "failed", "error": reason[:500], "updated": _now()})


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
