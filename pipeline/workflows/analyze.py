"""Analysis of stored trajectories: the I/O around :mod:`pipeline.koopman`.

For each run: read the weights lazily from the store, fit
:class:`~pipeline.koopman.KoopmanDMD` (one pass over the data for every layer and
window), write the spectra into the store under
``runs/<run_id>/analyses/<analysis_id>/`` (keyed by the analysis parameters, so
analyses with other parameters stay), optionally write modes (a second pass), draw the
figures, register the analysis in MLflow as a child of the training run, and return the
results for ``--json``. A bad run (still training, unreadable, NaN, window too long)
is reported in one line and the other runs are still analysed.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from pathlib import Path

import numpy as np

from ..config import RELIABLE_RESIDUAL, AnalysisParams  # noqa: F401 - re-exported: the analysis' names
from ..console import Console, DaskProgress
from ..errors import KMAError, plural
from ..koopman import KoopmanDMD, WindowResult
from ..koopman.core import dtype_roundoff
from ..storage.remote import StoreUnreachable
from ..storage.runids import check_run_id, is_valid
from ..storage.store import Run, TrajectoryStore
from ..results import is_outdated, list_analyses, load_results, outdated_analyses  # noqa: F401 - re-exported

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------- one run
def check_analyzable(run: Run) -> None:
    if run.status == "running":
        from ..storage.health import shown_status

        if shown_status(run.store, run.run_id) == "interrupted":  # no live sweep holds it
            raise KMAError(f"run {run.run_id}: interrupted before it finished (no live sweep is training it); "
                           "run its sweep again to train it")
        raise KMAError(f"run {run.run_id}: still training (status running); analyse it when it has finished")
    if run.status == "failed":
        raise KMAError(f"run {run.run_id}: failed during training ({run.attrs.get('error', 'no trajectory')})")
    if run.n_snapshots < 2:
        raise KMAError(f"run {run.run_id}: only {plural(run.n_snapshots, 'snapshot')}, need at least 2")
    missing = run.missing_chunks()
    if missing:
        raise KMAError(f"run {run.run_id}: {plural(len(missing), 'chunk')} of its weights {'is' if len(missing) == 1 else 'are'} missing "
                       f"(first: weights/{missing[0]}); the trajectory is incomplete")


# without a terminal, a long run's analysis prints a progress line at least this often (s)
PROGRESS_INTERVAL = 5.0


def _plan_text(run: Run, params: AnalysisParams) -> str:
    """``61 snapshots, 9 windows × 4 layers`` (what the analysis of ``run`` will fit)."""
    from ..koopman.windows import plan_windows

    T = run.n_snapshots
    try:
        n_windows = len(plan_windows(T, params.window, params.stride))
    except ValueError:
        return plural(T, "snapshot")  # fit_run says what is wrong
    layers = run.layout.layers
    n_layers = 1 + (len(layers) if params.per_layer and len(layers) > 1 else 0)
    if params.method == "randomized":
        passes = f"{plural(params.n_power_iter + 1, 'pass', 'passes')} (randomized)"
    elif params.estimator().second_pass_possible():
        passes = "one pass, a second (TSQR) if a window keeps what its Gram cannot resolve"
    else:
        passes = "one pass"
    return f"{plural(T, 'snapshot')}, {plural(n_windows, 'window')} × {plural(n_layers, 'layer')}, {passes}"


def _window_progress(steps, head: str):
    """The estimator's ``progress(done, total)`` for its per-window problems, as steps."""
    def progress(done: int, total: int) -> None:
        if done == 0:
            steps.relabel(f"{head}: windows", total, "window")
        else:
            steps.advance(done - steps.completed)
    return progress


def fit_run(run: Run, params: AnalysisParams, scheduler=None, progress=None) -> KoopmanDMD:
    """Fit the estimator on a stored run (one pass over its weights).

    The default cut follows the run's storage dtype (``stored_dtype``: a bfloat16 run is
    read as float32 but carries bfloat16's rounding). A ``diverged`` run is analysed on
    its finite prefix: ``est.finite_prefix_`` is the number of snapshots used (None
    when the whole run was). ``progress(done, total)`` follows the per-window problems
    (:meth:`KoopmanDMD.fit`).
    """
    check_analyzable(run)
    u = dtype_roundoff(run.attrs.get("stored_dtype", "float32"))
    try:
        Y = run.trajectory()                     # the store's source: array, loader, layers
        prefix = finite_prefix(Y.array) if run.status == "diverged" else None
        if prefix is not None:
            if prefix < 2:
                raise KMAError(f"diverged at snapshot {prefix}: fewer than 2 finite snapshots to analyse")
            Y = run.trajectory(rows=prefix)
        est = params.estimator(scheduler, unit_roundoff=u)
        est.breaks = event_breaks(run.attrs)     # no window straddles a prune or a jump
        keep = _LeadingRows.tap(Y, run.n_snapshots, scheduler)
        est = est.fit(Y if keep is None else keep.trajectory, progress=progress)
        est.finite_prefix_ = prefix
        run.leading_rows = keep.rows() if keep is not None else None
        return est
    except StoreUnreachable:
        raise                                    # the whole command stops (analyze_runs)
    except KMAError as e:
        raise KMAError(f"run {run.run_id}: {e}") from None
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        if not _read_error(e):  # a bug elsewhere keeps its traceback
            raise
        raise KMAError(f"run {run.run_id}: cannot read its trajectory ({type(e).__name__}: {str(e)[:200]})") from None


class _LeadingRows:
    """A chunk loader that copies the first ``K`` snapshots of the chunks a pass loads,
    so that the bad-init detector (:func:`pipeline.apps.badinit.first_snapshots`: the
    first ``min(n_snapshots, DEFAULT_SNAPSHOTS)`` snapshots) gets them from the pass
    instead of reading them again. Only for passes in this process' threads that load
    their chunks in their tasks (mapped files); :meth:`rows` is None when a chunk of
    those rows was not loaded through it (then the detector reads them)."""

    def __init__(self, Y, K: int):
        from dataclasses import replace

        from ..koopman.passes import chunk_edges

        self.loader, self.K = Y.load_chunk, K
        self.row_edges, self.col_edges = chunk_edges(Y.chunks[0]), chunk_edges(Y.chunks[1])
        n_i = next(i for i, e in enumerate(self.row_edges) if e >= K)   # row chunks holding rows < K
        self.needed = {(i, j) for i in range(n_i) for j in range(len(self.col_edges) - 1)}
        self.done: set = set()
        self.buf = np.empty((K, Y.shape[1]), dtype=Y.dtype)
        self.groups = list(Y.groups or [])
        self.trajectory = replace(Y, load_chunk=self)

    @classmethod
    def tap(cls, Y, n_snapshots: int, scheduler) -> "_LeadingRows | None":
        from ..apps.badinit import DEFAULT_SNAPSHOTS, MIN_SNAPSHOTS

        K = min(n_snapshots, DEFAULT_SNAPSHOTS)
        if (scheduler not in ("threads", "threading") or Y.load_chunk is None or not Y.cheap
                or K < MIN_SNAPSHOTS or Y.shape[0] < K):
            return None
        return cls(Y, K)

    def __call__(self, i: int, j: int) -> np.ndarray:
        chunk = self.loader(i, j)
        if (i, j) in self.needed and (i, j) not in self.done:
            r0, c0 = self.row_edges[i], self.col_edges[j]
            r1 = min(self.row_edges[i + 1], self.K)
            self.buf[r0:r1, c0:c0 + chunk.shape[1]] = chunk[:r1 - r0]
            self.done.add((i, j))          # disjoint rows and columns per chunk: no lock needed
        return chunk

    def rows(self) -> tuple[np.ndarray, list] | None:
        """``(rows (K, P), groups)``, or None if some of those rows were not loaded."""
        return (self.buf, self.groups) if self.done >= self.needed else None


def event_breaks(attrs: dict) -> tuple[int, ...]:
    """Snapshot indices of a run's recorded events (``attrs["events"]``: ``[{"snapshot":
    i, "kind": ...}, ...]``, written by :mod:`pipeline.apps.hooks`): the first snapshot
    after a prune or a Koopman jump, where the dynamics change."""
    events = attrs.get("events") or []
    return tuple(sorted({int(e["snapshot"]) for e in events
                         if isinstance(e, dict) and isinstance(e.get("snapshot"), int)}))


def finite_prefix(Y) -> int | None:
    """Number of leading snapshots of ``Y`` (``T × P`` dask) with only finite values;
    None when all are (one read pass, only for runs marked diverged)."""
    import dask.array as da

    bad = np.flatnonzero(~np.asarray(da.isfinite(Y).all(axis=1).compute()))
    return int(bad[0]) if bad.size else None


# where a failed read of stored chunks comes from: the I/O and decoding libraries
_READ_MODULES = ("zarr", "numcodecs", "fsspec", "s3fs", "gcsfs", "botocore", "aiobotocore", "pipeline.storage.chunkmap")


def _read_error(e: BaseException) -> bool:
    """True for a genuine read failure (missing or corrupt chunk, unreachable storage):
    any ``OSError``, or another error raised inside the storage/decoding libraries.
    A ``ValueError``/``RuntimeError`` raised in our own engine is a bug, not bad data."""
    if isinstance(e, OSError):
        return True
    cause = getattr(e, "cause", None)   # a Ray task's error (Dask-on-Ray) carries the worker's
    if isinstance(cause, BaseException) and cause is not e and (
            isinstance(cause, OSError) or type(cause).__module__.split(".")[0] in {m.split(".")[0] for m in _READ_MODULES}):
        return True
    tb = e.__traceback__
    while tb is not None:
        mod = tb.tb_frame.f_globals.get("__name__", "")
        if any(mod == m or mod.startswith(m + ".") for m in _READ_MODULES):
            return True
        tb = tb.tb_next
    return False


def _pad(rows: list[np.ndarray], dtype) -> np.ndarray:
    width = max([len(r) for r in rows] + [1])
    out = np.full((len(rows), width), np.nan, dtype=dtype)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


def _or_nan(x, r):
    return np.full(r.residuals.size, np.nan) if x is None else x


def write_results(run: Run, params: AnalysisParams, est: KoopmanDMD, modes: dict | None = None,
                  t_start: float | None = None, verdict: dict | None = None) -> str:
    """Store the spectra under ``runs/<id>/analyses/<analysis_id>`` (:meth:`Run.write_analysis`:
    status last; a failed write leaves nothing current). Arrays per layer, one row per
    window, padded with NaN to the largest rank. ``t_start`` (Unix seconds, when the
    analysis began) is kept with it; the store adds ``t_end`` when the write completes,
    so the MLflow record shows the analysis' real start and end. The run's ``verdict``
    (:mod:`pipeline.apps.verdicts`) goes in the analysis' attributes."""
    by_layer: dict[str, list[WindowResult]] = {}
    for r in est.results_:
        by_layer.setdefault(r.layer, []).append(r)
    layers = {}
    for layer, rows in by_layer.items():
        eig = _pad([r.eigenvalues for r in rows], np.complex128)
        amp = _pad([r.amplitudes for r in rows], np.complex128)
        layers[layer] = {
            "windows": np.array([r.window for r in rows], dtype=np.int64),
            "rank": np.array([r.rank for r in rows], dtype=np.int64),
            "eigenvalues": np.stack([eig.real, eig.imag], axis=-1),
            "amplitudes": np.stack([amp.real, amp.imag], axis=-1),
            "residuals": _pad([r.residuals for r in rows], np.float64),
            "singular_values": _pad([r.singular_values for r in rows], np.float64),
            "residual_floors": _pad([_or_nan(r.residual_floors, r) for r in rows], np.float64),
            "conditions": _pad([_or_nan(r.conditions, r) for r in rows], np.float64),
            "informative": np.array([bool(r.informative) for r in rows]),
            "misfit": np.array([np.nan if r.misfit is None else r.misfit for r in rows], np.float64),
            "misfit_limit": np.array([np.nan if r.misfit_limit is None else r.misfit_limit
                                      for r in rows], np.float64),
        }
    aid = params.analysis_id
    attrs = {"n_snapshots": est.n_snapshots_,
             "factors": {layer: [r.factor for r in rows] for layer, rows in by_layer.items()}}
    if t_start is not None:
        attrs["t_start"] = float(t_start)
    if verdict is not None:
        attrs["verdict"] = verdict
    run.write_analysis(aid, params.key(), layers, modes=modes, attrs=attrs)
    return aid


def result_records(run_id: str, aid: str, results: list[WindowResult], residual_tol: float,
                   finite_prefix: int | None = None) -> list[dict]:
    """The ``--json`` rows (contract in docs/pages/commands.md). ``reliable``: see
    :data:`RELIABLE_RESIDUAL`; ``finite_prefix``: a diverged run's snapshots analysed."""
    rows = []
    for r in results:
        rel = r.reliable(residual_tol)
        row = {
            "run_id": run_id,
            "layer": r.layer,
            "window": [int(r.window[0]), int(r.window[1])],
            "eigenvalues": [[float(z.real), float(z.imag)] for z in r.eigenvalues],
            "residuals": [float(x) for x in r.residuals],
            "amplitudes": [[float(z.real), float(z.imag)] for z in r.amplitudes],
            "reliable": [bool(x) for x in rel],
            "residual_floor": [float(x) for x in _or_nan(r.residual_floors, r)],
            "condition": [float(x) for x in _or_nan(r.conditions, r)],
            "unit_circle": list(r.unit_circle) or ["uncertain"] * r.residuals.size,
            "residuals_informative": bool(r.informative),
            "misfit": _finite_or_none(r.misfit),
            "misfit_limit": _finite_or_none(r.misfit_limit),
            "factor": r.factor or None,
            "singular_values": [float(x) for x in r.singular_values],
            "rank": int(r.rank),
            "analysis_id": aid,
        }
        if r.rank_requested is not None:
            row["rank_requested"] = int(r.rank_requested)
        if finite_prefix is not None:
            row["finite_prefix"] = int(finite_prefix)
        rows.append(row)
    return rows


def _finite_or_none(x):
    return float(x) if x is not None and np.isfinite(x) else None


def _write_errors() -> tuple[type[BaseException], ...]:
    """What a failed store write raises: the OS or an object store (read-only, disk full,
    a file where a folder should be: OSError) or zarr (a node in the way, bad metadata).
    Anything else is a bug and keeps its traceback."""
    from zarr.errors import BaseZarrError

    return (OSError, BaseZarrError)


def analyze_runs(
    store: TrajectoryStore,
    run_ids: list[str] | None,
    params: AnalysisParams,
    *,
    tracker=None,
    console: Console | None = None,
    json_path: str | None = None,
    scheduler=None,
    plots_dir: str | None = None,
) -> dict[str, str | None]:
    """Analyse each run; returns ``{run_id: None or the error line}``.

    A run that cannot be read, analysed or written (its analysis, figures) gets one
    error line naming it and the cause; the others are still analysed. Runs skipped
    for damaged metadata are reported the same way. ``--json`` is written last, with an
    ``"errors"`` entry per failed run; a failure to write it is an error with exit code 1
    (the analyses are stored).
    """
    console = console or Console()
    from ..storage.health import select_runs

    run_ids, damaged = select_runs(store, run_ids)
    report: dict[str, str | None] = {}
    records: list[dict] = []
    verdict_rows: list[dict] = []
    aid = params.analysis_id
    console.info(f"analysis {aid}: {plural(len(run_ids), 'run')}, method {params.method}"
                 + (f"; {len(damaged)} skipped" if damaged else ""))
    for rid, msg in damaged.items():
        report[rid] = msg
        console.error(f"kma: error: {msg}")
    for n, rid in enumerate(run_ids, 1):
        t0, t_start = time.perf_counter(), time.time()
        head = f"[{n}/{len(run_ids)}] {rid}"
        try:
            run = store.open_run(rid)
            console.info(f"{head}: {_plan_text(run, params)}")
            with console.steps(head, 0, "task", interval=min(console.interval, PROGRESS_INTERVAL)) as steps:
                with DaskProgress(steps, f"{head}: reading"):
                    est = fit_run(run, params, scheduler, progress=_window_progress(steps, head))
                if getattr(est, "finite_prefix_", None) is not None:
                    console.info(f"{head}: diverged; analysed its finite prefix, snapshots "
                                 f"0..{est.finite_prefix_ - 1} (non-finite from snapshot {est.finite_prefix_})")
                steps.relabel(f"{head}: verdicts", 0)
                verdict = _verdict(run, est, params)
                run.leading_rows = None          # the detector's rows: not held while writing
                steps.relabel(f"{head}: writing" + (" modes (second pass)" if params.modes else ""), 0)
                with DaskProgress(steps, f"{head}: writing modes (second pass)"):
                    _store_results(run, params, est, _modes(run, est, params) if params.modes else None,
                                   t_start, verdict)
                if plots_dir:
                    steps.relabel(f"{head}: figures", 0)
                    figs = _figures_to(run, est, params, Path(plots_dir) / rid, verdict)
                    if tracker is not None:
                        steps.relabel(f"{head}: registering in MLflow", 0)
                        _register(tracker, run, params, est, figs, verdict)
                elif tracker is not None:  # figures only for MLflow: a temporary folder, removed after upload
                    steps.relabel(f"{head}: figures and MLflow", 0)
                    with tempfile.TemporaryDirectory(prefix="kma-figs-") as tmp:
                        _register(tracker, run, params, est,
                                  _figures_to(run, est, params, Path(tmp), verdict), verdict)
            records += result_records(rid, aid, est.results_, params.residual_tol,
                                      getattr(est, "finite_prefix_", None))
            verdict_rows.append(verdict)
            report[rid] = None
            console.info(
                f"{head}: {plural(len(est.results_), 'spectrum', 'spectra')} "
                f"({plural(len(est.windows_), 'window')} × {plural(len({r.layer for r in est.results_}), 'layer')}) "
                f"in {time.perf_counter() - t0:.1f}s"
            )
        except StoreUnreachable:
            raise  # every other run would wait out the same retries: one line, exit 2
        except KMAError as e:
            msg = str(e) if rid in str(e) else f"run {rid}: {e}"
            report[rid] = msg
            console.error(f"kma: error: {msg}")
    if json_path:
        try:
            _write_json(json_path, records, report, verdict_rows)
        except KMAError as e:
            e.exit_code = 1  # the analyses themselves are stored
            raise
    return report


def _verdict(run: Run, est, params: AnalysisParams) -> dict:
    """The run's verdict (:mod:`pipeline.apps.verdicts`): convergence, bad_init, evidence."""
    from ..apps import verdicts

    return verdicts.for_estimator(run, est, params.residual_tol)


def _store_results(run: Run, params: AnalysisParams, est, modes, t_start=None, verdict=None) -> None:
    """:func:`write_results`, with a write error as one line naming the run; the
    half-written analysis is removed by :meth:`Run.write_analysis` (best effort; if that
    fails too, its status stays ``writing`` and :func:`list_analyses` never takes it
    for a current one)."""
    try:
        write_results(run, params, est, modes, t_start, verdict)   # removes what it half-wrote, then raises
    except _write_errors() as e:
        raise KMAError(f"run {run.run_id}: cannot write its analysis into the store "
                       f"({_cause(e)}); nothing of it is kept") from None


def _figures_to(run: Run, est, params: AnalysisParams, out: Path, verdict=None) -> list[Path]:
    try:
        return _figures(run, est, params, out, verdict)
    except OSError as e:
        raise KMAError(f"run {run.run_id}: cannot write its figures to {out} ({_cause(e)})") from None


def _cause(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:
        text = f"{e.strerror}: {e.filename}" if e.filename else e.strerror
    else:
        text = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def analyze_store(store_url, run_ids, params, *, tracking_uri=None, json_path=None, scheduler="threads",
                  plots_dir=None, console=None) -> dict[str, str | None]:
    """``kma analyze``: check the output paths, resolve the scheduler, open the store once
    (it must exist: a mistyped path is an error, not a new empty store), check the
    ``--run`` ids against it, open the tracker, analyse. ``params`` arrive validated."""
    from ..outputs import check_dir, check_file

    if json_path:
        check_file(json_path, "--json")
    if plots_dir:
        check_dir(plots_dir, "--plots")
    sched = resolve_scheduler(scheduler, console)  # a bad flag fails before anything is opened or created
    try:
        store = TrajectoryStore(store_url, create=False)
        if not all(is_valid(r) for r in run_ids or []):  # older ids are fine if the store lists them
            listed = store.run_ids()
            for rid in run_ids:
                check_run_id(rid, what="--run", listed=listed)
        tracker = None
        if tracking_uri is not None:   # --no-mlflow: the tracking modules are not imported
            from ..tracking.tracker import Tracker, tracking_uri_for

            tracker = Tracker(tracking_uri_for(tracking_uri, store))
        return analyze_runs(store, run_ids, params, tracker=tracker, console=console,
                            json_path=json_path, scheduler=sched, plots_dir=plots_dir)
    finally:
        if hasattr(sched, "close"):
            sched.close()


def resolve_scheduler(name, console=None):
    """The scheduler ``--scheduler NAME`` asks for: a local Dask scheduler's name, a
    dask.distributed ``Client`` (``tcp://``), or :class:`pipeline.runtime.dask_ray.RayScheduler`
    (``ray``, ``ray:ADDRESS``: Dask-on-Ray). A callable is a Dask ``get`` and is used as is."""
    if callable(name):
        return name
    if name in (None, "", "threads", "threading"):
        return "threads"
    from ..runtime.dask_ray import RayScheduler, parse_ray_scheduler

    address = parse_ray_scheduler(name)
    if address is not False:
        return RayScheduler(address, console)
    if name in ("processes", "sync", "synchronous", "single-threaded"):
        return name
    if name.startswith("tcp://"):
        try:
            from dask.distributed import Client
        except ImportError:
            raise KMAError("--scheduler tcp://...: install dask.distributed (pip install 'kma[cluster]')") from None
        try:
            return Client(name, timeout=10)
        except (OSError, TimeoutError) as e:
            raise KMAError(f"Dask scheduler {name}: unreachable ({e})") from None
    raise KMAError(f"--scheduler {name!r}: expected threads, processes, tcp://HOST:PORT or ray[:ADDRESS]")


def _modes(run: Run, est: KoopmanDMD, params: AnalysisParams) -> dict:
    """Modes of the last window of every analysed layer (a second pass)."""
    last = est.windows_[-1]
    # "all", then each analysed layer; a layer whose last window kept no direction has none
    layers = list(dict.fromkeys(r.layer for r in est.results_ if tuple(r.window) == tuple(last) and r.rank))
    return {layer: est.modes(run.weights(), layer=layer, window=last) for layer in layers}


def _figures(run: Run, est: KoopmanDMD, params: AnalysisParams, out: Path, verdict=None) -> list[Path]:
    from .sync import analysis_figures

    return analysis_figures(run, est.results_, params.analysis_id, params.residual_tol, out,
                            verdict=verdict)


def _register(tracker, run: Run, params: AnalysisParams, est: KoopmanDMD, figs: list[Path],
              verdict=None) -> None:
    from .sync import analysis_times, register_analysis

    register_analysis(tracker, run, params.analysis_id, params.key(), est.results_, figs,
                      n_snapshots=est.n_snapshots_, store=run.store.location,
                      times=analysis_times(run.analysis_info(params.analysis_id)), verdict=verdict)


def _write_json(path: str, records: list[dict], report: dict, verdicts: list[dict] | None = None) -> None:
    from ..outputs import write_text_atomic

    payload = {"runs": records, "errors": [{"run_id": r, "error": e} for r, e in report.items() if e],
               "verdicts": list(verdicts or [])}
    write_text_atomic(path, json.dumps(payload), "--json")
