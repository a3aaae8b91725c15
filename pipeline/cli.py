"""``kma`` command line: sweep, analyze, ingest, runs.

A user mistake prints one line, ``kma: error: ...``, and exits with code 2; an
interrupted sweep exits with 130. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from .errors import KMAError


def _add_common(p, *, store_required: bool):
    p.add_argument("--store", required=store_required, default=None,
                   help="trajectory store: a path or fsspec URL (default: ./kma-store)")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress output")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kma", description="Koopman mode analysis of neural-network training, at sweep scale."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("sweep", help="train a sweep's variants on Ray, store and register them")
    p.add_argument("config", help="sweep YAML file")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="config overrides, e.g. epochs=5 model.depth=[2,4]")
    _add_common(p, store_required=False)
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: sqlite:///./mlflow.db)")
    p.add_argument("--ray-address", default=None, help="Ray cluster address (default: start a local Ray)")
    p.add_argument("--max-parallel", type=int, default=None, help="at most N variants at once")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--no-analyze", dest="analyze", action="store_false", default=None,
                   help="skip the default analysis after training")
    g.add_argument("--analyze", dest="analyze", action="store_true", help="force the default analysis")

    p = sub.add_parser("analyze", help="Koopman/DMD analysis of stored trajectories")
    _add_common(p, store_required=True)
    p.add_argument("--run", dest="runs", action="append", metavar="ID", help="run id (repeatable; default: all finished runs)")
    p.add_argument("--method", choices=["qr", "randomized"], default="qr")
    p.add_argument("--rank", type=int, default=None, help="target rank (randomized) / truncation rank")
    p.add_argument("--tol", type=float, default=None, help="relative singular-value truncation tolerance")
    p.add_argument("--threshold", choices=["gavish-donoho"], default=None,
                   help="truncation by the Gavish-Donoho optimal hard threshold (noisy data)")
    p.add_argument("--window", type=int, default=None, help="window width W in snapshots (default: whole run)")
    p.add_argument("--stride", type=int, default=None, help="window stride S (default: W)")
    p.add_argument("--per-layer", action="store_true", help="also analyse every layer separately")
    p.add_argument("--modes", action="store_true", help="also compute Koopman modes (second pass) into the store")
    p.add_argument("--seed", type=int, default=0, help="seed of the randomized method")
    p.add_argument("--json", dest="json_path", default=None, metavar="PATH", help="write results as JSON")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI")
    p.add_argument("--no-mlflow", action="store_true", help="do not register in MLflow")
    p.add_argument("--scheduler", default="threads", help="threads | processes | tcp://HOST:PORT")
    p.add_argument("--plots", default=None, metavar="DIR", help="also write figures here")

    p = sub.add_parser("ingest", help="import PyTorch checkpoints (state_dicts) as a run")
    p.add_argument("checkpoints", nargs="+", metavar="CHECKPOINT", help="checkpoint files, in snapshot order")
    _add_common(p, store_required=True)
    p.add_argument("--run-id", required=True)
    p.add_argument("--layers", nargs="+", default=None, help="only these layers (module names)")
    p.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run of that id")

    p = sub.add_parser("compare", help="compare runs grouped by a config key: table and figures")
    _add_common(p, store_required=True)
    p.add_argument("--run", dest="runs", action="append", metavar="ID", help="only these runs")
    p.add_argument("--sweep", default=None, help="only runs of this sweep")
    p.add_argument("--analysis", default=None, metavar="ID", help="analysis id (default: each run's latest)")
    p.add_argument("--by", default="depth", help="config key to group by (depth, init, width, seed, ...)")
    p.add_argument("--out", default="kma-compare", help="folder for the figures")

    p = sub.add_parser("runs", help="list the runs in a store")
    _add_common(p, store_required=True)
    p.add_argument("--json", dest="as_json", action="store_true", help="print JSON instead of a table")
    return parser


def cmd_sweep(args, console) -> int:
    from . import config
    from .driver import run_sweep

    cfg = config.load(args.config, args.overrides)
    summary = run_sweep(
        cfg,
        store_url=args.store,
        tracking_uri=args.tracking_uri,
        ray_address=args.ray_address,
        max_parallel=args.max_parallel,
        analyze=args.analyze,
        console=console,
    )
    return 1 if summary.failed else 0


def cmd_analyze(args, console) -> int:
    from .analysis import AnalysisParams, analyze_store

    params = AnalysisParams(method=args.method, rank=args.rank, tol=args.tol, threshold=args.threshold,
                            window=args.window,
                            stride=args.stride, per_layer=args.per_layer, modes=args.modes, seed=args.seed)
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
    return 2 if any(err is not None for err in report.values()) else 0


def cmd_ingest(args, console) -> int:
    from .ingest import ingest

    out = ingest(args.checkpoints, args.store, args.run_id, layers=args.layers, dtype=args.dtype,
                 overwrite=args.overwrite)
    console.info(f"ingested run {out['run_id']}: {out['n_snapshots']} snapshots × {out['n_parameters']} parameters")
    return 0


def cmd_runs(args, console) -> int:
    from .store import TrajectoryStore

    store = TrajectoryStore(args.store, read_only=True)
    runs = store.runs()
    if args.as_json:
        print(json.dumps([{**r.__dict__, **_analyses_json(store, r.run_id)} for r in runs], indent=2))
        return 0
    if not runs:
        print(f"no runs in {args.store}")
        return 0
    w = max(len("RUN"), *(len(r.run_id) for r in runs))
    print(f"{'RUN':<{w}}  {'STATUS':<9} {'SNAPSHOTS':>9} {'PARAMETERS':>11}  {'UPDATED':<25} ANALYSES")
    for r in runs:
        print(f"{r.run_id:<{w}}  {r.status:<9} {r.n_snapshots:>9} {r.n_parameters:>11}  "
              f"{r.updated or '':<25} {_analyses_cell(store, r.run_id)}")
    return 0


def _analyses_json(store, run_id) -> dict:
    from .analysis import list_analyses, outdated_analyses

    try:
        run = store.open_run(run_id)
        return {"analyses": list_analyses(run), "outdated_analyses": outdated_analyses(run)}
    except Exception:  # noqa: BLE001  -- a listing never fails on one unreadable run
        return {}


def _analyses_cell(store, run_id) -> str:
    """``N`` analyses, ``(M outdated: ids)`` when an older engine made some of them."""
    from .analysis import list_analyses, outdated_analyses

    try:
        run = store.open_run(run_id)
        ids, old = list_analyses(run), outdated_analyses(run)
    except Exception:  # noqa: BLE001  -- a listing never fails on one unreadable run
        return "?"
    return f"{len(ids)}" + (f" ({len(old)} outdated: {', '.join(old)}; re-run kma analyze)" if old else "")


def cmd_compare(args, console) -> int:
    from pathlib import Path

    from . import compare
    from .store import TrajectoryStore

    rows = compare.collect(TrajectoryStore(args.store, read_only=True), args.runs, args.analysis,
                           by=args.by, sweep=args.sweep)
    print(compare.table(rows))
    figs = compare.figures(rows, Path(args.out), args.by)
    console.info("figures: " + ", ".join(str(f) for f in figs))
    return 0


COMMANDS = {"sweep": cmd_sweep, "analyze": cmd_analyze, "ingest": cmd_ingest, "runs": cmd_runs,
            "compare": cmd_compare}


def main(argv=None) -> int:
    from .console import Console

    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # KEY=VALUE overrides may follow the options of `kma sweep`
        if args.command != "sweep" or any(x.startswith("-") or "=" not in x for x in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = [*args.overrides, *extra]
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
