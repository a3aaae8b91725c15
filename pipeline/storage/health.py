"""Is a stored run's metadata whole? What ``analyze`` and ``compare`` say about a run they skip.

A run prefix listed under ``runs/`` whose group metadata (``runs/<id>/zarr.json``) is
missing, unreadable, or lacks the attributes every writer sets (``status``, ``layout``,
``n_snapshots``, ``config``) is *damaged*: it cannot be analysed or compared, and is
named with the reason instead of being dropped silently (and never taken for a run
that is still training just because its ``status`` attribute is gone).
:func:`select_runs` picks the runs ``kma analyze`` works on.

One layout without whole metadata is not damage: a run whose *creation was cut short*
(:func:`cut_short`) -- a process killed while it created the run, e.g. a Ray task
force-cancelled by an interrupted sweep. Its prefix holds no data (no weights chunk,
no analysis), only a group ``zarr.json`` without attributes, or none, and perhaps
zarr's temporary ``*.partial`` files. Nothing is lost with it: it is listed as
``interrupted`` (``running`` while a live sweep holds its lease), skipped by default,
named in one line when asked for, and wiped and retrained by the next sweep. (Since
``create_run`` writes the group with all its attributes in one write, only a kill
inside that one file write, or stores written by older versions, leave it.)
"""

from __future__ import annotations

from ..errors import KMAError, RunNotFound, StoreError
from .store import FINISHED, INTERRUPTED, STATUSES, TrajectoryStore

_REQUIRED = ("status", "layout", "n_snapshots", "config")
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


def shown_status(store: TrajectoryStore, run_id: str) -> str | None:
    """A run's status as ``kma runs`` shows it: ``interrupted`` for a run no live sweep
    holds that is ``running`` or whose creation was cut short; None: no such run."""
    from .lease import is_live

    status = store.status(run_id)
    if status is None and not cut_short(store, run_id):
        return None
    if status in (None, "running"):
        try:
            variant = store.open_run(run_id).attrs.get("variant_run_id") or run_id
        except KMAError:
            variant = run_id
        return "running" if is_live(store, str(variant)) else INTERRUPTED
    return status


def metadata_problem(store: TrajectoryStore, run_id: str) -> str | None:
    """Why run ``run_id``'s metadata is damaged, or None if it is whole."""
    try:
        attrs = dict(store._group(run_id).attrs)
    except RunNotFound:
        if run_id in store.run_ids():
            return f"damaged metadata: runs/{run_id}/zarr.json is missing"
        return None  # no such run at all: the caller says "not in store"
    except StoreError as e:
        return f"damaged metadata: {str(e).split(': ', 1)[-1]}"
    missing = [k for k in _REQUIRED if k not in attrs]
    if missing:
        return f"damaged metadata: runs/{run_id}/zarr.json lacks {', '.join(missing)}"
    if attrs["status"] not in STATUSES:
        return f"damaged metadata: unknown status {str(attrs['status'])[:40]!r}"
    n = attrs["n_snapshots"]
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        return f"damaged metadata: n_snapshots is {str(n)[:40]!r}, not a count"
    try:
        from .layout import Layout

        Layout.from_records(attrs["layout"])
    except Exception as e:  # noqa: BLE001 - any malformed layout record
        return f"damaged metadata: unreadable layout ({type(e).__name__})"
    if not isinstance(attrs["config"], dict):
        return "damaged metadata: config is not a mapping"
    if attrs["status"] not in FINISHED:
        return None   # an unfinished run (a wipe cut short, too) is redone, never read as data
    return schema_problem(store, run_id, attrs)


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


def split_runs(store: TrajectoryStore, statuses=None) -> tuple[list[str], dict[str, str]]:
    """``(ids of whole runs with a status in statuses, {damaged id: reason})``."""
    whole, damaged = [], {}
    for rid in store.run_ids():
        problem = metadata_problem(store, rid)
        if problem and cut_short(store, rid):
            continue  # unfinished, like any interrupted run
        if problem:
            damaged[rid] = f"run {rid}: skipped: {problem}"
        elif statuses is None or store.status(rid) in statuses:
            whole.append(rid)
    return whole, damaged


def check_named_runs(store: TrajectoryStore, run_ids) -> None:
    """Every run named on the command line exists (a typo is refused before any work)."""
    known = set(store.run_ids())
    unknown = [r for r in dict.fromkeys(run_ids) if r not in known]
    if unknown:
        raise KMAError(f"run {unknown[0]}: not in store {store.url}"
                       + (f" ({len(unknown) - 1} more of the runs named are not either)" if len(unknown) > 1 else ""))


def select_runs(store: TrajectoryStore, run_ids: list[str] | None) -> tuple[list[str], dict[str, str]]:
    """Runs to analyse and ``{run_id: reason}`` for those skipped as damaged.

    Default: every finished run. Named runs must exist (a typo is refused before any
    work, exit code 2); a named run with damaged metadata, or whose creation was cut
    short, is reported, not analysed.
    """
    if run_ids is None:
        return split_runs(store, FINISHED)
    check_named_runs(store, run_ids)
    todo, damaged = [], {}
    for rid in dict.fromkeys(run_ids):
        problem = metadata_problem(store, rid)
        if problem and cut_short(store, rid):
            damaged[rid] = f"run {rid}: {CUT_SHORT}"
        elif problem:
            damaged[rid] = f"run {rid}: {problem}"
        else:
            todo.append(rid)
    return todo, damaged
