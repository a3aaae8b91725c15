"""MLflow registration of one training run with a long metric history: the bulk insert
(pipeline.tracking.bulk, what the driver uses on a database URI) against MLflow's
log_batch path (benchmark, not a test).

Command::

    .venv/bin/python jobs/bench/register_metrics.py [--epochs 2000] [--runs 4]

A fresh SQLite tracking database; each run has 40 params and 6 metrics × ``--epochs``
points (as a multiscale demo run: train/val loss, clean_error and three per-frequency
errors). Prints seconds per run for each path (bulk, log_batch, bulk again).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import pipeline.tracking.bulk as bulk  # noqa: E402
from pipeline.tracking.tracker import Tracker  # noqa: E402

KEYS = ["train_loss", "val_loss", "clean_error", "clean_error_f1", "clean_error_f3", "clean_error_f9"]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=2000)
    p.add_argument("--runs", type=int, default=4)
    a = p.parse_args(argv)
    metrics = {k: [0.1 + i * 1e-4 for i in range(a.epochs)] for k in KEYS}
    params = {f"p{i}": i for i in range(40)}

    def per_run(tracker, tag):
        t = time.perf_counter()
        for n in range(a.runs):
            tracker.register_training(experiment="bench", run_id=f"{tag}{n}", status="complete",
                                      params=params, metrics=metrics, trajectory_uri=f"/s/runs/{tag}{n}",
                                      config_yaml="a: 1\n", store="/s")
        return (time.perf_counter() - t) / a.runs

    with tempfile.TemporaryDirectory() as tmp:
        tracker = Tracker(f"sqlite:///{tmp}/mlflow.db")
        per_run(tracker, "warm")
        first = per_run(tracker, "a")
        insert = bulk.insert_history
        bulk.insert_history = lambda *args, **kw: False      # every point through log_batch
        try:
            slow = per_run(tracker, "b")
        finally:
            bulk.insert_history = insert
        again = per_run(tracker, "c")
    print(f"{a.epochs} epochs x {len(KEYS)} metrics, seconds per run: bulk {first:.3f} / {again:.3f}, "
          f"log_batch {slow:.3f}; load {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
