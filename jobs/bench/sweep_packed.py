"""Whole-sweep wall time, packed variants against one Ray task per variant.

Command::

    .venv/bin/python jobs/bench/sweep_packed.py                       # 64 demo MLPs, 2,000 epochs
    .venv/bin/python jobs/bench/sweep_packed.py --epochs 300 --width 256

The sweep is configs/demo.yaml's MLP (depth 2, width 32, tanh, Adam, mse, multiscale
task of 256 points, batch 64, a snapshot every epoch) as 2 inits x 4 learning rates x 8
seeds = 64 variants, ``--no-analyze``. Each mode is one ``kma sweep`` command (a fresh
process: Python start, a local Ray started by the command, training, every snapshot
written to a fresh Zarr store, every run registered in a fresh SQLite MLflow), timed from
outside; ``pack=auto`` (packed tasks of at most ``--pack-max`` members) against
``pack=off`` (one task per variant), both with ``num_cpus: 1`` per task on all cores.
Reported: wall seconds, variants per second, ratio off / auto. The two stores are
checked to hold the same 64 complete runs.

Each mode's SQLite MLflow database is created (schema migrated, ~3-15 s here) BEFORE its
timed command, as a user's tracking database exists before a sweep; ``--fresh-db``
times its creation too. Registering the 64 runs is always inside the timed sweep.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=2000)
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--depth", type=int, default=2)
    p.add_argument("--seeds", type=int, default=8)
    p.add_argument("--pack-max", type=int, default=32)
    p.add_argument("--modes", default="auto,off")
    p.add_argument("--out", default="bench-out/sweep_packed.json")
    p.add_argument("--gpus-auto", type=float, default=0.0, help="resources.num_gpus of a packed task")
    p.add_argument("--gpus-off", type=float, default=0.0, help="resources.num_gpus of an unpacked task")
    p.add_argument("--fresh-db", action="store_true", help="create the MLflow database inside the timing")
    return p.parse_args(argv)


def overrides(a, mode: str) -> list[str]:
    return [f"name=bench_{mode}", f"epochs={a.epochs}", f"model.depth={a.depth}",
            f"model.width={a.width}", "init=[kaiming,xavier]",
            "optimizer.lr=[0.001,0.002,0.003,0.005]", f"seeds={a.seeds}",
            f"pack={mode}", f"pack_max={a.pack_max}",
            f"resources.num_gpus={a.gpus_auto if mode == 'auto' else a.gpus_off}"]


def run_mode(a, mode: str, tmp: Path) -> dict:
    store, uri = tmp / f"store-{mode}", f"sqlite:///{tmp / f'mlflow-{mode}.db'}"
    cmd = [sys.executable, "-m", "pipeline", "sweep", str(ROOT / "configs" / "demo.yaml"),
           *overrides(a, mode), "--store", str(store), "--tracking-uri", uri, "--no-analyze", "-q"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if not a.fresh_db:   # the tracking database exists before the sweep (created untimed)
        subprocess.run([sys.executable, "-c", "import sys; from pipeline.tracking.tracker import Tracker; "
                        "Tracker(sys.argv[1])", uri], check=True, env=env, capture_output=True)
    load = os.getloadavg()[0]
    t = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t
    if r.returncode != 0:
        raise SystemExit(f"{mode}: kma sweep failed ({r.returncode}): {r.stderr[-2000:]}")
    sys.path.insert(0, str(ROOT))
    from pipeline.storage.store import TrajectoryStore

    runs = {i.run_id: i for i in TrajectoryStore(str(store)).runs()}
    return {"mode": mode, "wall_s": wall, "runs": len(runs), "load_before": load,
            "load_after": os.getloadavg()[0],
            "statuses": sorted({i.status for i in runs.values()}),
            "n_snapshots": sorted({i.n_snapshots for i in runs.values()}),
            "ids": sorted(runs)}


def main(argv=None):
    a = parse(argv)
    out = {"args": vars(a), "cpus": os.cpu_count(), "results": []}
    with tempfile.TemporaryDirectory() as tmp:
        for mode in a.modes.split(","):
            res = run_mode(a, mode, Path(tmp))
            n = res["runs"]
            print(f"pack={mode:4s}: {res['wall_s']:8.1f} s  {n} runs {res['statuses']}  "
                  f"{n / res['wall_s']:.3f} variants/s  (load {res['load_before']:.1f} -> "
                  f"{res['load_after']:.1f})", flush=True)
            out["results"].append(res)
    by = {r["mode"]: r for r in out["results"]}
    if "auto" in by and "off" in by:
        assert by["auto"]["ids"] == by["off"]["ids"], "the two sweeps trained different runs"
        out["ratio_off_over_auto"] = by["off"]["wall_s"] / by["auto"]["wall_s"]
        print(f"packed speed-up (off / auto): {out['ratio_off_over_auto']:.2f}x")
    for r in out["results"]:
        r.pop("ids")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
