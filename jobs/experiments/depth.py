"""The depth experiment: does training error fall at the depth `kma depth`
recommends?

    nice -n 10 python jobs/experiments/depth.py [--store DIR] [--tracking-uri URI]
        [--figure docs/pages/figures/depth.png] [--config configs/depth.yaml]

For each target (a multiscale task with a known set of frequencies) it asks the depth
rule (:mod:`pipeline.apps.depth`, on the task's training samples, as ``kma depth CONFIG``
does), trains the config's depth sweep (``kma sweep``: Ray, the Zarr store, MLflow as
usual; the sweep name ``depth`` is the MLflow experiment), reads every run's final
losses from the store, prints a markdown table and draws training error against depth
per target with the recommended depth marked. Re-running trains nothing already in the
store. About 5-10 minutes of CPU on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from pipeline import cli, config
from pipeline.apps.depth import recommend_depth
from pipeline.storage.store import TrajectoryStore

ROOT = Path(__file__).resolve().parents[2]

# label, frequencies (cycles per unit x), amplitudes; the `hier` stages sit at 8^k
TARGETS = [
    ("1 scale", [1.0], [1.0]),
    ("2 scales", [1.0, 8.0], [1.0, 0.5]),
    ("3 scales", [1.0, 8.0, 64.0], [1.0, 0.5, 0.25]),
    ("2 scales, gap", [1.0, 64.0], [1.0, 0.25]),
    ("2 close scales", [1.0, 2.0], [1.0, 0.5]),
]
TRANSITION = 10.0   # measured depth: the smallest whose error is within this factor of the best


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=str(ROOT / "configs" / "depth.yaml"))
    ap.add_argument("--store", default="kma-store")
    ap.add_argument("--tracking-uri", default="sqlite:///mlflow.db")
    ap.add_argument("--figure", default=str(ROOT / "docs" / "figures" / "depth.png"))
    ap.add_argument("--json", default=None, help="also write the rows as JSON here")
    ap.add_argument("--noise-check", action="store_true",
                    help="only the rule under noise (no training): depth found per noise level, 20 seeds")
    args = ap.parse_args(argv)
    if args.noise_check:
        print(_noise_check())
        return 0

    rows = []
    for label, freqs, amps in TARGETS:
        over = [f"task.frequencies={json.dumps(freqs)}", f"task.amplitudes={json.dumps(amps)}"]
        y, dx, _ = cli.signal_from_config(args.config, over)
        rec = recommend_depth(y, dx)
        print(f"{label}: kma depth -> {rec.depth} {[round(s, 4) for s in rec.scales]}; training ...",
              flush=True)
        # `kma sweep` in this process: the local Ray it starts serves all five sweeps
        rc = cli.main(["sweep", args.config, *over, "--store", args.store,
                       "--tracking-uri", args.tracking_uri, "-q"])
        if rc != 0:
            print(f"{label}: kma sweep exited with {rc}", file=sys.stderr)
            return rc
        rows.append(_collect(label, freqs, amps, rec, args))

    print(_table(rows))
    _figure(rows, args.figure)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


def _collect(label, freqs, amps, rec, args) -> dict:
    """Final relative training / validation error per depth (mean, min, max over seeds)."""
    cfg = config.load(args.config, [f"task.frequencies={json.dumps(freqs)}",
                                    f"task.amplitudes={json.dumps(amps)}"])
    store = TrajectoryStore(args.store, read_only=True)
    var = sum(a * a for a in amps) / 2          # variance of the clean target on the grid
    by_depth: dict[int, dict[str, list]] = {}
    for v in config.expand(cfg):
        m = store.open_run(v.run_id).metrics
        d = by_depth.setdefault(v.depth, {"train": [], "val": []})
        d["train"].append(m["train_loss"][-1] / var)
        d["val"].append(m["val_loss"][-1] / var)
    depths = sorted(by_depth)
    train = [float(np.mean(by_depth[d]["train"])) for d in depths]
    best = min(train)
    measured = next(d for d, e in zip(depths, train) if e <= TRANSITION * best)
    return {"target": label, "frequencies": freqs, "amplitudes": amps,
            "recommended": rec.depth, "scales": rec.scales, "fourier_depth": rec.fourier["depth"],
            "measured": measured, "depths": depths, "train": train,
            "train_min": [float(min(by_depth[d]["train"])) for d in depths],
            "train_max": [float(max(by_depth[d]["train"])) for d in depths],
            "val": [float(np.mean(by_depth[d]["val"])) for d in depths],
            "seeds": len(by_depth[depths[0]]["train"])}


def _noise_check(seeds: int = 20, n: int = 256) -> str:
    """How often the rule finds each depth on float32 signals with 1, 2, 3 scales
    (frequencies 1, 4, 16; amplitudes 1, 0.5, 0.25) plus white noise of a multiple of the
    signal's standard deviation, and on pure white noise."""
    x = np.arange(n) / n
    levels = [0.0, 0.3, 1.0, 3.0]
    out = ["| scales | " + " | ".join(f"noise {v:g}x std: DMD (Fourier)" for v in levels) + " |",
           "| --- |" + " --- |" * len(levels)]
    for k in (1, 2, 3):
        freqs, amps = [1.0, 4.0, 16.0][:k], [1.0, 0.5, 0.25][:k]
        clean = sum(a * np.sin(2 * np.pi * f * x) for f, a in zip(freqs, amps))
        cells = []
        for level in levels:
            found, fourier = [], []
            for seed in range(seeds):
                y = clean + level * clean.std() * np.random.default_rng(seed).standard_normal(n)
                r = recommend_depth(y.astype(np.float32))
                found.append(len(r.scales))
                fourier.append(len(r.fourier["scales"]))
            cells.append(_counts(found) + f" ({_counts(fourier)})")
        out.append(f"| {k} | " + " | ".join(cells) + " |")
    found, fourier = [], []
    for seed in range(300):
        r = recommend_depth(np.random.default_rng(seed).standard_normal(n).astype(np.float32))
        found.append(len(r.scales))
        fourier.append(len(r.fourier["scales"]))
    out.append(f"\npure white noise, 300 seeds: scales found by DMD {_counts(found)}, "
               f"by Fourier {_counts(fourier)}")
    return "\n".join(out)


def _counts(values) -> str:
    """``{2: 19, 1: 1}`` as ``"2 scales: 19, 1: 1"``-like text, most scales first."""
    return ", ".join(f"{k}:{values.count(k)}" for k in sorted(set(values), reverse=True))


def _table(rows) -> str:
    depths = rows[0]["depths"]
    head = ("| target | frequencies | `kma depth` (Fourier) | measured | "
            + " | ".join(f"depth {d}" for d in depths) + " |")
    out = [head, "|" + " --- |" * 4 + " ---: |" * len(depths)]
    for r in rows:
        cells = []
        for d, e in zip(r["depths"], r["train"]):
            c = f"{e:.1e}"
            cells.append(f"**{c}**" if d == r["recommended"] else c)
        ok = "" if r["measured"] == r["recommended"] else " ✗"
        out.append(f"| {r['target']} | {', '.join(f'{f:g}' for f in r['frequencies'])} | "
                   f"{r['recommended']} ({r['fourier_depth']}) | {r['measured']}{ok} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def _figure(rows, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(rows), figsize=(3.2 * len(rows), 3.4), sharey=True)
    for ax, r in zip(axes, rows):
        d = r["depths"]
        ax.fill_between(d, r["train_min"], r["train_max"], color="tab:blue", alpha=0.2)
        ax.plot(d, r["train"], "o-", color="tab:blue", label="training error")
        ax.plot(d, r["val"], "s--", color="tab:orange", ms=4, label="validation error")
        ax.axvline(r["recommended"], color="tab:red", ls=":", lw=2, label="kma depth")
        ax.set_yscale("log")
        ax.set_xticks(d)
        ax.set_xlabel("depth (stages)")
        ax.set_title(f"{r['target']}\nf = {', '.join(f'{f:g}' for f in r['frequencies'])}", fontsize=10)
    axes[0].set_ylabel("final MSE / Var(target)")
    axes[0].legend(fontsize=8, loc="lower left")
    fig.suptitle(f"hier stack (stage k at frequency 8^k), mean of {rows[0]['seeds']} seeds "
                 "(band: min-max); dotted: recommended depth", fontsize=10)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"figure: {path}")


if __name__ == "__main__":
    sys.exit(main())
