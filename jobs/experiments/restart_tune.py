"""Restart on a bad initialization against real Ray Tune ASHA at the same epoch budget.

Every arm is a real Ray Tune search (local Ray, 2 trials at a time, the same trial order)
over the variants of a sweep config (``configs/verdicts/restart_digits.yaml``: digits, 7
inits), each trial training one variant with the pipeline's own training
(:func:`~pipeline.training.runner.run_variant`, its store under ``--out``) and reporting
its validation loss to Tune after every epoch:

- **plain**: the variants, no policy, no scheduler (the full budget each);
- **restart**: the same variants with ``on_bad_init: {action: restart, rule: RULE,
  fallback_init: kaiming, after: 6}`` (a flagged variant stops after 5 epochs and trains a
  fresh kaiming attempt for the whole budget; the trial reports both attempts' epochs);
- **ASHA**: ``ASHAScheduler(grace_period=5, reduction_factor=3, max_t=epochs)`` over the
  same variants first, then more seeds of the same inits, until the search has spent the
  epochs the restart arm spent (a Tune stopper counts every trial's epochs and stops the
  search there);
- **ASHA + restart**: ASHA over trials that carry the restart policy (``max_t`` = epochs
  + 5, the restart's dead epochs), the same budget.

Per arm: epochs spent, wall-clock seconds, trials, restarts, the best validation loss any
trial reached (best-checkpoint restore), and the compute (epochs summed over every trial,
in the order of their report times, and wall-clock from the search's start) until some trial
first reached each target validation loss. Targets are fixed beforehand, from the
earlier 14-variant run (best 0.0811): 0.09 (within about 10 %) and 0.12 (within 50 %).
Each ``--roots`` value is one replicate: the config's root ``seed`` and the trial order
(shuffled by it, the same for every arm).

    nice -n 10 python jobs/experiments/restart_tune.py configs/verdicts/restart_digits.yaml seeds=3 \\
        --out /tmp/kma-restart-tune --roots 232 233 234
    python jobs/experiments/restart_tune.py --table /tmp/kma-restart-tune    # the tables again, from results-*.json
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
import warnings
from pathlib import Path

import numpy as np

TARGETS = (0.09, 0.12)
GRACE, ETA = 5, 3


def _policy(rule: str):
    from pipeline.config.policies import OnBadInit

    return OnBadInit(action="restart", rule=rule, fallback_init="kaiming", after=GRACE + 1)


def run_arm(arm, variants, store, epochs, budget=None, rule="v1"):
    """One real Tune search; returns (rows of every report, wall seconds, trials started)."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    restart = "restart" in arm
    asha = arm.startswith("asha")
    policy = _policy(rule) if restart else None
    trials = [v.model_copy(update={"on_bad_init": policy}) for v in variants]
    shutil.rmtree(store, ignore_errors=True)
    store.mkdir(parents=True)

    def trainable(config):
        import torch  # noqa: F401 - the worker's own import, before training

        from pipeline.training.runner import run_variant

        v = trials[config["i"]]
        state = {"n": 0, "attempt": 0, "last": 0, "enter": time.time()}

        class Report:
            def on_epoch_end(self, epoch, history):
                if epoch <= state["last"]:          # a new attempt starts at epoch 1
                    state["attempt"] += 1
                state["last"] = epoch
                state["n"] += 1
                tune.report({"val_loss": float(history["val_loss"][-1]), "t": time.time(),
                             "attempt": state["attempt"], "epoch": epoch, "t_enter": state["enter"]})
                return False

        run_variant(v, str(store / "runs"), callbacks=[Report()])

    class Budget(tune.Stopper):
        """Stops the whole search once its trials have reported ``n`` epochs in all."""

        def __init__(self, n):
            self.n, self.used = n, 0

        def __call__(self, trial_id, result):
            self.used += 1
            return False

        def stop_all(self):
            return self.n is not None and self.used >= self.n

    max_t = epochs + (GRACE if restart else 0)
    sched = ASHAScheduler(time_attr="training_iteration", max_t=max_t, grace_period=GRACE,
                          reduction_factor=ETA) if asha else None
    t0 = time.time()
    grid = tune.Tuner(
        trainable, param_space={"i": tune.grid_search(list(range(len(trials))))},
        tune_config=tune.TuneConfig(max_concurrent_trials=2, scheduler=sched, reuse_actors=True,
                                    **({"metric": "val_loss", "mode": "min"} if asha else {})),
        run_config=tune.RunConfig(stop=Budget(budget), verbose=0, storage_path=str(store / "tune"),
                                  name=arm)).fit()
    wall = time.time() - t0
    rows, started = [], 0
    for r in grid:
        df = r.metrics_dataframe
        if df is None or not len(df):
            continue
        started += 1
        i = int(r.config["i"])
        for _, x in df.iterrows():
            rows.append({"i": i, "init": variants[i].init, "seed": int(variants[i].seed),
                         "iter": int(x["training_iteration"]), "val": float(x["val_loss"]),
                         "t": float(x["t"]) - t0, "attempt": int(x["attempt"]),
                         "t_enter": float(x["t_enter"]) - t0})
    errors = [str(e)[:300] for e in grid.errors]
    if errors:
        print(f"  {arm}: {len(errors)} trial errors, e.g. {errors[0]}", file=sys.stderr)
    return rows, wall, started


def summarise(rows, wall, started):
    rows = sorted(rows, key=lambda r: r["t"])
    out = {"epochs": len(rows), "wall_s": round(wall, 1), "trials": started,
           "restarted": len({r["i"] for r in rows if r["attempt"] > 0}),
           "best": min((r["val"] for r in rows if np.isfinite(r["val"])), default=float("inf"))}
    spans = {}
    for r in rows:   # each trial's seconds inside its trainable (setup and training, no Tune scheduling)
        spans[r["i"]] = (r["t_enter"], max(r["t"], spans.get(r["i"], (0, 0))[1]))
    out["in_trial_s"] = round(sum(b - a for a, b in spans.values()), 1)
    for target in TARGETS:
        hit = next((k for k, r in enumerate(rows) if r["val"] <= target), None)
        out[f"to {target}"] = None if hit is None else {"epochs": hit + 1, "wall_s": round(rows[hit]["t"], 1)}
    return out


ARMS = ("plain", "restart", "asha", "asha+restart")


def replicate(args, root, out):
    from pipeline import config

    cfg = config.load(args.config, [*args.overrides, f"seed={root}"])
    seeds = [int(x) for x in cfg.seeds]
    plain = config.expand(cfg.model_copy(update={"on_bad_init": None}))
    pool = config.expand(cfg.model_copy(update={"on_bad_init": None, "seeds": seeds + list(range(max(seeds) + 1, max(seeds) + 1 + args.extra_seeds))}))
    rng = np.random.default_rng(root)
    first = [plain[k] for k in rng.permutation(len(plain))]
    ids = {v.run_id for v in first}
    more = [v for v in pool if v.run_id not in ids]
    more = [more[k] for k in rng.permutation(len(more))]
    epochs = first[0].epochs
    res = {"root": root, "config": args.config, "overrides": args.overrides, "variants": len(first),
           "seeds": seeds, "epochs": epochs, "rule": args.rule, "arms": {}}
    budget = None
    for arm in ARMS:
        if arm not in args.arms:
            continue
        asha = arm.startswith("asha")
        rows, wall, started = run_arm(arm, first + more if asha else first, out / "stores" / f"{root}-{arm}",
                                      epochs, budget if asha else None, args.rule)
        s = summarise(rows, wall, started)
        if arm == "restart":
            budget = s["epochs"]
        if arm == "plain" and budget is None:
            budget = s["epochs"]
        res["arms"][arm] = {**s, "budget": budget if asha else None, "rows": rows}
        print(f"  root {root} {arm}: {json.dumps(s)}", file=sys.stderr, flush=True)
    (out / f"results-{root}.json").write_text(json.dumps(res, indent=0))
    return res


def usable(rows, target=TARGETS[-1]) -> int:
    """Trials whose best validation loss (restore) is at most ``target``."""
    best = {}
    for r in rows:
        best[r["i"]] = min(best.get(r["i"], float("inf")), r["val"])
    return sum(b <= target for b in best.values())


def table(results) -> str:
    """The markdown tables: per replicate, then each arm's mean over replicates."""
    lines = []
    r0 = results[0]
    lines.append(f"{len(results)} replicate(s) (roots {', '.join(str(r['root']) for r in results)}); "
                 f"{r0['variants']} variants each ({len(r0['seeds'])} seeds per init), {r0['epochs']} epochs, "
                 f"restart rule {r0['rule']}\n")
    head = ("| root | arm | trials | restarted | epochs spent | wall s | best val loss | "
            + " | ".join(f"epochs to ≤ {t} | wall s to ≤ {t}" for t in TARGETS)
            + f" | trials ending ≤ {TARGETS[-1]} |")
    lines += [head, "| " + " | ".join(["---"] * (8 + 2 * len(TARGETS))) + " |"]

    def cell(x, key):
        return "never" if x is None else f"{x[key]}"

    for r in results:
        for arm, s in r["arms"].items():
            plain = r["arms"].get("plain", s)
            lines.append(f"| {r['root']} | {arm} | {s['trials']} | {s['restarted']} | {s['epochs']} "
                         f"({s['epochs'] / plain['epochs']:.0%}) | {s['wall_s']} ({s['wall_s'] / plain['wall_s']:.2f}×) | "
                         f"{s['best']:.4g} | "
                         + " | ".join(f"{cell(s[f'to {t}'], 'epochs')} | {cell(s[f'to {t}'], 'wall_s')}"
                                      for t in TARGETS) + f" | {usable(s['rows'])} |")
    lines.append("")
    lines.append("| arm | epochs spent (× plain) | wall (× plain) | wall s to the first report, median | "
                 "best val loss, mean (range) | "
                 + " | ".join(f"reached ≤ {t} | epochs to it, median · mean | wall s to it, median" for t in TARGETS)
                 + f" | trials ending ≤ {TARGETS[-1]}, mean |")
    lines.append("| " + " | ".join(["---"] * (6 + 3 * len(TARGETS))) + " |")
    for arm in ARMS:
        ss = [(r["arms"][arm], r["arms"]["plain"]) for r in results if arm in r["arms"] and "plain" in r["arms"]]
        if not ss:
            continue
        best = np.array([s["best"] for s, _ in ss])
        cells = []
        for t in TARGETS:
            hits = [s[f"to {t}"] for s, _ in ss if s[f"to {t}"] is not None]
            cells.append(f"{len(hits)}/{len(ss)} | "
                         + (f"{np.median([h['epochs'] for h in hits]):.0f} · {np.mean([h['epochs'] for h in hits]):.0f} | "
                               f"{np.median([h['wall_s'] for h in hits]):.1f}"
                            if hits else "– | –"))
        lines.append(f"| {arm} | {np.mean([s['epochs'] / p['epochs'] for s, p in ss]):.2f} | "
                     f"{np.mean([s['wall_s'] / p['wall_s'] for s, p in ss]):.2f} | "
                     f"{np.median([min(x['t'] for x in s['rows']) for s, _ in ss]):.1f} | "
                     f"{best.mean():.4g} ({best.min():.4g}–{best.max():.4g}) | " + " | ".join(cells)
                     + f" | {np.mean([usable(s['rows']) for s, _ in ss]):.1f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    warnings.filterwarnings("ignore")
    logging.basicConfig(level=logging.WARNING)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config", nargs="?")
    ap.add_argument("overrides", nargs="*")
    ap.add_argument("--out", help="folder for the stores, Tune's results and results-<root>.json")
    ap.add_argument("--roots", type=int, nargs="+", default=[232], help="replicates: the config's root seed each")
    ap.add_argument("--rule", choices=["v1", "v2"], default="v1", help="the restart's detector (default v1)")
    ap.add_argument("--extra-seeds", type=int, default=20, help="more seeds per init ASHA may draw (default 20)")
    ap.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS))
    ap.add_argument("--table", metavar="DIR", help="print the tables of the results-*.json in DIR and exit")
    args = ap.parse_args(argv)
    if args.table:
        results = [json.loads(p.read_text()) for p in sorted(Path(args.table).glob("results-*.json"))]
        print(table(results))
        return 0
    if not args.config or not args.out:
        ap.error("config and --out are required (or --table DIR)")
    import ray

    out = Path(args.out).absolute()
    out.mkdir(parents=True, exist_ok=True)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    results = [replicate(args, root, out) for root in args.roots]
    ray.shutdown()
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
