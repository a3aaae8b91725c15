"""Spectral stopping against the full budget and against patience on the validation loss.

Trains every variant of a sweep config twice in this process (sequentially, no Ray, so
wall times compare): with the config's ``stop:`` option, and without it (the full
budget). Patience-based early stopping is computed from the full-budget run's
``val_loss`` history (stop after ``--patience`` epochs without a new best; its loss is
the full run's at that epoch, its wall time the full run's pro rata), not trained
separately: same trajectory, so the comparison isolates the stopping rule. Prints the
table of docs/pages/convergence.md#spectral-stopping.

    nice -n 10 python jobs/experiments/stopping.py configs/stopping.yaml [KEY=VALUE ...]
        [--patience 10] [--store DIR]
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import warnings

import numpy as np


def patience_stop(val, patience: int) -> int:
    """1-based epoch at which patience stopping ends training (the full length if never)."""
    best, since = np.inf, 0
    for i, v in enumerate(val, start=1):
        if v < best:
            best, since = v, 0
        else:
            since += 1
            if since >= patience:
                return i
    return len(val)


def main(argv=None) -> int:
    warnings.filterwarnings("ignore")
    logging.basicConfig(level=logging.WARNING)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config")
    ap.add_argument("overrides", nargs="*")
    ap.add_argument("--patience", type=int, default=10)
    ap.add_argument("--store", default=None)
    args = ap.parse_args(argv)

    from pipeline import config
    from pipeline.training.runner import run_variant

    cfg = config.load(args.config, args.overrides)
    if cfg.stop is None:
        raise SystemExit(f"{args.config}: no stop: section; nothing to compare")
    store = args.store or tempfile.mkdtemp(prefix="kma-stopping-")
    stopped = config.expand(cfg)
    full = config.expand(cfg.model_copy(update={"stop": None}))
    # warm-up: the first fit in a process pays imports (dask, scipy); not part of any timing
    run_variant(stopped[0].model_copy(update={"epochs": 12, "sweep": "warmup"}), tempfile.mkdtemp())

    rows = []
    for vs, vf in zip(stopped, full):
        s = run_variant(vs, store)
        f = run_variant(vf, store)
        if s["status"] != "complete" or f["status"] != "complete":
            rows.append((vs, s, f, None))
            continue
        from pipeline.storage.store import TrajectoryStore

        attrs = TrajectoryStore(store).open_run(vs.run_id).attrs
        rows.append((vs, s, f, attrs))

    metric = "val_loss"
    print(f"{cfg.name}: task {cfg.task.name}, {len(rows)} variants, budget {cfg.epochs} epochs, "
          f"stop window {cfg.stop.window} every {cfg.stop.every}, patience {args.patience} (store {store})\n")
    print("| variant | spectral stop: epoch | wall s (full s) | val loss (full) | "
          f"patience {args.patience}: epoch | val loss |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    tot = {"ep_s": 0, "ep_p": 0, "ep_f": 0, "t_s": 0.0, "t_f": 0.0, "t_p": 0.0, "d_s": [], "d_p": []}
    for vs, s, f, attrs in rows:
        name = f"{vs.task.name} {vs.init} s{vs.seed}"
        if attrs is None:
            print(f"| {name} | {s['status']} | | | | |")
            continue
        ep_s = int(attrs.get("epochs_run", len(s["metrics"][metric])))
        val_f = f["metrics"][metric]
        ep_f = len(val_f)
        ep_p = patience_stop(val_f, args.patience)
        loss_s, loss_f, loss_p = s["metrics"][metric][-1], val_f[-1], val_f[ep_p - 1]
        t_p = f["seconds"] * ep_p / ep_f
        tot["ep_s"] += ep_s
        tot["ep_p"] += ep_p
        tot["ep_f"] += ep_f
        tot["t_s"] += s["seconds"]
        tot["t_f"] += f["seconds"]
        tot["t_p"] += t_p
        tot["d_s"].append(loss_s / loss_f - 1)
        tot["d_p"].append(loss_p / loss_f - 1)
        print(f"| {name} | {ep_s} | {s['seconds']:.2f} ({f['seconds']:.2f}) | {loss_s:.4g} ({loss_f:.4g}) | "
              f"{ep_p} | {loss_p:.4g} |")
    if tot["ep_f"]:
        print(f"| **total / median** | {tot['ep_s']} of {tot['ep_f']} epochs "
              f"({1 - tot['ep_s'] / tot['ep_f']:.0%} saved) | {tot['t_s']:.1f} of {tot['t_f']:.1f} s "
              f"({1 - tot['t_s'] / tot['t_f']:.0%} saved) | median {np.median(tot['d_s']):+.1%} vs full | "
              f"{tot['ep_p']} of {tot['ep_f']} ({1 - tot['ep_p'] / tot['ep_f']:.0%} saved; "
              f"~{1 - tot['t_p'] / tot['t_f']:.0%} of the time) | median {np.median(tot['d_p']):+.1%} vs full |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
