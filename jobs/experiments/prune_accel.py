"""Pruning and acceleration experiments : the tables of docs/pages/pruning.md.

Command (about 10-15 minutes on 2 busy cores)::

    nice -n 10 python jobs/experiments/prune_accel.py --out bench-out/prune_accel.json

Two tasks (the multiscale regression of ``configs/accelerate.yaml``, 80 epochs; digits of
``configs/prune.yaml``, 30 epochs), two architectures (MLP depth 2 and depth 3, width
32, tanh, Adam lr 3e-3), ``--seeds`` seeds each (default 3). Arms:

- pruning: unpruned; ``magnitude`` and ``koopman`` at each ``--sparsities`` (default 0.5,
  0.8, 0.9), global, after a quarter (regression: 20 of 80) or a third (digits: 10 of 30)
  of training, DMD window 6;
- acceleration: plain (= unpruned); ``accelerate: {window: 8, every: 8, horizon: 8}``
  with the default certification (κ·residual <= 0.01), with a looser one (0.05), and
  the loose one with the optimizer's state reset at a jump;
- freezing (only with ``--freeze``, which runs plain and these arms instead of the
  above): ``freeze: {tol: 0.01}`` and ``{tol: 0.05}``, first decision after 20 snapshots
  then every 10, window 8 (regression), after 10 then every 5, window 6 (digits)::

    nice -n 10 python jobs/experiments/prune_accel.py --freeze --out bench-out/freeze.json

Every run is a real :func:`pipeline.training.runner.run_variant` into a Zarr store (a
temporary one unless ``--store``), in this process (no Ray, no MLflow), so the times are
training + snapshot writing + the hooks' DMD fits. The target loss of a (task,
architecture) is the mean training loss of its unpruned runs at 60% of training; a run's
epochs and wall seconds to target count from its first snapshot to the end of the first
epoch whose training loss is at most that. Tables: mean ± standard deviation over the
seeds (over the seeds that reached the target, whose number is given).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import yaml  # noqa: E402

from pipeline import config  # noqa: E402
from pipeline.apps.prune import prunable_ranges  # noqa: E402
from pipeline.storage.store import TrajectoryStore  # noqa: E402
from pipeline.training.runner import run_variant  # noqa: E402

TASKS = {  # name: (base config file, key to drop, prune after)
    "regression": ("configs/accelerate.yaml", "accelerate", 20),
    "digits": ("configs/prune.yaml", "prune", 10),
}
FREEZE = {"regression": {"after": 20, "every": 10, "window": 8},   # --freeze arms, per task
          "digits": {"after": 10, "every": 5, "window": 6}}
FREEZE_TOLS = (0.01, 0.05)
ACCEL = {"window": 8, "every": 8, "horizon": 8}
TARGET_AT = 0.6
PRUNED: dict = {}   # (task, depth, arm, seed) -> flat indices of the pruned weights


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--sparsities", default="0.5,0.8,0.9")
    p.add_argument("--tasks", default="regression,digits")
    p.add_argument("--depths", default="2,3")
    p.add_argument("--epochs-scale", type=float, default=1.0, help="scale every task's epochs (smoke runs)")
    p.add_argument("--store", default=None, help="keep the runs in this store (default: a temporary one)")
    p.add_argument("--out", default="bench-out/prune_accel.json")
    p.add_argument("--freeze", action="store_true", help="plain against freeze: arms only")
    return p.parse_args(argv)


class Clock:
    """Wall time at the first snapshot and at every epoch's end."""

    def __init__(self):
        self.t0, self.ends = None, []

    def on_snapshot(self, flat, epoch, step):
        if self.t0 is None:
            self.t0 = time.perf_counter()

    def on_epoch_end(self, epoch, history):
        self.ends.append(time.perf_counter() - self.t0)


def arms(sparsities):
    yield "unpruned / plain", {}
    if ARGS.freeze:
        for tol in FREEZE_TOLS:
            yield f"freeze (tol {tol:g})", {"freeze": {"tol": tol}}
        return
    for method in ("magnitude", "koopman"):
        for s in sparsities:
            yield f"{method} {s:g}", {"prune": {"method": method, "sparsity": s, "window": 6}}
    yield "accelerated (tol 0.01)", {"accelerate": dict(ACCEL)}
    yield "accelerated (tol 0.05)", {"accelerate": {**ACCEL, "residual_tol": 0.05}}
    yield "accelerated (tol 0.05, reset)", {"accelerate": {**ACCEL, "residual_tol": 0.05,
                                                           "optimizer_state": "reset"}}


def variants(task, depth, arm_cfg, seeds):
    path, drop, after = TASKS[task]
    data = yaml.safe_load((ROOT / path).read_text())
    data.pop(drop)
    data["analysis"] = {"enabled": False}
    data["name"] = f"exp-{task}"
    data["seeds"] = seeds
    data["model"]["depth"] = depth
    data["epochs"] = max(4, int(round(data["epochs"] * ARGS.epochs_scale)))
    extra = copy.deepcopy(arm_cfg)
    if "prune" in extra:
        extra["prune"]["after"] = max(6, int(round(after * ARGS.epochs_scale)))
    if "freeze" in extra:
        f = FREEZE[task]
        extra["freeze"].update(window=f["window"],
                               after=max(f["window"], int(round(f["after"] * ARGS.epochs_scale))),
                               every=max(1, int(round(f["every"] * ARGS.epochs_scale))))
    return config.expand(config.validate({**data, **extra}, f"{task} d{depth}"))


def run_all(store_url, sparsities):
    rows = []
    for task in ARGS.tasks.split(","):
        for depth in [int(d) for d in ARGS.depths.split(",")]:
            for arm, cfg in arms(sparsities):
                for v in variants(task, depth, cfg, ARGS.seeds):
                    clock = Clock()
                    out = run_variant(v, store_url, callbacks=[clock])
                    run = TrajectoryStore(store_url).open_run(v.run_id)
                    attempts = run.attrs.get("jump_attempts", [])
                    pruned = None
                    if "prune" in cfg:      # the pruned weights: zeros of the last snapshot
                        last = run.weights()[-1].compute()
                        pruned = {int(i) for _, a, b in prunable_ranges(run.layout)
                                  for i in (np.flatnonzero(last[a:b] == 0) + a)}
                    rows.append({
                        "task": task, "depth": depth, "arm": arm, "seed": v.seed, "run_id": v.run_id,
                        "status": out["status"], "history": out["metrics"], "epoch_end_s": clock.ends,
                        "events": run.attrs.get("events", []),
                        "frozen_fraction": (out["metrics"].get("frozen_fraction") or [None])[-1],
                        "jumps": sum(a["outcome"] == "jump" for a in attempts),
                        "rejected": sum(a["outcome"] == "rejected" for a in attempts),
                        "skipped": sum(a["outcome"] == "skipped" for a in attempts),
                        "jump_gain": [(a["loss_before"] - a["loss_after"]) / a["loss_before"]
                                      for a in attempts if a["outcome"] == "jump"],
                    })
                    PRUNED[(task, depth, arm, v.seed)] = pruned
                    print(f"{task} d{depth} {arm:30s} s{v.seed}: {out['status']}, "
                          f"train {out['metrics']['train_loss'][-1]:.4g}, {clock.ends[-1]:.1f}s",
                          file=sys.stderr, flush=True)
    return rows


# --------------------------------------------------------------------------- tables
def _ms(xs, fmt="{:.3g}"):
    xs = [x for x in xs if x is not None and math.isfinite(x)]
    if not xs:
        return "—"
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{fmt.format(statistics.mean(xs))} ± {fmt.format(sd)}"


def summarize(rows):
    out = {}
    for (task, depth) in dict.fromkeys((r["task"], r["depth"]) for r in rows):
        group = [r for r in rows if r["task"] == task and r["depth"] == depth]
        base = [r for r in group if r["arm"] == "unpruned / plain"]
        E = len(base[0]["history"]["train_loss"])
        k = max(1, int(round(TARGET_AT * E))) - 1
        target = statistics.mean(r["history"]["train_loss"][k] for r in base)
        table = []
        for arm in dict.fromkeys(r["arm"] for r in group):
            rs = [r for r in group if r["arm"] == arm]
            ep, wall = [], []
            for r in rs:
                hit = next((i for i, x in enumerate(r["history"]["train_loss"]) if x <= target), None)
                if hit is not None:
                    ep.append(hit + 1)
                    wall.append(r["epoch_end_s"][hit])
            acc = [r["history"]["val_accuracy"][-1] for r in rs if "val_accuracy" in r["history"]]
            overlap = []                 # Koopman vs magnitude: the same weights pruned?
            if arm.startswith("koopman"):
                for r in rs:
                    kp = PRUNED.get((task, depth, arm, r["seed"]))
                    mp = PRUNED.get((task, depth, arm.replace("koopman", "magnitude"), r["seed"]))
                    if kp and mp:
                        overlap.append(len(kp & mp) / len(kp | mp))
            gains = [g for r in rs for g in r["jump_gain"]]
            table.append({
                "arm": arm, "n": len(rs), "reached": len(ep),
                "epochs_to_target": _ms(ep), "wall_to_target_s": _ms(wall, "{:.2f}"),
                "total_wall_s": _ms([r["epoch_end_s"][-1] for r in rs], "{:.2f}"),
                "final_train_loss": _ms([r["history"]["train_loss"][-1] for r in rs], "{:.4f}"),
                "final_val_loss": _ms([r["history"]["val_loss"][-1] for r in rs], "{:.4f}"),
                "final_val_accuracy": _ms(acc, "{:.4f}") if acc else "—",
                "jumps": f"{sum(r['jumps'] for r in rs)}/{sum(r['rejected'] for r in rs)}/"
                         f"{sum(r['skipped'] for r in rs)}" if arm.startswith("accel") else "",
                "jump_gain": _ms(gains, "{:.2%}") if gains else "",
                "overlap_with_magnitude": _ms(overlap, "{:.2f}") if overlap else "",
                "frozen_fraction": _ms([r["frozen_fraction"] for r in rs], "{:.3f}")
                if arm.startswith("freeze") else "",
            })
        out[f"{task} d{depth}"] = {"epochs": E, "target_train_loss": target, "rows": table}
    return out


def markdown(summary) -> str:
    if ARGS.freeze:
        return markdown_freeze(summary)
    lines = []
    for name, s in summary.items():
        lines.append(f"**{name}** ({s['epochs']} epochs; target training loss "
                     f"{s['target_train_loss']:.4g}, the unpruned runs' mean at {int(TARGET_AT * 100)}%)\n")
        lines.append("| arm | reached | epochs to target | wall s to target | total wall s | "
                     "final train loss | final val loss | final val accuracy | "
                     "pruned set vs magnitude (Jaccard) | jumps kept/rejected/skipped | loss drop per kept jump |")
        lines.append("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for r in s["rows"]:
            lines.append(f"| {r['arm']} | {r['reached']}/{r['n']} | {r['epochs_to_target']} | "
                         f"{r['wall_to_target_s']} | {r['total_wall_s']} | {r['final_train_loss']} | "
                         f"{r['final_val_loss']} | {r['final_val_accuracy']} | "
                         f"{r['overlap_with_magnitude']} | {r['jumps']} | {r['jump_gain']} |")
        lines.append("")
    return "\n".join(lines)


def markdown_freeze(summary) -> str:
    lines = []
    for name, s in summary.items():
        lines.append(f"**{name}** ({s['epochs']} epochs; target training loss "
                     f"{s['target_train_loss']:.4g}, the plain runs' mean at {int(TARGET_AT * 100)}%)\n")
        lines.append("| arm | reached | epochs to target | wall s to target | total wall s | "
                     "final train loss | final val loss | final val accuracy | frozen fraction (end) |")
        lines.append("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for r in s["rows"]:
            lines.append(f"| {r['arm']} | {r['reached']}/{r['n']} | {r['epochs_to_target']} | "
                         f"{r['wall_to_target_s']} | {r['total_wall_s']} | {r['final_train_loss']} | "
                         f"{r['final_val_loss']} | {r['final_val_accuracy']} | {r['frozen_fraction']} |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None):
    global ARGS
    ARGS = parse(argv)
    sparsities = [float(s) for s in ARGS.sparsities.split(",")]
    tmp = None if ARGS.store else tempfile.mkdtemp(prefix="kma-prune-accel-")
    store_url = ARGS.store or str(Path(tmp) / "store")
    t0 = time.perf_counter()
    try:
        rows = run_all(store_url, sparsities)
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    summary = summarize(rows)
    out = Path(ARGS.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(ARGS), "summary": summary, "runs": rows,
                               "seconds": time.perf_counter() - t0}, indent=1))
    print(markdown(summary))
    print(f"{len(rows)} runs in {time.perf_counter() - t0:.0f}s; details in {out}", file=sys.stderr)


ARGS = None

if __name__ == "__main__":
    main()
