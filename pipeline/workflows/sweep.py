"""The sweep driver shared by ``kma sweep`` and ``jobs/sweep.py``.

One Ray task per variant (resources from the config, retried when its worker dies), or
per pack of variants under ``pack: auto`` (:mod:`pipeline.training.packing`), at most
``max_parallel`` tasks in flight; variants whose run is already finished in the store
are skipped. The driver alone registers results in MLflow, reading them back from the
store (the source of truth), so a retried task can never produce a duplicate record.

Before training, the driver claims a lease on every run it will train
(:mod:`pipeline.storage.lease`) and renews it until the run's result is recorded: a second
sweep of the same variants started meanwhile skips the runs this one holds and lists
them. A run whose task died for good (its worker lost more often than the retries
allow) is marked ``failed`` in the store with the cause.
"""

from __future__ import annotations

import logging
import os
import signal
from dataclasses import dataclass, field

from ..config import SweepConfig, expand
from ..console import Console
from ..errors import KMAError, plural
from ..ray_cluster import (check_custom_resources, check_not_job_scratch,
                          check_store_shared, failure_line, ray_failure, record_failure)
from .. import seams
from ..runtime.ray_connect import init_ray
from ..storage.lease import LeaseKeeper
from ..storage.location import StoreLocation
from ..storage.runids import check_run_id
from ..storage.store import FINISHED, TrajectoryStore, check_shareable
from .sync import register_run
from ..training.restart import attempt_ids, variant_done
from ..tracking.tracker import Tracker, TrackingUnavailable, mlflow_name, tracking_uri_for
from ..tracking.uri import TrackingURI

log = logging.getLogger(__name__)

DEFAULT_STORE = "kma-store"
TASK_MAX_RETRIES = 3


class Interrupted(KMAError):
    exit_code = 130


@dataclass
class SweepSummary:
    sweep: str
    store: str
    trained: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    held: dict[str, str] = field(default_factory=dict)  # run -> the live sweep holding it
    failed: dict[str, str] = field(default_factory=dict)
    diverged: list[str] = field(default_factory=list)
    registered: list[str] = field(default_factory=list)
    analyzed: list[str] = field(default_factory=list)
    analysis_failed: dict[str, str] = field(default_factory=dict)
    unregistered: list[str] = field(default_factory=list)  # kept in the store, MLflow unreachable
    tracking_down: str | None = None                       # the unreachable server's line


def _existing_store(url: str):
    """The store at ``url`` opened read-only, or None when there is none yet."""
    try:
        return TrajectoryStore(url, read_only=True)
    except KMAError:
        return None


def _train_remote():
    import ray

    from ..ray_cluster import run_on_node  # run_variant, its failures named with their node

    return ray.remote(max_retries=TASK_MAX_RETRIES, retry_exceptions=False)(run_on_node)


def _train_pack_remote():
    """A packed task: several variants of one architecture in one process."""
    import ray

    from ..ray_cluster import run_pack_task

    return ray.remote(max_retries=TASK_MAX_RETRIES, retry_exceptions=False)(run_pack_task)


def run_sweep(
    cfg: SweepConfig,
    *,
    store_url: str | None = None,
    tracking_uri: str | None = None,
    ray_address: str | None = None,
    max_parallel: int | None = None,
    analyze: bool | None = None,
    console: Console | None = None,
    source: str = "config",
    shared_store: bool = False,
) -> SweepSummary:
    """Train every unfinished variant of ``cfg``, register all of them, then analyse.

    Everything checkable is refused before Ray starts: model sizes, and (for a local
    Ray) each variant's resources against this machine; a cluster's nodes are checked
    after connecting, before anything is submitted. ``source`` names the config in errors.
    A local store path is made absolute here, before any task is shipped, and refused on a
    cluster of several nodes unless ``shared_store`` (:mod:`pipeline.ray_cluster`).
    """
    console = console or Console()
    store_url = StoreLocation(store_url or cfg.store or DEFAULT_STORE).absolute()
    if max_parallel is not None and max_parallel < 1:
        raise KMAError("--max-parallel must be >= 1")
    check_shareable(store_url)
    variants = expand(cfg)
    for v in variants:  # generated ids follow the rule by construction; a bug if not
        check_run_id(v.run_id, what="generated run id")
    from ..training import capacity
    from ..training.runner import preflight

    sizes = preflight(variants)
    capacity.check_model_sizes(variants, sizes, source)
    address = ray_address or os.environ.get("RAY_ADDRESS")
    if not address:  # a local Ray gets this machine's cores: check before starting it
        capacity.check_fits(variants, sizes, [capacity.local_machine()], "this machine", source)
        check_custom_resources(None, variants, source, "a local Ray (custom resources need a cluster: --ray-address)")
    uri = TrackingURI(tracking_uri_for(tracking_uri, _existing_store(store_url))).absolute()
    check_not_job_scratch(store_url, uri)
    tracker = Tracker(uri)
    store = TrajectoryStore(store_url)
    store.check_writable()
    store.remember_tracking_uri(tracker.uri)  # later commands from anywhere find this MLflow
    summary = SweepSummary(cfg.name, store_url)

    with LeaseKeeper(store, cfg.name) as leases:
        todo = []
        for v in variants:
            if variant_done(store, v.run_id):  # a restarted variant: every attempt finished
                summary.skipped.append(v.run_id)
            elif (holder := leases.claim(v.run_id)) is not None:
                summary.held[v.run_id] = holder.describe()
            else:
                todo.append(v)
        console.info(
            f"sweep {cfg.name}: {plural(len(variants), 'variant')}, {len(summary.skipped)} already finished, "
            + (f"{len(summary.held)} held by another live sweep, " if summary.held else "")
            + f"{len(todo)} to train; store {store_url}; MLflow {tracker.uri}"
        )
        for n, (rid, who) in enumerate(summary.held.items()):
            if n == 10:
                console.info(f"  ... and {plural(len(summary.held) - 10, 'more held run')}")
                break
            console.info(f"  held: {rid}: being trained by {who}")
        for rid in (a for v in summary.skipped for a in attempt_ids(store, v)):
            _register(tracker, store, rid, summary)  # finished earlier but perhaps never registered

        if todo:
            def check_cluster(ray):
                if address:
                    capacity.check_fits(todo, sizes, capacity.ray_machines(ray),
                                        f"the Ray cluster at {address}", source)
                    check_custom_resources(ray, todo, source, f"the Ray cluster at {address}")
                    check_store_shared(ray, store_url, shared_store, address)  # several nodes: not a local path

            from ..training.packing import plan_packs

            _train_all(todo, store, tracker, summary, ray_address, max_parallel, console, leases,
                       check=check_cluster, packs=plan_packs(todo, cfg.pack, cfg.pack_max))

    want_analysis = cfg.analysis.enabled if analyze is None else analyze
    if want_analysis:
        from .analyze import analyze_runs

        params = cfg.analysis   # validated with the config: the same model as kma analyze's flags
        # runs that already have this analysis keep it (kma analyze redoes one on request)
        todo_analysis = [rid for v in variants for rid in attempt_ids(store, v.run_id)
                         if store.status(rid) in FINISHED
                         and params.analysis_id not in store.open_run(rid).list_analyses()]
        todo_analysis = _skip_short_diverged(store, todo_analysis, params, console)
        if todo_analysis:   # with MLflow gone: stored only (kma sync registers them later)
            report = analyze_runs(store, todo_analysis, params, console=console,
                                  tracker=None if tracker.down else tracker)
            summary.analyzed = [r for r, err in report.items() if err is None]
            summary.analysis_failed = {r: err for r, err in report.items() if err is not None}

    console.info(
        f"sweep {cfg.name}: trained {len(summary.trained)}, skipped {len(summary.skipped)}, "
        + (f"held by another sweep {len(summary.held)}, " if summary.held else "")
        + f"diverged {len(summary.diverged)}, failed {len(summary.failed)}, "
        f"newly registered in MLflow {len(summary.registered)}"
        + (f", analysis failed {len(summary.analysis_failed)}" if summary.analysis_failed else "")
    )
    for rid, err in summary.failed.items():
        console.error(f"  failed: {rid}: {err.splitlines()[0] if err else 'unknown error'}")
    if not tracker.down:
        _next_steps(cfg.name, store, variants, tracker, console)
    if tracker.down:
        summary.tracking_down = tracker.down
        what = (f"{plural(len(summary.unregistered), 'run')} trained and kept in the store"
                + (" with their analyses" if want_analysis else "") if summary.unregistered
                else "analyses kept in the store")   # it went away after the runs were registered
        console.error(
            f"kma: error: {mlflow_name(tracker.uri)} stopped answering ({tracker.down[:160]}): "
            f"{what} but not registered; once it is back: "
            f"kma sync --store {store.location} --tracking-uri {tracker.uri}")
    return summary


def verdict_counts(store, run_ids) -> dict[str, int]:
    """How the runs' latest stored verdicts read: ``converged``, ``not converged``,
    ``bad init`` (of the assessed), ``not analysed`` (finished runs without a verdict)."""
    from ..apps import verdicts

    counts = {"converged": 0, "not converged": 0, "bad init": 0, "not analysed": 0}
    for rid in run_ids:
        try:
            _, v = verdicts.latest(store.open_run(rid))
        except (KMAError, KeyError, ValueError, OSError):
            v = None
        if v is None:
            counts["not analysed"] += 1
            continue
        counts["converged" if v.get("converged_at") is not None else "not converged"] += 1
        counts["bad init"] += bool(v.get("bad_init"))
    return counts


def _next_steps(name: str, store, variants, tracker, console: Console) -> None:
    """The sweep's last lines: its verdict counts, then where to look next (the MLflow
    runs table, ``kma compare``)."""
    from ..tracking.tracker import experiment_url, ui_command

    finished = [rid for v in variants for rid in attempt_ids(store, v.run_id) if store.status(rid) in FINISHED]
    counts = verdict_counts(store, finished)
    console.info("verdicts: " + ", ".join(f"{n} {k}" for k, n in counts.items() if n or k == "converged"))
    try:
        url = experiment_url(tracker.uri, tracker.experiment_id(name))
    except Exception:  # noqa: BLE001 - the link is a courtesy; the sweep's outcome stands
        return
    serve = ui_command(tracker.uri)
    console.info("next: " + (f"{serve}, then open " if serve else "open ") + url)
    console.info(f"      kma compare --store {store.location} --sweep {name} --by depth")


def _register(tracker, store, rid: str, summary: SweepSummary) -> None:
    """Register one stored run; a tracking server that stopped answering leaves it for
    ``kma sync`` (the run is in the store) and the sweep goes on training."""
    try:
        if register_run(tracker, store, rid):
            summary.registered.append(rid)
    except TrackingUnavailable:
        summary.unregistered.append(rid)


def _skip_short_diverged(store, run_ids, params, console) -> list[str]:
    """A run that diverged before it had enough snapshots for a window is a result
    (exit code 0), not an analysis failure: say so and leave it out."""
    need = params.min_snapshots()
    keep = []
    for rid in run_ids:
        run = store.open_run(rid)
        if run.status in ("diverged", "bad_init") and run.n_snapshots < need:
            console.info(f"run {rid}: {run.status.replace('_', ' ')} after {plural(run.n_snapshots, 'snapshot')}, "
                         f"too few to analyse (need {need})")
        else:
            keep.append(rid)
    return keep


def _train_all(todo, store, tracker, summary, ray_address, max_parallel, console, leases=None, check=None,
               packs=None):
    """``packs``: the tasks, lists of variants; default one task per variant.
    ``max_parallel`` counts tasks."""
    ray = init_ray(ray_address, console)
    from ray.exceptions import RayError

    if check is not None:  # resources against the cluster's nodes, before submitting
        check(ray)

    gpus = ray.cluster_resources().get("GPU", 0)
    train, train_pack = _train_remote(), _train_pack_remote()
    queue = list(packs) if packs is not None else [[v] for v in todo]
    if packs is not None:   # idle CPUs (GPUs) take a share of a pack rather than wait
        from ..training.packing import spread

        queue = spread(queue, _slots(ray, todo[0], max_parallel))
    cap = max_parallel or len(queue)
    pending: dict = {}
    progress = console.progress(todo[0].sweep, len(todo), tasks=len(queue))
    tasks_done = 0
    # SIGTERM (ray job stop, kill) and SIGHUP (closed terminal) end the sweep like Ctrl-C
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGHUP)}
    for sig in previous:
        signal.signal(sig, _raise_interrupt)
    try:
        while queue or pending:
            while queue and len(pending) < cap:
                members = queue.pop(0)
                v = members[0]
                num_gpus = v.resources.num_gpus if gpus >= v.resources.num_gpus else 0
                if v.resources.num_gpus and not num_gpus:
                    log.warning("no GPU in the Ray cluster: %s runs on CPU", v.run_id)
                custom = {"resources": v.resources.custom} if v.resources.custom else {}
                if len(members) == 1:
                    ref = train.options(num_cpus=v.resources.num_cpus, num_gpus=num_gpus, **custom).remote(
                        v.model_dump(mode="json"), store.url
                    )
                else:  # one packed task holds the resources of one variant
                    ref = train_pack.options(num_cpus=v.resources.num_cpus, num_gpus=num_gpus, **custom).remote(
                        [m.model_dump(mode="json") for m in members], store.url)
                pending[ref] = members
            running, queued = _in_runs(pending, _started(ray, pending))
            progress.update(running=running, queued=queued)
            seams.after_recorded(len(summary.trained) + len(summary.failed))
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=2.0 if console.tty else 5.0)
            for ref in ready:
                members = pending.pop(ref)
                tasks_done += 1
                try:
                    res = ray.get(ref)
                except RayError as e:  # the worker died more often than retries allow
                    failure = ray_failure(e)
                    failed = [{"run_id": v.run_id, "status": "failed", "failure": failure,
                               "error": failure_line(failure)} for v in members]
                    res = failed[0] if len(failed) == 1 else {"attempts": failed}
                by_id = {v.run_id: v for v in members}
                for one in res.get("attempts") or [res]:
                    if one.get("status") == "failed":  # the cause and node into the store's record
                        record_failure(store, by_id.get(one.get("run_id"), members[0]), one)
                _record(res, store, tracker, summary)
                if leases is not None:
                    for v in members:
                        leases.release(v.run_id)
                running, queued = _in_runs(pending, _started(ray, pending))
                progress.update(done=len(summary.trained), failed=len(summary.failed), running=running,
                                queued=queued, tasks_done=tasks_done)
        progress.close()
    except KeyboardInterrupt:
        progress.close()
        for ref in pending:
            ray.cancel(ref, force=True)
        ray.shutdown()
        raise Interrupted(
            f"sweep {summary.sweep} interrupted: {plural(len(summary.trained), 'run')} finished this time; "
            "run the same command again to train only the missing variants"
        ) from None
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _slots(ray, v, max_parallel) -> int:
    """How many tasks of ``v``'s resources the cluster runs at once (at most ``max_parallel``)."""
    try:
        total = ray.cluster_resources()
    except Exception:  # noqa: BLE001 - unknown: assume one at a time
        return 1
    kind, need = ("GPU", v.resources.num_gpus) if v.resources.num_gpus and total.get("GPU") else (
        "CPU", v.resources.num_cpus)
    n = int(total.get(kind, 1) / need + 1e-6) if need > 0 else 1
    return max(1, min(n, max_parallel or n))


def _in_runs(pending: dict, started: int) -> tuple[int, int]:
    """(running, queued) in runs: the first ``started`` tasks in submission order are
    taken as the running ones (a packed task counts its members)."""
    sizes = [len(vs) for vs in pending.values()]
    return sum(sizes[:started]), sum(sizes[started:])


def _started(ray, pending: dict) -> int:
    """How many of the in-flight tasks Ray has started (the rest wait in its queue for
    resources): the CPUs (GPUs) the cluster has in use, counted in tasks, as Ray reports
    them; a task holds its ``num_cpus``/``num_gpus`` from its start to its end. Never
    more than are in flight (on a cluster shared with other jobs their use counts too)."""
    if not pending:
        return 0
    try:
        total, free = ray.cluster_resources(), ray.available_resources()
    except Exception:  # noqa: BLE001 - a progress count never fails the sweep
        return len(pending)
    counts = []
    for kind, need in (("CPU", min(vs[0].resources.num_cpus for vs in pending.values())),
                       ("GPU", min(vs[0].resources.num_gpus for vs in pending.values()))):
        if need > 0 and total.get(kind):
            counts.append(int((total[kind] - free.get(kind, 0.0)) / need + 1e-6))
    return min([len(pending), *counts])


def _record(res: dict, store, tracker, summary: SweepSummary) -> None:
    """Account for one task's result and register its stored runs: a variant restarted
    by its ``on_bad_init`` policy returns every attempt (``res["attempts"]``)."""
    for one in res.get("attempts") or [res]:
        _record_one(one, store, tracker, summary)


def _record_one(res: dict, store, tracker, summary: SweepSummary) -> None:
    """Account for one run's result and register it. A task that died for
    good leaves its run ``running``: it is marked ``failed`` with the cause first."""
    rid, status = res["run_id"], res["status"]
    if status == "failed":
        summary.failed[rid] = res.get("error") or "unknown error"
        if store.status(rid) is None:
            return  # nothing was stored (died before creating the run)
        if store.status(rid) == "running":
            cause = (res.get("error") or "unknown error").strip().splitlines()[0]
            store.mark_failed(rid, f"task died: {cause}")
    else:
        summary.trained.append(rid)
        if status == "diverged":
            summary.diverged.append(rid)
    _register(tracker, store, rid, summary)


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt
