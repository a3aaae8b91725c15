"""GPU path: several variants share one GPU through fractional ``num_gpus``.

    python jobs/gpu_share.py configs/gpu_share.yaml --store /tmp/kma-gpu [--out gpu.json]

Runs the sweep on a local Ray (or ``--ray-address``), then reads back from the store
which device each variant trained on and how many trained at the same time. Without a
GPU the same code trains on the CPU (the driver drops ``num_gpus`` when the cluster has
no GPU) and the report says so.
"""

import json
import shutil
import sys
import tempfile
import time

import torch

from pipeline import config
from pipeline.cli import Parser
from pipeline.console import Console
from pipeline.workflows.sweep import run_sweep
from pipeline.errors import KMAError
from pipeline.storage.store import TrajectoryStore


def max_overlap(intervals):
    """Largest number of [start, end) intervals that hold at one instant."""
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    best = cur = 0
    for _, d in events:
        cur += d
        best = max(best, cur)
    return best


def main(argv=None) -> int:
    p = Parser(prog="gpu_share", description=__doc__.splitlines()[0])
    p.add_argument("config", help="sweep YAML file (configs/gpu_share.yaml)")
    p.add_argument("overrides", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides")
    p.add_argument("--store", default=None, help="trajectory store (default: a fresh temporary directory)")
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow tracking URI (default: a SQLite file beside the temporary store; "
                        "with --store, as kma sweep)")
    p.add_argument("--ray-address", default=None, help="Ray cluster address (default: a local Ray)")
    p.add_argument("--out", default=None, help="write the report as JSON here")
    args = p.parse_args(argv)
    console = Console()
    tmp = None
    if args.store is None:
        tmp = tempfile.mkdtemp(prefix="kma-gpu-")
        args.store = f"{tmp}/store"
        args.tracking_uri = args.tracking_uri or f"sqlite:///{tmp}/mlflow.db"
    try:
        cfg = config.load(args.config, args.overrides)
        t0 = time.perf_counter()
        summary = run_sweep(cfg, store_url=args.store, tracking_uri=args.tracking_uri,
                            ray_address=args.ray_address, console=console)
        wall = time.perf_counter() - t0
    except KMAError as e:
        console.error(f"gpu_share: error: {e}")
        return e.exit_code
    store = TrajectoryStore(args.store)
    runs = [store.open_run(v.run_id) for v in config.expand(cfg)]
    rows = [{"run_id": r.run_id, "status": r.status, "device": r.attrs.get("device"),
             "seconds": round(r.attrs.get("t_end", 0) - r.attrs.get("t_start", 0), 2)} for r in runs]
    intervals = [(r.attrs["t_start"], r.attrs["t_end"]) for r in runs if "t_end" in r.attrs]
    report = {
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "num_gpus_per_variant": cfg.resources.num_gpus,
        "variants": rows,
        "max_concurrent": max_overlap(intervals),
        "sweep_wall_s": round(wall, 1),
        "failed": summary.failed,
    }
    for r in rows:
        console.info(f"  {r['run_id']}: {r['status']} on {r['device']} in {r['seconds']} s")
    console.info(f"GPU: {report['gpu'] or 'none (ran on CPU)'}; at most {report['max_concurrent']} "
                 f"variants trained at once; sweep wall time {report['sweep_wall_s']} s")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=2)
    if tmp:
        shutil.rmtree(tmp, ignore_errors=True)
    return 1 if summary.failed else 0


if __name__ == "__main__":
    sys.exit(main())
