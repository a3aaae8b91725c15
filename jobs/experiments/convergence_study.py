"""Choose the convergence criterion's numbers (delta, share, k) by measurement.

First version only, and in-sample (labels from the configuration, numbers chosen and
scored on the same runs). The second version and the held-out study that fixes its
thresholds on one sweep and scores them on others: ``jobs/experiments/verdict_study.py``.

Trains a small labelled sweep in this process (no Ray: sequential, a few minutes of CPU),
fits each run with the default analysis (window "auto"), takes the verdict spectra
(``pipeline.apps.convergence.verdict_spectra``), and scores every (delta, share, k) of a
small grid: converging runs should get a converged_at near the epoch their validation loss
settles, non-converging runs none. Also runs the synthetic trajectories of known spectra.

    nice -n 10 python jobs/experiments/convergence_study.py [--store DIR] [--epochs 150]

Labels: "converging" = good inits (kaiming, xavier, orthogonal) with Adam at lr 0.003 /
0.01; "stuck" = Adam at lr 0.3 and 1.0 (too high: tanh units saturate and the weights
stop moving at a bad loss); "diverging" = SGD lr 0.2 momentum 0.99 and SGD lr 1.0 (the
loss blows up); "slow" = full-batch SGD at lr 0.01 (still descending at the end). Reference epoch of a converging run: the first
epoch after which the 5-epoch moving median of val_loss stays within 10% of the median
of the last 10 epochs.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import sys
import tempfile
import warnings

import numpy as np


def sweep(epochs: int):
    from pipeline import config

    base = ["model.depth=2", f"epochs={epochs}", "name=convstudy", "analysis.threshold=null",
            "analysis.window=auto", "analysis.stride=null"]
    groups = [
        ("converging", ["init=[kaiming,xavier,orthogonal]", "optimizer.lr=[0.003,0.01]", "seeds=[0,1,2]"]),
        ("stuck", ["init=[kaiming,xavier]", "optimizer.lr=[0.3,1.0]", "seeds=[0,1]"]),
        ("diverging", ["init=[kaiming,xavier]", "optimizer.name=sgd", "optimizer.momentum=0.99",
                       "optimizer.lr=0.2", "seeds=[0,1]"]),
        ("diverging", ["init=[kaiming]", "optimizer.name=sgd", "optimizer.lr=1.0", "seeds=[0,1]"]),
        ("slow", ["init=[kaiming,xavier]", "optimizer.name=sgd", "optimizer.lr=0.01", "batch_size=256",
                  "seeds=[0,1]"]),
    ]
    out = []
    for label, ov in groups:
        cfg = config.load("configs/demo.yaml", base + ov)
        out += [(label, v) for v in config.expand(cfg)]
    return out


def reference_epoch(val) -> int | None:
    val = np.asarray(val, dtype=float)
    if val.size < 15 or not np.isfinite(val).all():
        return None
    med = np.array([np.median(val[max(0, i - 4): i + 1]) for i in range(val.size)])
    final = np.median(val[-10:])
    ok = np.abs(med - final) <= 0.1 * abs(final)
    bad = np.flatnonzero(~ok)
    first = 0 if bad.size == 0 else int(bad[-1]) + 1
    return first + 1 if first < val.size else None   # val[i] is epoch i + 1


def synthetic(kind: str, T: int = 60, P: int = 400, seed: int = 0):
    """float32 trajectories of known spectra: x_t = x* + sum_i c_i lam_i^t v_i (+ noise)."""
    rng = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(rng.standard_normal((P, 6)))
    xs = 3.0 * Q[:, 0]
    t = np.arange(T)[:, None]
    if kind == "converging":     # transients 0.8, 0.6 die out
        Y = xs + 2.0 * 0.8 ** t * Q[:, 1] + 1.0 * 0.6 ** t * Q[:, 2]
    elif kind == "slow":         # 0.97: still moving at the end
        Y = xs + 2.0 * 0.97 ** t * Q[:, 1]
    elif kind == "oscillating":  # rotation by 0.3 rad, |lam| = 1
        Y = xs + 1.5 * (np.cos(0.3 * t) * Q[:, 1] + np.sin(0.3 * t) * Q[:, 2])
    elif kind == "diverging":    # 1.05 grows from small
        Y = xs + 0.05 * 1.05 ** t * Q[:, 1] + 1.0 * 0.7 ** t * Q[:, 2]
    else:
        raise ValueError(kind)
    Y = Y + 1e-4 * rng.standard_normal(Y.shape)
    return Y.astype(np.float32)


def main(argv=None) -> int:
    warnings.filterwarnings("ignore")
    logging.basicConfig(level=logging.WARNING)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", default=None)
    ap.add_argument("--epochs", type=int, default=150)
    args = ap.parse_args(argv)

    from pipeline.workflows.analyze import fit_run
    from pipeline.apps.convergence import Criterion, check_window, converged_at, verdict_spectra
    from pipeline.config import AnalysisParams
    from pipeline.koopman import KoopmanDMD
    from pipeline.storage.store import TrajectoryStore
    from pipeline.training.runner import run_variant

    store_dir = args.store or tempfile.mkdtemp(prefix="kma-convstudy-")
    runs = []
    for label, v in sweep(args.epochs):
        s = run_variant(v, store_dir)
        runs.append((label, v, s))
    store = TrajectoryStore(store_dir, create=False)
    params = AnalysisParams()
    data = []   # (label, run_id, status, ref_epoch, spectra, snapshot_epochs)
    for label, v, s in runs:
        run = store.open_run(v.run_id)
        name = f"{v.init}/{v.optimizer}{'-m' if v.momentum else ''}/lr{v.lr:g}/s{v.seed}"
        if run.n_snapshots < 7:
            data.append((label, name, run.status, None, [], None))
            continue
        est = fit_run(run, params)
        data.append((label, name, run.status, reference_epoch(run.metrics.get("val_loss", [])),
                     verdict_spectra(est), run.attrs.get("snapshot_epochs")))
    classes = ["converging", "stuck", "slow", "diverging"]
    count = {c: sum(d[0] == c for d in data) for c in classes}
    print(f"store {store_dir}: {len(data)} runs ({', '.join(f'{n} {c}' for c, n in count.items())})\n")

    syn = {}
    for kind in ("converging", "slow", "oscillating", "diverging"):
        Y = synthetic(kind)
        est = KoopmanDMD(window="auto").fit(Y)
        syn[kind] = verdict_spectra(est)

    print("| δ | share | k | converged_at given: converging | stuck | slow | diverging | "
          "median \\|epoch − reference\\| (converging) | synthetic conv / slow / osc / div |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    grid = list(itertools.product([0.003, 0.01, 0.03], [0.7, 0.8, 0.9], [1, 2, 3]))
    for delta, share, k in grid:
        crit = Criterion(delta=delta, share=share, k=k)
        given = dict.fromkeys(classes, 0)
        errs = []
        for label, name, status, ref, spectra, ep in data:
            v = converged_at(spectra, crit, snapshot_epochs=ep, status=status)
            given[label] += v["converged_at"] is not None
            if label == "converging" and v["converged_at"] is not None and ref is not None:
                errs.append(abs(v["converged_epoch"] - ref))
        sv = [converged_at(syn[k_], crit)["converged_at"] for k_ in ("converging", "slow", "oscillating", "diverging")]
        print(f"| {delta:g} | {share:g} | {k} | "
              + " | ".join(f"{given[c]}/{count[c]}" for c in classes) + " | "
              f"{np.median(errs) if errs else float('nan'):.0f} | {' / '.join('-' if x is None else str(x) for x in sv)} |")

    crit = Criterion()
    print(f"\nper run, default criterion {crit}:")
    for label, name, status, ref, spectra, ep in data:
        v = converged_at(spectra, crit, snapshot_epochs=ep, status=status)
        shares = " ".join(f"{check_window(r, crit).share_at_1:.2f}{'+' if check_window(r, crit).holds else ''}" for r in spectra)
        print(f"  {label:<10} {name:<28} {status:<9} ref {ref!s:>4}  "
              f"converged_epoch {v['converged_epoch']!s:>4}  ({v['reason']})  shares {shares}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
