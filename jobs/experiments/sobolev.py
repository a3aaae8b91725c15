"""The Sobolev experiment: H^-s losses against MSE on a multi-scale signal
buried in noise 3x its standard deviation, and on the same signal without noise.

Command (about 8-10 minutes of CPU on 2 cores; the sweeps run through ``kma sweep``: real
Ray, Zarr store, MLflow)::

    nice -n 10 python jobs/experiments/sobolev.py [--dir kma-sobolev] [--figure docs/pages/figures/sobolev.png]

1. ``kma sweep configs/sobolev.yaml`` (noise 2.5 = 3.09 x the signal's std) and the same
   sweep with ``task.noise=0.0 name=sobolev_clean``, into ``DIR/store`` and
   ``DIR/mlflow.db``: MSE, H^-s for s = 0.5, 1, 2, and a 50/50 blend of MSE and H^-1,
   3 seeds each, full-batch Adam, every loss on the same data and the same steps.
2. From the store: the metrics ``clean_error`` (relative L2 error against the noise-free
   target on the grid) and ``clean_error_f<f>`` (per scale), every epoch. A markdown
   table per case: the final epoch, the best epoch (oracle: least clean_error; its epoch
   in parentheses) and the epoch of least validation loss (validation = a fresh noise
   draw on the grid, a stopping rule one can use without the clean target); mean ± sd
   over the seeds, and the final clean_error of MSE minus this loss's, seed by seed (the
   seeds pair up: a replica's noise draw and initialization are the same for every loss).
3. A figure: clean_error over training for each loss (noisy, clean), per-scale errors at
   the final epoch, and the reconstructions of seed 0 from its final stored weights.

Compare in MLflow (experiments ``sobolev``, ``sobolev_clean``; group by the param ``loss``)
or with ``kma compare --store DIR/store --sweep sobolev --by loss``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from pipeline import config  # noqa: E402
from pipeline.storage.store import TrajectoryStore  # noqa: E402
from pipeline.training.sobolev import metric_name  # noqa: E402

CONFIG = REPO / "configs" / "sobolev.yaml"
CASES = {"noisy": [], "clean": ["task.noise=0.0", "name=sobolev_clean"]}


def sweep(overrides: list[str], store: Path, uri: str) -> None:
    cmd = [sys.executable, "-m", "pipeline", "sweep", str(CONFIG), *overrides,
           "--store", str(store), "--tracking-uri", uri, "--yes"]
    print("$", " ".join(cmd[1:]), flush=True)
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    subprocess.run(cmd, check=True, env=env)


def collect(overrides: list[str], store: TrajectoryStore) -> tuple[dict, config.SweepConfig]:
    """``{loss label: [run metrics per seed]}`` in config order, and the config."""
    cfg = config.load(CONFIG, overrides)
    out: dict[str, list] = {}
    for v in config.expand(cfg):
        run = store.open_run(v.run_id)
        if run.status != "complete":
            raise SystemExit(f"run {v.run_id} is {run.status}")
        out.setdefault(config.loss_label(v.loss), []).append((v, run))
    return out, cfg


def summarise(runs, freqs) -> dict[str, np.ndarray]:
    """Per seed: final, best (oracle) and at-least-val-loss errors, overall and per scale."""
    keys = ["clean_error", *(metric_name(f) for f in freqs)]
    rows = {f"final {k}": [] for k in keys} | {f"best {k}": [] for k in keys} | {
        "best epoch": [], "val-stop clean_error": [], "val-stop epoch": []}
    for _, run in runs:
        m = {k: np.asarray(run.metrics[k]) for k in keys}
        best = int(np.argmin(m["clean_error"]))
        stop = int(np.argmin(np.asarray(run.metrics["val_loss"])))
        for k in keys:
            rows[f"final {k}"].append(m[k][-1])
            rows[f"best {k}"].append(m[k][best])
        rows["best epoch"].append(best + 1)
        rows["val-stop clean_error"].append(m["clean_error"][stop])
        rows["val-stop epoch"].append(stop + 1)
    return {k: np.asarray(v, dtype=float) for k, v in rows.items()}


def table(case: str, data: dict, freqs) -> str:
    def ms(a, digits=3):
        return f"{a.mean():.{digits}f} ± {a.std():.{digits}f}"

    fs = [f"{f:g}" for f in freqs]
    head = (["loss", "final clean_error"] + [f"final f={f}" for f in fs]
            + ["best clean_error (epoch)"] + [f"best f={f}" for f in fs] + ["at least val_loss (epoch)"]
            + ["mse − this, final (per seed)"])
    ref = data.get("mse")
    lines = [f"**{case}**", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, s in data.items():
        cells = [f"`{label}`", ms(s["final clean_error"])]
        cells += [ms(s[f"final {metric_name(f)}"], 2) for f in freqs]
        cells += [f"{ms(s['best clean_error'])} ({s['best epoch'].mean():.0f})"]
        cells += [ms(s[f"best {metric_name(f)}"], 2) for f in freqs]
        cells += [f"{ms(s['val-stop clean_error'])} ({s['val-stop epoch'].mean():.0f})"]
        paired = ref["final clean_error"] - s["final clean_error"] if ref is not None else None
        cells += ["-" if paired is None or label == "mse" else " ".join(f"{d:+.2f}" for d in paired)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def reconstruction(variant, run):
    """(grid, clean, noisy training target, final prediction) of a run, from its store."""
    import torch

    from pipeline.training.runner import build_parts

    task, model, layout = build_parts(variant)
    flat = np.asarray(run.weights()[run.n_snapshots - 1].compute(), dtype=np.float32)
    model.load_state_dict({k: torch.as_tensor(np.array(v)) for k, v in layout.unflatten(flat).items()})
    with torch.no_grad():
        pred = model(task.grid)
    return task.grid.ravel().numpy(), task.clean.ravel().numpy(), task.y_train.ravel().numpy(), pred.ravel().numpy()


def figure(results: dict, summaries: dict, freqs, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(results["noisy"])
    colors = dict(zip(labels, plt.get_cmap("tab10").colors))
    fig, ax = plt.subplots(2, 2, figsize=(13, 9))
    for a, case in zip(ax[0], ("noisy", "clean")):
        for label, runs in results[case].items():
            ce = np.array([run.metrics["clean_error"] for _, run in runs])
            ep = np.arange(1, ce.shape[1] + 1)
            a.plot(ep, ce.mean(0), color=colors[label], label=label, lw=1.5)
            a.fill_between(ep, ce.min(0), ce.max(0), color=colors[label], alpha=0.2, lw=0)
        a.set_yscale("log")
        a.set_xlabel("epoch (one full-batch Adam step)")
        a.set_ylabel("clean_error = ‖pred − clean‖ / ‖clean‖")
        a.grid(alpha=0.3, which="both")
    noise = results["noisy"][labels[0]][0][0].task.noise
    ax[0, 0].set_title(f"noise {noise:g} (3.1× the signal's std): mean over seeds, band = min..max")
    ax[0, 1].set_title("no noise: where H^-s should not help")
    ax[0, 0].legend(fontsize=8)

    a = ax[1, 0]
    width = 0.8 / len(labels)
    x = np.arange(len(freqs) + 1)
    for i, label in enumerate(labels):
        s = summaries["noisy"][label]
        vals = [s["final clean_error"]] + [s[f"final {metric_name(f)}"] for f in freqs]
        a.bar(x + (i - (len(labels) - 1) / 2) * width, [v.mean() for v in vals], width,
              yerr=[v.std() for v in vals], color=colors[label], label=label)
    a.set_xticks(x, ["all"] + [f"f = {f:g}" for f in freqs])
    a.axhline(1.0, color="k", lw=0.8, ls="--")
    a.set_ylabel("final clean_error (noisy case)")
    a.set_title("per scale at the final epoch: 1 = that scale not recovered at all")
    a.grid(alpha=0.3, axis="y")

    a = ax[1, 1]
    (v0, r0) = results["noisy"][labels[0]][0]
    xg, clean, noisy, pred0 = reconstruction(v0, r0)
    a.plot(xg, noisy, ".", color="0.75", ms=2, label="training data (noisy)")
    a.plot(xg, clean, color="k", lw=2, label="clean target")
    a.plot(xg, pred0, color=colors[labels[0]], lw=1.3, label=f"{labels[0]} (final)")
    pick = "sobolev(s=1)" if "sobolev(s=1)" in results["noisy"] else labels[1]
    v1, r1 = results["noisy"][pick][0]
    a.plot(xg, reconstruction(v1, r1)[3], color=colors[pick], lw=1.3, label=f"{pick} (final)")
    a.set_ylim(-4, 4)
    a.set_xlabel("x")
    a.set_title("seed 0: reconstructions from the final stored weights")
    a.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    print(f"figure: {path}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dir", default="kma-sobolev", help="store and MLflow database go here")
    p.add_argument("--figure", default=str(REPO / "docs" / "sobolev.png"))
    p.add_argument("--no-train", action="store_true", help="only read an existing store")
    args = p.parse_args()

    work = Path(args.dir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    store_path, uri = work / "store", f"sqlite:///{work / 'mlflow.db'}"
    if not args.no_train:
        for overrides in CASES.values():
            sweep(overrides, store_path, uri)
    store = TrajectoryStore(str(store_path))
    results, summaries = {}, {}
    for case, overrides in CASES.items():
        results[case], cfg = collect(overrides, store)
        freqs = list(cfg.task.frequencies)
        summaries[case] = {label: summarise(runs, freqs) for label, runs in results[case].items()}
        print()
        print(table(f"{case} (task.noise = {cfg.task.noise:g}; {len(cfg.seeds)} seeds, {cfg.epochs} epochs)",
                    summaries[case], freqs))
    print()
    figure(results, summaries, freqs, Path(args.figure))


if __name__ == "__main__":
    main()
