"""Which pairs and observables the dynamics distance should use: variants measured on the
stores :mod:`jobs.experiments.dynamics` made (run that first; nothing is trained here).

For every store given as ``PATH:KEY`` (a sweep's store and its ``--by`` key), prints the
whole network's permutation p-value of each variant of the distance (4 + 4 runs: the
smallest p is 2/70 = 0.029):

- ``certified``: certified Ritz pairs only (``spectral-w1-certified``, the metric before);
- ``weighted``: every pair weighted by its reliability ``min(1, tol/(κ·residual))``
  (``spectral-w1-weighted``, the default);
- ``weighted, κr ≤ 1``: the same, pairs whose error bound exceeds 1 dropped;
- ``weighted²``: reliability squared (uncertified pairs count less);
- ``loss, certified`` / ``loss, all``: instead of the weights, the Hankel-DMD spectrum of
  the training loss in each window (delay W/2, the engine's :func:`pipeline.koopman.dmd`),
  certified pairs / all pairs, embedded and compared like the weights' spectra.

    nice -n 10 python jobs/experiments/dynamics_variants.py /tmp/dyn/optimizer-s0:optimizer /tmp/dyn/sanity-s0:init
"""

from __future__ import annotations

import sys

import numpy as np


def _rows(path, by):
    from pipeline.storage.store import TrajectoryStore
    from pipeline.workflows import compare

    store = TrajectoryStore(path)
    rows = compare.collect(store, by=by)
    order = compare._group_order(r["group"] for r in rows)
    rows.sort(key=lambda r: (order.index(r["group"]), r["run_id"]))
    for r in rows:
        r["loss"] = np.asarray(store.open_run(r["run_id"]).metrics["train_loss"], dtype=float)
    return rows


def _weighted(rows, transform):
    """The whole network's distances with each pair's reliability passed through ``transform``."""
    from pipeline.apps import dynamics as dyn

    n_bins = dyn.default_bins([r["spectra"] for r in rows])
    E = np.zeros((len(rows), n_bins, 2 * dyn.N_QUANTILES))
    P = np.zeros((len(rows), n_bins), bool)
    for k, r in enumerate(rows):
        s = r["spectra"]
        ix = s.rows("all")
        windows = []
        for i in ix:
            rel = transform(dyn.reliability(s.results[i], s.reliable[i], r["residual_tol"]))
            windows.append((s.results[i].eigenvalues, np.abs(s.results[i].amplitudes) * rel))
        E[k], P[k] = dyn.embed(windows, [s.fraction(i) for i in ix], n_bins)
    return dyn.pairwise(E, P)


def _loss(rows, certified_only):
    """Distances of the loss curves' Hankel-DMD spectra, window by window. ``loss[t]`` is
    the training loss of epoch ``t + 1``; a window of snapshots ``[a, b)`` (epochs a … b−1)
    takes the losses of those epochs."""
    from pipeline.apps import dynamics as dyn
    from pipeline.koopman import dmd

    n_bins = dyn.default_bins([r["spectra"] for r in rows])
    E = np.zeros((len(rows), n_bins, 2 * dyn.N_QUANTILES))
    P = np.zeros((len(rows), n_bins), bool)
    for k, r in enumerate(rows):
        s = r["spectra"]
        ix = s.rows("all")
        windows = []
        for i in ix:
            a, b = s.results[i].window
            y = r["loss"][max(a - 1, 0):b - 1]
            d = len(y) // 2
            H = np.stack([y[j:j + len(y) - d + 1] for j in range(d)]).astype(np.float32)
            res = dmd(H)
            ok = np.ones(res.rank, bool)
            if certified_only:
                ok = (res.conditions * res.residuals <= r["residual_tol"]) & res.informative & res.fits
            windows.append((res.eigenvalues[ok], res.amplitudes[ok]))
        E[k], P[k] = dyn.embed(windows, [s.fraction(i) for i in ix], n_bins)
    return dyn.pairwise(E, P)


VARIANTS = {
    "certified": lambda rows: _weighted(rows, lambda rel: (rel >= 1).astype(float)),
    "weighted": lambda rows: _weighted(rows, lambda rel: rel),
    "weighted, κr ≤ 1": lambda rows: _weighted(rows, lambda rel: np.where(rel >= 1e-2, rel, 0.0)),
    "weighted²": lambda rows: _weighted(rows, lambda rel: rel ** 2),
    "loss, certified": lambda rows: _loss(rows, True),
    "loss, all": lambda rows: _loss(rows, False),
}


def main(argv=None) -> int:
    from pipeline.apps import dynamics as dyn

    specs = list(sys.argv[1:] if argv is None else argv)
    if not specs or any(":" not in s for s in specs):
        raise SystemExit("usage: dynamics_variants.py STORE:KEY [STORE:KEY ...]")
    print("| store | " + " | ".join(VARIANTS) + " |")
    print("| --- |" + " --- |" * len(VARIANTS))
    for spec in specs:
        path, by = spec.rsplit(":", 1)
        rows = _rows(path, by)
        labels = [r["group"] for r in rows]
        ps = [dyn.group_pairs(make(rows), labels)[0]["p_value"] for make in VARIANTS.values()]
        print(f"| {path.rstrip('/').rsplit('/', 1)[-1]} | " + " | ".join(f"{p:.3g}" for p in ps) + " |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
