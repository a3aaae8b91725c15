"""Koopman acceleration as Dogra & Redman ran it, against Adam and SGD: the table of the
acceleration section of docs/pages/pruning.md.

Command (about 10 minutes on 2 busy cores)::

    nice -n 10 python jobs/experiments/koopman_accel.py --out bench-out/koopman_accel.json

Two tasks: the multiscale regression of ``configs/accelerate.yaml`` (80 epochs of 4
steps) and digits of ``configs/prune.yaml`` (30 epochs of 23 steps); an MLP depth 2,
width 32, tanh; ``--seeds`` seeds (default 3). Every arm snapshots every optimizer step
(``snapshot: {every: 1, unit: step}``), so the store writes cost every arm the same and
the wall-clock differences are the Koopman fits, jumps and loss checks. Arms: Adam (lr
3e-3, constant), SGD (lr 0.05, momentum 0.9, constant), and ``accelerate: {scope: layer}``
on top of Adam — per-layer operators of the weight updates of the last ``window`` steps,
a jump every ``window`` steps — over a window/horizon sweep, the horizon chosen by the
certified rule (largest of H, H/2, ... 1 whose first-order error bound is <= 1% of each
layer's norm — 10% in one arm — then the lowest held-out loss) or fixed; and one on top
of SGD.

Target loss of a task: the mean training loss of the Adam runs at 60% of training.
Steps to target: optimizer steps up to the end of the first epoch whose training loss is
at most the target (epoch granularity); wall seconds likewise, from the first snapshot,
everything included (training, snapshot writes, fits, loss checks); ``fit s`` the part of
it spent in the Koopman attempts.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")   # one BLAS thread: spinning threads on shared cores cost 50x
ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import yaml  # noqa: E402

from pipeline import config  # noqa: E402
from pipeline.storage.store import TrajectoryStore  # noqa: E402
from pipeline.training.runner import run_variant  # noqa: E402

TASKS = {"multiscale": ("configs/accelerate.yaml", "accelerate"),
         "digits": ("configs/prune.yaml", "prune")}
ADAM = {"name": "adam", "lr": 0.003}
SGD = {"name": "sgd", "lr": 0.05, "momentum": 0.9}
TARGET_AT = 0.6


def arms():
    yield "Adam", ADAM, None
    yield "SGD", SGD, None
    for w, h, rule, tol in ((10, 100, "certified", 0.01), (20, 100, "certified", 0.01),
                            (20, 1000, "certified", 0.01), (40, 1000, "certified", 0.01),
                            (20, 1000, "certified", 0.1), (20, 100, "fixed", None)):
        name = f"Adam + Koopman W={w} H={'≤' if rule == 'certified' else ''}{h}"
        cfg = {"window": w, "every": w, "horizon": h, "scope": "layer", "horizon_rule": rule}
        if tol is not None and tol != 0.01:
            name, cfg["bound_tol"] = f"{name} tol {tol:g}", tol
        yield name, ADAM, cfg
    yield "SGD + Koopman W=20 H=≤1000", SGD, {"window": 20, "every": 20, "horizon": 1000,
                                              "scope": "layer", "horizon_rule": "certified"}


class Clock:
    """Wall time at the first snapshot and at every epoch's end."""

    def __init__(self):
        self.t0, self.ends = None, []

    def on_snapshot(self, flat, epoch, step):
        if self.t0 is None:
            self.t0 = time.perf_counter()

    def on_epoch_end(self, epoch, history):
        self.ends.append(time.perf_counter() - self.t0)


def variants(task, optimizer, accel, seeds, epochs_scale):
    path, drop = TASKS[task]
    data = yaml.safe_load((ROOT / path).read_text())
    data.pop(drop)
    data.update(name=f"kacc-{task}", seeds=seeds, analysis={"enabled": False}, optimizer=dict(optimizer),
                snapshot={"every": 1, "unit": "step"},
                epochs=max(4, int(round(data["epochs"] * epochs_scale))))
    if accel:
        data["accelerate"] = dict(accel)
    return config.expand(config.validate(data, task))


def run_all(args, store_url):
    rows = []
    for task in args.tasks.split(","):
        for arm, opt, accel in arms():
            for v in variants(task, opt, accel, args.seeds, args.epochs_scale):
                clock = Clock()
                out = run_variant(v, store_url, callbacks=[clock])
                attempts = TrajectoryStore(store_url).open_run(v.run_id).attrs.get("jump_attempts", [])
                jumps = [a for a in attempts if a["outcome"] == "jump"]
                rows.append({"task": task, "arm": arm, "seed": v.seed, "run_id": v.run_id,
                             "status": out["status"], "history": out["metrics"], "epoch_end_s": clock.ends,
                             "attempts": len(attempts), "jumps": len(jumps),
                             "horizons": [a["horizon"] for a in jumps],
                             "fit_s": sum(a.get("seconds", 0.0) for a in attempts)})
                print(f"{task} {arm:32s} s{v.seed}: {out['status']}, train {out['metrics']['train_loss'][-1]:.4g}, "
                      f"{clock.ends[-1]:.1f}s, jumps {len(jumps)}/{len(attempts)}", file=sys.stderr, flush=True)
    return rows


def _ms(xs, fmt="{:.3g}"):
    xs = [x for x in xs if x is not None and math.isfinite(x)]
    if not xs:
        return "—"
    return f"{fmt.format(statistics.mean(xs))} ± {fmt.format(statistics.stdev(xs) if len(xs) > 1 else 0.0)}"


def summarize(rows, steps_per_epoch):
    out = {}
    for task in dict.fromkeys(r["task"] for r in rows):
        group = [r for r in rows if r["task"] == task]
        base = [r for r in group if r["arm"] == "Adam"]
        E = len(base[0]["history"]["train_loss"])
        target = statistics.mean(r["history"]["train_loss"][max(1, round(TARGET_AT * E)) - 1] for r in base)
        spe = steps_per_epoch[task]
        adam_wall = statistics.mean(r["epoch_end_s"][-1] for r in base)
        table = []
        for arm in dict.fromkeys(r["arm"] for r in group):
            rs = [r for r in group if r["arm"] == arm]
            steps, wall = [], []
            for r in rs:
                hit = next((i for i, x in enumerate(r["history"]["train_loss"]) if x <= target), None)
                if hit is not None:
                    steps.append((hit + 1) * spe)
                    wall.append(r["epoch_end_s"][hit])
            table.append({"arm": arm, "n": len(rs), "reached": len(steps),
                          "steps_to_target": _ms(steps), "wall_to_target_s": _ms(wall, "{:.2f}"),
                          "total_wall_vs_adam": _ms([r["epoch_end_s"][-1] / adam_wall for r in rs], "{:.2f}"),
                          "fit_s": _ms([r["fit_s"] for r in rs], "{:.2f}"),
                          "final_train_loss": _ms([r["history"]["train_loss"][-1] for r in rs]),
                          "final_val_loss": _ms([r["history"]["val_loss"][-1] for r in rs]),
                          "jumps_accepted": f"{sum(r['jumps'] for r in rs)}/{sum(r['attempts'] for r in rs)}",
                          "median_horizon": (statistics.median(h for r in rs for h in r["horizons"])
                                             if any(r["horizons"] for r in rs) else None)})
        out[task] = {"target_loss": target, "steps_per_epoch": spe, "epochs": E, "table": table}
    return out


def markdown(summary):
    lines = []
    for task, s in summary.items():
        lines += [f"**{task}** (target train loss {s['target_loss']:.4g} = Adam's at 60% of "
                  f"{s['epochs']} epochs; {s['steps_per_epoch']} steps per epoch)", "",
                  "| arm | reached | steps to target | wall s to target | total wall / Adam | fit s | "
                  "final train loss | jumps kept/tried | median H |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for t in s["table"]:
            lines.append(f"| {t['arm']} | {t['reached']}/{t['n']} | {t['steps_to_target']} | "
                         f"{t['wall_to_target_s']} | {t['total_wall_vs_adam']} | {t['fit_s']} | "
                         f"{t['final_train_loss']} | {t['jumps_accepted']} | {t['median_horizon'] or '—'} |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--tasks", default="multiscale,digits")
    p.add_argument("--epochs-scale", type=float, default=1.0, help="scale every task's epochs (smoke runs)")
    p.add_argument("--store", default=None, help="keep the runs in this store (default: a temporary one)")
    p.add_argument("--out", default="bench-out/koopman_accel.json")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    tmp = None if args.store else tempfile.mkdtemp(prefix="kacc-")
    store_url = args.store or str(Path(tmp) / "store")
    try:
        from pipeline.training.tasks import build_task  # steps per epoch, from the tasks themselves
        spe = {}
        for task in args.tasks.split(","):
            v = variants(task, ADAM, None, 1, args.epochs_scale)[0]
            n = build_task(v.task.name, seed=0, **v.task.model_dump(exclude={"name"})).n_train
            spe[task] = math.ceil(n / v.batch_size)
        rows = run_all(args, store_url)
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    summary = summarize(rows, spe)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"summary": summary, "runs": rows}, indent=1))
    print(markdown(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
