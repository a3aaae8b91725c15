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
from .store import CUT_SHORT, FINISHED, INTERRUPTED, STATUSES, TrajectoryStore, cut_short, schema_problem

_REQUIRED = ("status", "layout", "n_snapshots", "config")


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
