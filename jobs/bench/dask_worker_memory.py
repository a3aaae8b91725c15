"""Peak memory of dask.distributed workers analysing a trajectory larger than their limit.

Command::

    python jobs/bench/dask_worker_memory.py                       # 60 x 3e6 float32 (720 MB), 320MB
    python jobs/bench/dask_worker_memory.py --T 50 --P 2000000 --limit 250MB

Writes a synthetic float32 trajectory (``x_t = 1 + Σ λ_k^t v_k``) into a local store
under ``--dir`` (reused if present), starts ``dask scheduler`` and ``dask worker
--nworkers 2 --nthreads 1 --memory-limit LIMIT`` on loopback, runs ``kma analyze
--scheduler tcp://... --window 20 --stride 10``, and prints the wall time, each worker's
peak resident memory (VmHWM) and whether the nanny restarted a worker for memory (it
does past 95% of the limit). Linux only (``/proc``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]


def _peak() -> int:
    with open("/proc/self/status") as f:
        return 1024 * int(next(line for line in f if line.startswith("VmHWM")).split()[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--T", type=int, default=60)
    ap.add_argument("--P", type=int, default=3_000_000)
    ap.add_argument("--limit", default="320MB")
    ap.add_argument("--dir", default=os.path.join(tempfile.gettempdir(), "kma-dask-memory"))
    a = ap.parse_args()
    sys.path.insert(0, str(REPO))
    from pipeline.storage.layout import Layout
    from pipeline.storage.store import TrajectoryStore

    root = Path(a.dir) / f"store-{a.T}x{a.P}"
    if not (root / "runs" / "big").exists():
        shutil.rmtree(root, ignore_errors=True)
        layout = Layout.from_named_shapes([("a.weight", (a.P // 4,)), ("b.weight", (a.P - a.P // 4,))])
        w = TrajectoryStore(str(root)).create_run("big", layout, extra={"sweep": "bench"})
        V = np.random.default_rng(0).standard_normal((3, a.P)).astype(np.float32)
        lam = np.array([0.97, 0.9, 0.6])
        for t in range(a.T):
            w.append((1.0 + (lam[:, None] ** t * V).sum(axis=0)).astype(np.float32))
        w.finish("complete")
    print(f"trajectory {a.T} x {a.P} float32: {a.T * a.P * 4 / 1e6:.0f} MB; worker limit {a.limit}")

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    tmp = Path(tempfile.mkdtemp(prefix="kma-dask-"))
    sched_file, log = tmp / "scheduler.json", open(tmp / "dask.log", "w")
    dask_bin = f"{sys.prefix}/bin/dask"
    procs = [subprocess.Popen([dask_bin, "scheduler", "--host", "127.0.0.1", "--port", "0", "--dashboard-address",
                               ":0", "--scheduler-file", str(sched_file)], stderr=log, env=env),
             subprocess.Popen([dask_bin, "worker", "--scheduler-file", str(sched_file), "--nthreads", "1",
                               "--nworkers", "2", "--memory-limit", a.limit, "--dashboard-address", ":0",
                               "--local-directory", str(tmp / "dw")], stderr=log, env=env)]
    from distributed import Client

    try:
        while not sched_file.exists():
            time.sleep(0.2)
        time.sleep(0.5)
        with Client(json.loads(sched_file.read_text())["address"], set_as_default=False) as c:
            c.wait_for_workers(2)
            pids = c.run(os.getpid)
            t0 = time.perf_counter()
            r = subprocess.run([sys.executable, "-m", "pipeline", "analyze", "--store", str(root), "--window", "20",
                                "--stride", "10", "--no-mlflow", "--scheduler", c.scheduler.address],
                               capture_output=True, text=True, env=env)
            wall = time.perf_counter() - t0
            print(f"kma analyze: exit {r.returncode} in {wall:.1f} s")
            if r.returncode:
                print(r.stderr[-2000:])
            print("worker peaks (MiB):", {k: round(v / 2**20) for k, v in c.run(_peak).items()})
            print("workers restarted:", c.run(os.getpid) != pids)
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in reversed(procs):
            p.wait(timeout=30)
        log.close()
        print("nanny memory restarts:", (tmp / "dask.log").read_text().count("exceeded 95% memory budget"))
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
