"""Restart on a detected bad initialization, trained for real, against ASHA on the same
variants: epochs spent and the best validation loss each variant ends with.

Trains every variant of a sweep config in this process (no Ray, sequentially) three ways:

- **full budget**: no policy;
- **restart (v1 / v2 / v3)**: ``on_bad_init: {action: restart, rule: v1|v2|v3, fallback_init:
  kaiming, after: 6}``: a variant the detector flags after 6 snapshots (5 epochs) stops
  and trains a fresh kaiming attempt for the whole budget (linked runs ``<id>-r1``);

and replays Ray Tune's ``AsyncHyperBandScheduler`` (grace 5, η 3; the real class) over the
full-budget runs as concurrent trials fed their recorded epochs (``verdict_study.asha_stops``).
A variant's result is its best validation loss (restore), of its last attempt for the
restart policies; the reference is the best full-budget loss of the sweep.

    nice -n 10 python jobs/experiments/restart_live.py configs/verdicts/restart_digits.yaml --store /tmp/kma-restart [KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import verdict_study as vs  # noqa: E402


def main(argv=None) -> int:
    warnings.filterwarnings("ignore")
    logging.basicConfig(level=logging.WARNING)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config")
    ap.add_argument("overrides", nargs="*")
    ap.add_argument("--store", required=True)
    args = ap.parse_args(argv)
    from pipeline import config
    from pipeline.config.policies import OnBadInit
    from pipeline.storage.store import TrajectoryStore
    from pipeline.training.runner import run_variant

    cfg = config.load(args.config, args.overrides)
    plain = config.expand(cfg.model_copy(update={"on_bad_init": None}))
    store = TrajectoryStore(args.store)
    results = {}
    for name, policy in (("full budget", None),
                         ("restart, v1 detector", OnBadInit(action="restart", rule="v1", fallback_init="kaiming", after=6)),
                         ("restart, v2 detector", OnBadInit(action="restart", rule="v2", fallback_init="kaiming", after=6)),
                         ("restart, v3 detector", OnBadInit(action="restart", rule="v3", fallback_init="kaiming", after=6))):
        rows = []
        for v in plain:
            out = run_variant(v.model_copy(update={"on_bad_init": policy}), args.store)
            attempts = out.get("attempts", [out])
            epochs = sum(store.open_run(a["run_id"]).attrs.get("epochs_run", 0) for a in attempts)
            last = store.open_run(attempts[-1]["run_id"])
            rows.append({"init": v.init, "seed": v.seed, "epochs": epochs, "restarted": len(attempts) > 1,
                         "best": vs_best(last.metrics.get("val_loss")), "val": list(last.metrics.get("val_loss") or [])})
        results[name] = rows
        print(f"  {name}: trained", file=sys.stderr, flush=True)
    full = results["full budget"]
    stops = vs.asha_stops({i: r["val"] for i, r in enumerate(full)})
    results["ASHA (grace 5, η 3), replayed on the full-budget runs"] = [
        {**r, "epochs": stops[i], "best": vs_best(r["val"][:stops[i]]), "restarted": False} for i, r in enumerate(full)]
    ref = min(r["best"] for r in full)
    budget = sum(r["epochs"] for r in full)
    print(f"{len(plain)} variants ({cfg.name}: {', '.join(sorted({v.init for v in plain}))}; lr {plain[0].lr}, "
          f"{plain[0].epochs} epochs); reference = the best full-budget val loss {ref:.4g}\n")
    print("| policy | restarted | epochs spent | variants within 10 % of the best | within 50 % | median regret | best val loss |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, rows in results.items():
        reg = np.array([r["best"] / ref - 1 for r in rows])
        n = len(rows)
        print(f"| {name} | {sum(r['restarted'] for r in rows)} | {sum(r['epochs'] for r in rows)} "
              f"({sum(r['epochs'] for r in rows) / budget:.0%}) | {int((reg <= 0.1).sum())}/{n} | "
              f"{int((reg <= 0.5).sum())}/{n} | {np.median(reg):+.1%} | {min(r['best'] for r in rows):.4g} |")
    print("\nper variant (init, seed): best val loss " + " · ".join(names := list(results)) + " (*: restarted)")
    for i, r in enumerate(full):
        print(f"  {r['init']:>15} s{r['seed']}: " + " · ".join(
            f"{results[n][i]['best']:.4g}{'*' if results[n][i]['restarted'] else ''}" for n in names))
    return 0


def vs_best(val):
    v = np.asarray([np.nan if x is None else x for x in (val or [])], dtype=float)
    v = v[np.isfinite(v)]
    return float(v.min()) if v.size else float("inf")


if __name__ == "__main__":
    sys.exit(main())
