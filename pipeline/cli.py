"""``kma`` command line: sweep, analyze, ingest, runs, compare, sync, depth.

Exit codes: 0 done; 2 a user error, refused before any work (one line
``kma: error: ...``); 1 some run or its analysis failed while the others completed
(one line per failure); 130 interrupted. A run that diverged is a result, not a
failure. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import sys

from .errors import KMAError, plural


class Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line ``kma: error: ...`` (exit code 2), with
    no usage block; the line names the (sub)command's ``--help``."""

    def error(self, message):
        sys.stderr.write(f"{self.prog.split()[0]}: error: {message} (see {self.prog} --help)\n")
        sys.exit(2)


def _window_arg(text: str):
    """``--window``: an integer when the text is one, else the text (the window rule,
    checked where the analysis parameters are parsed, says what is allowed)."""
    try:
        return int(text)
    except ValueError:
        return text


def _add_common(p, *, store_required: bool):
    if store_required:
        p.add_argument("--store", required=True, metavar="URL",
                       help="trajectory store: a path or fsspec URL (s3://...); required")
    else:
        p.add_argument("--store", default=None, metavar="URL",
                       help="trajectory store: a path or fsspec URL (s3://...); default: the config's "
                            "'store', else ./kma-store")
    p.add_argument("-v", "--verbose", action="count", default=0,
                   help="log output: -v for INFO, -vv for DEBUG (default: warnings only)")
    p.add_argument("-q", "--quiet", action="store_true",
                   help="no progress or summary lines (errors are still printed)")


_TRACKING_HELP = ("MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else the one the store's sweep "
                  "recorded, else sqlite:///./mlflow.db)")


def build_parser() -> argparse.ArgumentParser:
    """The ``kma`` parser; every subcommand's parser is in ``parser.subcommands[name]``."""
    parser = Parser(
        prog="kma", description="Koopman mode analysis of neural-network training, at sweep scale."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                help="one of the commands below; 'kma COMMAND --help' for its options")
    parser.subcommands = {}

    p = sub.add_parser("sweep", help="train a sweep's variants on Ray, store and register them")
    p.add_argument("config", help="sweep YAML file")
    p.add_argument("overrides", nargs="*", default=[], metavar="KEY=VALUE",
                   help="config overrides, e.g. epochs=5 'model.depth=[2,4]' (values are YAML)")
    _add_common(p, store_required=False)
    p.add_argument("--tracking-uri", default=None, metavar="URI", help=_TRACKING_HELP)
    p.add_argument("--ray-address", default=None, metavar="ADDR",
                   help="Ray cluster address, HOST:PORT or ray://HOST:PORT (default: $RAY_ADDRESS, "
                        "else start a local Ray on this machine's cores)")
    p.add_argument("--max-parallel", type=int, default=None, metavar="N",
                   help="at most N tasks submitted at once, a packed task of several variants "
                        "counting one (default: all; Ray queues what does not fit)")
    p.add_argument("-y", "--yes", action="store_true",
                   help=f"train a grid above {10_000:,} variants without asking")
    p.add_argument("--shared-store", action="store_true",
                   help="the local --store path is on a filesystem every Ray node mounts at the same "
                        "path (NFS); without it a local store is refused on a multi-node cluster")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--no-analyze", dest="analyze", action="store_false", default=None,
                   help="skip the default analysis after training")
    g.add_argument("--analyze", dest="analyze", action="store_true",
                   help="run the default analysis even if the config's analysis.enabled is false")
    parser.subcommands["sweep"] = p

    p = sub.add_parser("analyze", help="Koopman/DMD analysis of stored trajectories")
    _add_common(p, store_required=True)
    p.add_argument("--run", dest="runs", action="append", metavar="ID",
                   help="run id (repeatable; default: every finished run)")
    p.add_argument("--method", choices=["qr", "randomized"], default="qr",
                   help="compression: 'qr' exact, one pass (default); 'randomized' a sketch of "
                        "--rank + 10 columns (default rank 50), 3 passes over the data")
    p.add_argument("--rank", type=int, default=None, metavar="K",
                   help="keep K singular directions per window (the sketch's target rank with "
                        "--method randomized); default: cut at the storage dtype's resolution")
    p.add_argument("--tol", type=float, default=None, metavar="T",
                   help="keep singular values above T times the largest, 0 <= T < 1 (at most one of --rank, "
                        "--tol, --threshold)")
    p.add_argument("--threshold", choices=["gavish-donoho"], default=None,
                   help="truncation by the Gavish-Donoho optimal hard threshold (noisy data)")
    p.add_argument("--window", type=_window_arg, default="auto", metavar="W|auto|all",
                   help="window width W in snapshots; 'auto' (default): W = max(6, min(16, T//2), ceil(T/8)), "
                        "stride ceil(W/2); 'all': the whole run as one window. A window ending at "
                        "the last snapshot is always added (docs: Commands, Windows)")
    p.add_argument("--stride", type=int, default=None, metavar="S",
                   help="window stride S (default: W; needs an explicit --window)")
    p.add_argument("--per-layer", action=argparse.BooleanOptionalAction, default=True,
                   help="also analyse every layer separately (default; --no-per-layer: whole network only)")
    p.add_argument("--modes", action="store_true",
                   help="also compute Koopman modes of the last window (second pass) into the store")
    p.add_argument("--seed", type=int, default=0, help="seed of the randomized method (default 0)")
    p.add_argument("--json", dest="json_path", default=None, metavar="PATH", help="write results as JSON")
    p.add_argument("--tracking-uri", default=None, metavar="URI", help=_TRACKING_HELP)
    p.add_argument("--no-mlflow", action="store_true", help="do not register in MLflow")
    p.add_argument("--scheduler", default="threads", metavar="NAME",
                   help="Dask scheduler: threads (default), processes, tcp://HOST:PORT of a "
                        "dask.distributed scheduler, or ray (Dask-on-Ray: $RAY_ADDRESS, else a local "
                        "Ray) / ray:HOST:PORT")
    p.add_argument("--plots", default=None, metavar="DIR", help="also write figures to DIR/<run id>/")
    parser.subcommands["analyze"] = p

    p = sub.add_parser("ingest", help="import checkpoints (.pt, .safetensors, Lightning .ckpt, Hugging Face "
                                      "checkpoint folders) as a run")
    p.add_argument("checkpoints", nargs="+", metavar="CHECKPOINT",
                   help="checkpoint files or Hugging Face checkpoint-<step> folders (or the folder holding "
                        "them), one form per run; in the order given, except that HF folders and Lightning "
                        ".ckpt files go by their global step. Pickles load weights-only: a file carrying "
                        "other objects is refused, never run")
    _add_common(p, store_required=True)
    p.add_argument("--run-id", required=True, metavar="ID",
                   help="id of the new run (a letter or digit, then letters, digits, '.', '_', '-'; "
                        "at most 128 characters); required")
    p.add_argument("--layers", nargs="+", default=None, metavar="NAME",
                   help="only these layers (module names; default: every parameter)")
    p.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32",
                   help="storage dtype of the snapshots (default float32)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run of that id")
    parser.subcommands["ingest"] = p

    p = sub.add_parser("compare", help="compare runs grouped by a config key: table and figures")
    _add_common(p, store_required=True)
    p.add_argument("--run", dest="runs", action="append", metavar="ID",
                   help="only these runs (repeatable; default: every finished run)")
    p.add_argument("--sweep", default=None, metavar="NAME", help="only runs of this sweep")
    p.add_argument("--analysis", default=None, metavar="ID",
                   help="the analysis every run is compared through (default: the most recent current "
                        "analysis the runs share; runs without it are named as skipped)")
    p.add_argument("--by", default="depth", metavar="KEY",
                   help="flattened config key to group by (default depth; width, init, seed, "
                        "lr, ...)")
    p.add_argument("--allow-mixed", action="store_true",
                   help="average runs trained with different budgets or tasks (epochs, batch_size, "
                        "task.*, snapshot.*) into one group; refused by default, naming what differs")
    p.add_argument("--out", default="kma-compare", metavar="DIR",
                   help="parent folder; each comparison goes to <out>/<by>-<analysis>-<hash of run ids>/ "
                        "(default: ./kma-compare)")
    p.add_argument("--tracking-uri", default=None, metavar="URI",
                   help="also log the comparison as an MLflow run 'compare <by> <analysis>' in experiment "
                        "<sweep>-comparisons (kma-compare when the runs come from several); off when not given")
    p.add_argument("--json", dest="json_path", default=None, metavar="PATH",
                   help="also write the comparison as JSON: the table's rows and the 'dynamics' section "
                        "(distances between the runs' training dynamics, seed-to-seed test per pair of groups)")
    parser.subcommands["compare"] = p

    p = sub.add_parser("runs", help="list the runs in a store")
    _add_common(p, store_required=True)
    p.add_argument("--json", dest="as_json", action="store_true", help="print JSON instead of a table")
    parser.subcommands["runs"] = p

    p = sub.add_parser("sync", help="rebuild or repair MLflow from the store (the source of truth)")
    _add_common(p, store_required=True)
    p.add_argument("--tracking-uri", default=None, metavar="URI", help=_TRACKING_HELP)
    parser.subcommands["sync"] = p

    p = sub.add_parser("ui", help="MLflow's UI server (as mlflow ui), opening experiments on the runs table")
    p.add_argument("--tracking-uri", "--backend-store-uri", dest="tracking_uri", default=None, metavar="URI",
                   help="the MLflow database (default: $MLFLOW_TRACKING_URI, else sqlite:///./mlflow.db)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=5000, help="port (default: 5000; 0: any free one)")
    p.add_argument("--workers", type=int, default=1, help="uvicorn workers (default: 1)")
    p.add_argument("--default-artifact-root", default=None, metavar="URI",
                   help="artifact root of new experiments (as mlflow ui)")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    p.add_argument("-q", "--quiet", action="store_true", help="no summary lines")
    parser.subcommands["ui"] = p

    # -- kma depth: a-priori depth from the target's spectrum
    p = sub.add_parser("depth", help="scales of a target signal and the depth they call for (before training)")
    p.add_argument("config", nargs="?", default=None,
                   help="sweep YAML whose task lives on a grid (multiscale): its training samples are analysed")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. task.noise=0.5")
    p.add_argument("--signal", default=None, metavar="FILE.npy", help="a 1-D array of samples on a uniform grid")
    p.add_argument("--dx", type=float, default=None, help="grid spacing of --signal in x units (default: 1/n)")
    p.add_argument("--decay", type=float, default=2.0,
                   help="merge scales closer than this ratio (default 2: one stage per octave at most)")
    p.add_argument("--json", dest="json_path", default=None, metavar="PATH",
                   help='write {"scales": [...], "depth": int, ...evidence} here')
    p.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    parser.subcommands["depth"] = p
    return parser


def signal_from_config(path, overrides=None) -> tuple:
    """The training samples of a sweep config's task on its grid: ``(y (n_points,),
    dx, source)``.

    The task is built as a sweep builds it for the first replica (``seeds[0]``; same
    seed, same train/validation split, noise included). Grid points held out for
    validation are filled by linear interpolation between the neighbouring training
    samples (``source["filled"]`` counts them).
    """
    import numpy as np

    from . import config
    from .training.tasks import build_task

    cfg = config.load(path, overrides)
    variant = config.expand(cfg)[0]
    task = build_task(variant.task.name, seed=variant.torch_seed,
                      **variant.task.model_dump(exclude={"name"}))
    if task.grid is None or task.in_dim != 1 or task.out_dim != 1:
        raise KMAError(f"{path}: task {variant.task.name!r} does not live on a 1-D grid; "
                       "kma depth needs a grid task (multiscale) or --signal FILE.npy")
    grid = task.grid[:, 0].double().numpy()
    dx = float(grid[1] - grid[0])
    pos = (task.x_train[:, 0].double().numpy() - grid[0]) / dx
    idx = np.rint(pos).astype(np.int64)
    if np.abs(pos - idx).max() > 1e-3 or idx.min() < 0 or idx.max() >= grid.size:
        raise KMAError(f"{path}: the task's training inputs are not on its grid")
    vals = task.y_train[:, 0].double().numpy()
    total = np.bincount(idx, weights=vals, minlength=grid.size)
    count = np.bincount(idx, minlength=grid.size)
    have = count > 0
    y = np.interp(np.arange(grid.size), np.flatnonzero(have), total[have] / count[have])
    source = {"config": str(path), "task": variant.task.model_dump(mode="json"),
              "replica_seed": variant.seed, "task_seed": variant.torch_seed,
              "samples": "training samples as the sweep builds them (noise included)",
              "n_train": int(task.n_train), "filled": int((~have).sum())}
    return y.astype(np.float32), dx, source


def cmd_depth(args, console) -> int:
    from .apps import depth
    from .outputs import write_text_atomic

    if (args.config is None) == (args.signal is None):
        raise KMAError("kma depth: give a sweep CONFIG or --signal FILE.npy (exactly one)")
    if args.signal is not None and args.overrides:
        raise KMAError(f"kma depth: KEY=VALUE overrides apply to a CONFIG, not to --signal ({args.overrides[0]})")
    if args.dx is not None and args.signal is None:
        raise KMAError("--dx applies to --signal only (a config's task gives its own grid)")
    if args.dx is not None and not (args.dx > 0 and args.dx < float("inf")):
        raise KMAError(f"--dx {args.dx}: must be a positive number")
    if not args.decay > 1 or args.decay == float("inf"):
        raise KMAError(f"--decay {args.decay}: must be a number > 1")
    if args.json_path:
        from .outputs import check_file

        check_file(args.json_path, "--json")
        from pathlib import Path

        if args.signal is not None and Path(args.json_path).resolve() == Path(args.signal).resolve():
            raise KMAError(f"--json {args.json_path}: is the --signal file itself; give another name")
    if args.signal is not None:
        y, dx, source = depth.load_signal(args.signal), args.dx, {"signal": str(args.signal)}
    else:
        y, dx, source = signal_from_config(args.config, args.overrides)
    result = depth.recommend_depth(y, dx, decay=args.decay)
    result.source = source
    print(depth.report(result))
    if args.json_path:
        write_text_atomic(args.json_path, json.dumps(result.to_json(), indent=2) + "\n", "--json")
    return 0


def _check_run_args(store_url, run_ids) -> None:
    """Every ``--run`` follows the run-id rule, or is an older id the store lists."""
    from .storage.runids import check_run_id, is_valid

    if not run_ids or all(is_valid(r) for r in run_ids):
        return
    from .storage.store import TrajectoryStore

    listed = TrajectoryStore(store_url, read_only=True).run_ids()
    for rid in run_ids:
        check_run_id(rid, what="--run", listed=listed)


def cmd_sweep(args, console) -> int:
    from . import config
    from .workflows.sweep import run_sweep

    cfg = config.load(args.config, args.overrides, names=False)
    _confirm_grid(config.grid_size(cfg), args, console)  # counted before torch is even imported
    config.check_names(cfg, str(args.config))
    summary = run_sweep(
        cfg,
        store_url=args.store,
        tracking_uri=args.tracking_uri,
        ray_address=args.ray_address,
        max_parallel=args.max_parallel,
        analyze=args.analyze,
        console=console,
        source=str(args.config),
        shared_store=args.shared_store,
    )
    return 1 if summary.failed or summary.analysis_failed or summary.tracking_down else 0


def _confirm_grid(n: int, args, console) -> None:
    """A grid above MAX_GRID variants runs only if confirmed: ``--yes``, or "y" typed on a
    terminal. Without a terminal (CI, ``ray job submit``) it is refused, never waited on."""
    from .config import MAX_GRID

    if n <= MAX_GRID or args.yes:
        return
    what = f"{args.config}: the grid has {n:,} variants, more than {MAX_GRID:,}"
    if not (sys.stdin.isatty() and sys.stderr.isatty()):
        raise KMAError(f"{what}; pass --yes to train them all (no terminal to ask on)")
    sys.stderr.write(f"{what}. Train them all? [y/N] ")
    sys.stderr.flush()
    answer = sys.stdin.readline().strip().lower()
    if answer not in ("y", "yes"):
        raise KMAError(f"{what}: not confirmed, nothing done")


def analysis_params(args):
    """The analysis model from ``kma analyze``'s flags (validated here, once)."""
    from .config import AnalysisParams

    return AnalysisParams.from_flags(**{k: getattr(args, k) for k in AnalysisParams.model_fields
                                        if hasattr(args, k)})


def cmd_analyze(args, console) -> int:
    from .workflows.analyze import analyze_store

    params = analysis_params(args)
    report = analyze_store(
        args.store,
        args.runs,
        params,
        tracking_uri=None if args.no_mlflow else (args.tracking_uri or ""),
        json_path=args.json_path,
        scheduler=args.scheduler,
        plots_dir=args.plots,
        console=console,
    )
    return 1 if any(err is not None for err in report.values()) else 0


def cmd_ingest(args, console) -> int:
    from .workflows.ingest import ingest

    out = ingest(args.checkpoints, args.store, args.run_id, layers=args.layers, dtype=args.dtype,
                 overwrite=args.overwrite)
    console.info(f"ingested run {out['run_id']}: {plural(out['n_snapshots'], 'snapshot')} × "
                 f"{plural(out['n_parameters'], 'parameter')} (from {out['read']})")
    return 0


def cmd_runs(args, console) -> int:
    from .storage.runids import shown
    from .storage.store import TrajectoryStore

    store = TrajectoryStore(args.store, read_only=True)
    runs = store.runs()
    if args.as_json:
        print(json.dumps([{**r.__dict__, **_analyses_json(store, r.run_id)} for r in runs], indent=2))
        return 0
    if not runs:
        from .secrets import mask_url

        print(mask_url(f"no runs in {args.store}"))
        return 0
    ids = [shown(r.run_id) + ("" if r.id_ok else " *") for r in runs]
    verdict_cells = [_verdict_cells(store, r.run_id) for r in runs]
    rows = [(i, r.status, r.n_snapshots, r.n_parameters, r.updated or "", conv, bad,
             _analyses_cell(store, r.run_id))
            for i, r, (conv, bad) in zip(ids, runs, verdict_cells)]
    console.table(None, ["RUN", "STATUS", "SNAPSHOTS", "PARAMETERS", "UPDATED", "CONVERGED", "BAD_INIT",
                         "ANALYSES"], rows,
                  justify={"SNAPSHOTS": "right", "PARAMETERS": "right"}, fold=("UPDATED", "ANALYSES"))
    _explain_analyses(store, runs)
    if not all(r.id_ok for r in runs):
        print("* id from before the run-id rule: readable, but cannot be written or replaced")
    restarts = [r for r in runs if r.restart_of]
    if restarts:  # the bad-initialization policy's attempts (on_bad_init: restart)
        print("restarted after a bad initialization:")
        for r in restarts:
            print(f"  {shown(r.restart_of)} -> {shown(r.run_id)}")
    return 0


def _explain_analyses(store, runs) -> None:
    """Below ``kma runs``' table: what each verdict's analysis id means."""
    from .apps import verdicts
    from .workflows.sync import explain_analysis_id

    aids = set()
    for r in runs:
        try:
            aid, _ = verdicts.latest(store.open_run(r.run_id))
        except Exception:  # noqa: BLE001  -- a listing never fails on one unreadable run
            continue
        if aid:
            aids.add(aid)
    for aid in sorted(aids):
        print(f"verdicts from analysis {aid}: {explain_analysis_id(aid)}")


def _analyses_json(store, run_id) -> dict:
    from .results import list_analyses, outdated_analyses

    try:
        run = store.open_run(run_id)
        out = {"analyses": list_analyses(run), "outdated_analyses": outdated_analyses(run)}
    except Exception:  # noqa: BLE001  -- a listing never fails on one unreadable run
        return {}
    try:  # the verdict stored with the most recent current analysis
        from .apps import verdicts

        aid, v = verdicts.latest(run)
        out["verdict"] = {**verdicts.summary(v), "analysis_id": aid} if v else None
    except Exception:  # noqa: BLE001  -- a listing never fails on one unreadable run
        out["verdict"] = None
    return out


def _verdict_cells(store, run_id) -> tuple[str, str]:
    """CONVERGED and BAD_INIT cells of ``kma runs``: from the verdict stored with the
    run's most recent current analysis (``-``: none stored)."""
    from .apps import verdicts

    try:
        _, v = verdicts.latest(store.open_run(run_id))
    except Exception:  # noqa: BLE001  -- a listing never fails on one unreadable run
        return "?", "?"
    return verdicts.cell(v), verdicts.bad_init_cell(v)


def _analyses_cell(store, run_id) -> str:
    """``N`` analyses, ``(M outdated: ids)`` when an older engine made some of them."""
    from .results import list_analyses, outdated_analyses

    try:
        run = store.open_run(run_id)
        ids, old = list_analyses(run), outdated_analyses(run)
    except Exception:  # noqa: BLE001  -- a listing never fails on one unreadable run
        return "?"
    return f"{len(ids)}" + (f" ({len(old)} outdated: {', '.join(old)}; re-run kma analyze)" if old else "")


def cmd_sync(args, console) -> int:
    from .workflows.sync import sync_store

    report = sync_store(args.store, args.tracking_uri, console=console)
    damaged = [w for w in report.skipped.values() if w not in ("running", "interrupted")]
    return 1 if damaged else 0


def cmd_compare(args, console) -> int:
    from .workflows import compare
    from .outputs import check_dir, check_file, write_text_atomic
    from .storage.store import TrajectoryStore

    _check_run_args(args.store, args.runs)
    check_dir(args.out, "--out")
    if args.json_path:
        check_file(args.json_path, "--json")
    skipped: dict[str, str] = {}
    missing: dict[str, str] = {}
    store = TrajectoryStore(args.store, read_only=True)
    rows = compare.collect(store, args.runs, args.analysis,
                           by=args.by, sweep=args.sweep, skipped=skipped, missing=missing)
    compare.check_not_mixed(store, rows, args.by, args.allow_mixed, console)
    text = compare.table(rows, by=args.by)
    console.table(*compare.table_data(rows, by=args.by), justify=compare.JUSTIFY)
    for msg in missing.values():  # not an error: another analysis is never mixed in
        console.error(f"kma: {msg}")
    for msg in skipped.values():
        console.error(f"kma: error: {msg}")
    out = compare.folder(args.out, rows, args.by)
    section = compare.dynamics(rows)
    report = json.dumps(compare.json_report(rows, args.by, section), indent=1 if len(rows) <= 50 else None) + "\n"
    try:
        figs = compare.figures(rows, out, args.by, section)
        write_text_atomic(out / "table.txt", text + "\n", "--out")
        write_text_atomic(out / "dynamics.json", report, "--out")
    except OSError as e:
        console.error(f"kma: error: --out {args.out}: cannot write the figures ({e.strerror or e})")
        return 1
    if args.json_path:
        write_text_atomic(args.json_path, report, "--json")
    console.info(f"comparison: {out}/ (table.txt, dynamics.json, " + ", ".join(f.name for f in figs) + ")")
    if args.tracking_uri:
        from .tracking.tracker import Tracker

        experiment = compare.experiment_of(store, rows)
        compare.register(Tracker(args.tracking_uri), experiment, rows, args.by, out,
                         [out / "table.txt", out / "dynamics.json", *figs], store.location)
        console.info(f"MLflow: run 'compare {args.by} {rows[0]['analysis_id']}' in experiment {experiment}")
    return 1 if skipped else 0


def cmd_ui(args, console) -> int:
    """MLflow's UI server on a tracking database, opening experiments on the runs table
    (:mod:`pipeline.tracking.ui`); runs in the foreground until interrupted."""
    import os

    from .tracking.tracker import check_reachable
    from .tracking.ui import serve

    uri = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///./mlflow.db"
    if uri.startswith(("http://", "https://")):
        raise KMAError(f"--tracking-uri {uri}: a server already; kma ui serves a database "
                       "(sqlite:///..., postgresql://...)")
    check_reachable(uri)   # the checks every kma command makes (a folder, a foreign SQLite file: one line)
    serve(uri, host=args.host, port=args.port, workers=args.workers,
          default_artifact_root=args.default_artifact_root)
    return 0


COMMANDS = {"sweep": cmd_sweep, "analyze": cmd_analyze, "ingest": cmd_ingest, "runs": cmd_runs,
            "compare": cmd_compare, "sync": cmd_sync, "depth": cmd_depth, "ui": cmd_ui}


def main(argv=None) -> int:
    from .console import Console

    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # KEY=VALUE overrides may follow the options of `kma sweep`
        if args.command not in ("sweep", "depth") or any(x.startswith("-") or "=" not in x for x in extra):
            parser.subcommands[args.command].error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = [*args.overrides, *extra]
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    from .secrets import MaskingFilter

    for handler in logging.getLogger().handlers:   # URL secrets never reach a log line
        if not any(isinstance(f, MaskingFilter) for f in handler.filters):
            handler.addFilter(MaskingFilter())
    if not args.verbose:  # MLflow logs INFO lines (e.g. creating its tables) on its own handler
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    console = Console(quiet=args.quiet)
    try:
        return COMMANDS[args.command](args, console)
    except KMAError as e:
        console.error(f"kma: error: {e}")
        return e.exit_code
    except KeyboardInterrupt:
        console.error("kma: interrupted")
        return 130
    except OSError as e:
        if e.errno != errno.ENAMETOOLONG:
            raise
        console.error(f"kma: error: {_long_name(e.filename)}: file name too long (a name over 255 "
                      "characters, or a path over 4,095)")
        return 2


def _long_name(name) -> str:
    """A too-long path, shortened to fit one line."""
    name = os.fsdecode(name) if name is not None else "a path"
    return name if len(name) <= 120 else f"{name[:60]}...{name[-40:]} ({len(name):,} characters)"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
