"""Registration of stored runs in MLflow, and ``kma sync``: MLflow rebuilt from the store.

The Zarr store is the source of truth; MLflow is the registry people browse. The sweep
driver registers each run with :func:`register_run` as its result comes in;
:func:`sync_store` does the same for every finished run of a store (``complete``,
``diverged``, and ``failed`` runs that were stored), then registers each completely
written analysis as a child run. Both go through :class:`~pipeline.tracking.tracker.Tracker`,
whose registration keeps a complete record, replaces a half-written one and removes
duplicates, so a sync repairs what an interruption left and a second sync adds nothing.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..config import Variant, flatten_dict, variant_params
from ..console import Console
from ..errors import KMAError, plural
from ..storage.runids import shown
from ..storage.store import FINISHED, TrajectoryStore
from ..tracking.tracker import Tracker, tracking_uri_for

log = logging.getLogger(__name__)

REGISTERED = (*FINISHED, "failed")  # stored statuses that get an MLflow record
# one row per variant: the training record carries the latest analysis' verdict and these
# keys' last-window spectral summaries (the per-window history stays on the analysis run)
SUMMARY_KEYS = ("all", "first", "hidden", "last")
LATEST_ANALYSIS = "kma.latest_analysis"          # on a training record: the analysis it summarises
ANALYSIS_ABOUT = "kma.analysis_about"            # the analysis id in words (explain_analysis_id)


def _experiment_and_params(run) -> tuple[str, dict]:
    """A sweep run's experiment is its sweep and its params the resolved variant; any other
    run (``kma ingest``) goes to its ``sweep`` attribute's experiment (else ``kma``)."""
    try:
        variant = Variant.model_validate(run.config)
    except Exception:  # noqa: BLE001 - not a sweep variant (ingested, or an older config)
        params = flatten_dict(run.config) if isinstance(run.config, dict) else {}
        return str(run.attrs.get("sweep") or "kma"), params
    return variant.sweep, variant_params(variant)


def short_name(run) -> str:
    """What the MLflow UI shows for a run: the grid coordinates a sweep compares first
    (depth, width, init, seed), its budget in epochs (a config re-run with other epochs
    lands in the same experiment: told apart at a glance) and six hex digits of the run
    id's digest, which keep variants differing elsewhere (lr, loss, task, ...) apart:
    ``d3-w32-kaiming-s0-e60-21b4b0``. A run that is not a sweep variant shows its run id."""
    c = run.config if isinstance(run.config, dict) else {}
    if not all(k in c for k in ("depth", "width", "init", "seed")):
        return run.run_id
    root = str(run.attrs.get("variant_run_id") or run.run_id)   # a restart attempt: its variant's
    digest = root.rsplit("-", 1)[-1]
    attempt = f"-r{run.attrs['attempt']}" if run.attrs.get("attempt") else ""
    epochs = f"e{c['epochs']}-" if "epochs" in c else ""
    return f"d{c['depth']}-w{c['width']}-{c['init']}-s{c['seed']}-{epochs}{digest[:6]}{attempt}"


def explain_analysis_id(aid: str) -> str:
    """An analysis id in words: ``qr-w20s10-layers-e3-cf3ed14a`` → "method qr, windows of
    20 snapshots every 10, per layer, engine version 3, settings digest cf3ed14a" (the
    digest: of every analysis setting, so two ids differ when any setting does)."""
    import re

    m = re.fullmatch(r"(?P<m>[a-z0-9_]+)-w(?P<w>[^-s]+?)(?:s(?P<s>\d+))?(?P<l>-layers)?-e(?P<e>\d+)-(?P<d>[0-9a-f]+)", aid)
    if not m:
        return f"analysis {aid}"
    w = m["w"]
    win = (f"windows of {w} snapshots every {m['s']}" if w.isdigit() and m["s"] else
           f"windows of {w} snapshots" if w.isdigit() else f"window {w}")
    return (f"method {m['m']}, {win}, " + ("per layer, " if m["l"] else "whole network, ")
            + f"engine version {m['e']}, settings digest {m['d']}")


def training_times(run) -> tuple[int | None, int | None]:
    """(start, end) of the run's training in Unix milliseconds, from the store: the
    runner's ``t_start``/``t_end``, else the ``created``/``finished`` (or ``updated``)
    timestamps; None where neither exists."""
    return _times(run.attrs, ("t_start", "created"), ("t_end", "finished", "updated"))


def analysis_times(info: dict) -> tuple[int | None, int | None]:
    """(start, end) of a stored analysis in Unix milliseconds, from its metadata
    (:meth:`Run.analysis_info`): ``t_start`` (when the analysis began) and ``t_end``
    (when it was completely written), else ``created``; None where neither exists."""
    return _times(info, ("t_start", "created"), ("t_end",))


def _times(attrs: dict, start_keys, end_keys) -> tuple[int | None, int | None]:
    import datetime as dt

    def ms(*keys):
        for key in keys:
            v = attrs.get(key)
            if isinstance(v, (int, float)):
                return int(v * 1000)
            if isinstance(v, str):
                try:
                    return int(dt.datetime.fromisoformat(v).timestamp() * 1000)
                except ValueError:
                    continue
        return None

    start, end = ms(*start_keys), ms(*end_keys)
    if start is not None and end is not None and end < start:
        end = start
    return start, end


def _variant_tags(run, experiment: str) -> dict[str, str]:
    tags = {"kma.variant": short_name(run), "kma.sweep": experiment, "kma.status": run.status,
            "kma.n_snapshots": str(run.n_snapshots), "kma.code_version": run.attrs.get("code_version", "")}
    # the bad-initialization policy (pipeline.training.restart): attempts linked both ways
    for attr, tag in (("restart_of", "kma.restart_of"), ("restarted_as", "kma.restarted_as"),
                      ("bad_init_action", "kma.bad_init_action")):
        if run.attrs.get(attr):
            tags[tag] = str(run.attrs[attr])
    return tags


def register_run(tracker: Tracker, store: TrajectoryStore, run_id: str) -> bool:
    """Register one stored run in MLflow (a no-op if a complete record exists, a repair if
    a half-written one does). Returns True if a record was written."""
    run = store.open_run(run_id)
    experiment, params = _experiment_and_params(run)
    params["run_id"] = run_id
    params["n_parameters"] = run.layout.size
    extra = _variant_tags(run, experiment)
    if run.attrs.get("error"):
        extra["kma.error"] = str(run.attrs["error"])[:500]
    metrics = run.metrics
    stop = run.attrs.get("stop")
    if isinstance(stop, dict):   # spectral stopping (sweep option stop:): where and why
        extra.update({f"kma.stop.{k}": str(v) for k, v in stop.items() if v is not None and not isinstance(v, (list, dict))})
        metrics = {**metrics, **{f"stop_{k}": [v] for k in ("snapshot", "epoch")
                                 if isinstance(v := stop.get(k), (int, float))}}
    start, end = training_times(run)
    _, created = tracker.register_training(
        experiment=experiment,
        run_id=run_id,
        status=run.status,
        params=params,
        metrics=metrics,
        trajectory_uri=run.uri,
        config_yaml=yaml.safe_dump(run.config, sort_keys=False),
        extra_tags=extra,
        store=store.location,
        run_name=short_name(run),
        start_ms=start,
        end_ms=end,
    )
    return created


def analysis_figures(run, results, analysis_id: str, residual_tol: float, out: Path, *,
                     verdict: dict | None = None) -> list[Path]:
    """The figures of one stored analysis, written into ``out`` (with a ``verdict``, also
    ``convergence.png``: :mod:`pipeline.apps.verdict_plots`)."""
    from .. import plots
    from ..spectra import RunSpectra

    out.mkdir(parents=True, exist_ok=True)
    spectra = RunSpectra.of_run(run, results, residual_tol=residual_tol, analysis_id=analysis_id,
                                label=short_name(run))
    figs = plots.analysis_figures(spectra, out)
    if verdict is not None:
        from ..apps import verdict_plots

        figs.append(verdict_plots.save_run_figure(run, verdict, out / "convergence.png",
                                                  label=short_name(run), analysis_id=analysis_id))
    return figs


def register_analysis(tracker: Tracker, run, analysis_id: str, key: dict, results, figs: list[Path], *,
                      n_snapshots: int, store: str | None = None, replace: bool = True,
                      times: tuple[int | None, int | None] = (None, None),
                      verdict: dict | None = None) -> str:
    """Register one analysis of ``run`` as a child of its training record: the analysis
    parameters (``analysis.<name>``) beside the variant's own params and tags (so analyses
    group and filter by depth, init, ...), spectral summaries per window with ``step`` =
    the epoch of the window's end, and the figures. ``times``: the analysis' (start,
    end) in Unix ms (:func:`analysis_times`), the record's start and end time; the run's
    ``verdict`` as tags and metrics (:func:`pipeline.apps.verdicts.mlflow_tags`,
    ``mlflow_metrics``)."""
    from ..apps import verdicts
    from ..spectra import RunSpectra, window_metrics

    experiment, variant_params = _experiment_and_params(run)
    spectra = RunSpectra.of_run(run, results, residual_tol=float(key.get("residual_tol", 1e-2)),
                                analysis_id=analysis_id)
    params = {**variant_params, "run_id": run.run_id, "n_parameters": run.layout.size,
              **{f"analysis.{k}": v for k, v in key.items()}, "n_snapshots": n_snapshots}
    metrics = window_metrics(spectra)
    verdict_tags = verdicts.mlflow_tags(verdict)
    rid = tracker.register_analysis(
        experiment=experiment,
        run_id=run.run_id,
        analysis_id=analysis_id,
        params=params,
        metrics={**metrics, **verdicts.mlflow_metrics(verdict)},
        artifacts=figs,
        tags={**_variant_tags(run, experiment), "kma.trajectory_uri": run.uri,
              ANALYSIS_ABOUT: explain_analysis_id(analysis_id), **verdict_tags},
        store=store,
        replace=replace,
        run_name=f"{short_name(run)}/{analysis_id}",
        start_ms=times[0],
        end_ms=times[1],
    )
    if analysis_id == latest_analysis(run):
        summary = {k: series[-1] for k, series in metrics.items() if k.split("/")[0] in SUMMARY_KEYS}
        summary.update({k: v[-1] for k, v in verdicts.mlflow_metrics(verdict).items()})
        tracker.summarize_on_training(
            experiment, run.run_id, store or _store_location(run), metrics=summary,
            tags={**verdict_tags, LATEST_ANALYSIS: analysis_id, ANALYSIS_ABOUT: explain_analysis_id(analysis_id)})
    return rid


def latest_analysis(run) -> str | None:
    """The run's most recently written current analysis (None if it has none)."""
    from ..results import list_analyses

    aids = list_analyses(run, outdated=False)
    def when(aid):
        info = run.analysis_info(aid)
        return float(info.get("t_end") or 0.0), str(info.get("created", ""))

    return max(aids, key=when, default=None)


def _store_location(run) -> str:
    from ..tracking.tracker import _store_of

    return _store_of(run.uri, run.run_id)


def register_stored_analysis(tracker: Tracker, store: TrajectoryStore, run_id: str, analysis_id: str) -> bool:
    """Register a stored analysis as a child run unless a complete record exists.
    Returns True if a record was written."""
    from ..config import RELIABLE_RESIDUAL
    from ..results import load_results

    run = store.open_run(run_id)
    experiment, _ = _experiment_and_params(run)
    if any(r.info.status in ("FINISHED", "FAILED", "KILLED")
           for r in tracker.find(experiment, run_id, analysis_id, store=store.location)):
        return False
    info = run.analysis_info(analysis_id)
    key = dict(info["params"])
    # the stored key may come from another engine version: only the tolerance is needed
    residual_tol = float(key.get("residual_tol", RELIABLE_RESIDUAL))
    results = load_results(run, analysis_id)
    verdict = info.get("verdict")
    if verdict is None:   # an analysis stored before verdicts: from its stored spectra
        from ..apps import verdicts

        verdict = verdicts.for_stored(run, results, residual_tol)
    with tempfile.TemporaryDirectory(prefix="kma-sync-") as tmp:
        figs = analysis_figures(run, results, analysis_id, residual_tol, Path(tmp), verdict=verdict)
        register_analysis(tracker, run, analysis_id, key, results, figs,
                          n_snapshots=info.get("n_snapshots"), store=store.location, replace=False,
                          times=analysis_times(info), verdict=verdict)
    return True


@dataclass
class SyncReport:
    runs: list[str] = field(default_factory=list)          # registered or repaired now
    analyses: list[str] = field(default_factory=list)      # "<run>/<analysis>" registered now
    unchanged: int = 0                                      # records already complete
    skipped: dict[str, str] = field(default_factory=dict)  # run -> why not registered


def sync_store(store_url: str, tracking_uri: str | None = None, *, console: Console | None = None) -> SyncReport:
    """``kma sync``: register every finished run of the store and its analyses in MLflow."""
    console = console or Console()
    store = TrajectoryStore(store_url, read_only=True)  # a mistyped store is an error, not a new one
    tracker = Tracker(tracking_uri_for(tracking_uri, store))
    report = SyncReport()
    infos = store.runs()
    console.info(f"sync {store_url} → MLflow {tracker.uri}: {plural(len(infos), 'run')} in the store")
    for info in infos:
        rid = info.run_id
        if info.status not in REGISTERED:
            report.skipped[rid] = info.error if info.status == "corrupt" and info.error else info.status
            continue
        try:
            if register_run(tracker, store, rid):
                report.runs.append(rid)
            else:
                report.unchanged += 1
            if info.status not in FINISHED:
                continue
            for aid in store.open_run(rid).list_analyses():
                if register_stored_analysis(tracker, store, rid, aid):
                    report.analyses.append(f"{rid}/{aid}")
                else:
                    report.unchanged += 1
        except KMAError as e:
            report.skipped[rid] = str(e)
        except (KeyError, TypeError, ValueError) as e:  # metadata a run should have is missing
            report.skipped[rid] = f"damaged metadata ({type(e).__name__}: {e})"
    for rid, why in report.skipped.items():
        if why not in ("running", "interrupted"):
            console.error(f"  not registered: {shown(rid)}: {why}")
    console.info(
        f"sync: {plural(len(report.runs), 'run')} and {plural(len(report.analyses), 'analysis record')} written, "
        f"{report.unchanged} already complete, {len(report.skipped)} not registrable"
        + (f" ({sum(1 for w in report.skipped.values() if w in ('running', 'interrupted'))} unfinished)"
           if report.skipped else "")
    )
    return report
