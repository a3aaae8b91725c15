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
any point leaves a whole run or one :func:`cut_short` recognises.
The writer (:class:`RunWriter`, the new run's array) is :mod:`pipeline.storage.writer`;
a run's analysis verbs (``Run.write_analysis``, ...) are :mod:`pipeline.storage.analyses`.

Run ids follow :mod:`pipeline.storage.runids`: every write or delete checks its id first and
touches only ``runs/<run_id>/`` (and that run's lease), never a path an id could
escape to. Ids outside the rule already in a store stay listable and readable.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import KMAError, RunNotFound, StoreError
from .analyses import RunAnalyses
from .layout import Layout
from .location import StoreLocation, has_password
from .runids import check_run_id, is_valid
# the writer's names, re-exported: `from pipeline.storage.store import FINISHED` etc. keep working
from .writer import (BUFFER_BYTES, FINISHED, INTERRUPTED, STATUSES, _P_CHUNK, RunWriter,  # noqa: F401
                     _bf16_to_f32, _f32_to_bf16, _json_safe, _now, code_version, new_run)

log = logging.getLogger(__name__)


def make_store(url: str, *, read_only: bool = False, create: bool = True):
    """Turn a path or URL into a zarr store, once, at the edge (``create=False``: a
    local folder that does not exist is an error, not created)."""
    from .local import LocalBackend

    url = str(url)
    location = StoreLocation(url)
    if location.is_local:
        # absolute: zarr's LocalStore.list_prefix strips its root with str.replace, which
        # mangles keys under a relative root ("s/runs/a" -> "runa"): chunks look missing
        path = location.path
        from ..outputs import check_path_length

        check_path_length(path, "store")
        if not read_only and create:
            from ..pathsafety import store_holding

            holder = None if (path / "zarr.json").is_file() else store_holding(path)
            if holder is not None and (path / "zarr.json").is_file():
                holder = None        # another writer created this very store since the look above
            if holder is not None:   # a new store inside another's runs would be wiped with them
                raise StoreError(f"store {url}: inside the Zarr store {holder}; give a folder outside it")
            try:
                path.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise StoreError(f"store {url}: cannot create directory ({e.strerror})") from None
        elif not path.exists():
            raise StoreError(f"store {url}: no such directory")
        return LocalBackend(path, read_only=read_only)
    from .remote import open_remote

    netloc = url.split("://", 1)[1].split("/", 1)[0]
    if "@" in netloc:   # a key in the URL would be recorded (MLflow tags, the store's attributes)
        from ..secrets import mask_url

        raise StoreError(f"store {mask_url(url)}: credentials in the URL are not supported; set "
                         "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) instead")
    try:  # retries, credentials from this process' environment, pickled as its URL only
        store = open_remote(url, read_only=read_only)
    except (ImportError, ValueError) as e:
        raise StoreError(f"store {url}: {e}") from None
    _probe(store, url)
    return store


def _probe(store, url: str) -> None:
    """One request to a remote store, not retried, so that missing credentials or a dead
    endpoint are one line at once, not a traceback (or a minute of retries) from the
    first of many concurrent reads."""
    from zarr.core.sync import sync

    try:
        sync(store._store.exists("zarr.json"))
    except Exception as e:  # noqa: BLE001 - botocore, aiohttp, gcsfs...: any failure is "unreachable"
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        hint = ""
        if type(e).__name__ in ("NoCredentialsError", "PartialCredentialsError"):
            hint = ("; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE, or give the "
                    "node an instance role (docs: Running on a cluster, Credentials on a cluster)")
        raise StoreError(f"store {url}: cannot reach it ({type(e).__name__}: {first}){hint}") from None


def check_shareable(url: str) -> None:
    """A store other processes (Ray tasks) can reach: not ``memory://``."""
    if str(url).startswith("memory://"):
        raise StoreError(f"store {url}: a memory:// store lives in one process; "
                         "Ray tasks need a path or object store")


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


class Run(RunAnalyses):
    """Read access to one stored run."""

    def __init__(self, store: "TrajectoryStore", run_id: str, group):
        self.store = store
        self.run_id = run_id
        self.group = group
        self.attrs: dict[str, Any] = dict(group.attrs)
        # (rows, groups): the first snapshots, in memory, when an analysis' pass kept them
        # (pipeline.workflows.analyze); pipeline.apps.badinit reads them from here
        self.leading_rows: tuple | None = None

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


class _Cast:
    """Picklable ``astype`` of one block."""

    def __init__(self, dtype):
        self.dtype = np.dtype(dtype)

    def __call__(self, block: np.ndarray) -> np.ndarray:
        return block.astype(self.dtype)


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
        self.location = StoreLocation(self.url).canonical()
        self.read_only = read_only
        self._zstore = make_store(self.url, read_only=read_only, create=create)
        try:
            self.root = self._open_root(zarr, "r" if read_only else "a" if create else "r+")
        except FileNotFoundError:
            from .remote import RemoteStore, missing_bucket

            bucket = missing_bucket(self._zstore) if isinstance(self._zstore, RemoteStore) else None
            if bucket:
                raise StoreError(f"store {self.url}: no such bucket {bucket!r}") from None
            raise StoreError(f"store {self.url}: no KMA store here") from None
        except PermissionError:
            raise StoreError(f"store {self.url}: permission denied") from None
        except OSError as e:
            raise StoreError(f"store {self.url}: {e.strerror or e}") from None
        except Exception as e:  # noqa: BLE001 - the root's zarr.json is an array's, or not JSON
            raise StoreError(f"store {self.url}: its root zarr.json is not a KMA store's group metadata "
                             f"({type(e).__name__}); nothing read or written") from None

    def _open_root(self, zarr, mode: str):
        """The root group; with ``mode="a"`` two writers creating a new store at once (the
        first trials of a search, tasks of a sweep) race inside zarr (look, then create
        without overwrite): the one that loses opens the group the other created."""
        from zarr.errors import ContainsGroupError

        try:
            return zarr.open_group(self._zstore, mode=mode)
        except ContainsGroupError:
            if mode != "a":
                raise
            return zarr.open_group(self._zstore, mode="r+")

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
        whose creation was cut short (:func:`cut_short`)."""
        from .lease import is_live

        out = []
        for rid in self.run_ids():
            link = self.link_problem(rid)
            if link:  # never read through it; a sweep refuses to wipe it (one line)
                out.append(RunInfo(rid, "corrupt", 0, 0, None, None, is_valid(rid), link))
                continue
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
            problem = schema_problem(self, rid, attrs) if status in FINISHED else None
            if problem:  # valid JSON of the wrong shape: never listed complete nor registered
                out.append(RunInfo(rid, "corrupt", 0, n_params, attrs.get("created"), attrs.get("updated"),
                                   is_valid(rid), problem))
                continue
            # a restart attempt is trained under its variant's lease (pipeline.training.restart)
            if status == "running" and not is_live(self, str(attrs.get("variant_run_id") or rid)):
                status = INTERRUPTED
            out.append(RunInfo(rid, status, n_snapshots, n_params, attrs.get("created"),
                               attrs.get("updated"), is_valid(rid), attrs.get("error"),
                               attrs.get("restart_of") if isinstance(attrs.get("restart_of"), str) else None))
        return out

    # -- links out of the store -----------------------------------------------------
    def link_problem(self, run_id: str) -> str | None:
        """Why ``runs/<run_id>/`` must not be read or written through, or None: on a local
        store, ``runs/``, the run's folder, or anything under it that is a symbolic link
        (a link can point out of the store: deleting or writing through it would touch
        files elsewhere). Object stores have no links."""
        from ..pathsafety import local_link

        root = getattr(self._zstore, "root", None)
        if root is None:
            return None
        return local_link(Path(root), ("runs", run_id))

    def _refuse_key_links(self, key: str) -> None:
        """A small document's key (``leases/<id>.json``) is not reached through a link."""
        root = getattr(self._zstore, "root", None)
        if root is None:
            return
        path = Path(root)
        for part in key.split("/"):
            path = path / part
            if path.is_symlink():
                raise StoreError(f"store {self.url}: {path.relative_to(root).as_posix()} is a symbolic link "
                                 f"(to {os.readlink(path)[:200]}); refusing to write or delete through it")

    def _refuse_links(self, run_id: str) -> None:
        problem = self.link_problem(run_id)
        if problem:
            raise StoreError(f"run {run_id}: {problem}; refusing to read or write through it "
                             "(remove the link by hand)")

    # -- reading -------------------------------------------------------------------
    def _group(self, run_id: str, *, checked: bool = True):
        if checked:  # an id outside the rule names a run only if the store lists it
            check_run_id(run_id, listed=self.run_ids)
        self._refuse_links(run_id)
        try:
            node = self.root[f"runs/{run_id}"]
        except KeyError:
            kind = self._node_type(run_id)
            if kind is not None:  # zarr.json is there but is not a group's
                raise StoreError(f"run {run_id}: runs/{run_id}/zarr.json is not a run's group metadata "
                                 f"(node_type {kind[:40]!r})") from None
            raise RunNotFound(f"run {run_id}: not in store {self.url}") from None
        except Exception as e:  # noqa: BLE001 - unreadable metadata
            raise StoreError(f"run {run_id}: unreadable metadata ({e})") from None
        if not hasattr(node, "group_keys"):  # zarr.json says node_type "array"
            raise StoreError(f"run {run_id}: runs/{run_id}/zarr.json describes an array, not a run's group")
        return node

    def _node_type(self, run_id: str) -> str | None:
        """``node_type`` of ``runs/<run_id>/zarr.json`` as stored, or None (absent, not JSON)."""
        import json

        try:
            raw = self.get_bytes(f"runs/{run_id}/zarr.json")
            return None if raw is None else str(json.loads(raw).get("node_type"))
        except Exception:  # noqa: BLE001 - unreadable: the caller's "not found" stands
            return None

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
        return new_run(self, run_id, layout, config=config, capacity=capacity, dtype=dtype, extra=extra)

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
        self._refuse_links(run_id)  # never list or delete through a link out of the store
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
    @property
    def capabilities(self):
        """What the backend guarantees (:class:`~pipeline.storage.protocol.Capabilities`)."""
        from .protocol import capabilities_of

        return capabilities_of(self._zstore)

    def get_bytes(self, key: str) -> bytes | None:
        from zarr.core.buffer import default_buffer_prototype
        from zarr.core.sync import sync

        buf = sync(self._zstore.get(key, prototype=default_buffer_prototype()))
        return None if buf is None else buf.to_bytes()

    def set_bytes(self, key: str, data: bytes, *, exclusive: bool = False) -> None:
        from zarr.core.buffer import default_buffer_prototype
        from zarr.core.sync import sync

        self._require_writable()
        self._refuse_key_links(key)
        buf = default_buffer_prototype().buffer.from_bytes(data)
        sync(self._zstore.set_if_not_exists(key, buf) if exclusive else self._zstore.set(key, buf))

    def delete_key(self, key: str) -> None:
        from zarr.core.sync import sync

        self._require_writable()
        self._refuse_key_links(key)
        sync(self._zstore.delete(key))

    # -- the MLflow database this store's runs were registered in ------------------------
    @property
    def tracking_uri(self) -> str | None:
        """The tracking URI the last sweep into this store registered with (None if none):
        ``kma analyze``/``kma sync`` default to it, so running them from another directory
        finds the same MLflow instead of creating ``./mlflow.db``."""
        uri = self.root.attrs.get("tracking_uri")
        if not isinstance(uri, str) or not uri:
            return None
        from urllib.parse import urlsplit

        try:
            forged = bool(urlsplit(uri).password)
        except ValueError:
            forged = True
        if forged:  # never recorded by kma (remember_tracking_uri refuses them): not followed
            log.warning("store %s records a tracking URI kma never writes (with a password); ignored",
                        self.url)
            return None
        return uri

    def remember_tracking_uri(self, uri: str) -> None:
        """Record ``uri`` for later commands (never one that carries a password)."""
        if self.read_only or not uri or self.tracking_uri == uri or has_password(uri):
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


# what is said of a run whose creation was cut short (kma runs --json "error", kma analyze)
CUT_SHORT = "interrupted while being created, nothing stored; run its sweep again to train it"


# keys of an empty run: its group and array metadata, zarr's temporary files
_EMPTY = ("zarr.json", "weights/zarr.json")


def cut_short(store: TrajectoryStore, run_id: str) -> bool:
    """Whether ``runs/<run_id>/`` is a creation cut short: no data under it and no group
    metadata, or group metadata without any attribute (see the module docstring)."""
    from zarr.core.sync import sync

    prefix = f"runs/{run_id}/"
    if store.link_problem(run_id):  # never listed through a link out of the store
        return False

    async def _keys():
        return [k.removeprefix(prefix) async for k in store._zstore.list_prefix(prefix)]

    try:
        keys = sync(_keys())
    except Exception:  # noqa: BLE001 - an unlistable prefix is not known to be empty
        return False
    if any(k not in _EMPTY and not k.endswith(".partial") for k in keys):
        return False  # data, or metadata a creation does not write: damage, not this
    if "zarr.json" not in keys:
        return True
    try:
        return not dict(store._group(run_id, checked=False).attrs)
    except KMAError:  # unreadable: a kill leaves no such zarr.json (writes are atomic)
        return False


def schema_problem(store: TrajectoryStore, run_id: str, attrs: dict) -> str | None:
    """Why a run's attributes disagree with its weights array (valid JSON, wrong shape):
    ``n_snapshots`` beyond the rows the array holds, a parameter count other than the
    layout's, no weights array under a run with snapshots; None if they agree."""
    from .layout import Layout

    try:
        n = int(attrs.get("n_snapshots", 0))
        size = Layout.from_records(attrs["layout"]).size if "layout" in attrs else None
    except Exception as e:  # noqa: BLE001 - malformed values: said by the caller's checks
        return f"damaged metadata: unreadable layout or n_snapshots ({type(e).__name__})"
    if isinstance(attrs.get("n_snapshots"), bool) or n < 0:
        return f"damaged metadata: n_snapshots is {str(attrs.get('n_snapshots'))[:40]!r}, not a count"
    try:
        weights = store.root[f"runs/{run_id}/weights"]
    except KeyError:
        return f"damaged metadata: n_snapshots is {n} but there is no weights array" if n else None
    except Exception as e:  # noqa: BLE001 - unreadable array metadata
        return f"damaged metadata: runs/{run_id}/weights/zarr.json is unreadable ({type(e).__name__})"
    shape = getattr(weights, "shape", None)
    if shape is None or len(shape) != 2:
        return f"damaged metadata: runs/{run_id}/weights is not a 2-D array"
    if n > shape[0]:
        return f"damaged metadata: n_snapshots is {n} but the weights array holds {shape[0]} rows"
    if size is not None and shape[1] != size:
        return (f"damaged metadata: the layout has {size} parameters but the weights array "
                f"{shape[1]} columns")
    return None
