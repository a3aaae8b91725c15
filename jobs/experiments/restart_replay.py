"""Restart on a detected bad initialization against ASHA, replayed on the verdict study's
recorded runs (held-out digits MLPs and CNNs; thresholds fixed on the multiscale tuning
runs).

A cell is one group (task, family, depth) at one learning rate: 7 inits × the seeds. Per
policy, every variant of every cell, at the study's budget ``T`` epochs:

- **full budget**: every run trains ``T`` epochs; its result is its best validation loss;
- **restart (detector D)**: a run D flags after ``K = 6`` snapshots (the initial weights
  and 5 epochs) stops there and its variant trains a new attempt with a fresh ``kaiming``
  initialization for ``T`` epochs (``on_bad_init: {action: restart, fallback_init:
  kaiming}``); the attempt is the recorded kaiming run of the same cell with the next seed
  (a fresh init seed); ``5 + T`` epochs; the variant's result is the attempt's best loss;
- **ASHA**: Ray Tune's ``AsyncHyperBandScheduler`` (grace 5, η 3) over the cell's runs as
  concurrent trials fed their recorded epochs (the study's replay); its result is each
  trial's best loss up to its stop.

Reported: epochs spent (% of the full budget's), the variants that end within 10 % (and
50 %) of their cell's best full-budget loss (what a restart is for: every variant usable),
the median regret of a variant's result against that best (the mean is dominated by a few
runs that blew up), and the cells whose best result is within
1 % of the full budget's best (what ASHA is for: the best configuration kept). Detectors:
the second bad-init version (``detect_v2``), activation statistics on a probe batch, the
loss plateau after K epochs (each with the thresholds the study fixed on the tuning runs),
and the outcome label itself (an oracle: the ceiling of any detector).

    nice -n 10 python jobs/experiments/restart_replay.py --cache /tmp/vs-cache.pkl

(The cache is the one ``verdict_study.py --cache`` writes; it must hold the activation
statistics, i.e. a cache written by a study run that computed them.)
"""

from __future__ import annotations

import argparse
import pickle
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import verdict_study as vs  # noqa: E402

K_EPOCHS = vs.K_BADINIT - 1      # snapshots 0..K-1: the initial weights and K - 1 epochs
GOOD = 0.10                      # a variant is usable within 10 % of its cell's best


def best(val, upto=None):
    v = np.asarray(val[:upto] if upto else val, dtype=float)
    v = v[np.isfinite(v)]
    return float(v.min()) if v.size else float("inf")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", required=True)
    args = ap.parse_args(argv)
    runs = pickle.load(open(args.cache, "rb"))
    vs.label_all(runs)
    for r in runs:
        r["bi"] = vs.badinit_features(r)
    tune = [r for r in runs if r["sweep"] == vs.TUNE and r["bi"]]
    th, lp = vs.tune_badinit(tune), vs.tune_loss_plateau(tune)
    ath = vs.tune_activation([r for r in tune if r.get("act")])
    detectors = {
        "v2 (detect_v2)": lambda r: bool(vs.flags(r["bi"], th)),
        "activation statistics": lambda r: bool(vs.act_flags(r.get("act"), ath)),
        "loss plateau after K": lambda r: r["bi"]["loss_drop"] is not None and r["bi"]["loss_drop"] < lp,
        "oracle (outcome stalled/diverged)": lambda r: r["outcome"]["label"] in ("stalled", "diverged"),
    }
    cells = defaultdict(list)
    for r in runs:
        if r["sweep"] != vs.TUNE and r["bi"] is not None and r["metrics"].get("val_loss"):
            cells[(r["group"], r["lr"])].append(r)
    rows = defaultdict(lambda: {"epochs": 0, "good": 0, "n": 0, "regret": [], "cells_kept": 0, "flagged": 0})
    plain_epochs, n_cells = 0, 0
    for (group, lr), rs in sorted(cells.items()):
        T = max(r["epochs"] for r in rs)
        kai = {r["seed"]: r for r in rs if r["init"] == "kaiming"}
        if not kai:
            continue
        seeds = sorted(kai)
        ref = min(best(r["metrics"]["val_loss"]) for r in rs)
        n_cells += 1

        def tally(name, results, epochs, flagged=0):
            row = rows[name]
            row["epochs"] += epochs
            row["n"] += len(results)
            row["flagged"] += flagged
            row["good"] += sum(x <= (1 + GOOD) * ref for x in results)
            row["regret"] += [x / ref - 1 if np.isfinite(x) else np.nan for x in results]
            row["cells_kept"] += min(results) <= 1.01 * ref

        plain = [best(r["metrics"]["val_loss"]) for r in rs]
        plain_epochs += len(rs) * T
        tally("full budget", plain, len(rs) * T)
        for name, flag in detectors.items():
            res, ep, nf = [], 0, 0
            for r in rs:
                if flag(r):
                    nxt = kai[seeds[(seeds.index(r["seed"]) + 1) % len(seeds)] if r["seed"] in seeds else seeds[0]]
                    res.append(best(nxt["metrics"]["val_loss"]))
                    ep += K_EPOCHS + T
                    nf += 1
                else:
                    res.append(best(r["metrics"]["val_loss"]))
                    ep += T
            tally(f"restart: {name}", res, ep, nf)
        stops = vs.asha_stops({r["run_id"]: list(r["metrics"]["val_loss"]) for r in rs})
        tally("ASHA (grace 5, η 3)", [best(r["metrics"]["val_loss"], stops[r["run_id"]]) for r in rs],
              sum(stops.values()))
    print(f"{n_cells} cells (group × lr), {rows['full budget']['n']} variants, held out; thresholds fixed on the "
          f"tuning runs: v2 {th}, activation {ath}, loss plateau drop < {lp}\n")
    print("| policy | restarted | epochs spent | variants within 10 % of the cell's best | within 50 % "
          "| median regret | cells whose best is kept (≤ 1 %) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, row in rows.items():
        reg = np.asarray(row["regret"], dtype=float)
        half = int(np.sum(reg <= 0.5))
        print(f"| {name} | {row['flagged']} | {row['epochs'] / plain_epochs:.1%} | {row['good']}/{row['n']} "
              f"({row['good'] / row['n']:.0%}) | {half}/{row['n']} ({half / row['n']:.0%}) | {np.nanmedian(reg):+.1%} | "
              f"{row['cells_kept']}/{n_cells} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
