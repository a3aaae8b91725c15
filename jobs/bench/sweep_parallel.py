"""Speed-up of a sweep on local Ray over running its variants one after another.

Command::

    .venv/bin/python jobs/bench/sweep_parallel.py            # 4 demo variants, 60 epochs, 2 reps
    .venv/bin/python jobs/bench/sweep_parallel.py --quick    # 10 epochs, 1 rep

The sweep is configs/demo.yaml (depth [2, 3] x init [kaiming, small_variance] = 4
variants, num_cpus 1 each), analysis off, MLflow on a fresh SQLite file in a temp dir,
a fresh store per run. Per rep, alternated:

- ``sequential``: in this process, ``Tracker(sqlite)`` + ``run_variant`` for each
  variant + ``register_run`` for each (the same work ``run_sweep`` does, without Ray);
- ``ray``: ``ray.init`` (timed alone, via ``pipeline.runtime.ray_connect.init_ray``), then
  ``pipeline.workflows.sweep.run_sweep`` (timed), then ``ray.shutdown``.

Reported: wall times, speed-up = sequential / ray sweep (Ray already up) and
sequential / (ray.init + sweep), and the Ray start-up time by itself.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from pipeline import config  # noqa: E402
from pipeline.console import Console  # noqa: E402
from pipeline.workflows.sweep import register_run, run_sweep  # noqa: E402
from pipeline.runtime.ray_connect import init_ray  # noqa: E402
from pipeline.training.runner import run_variant  # noqa: E402
from pipeline.storage.store import TrajectoryStore  # noqa: E402
from pipeline.tracking.tracker import Tracker  # noqa: E402


# --------------------------------------------------------------------------- parse
def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--config", default=str(ROOT / "configs" / "demo.yaml"))
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--out", default="bench-out/sweep_parallel.json")
    a = p.parse_args(argv)
    if a.quick:
        a.epochs, a.reps = 10, 1
    return a


# --------------------------------------------------------------------------- build
def build_config(args):
    cfg = config.load(args.config, [f"epochs={args.epochs}", "analysis.enabled=false"])
    return cfg


# --------------------------------------------------------------------------- run
def run_sequential(cfg, tmp: Path) -> dict:
    store_url, uri = str(tmp / "store"), f"sqlite:///{tmp / 'mlflow.db'}"
    t0 = time.perf_counter()
    tracker = Tracker(uri)
    t_tracker = time.perf_counter() - t0
    store = TrajectoryStore(store_url)
    train_s = []
    for v in config.expand(cfg):
        t = time.perf_counter()
        out = run_variant(v, store_url)
        train_s.append(time.perf_counter() - t)
        assert out["status"] == "complete", out
    t = time.perf_counter()
    for v in config.expand(cfg):
        register_run(tracker, store, v.run_id)
    t_reg = time.perf_counter() - t
    return {"wall_s": time.perf_counter() - t0, "tracker_init_s": t_tracker,
            "train_s": train_s, "register_s": t_reg}


def run_ray(cfg, tmp: Path) -> dict:
    import ray

    console = Console(quiet=True)
    t0 = time.perf_counter()
    init_ray(None, console)
    t_init = time.perf_counter() - t0
    t1 = time.perf_counter()
    s = run_sweep(cfg, store_url=str(tmp / "store"), tracking_uri=f"sqlite:///{tmp / 'mlflow.db'}",
                  analyze=False, console=console)
    t_sweep = time.perf_counter() - t1
    assert len(s.trained) == len(config.expand(cfg)) and not s.failed, s
    t2 = time.perf_counter()
    ray.shutdown()
    return {"ray_init_s": t_init, "sweep_s": t_sweep, "ray_shutdown_s": time.perf_counter() - t2}


def main(argv=None):
    args = parse(argv)
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    cfg = build_config(args)
    n = len(config.expand(cfg))
    seq, par = [], []
    with tempfile.TemporaryDirectory(prefix="kma-bench-sweep-") as tmp:
        for rep in range(args.reps):
            order = ("seq", "ray") if rep % 2 == 0 else ("ray", "seq")
            for kind in order:
                d = Path(tmp) / f"{kind}-{rep}"
                d.mkdir()
                if kind == "seq":
                    seq.append(run_sequential(cfg, d))
                else:
                    par.append(run_ray(cfg, d))
                print(f"rep {rep} {kind}: {seq[-1] if kind == 'seq' else par[-1]}", flush=True)

    seq_wall = [r["wall_s"] for r in seq]
    sweep = [r["sweep_s"] for r in par]
    init = [r["ray_init_s"] for r in par]
    with_init = [a + b for a, b in zip(sweep, init)]
    res = {
        "n_variants": n, "epochs": args.epochs, "cpus": os.cpu_count(),
        "sequential": seq, "ray": par,
        "sequential_wall_s": {"min": min(seq_wall), "median": statistics.median(seq_wall)},
        "ray_sweep_s": {"min": min(sweep), "median": statistics.median(sweep)},
        "ray_init_s": {"min": min(init), "median": statistics.median(init)},
        "speedup_sweep_only": {"min-based": min(seq_wall) / min(sweep),
                               "median-based": statistics.median(seq_wall) / statistics.median(sweep)},
        "speedup_incl_ray_init": {"min-based": min(seq_wall) / min(with_init),
                                  "median-based": statistics.median(seq_wall) / statistics.median(with_init)},
    }
    # ---- report
    print(f"\n{n} variants x {args.epochs} epochs, {os.cpu_count()} CPUs, {args.reps} reps")
    print(f"{'what':38} {'min s':>8} {'median s':>9}")
    rows = [("sequential (tracker+train+register)", seq_wall),
            ("  of which training (sum)", [sum(r["train_s"]) for r in seq]),
            ("  of which MLflow tracker init", [r["tracker_init_s"] for r in seq]),
            ("ray.init alone", init),
            ("run_sweep (Ray already up)", sweep),
            ("ray.init + run_sweep", with_init),
            ("ray.shutdown", [r["ray_shutdown_s"] for r in par])]
    for name, xs in rows:
        print(f"{name:38} {min(xs):>8.2f} {statistics.median(xs):>9.2f}")
    print(f"speed-up, sweep only:      {res['speedup_sweep_only']['min-based']:.2f}x (min) "
          f"{res['speedup_sweep_only']['median-based']:.2f}x (median)")
    print(f"speed-up, incl. ray.init:  {res['speedup_incl_ray_init']['min-based']:.2f}x (min) "
          f"{res['speedup_incl_ray_init']['median-based']:.2f}x (median)")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
