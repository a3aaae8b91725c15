"""Scale of the dynamics comparison (``kma compare``'s ``dynamics`` section).

Builds ``N`` synthetic analyses (:class:`~pipeline.spectra.RunSpectra` of WindowResult
rows: the whole network and 4 layers, 4 windows, 8 Ritz pairs each of which about half
certified) in 10 groups, and times :func:`pipeline.apps.dynamics.section` (embedding,
all pairwise distances of 4 roles, 45 permutation tests × 4 roles, and the weighted
metric's certified-only test of the whole network) for each ``N``; reports the time
against ``N = 100`` in the same run (quadratic pairs predict ``(N/100)²``), the time of
the certified-pairs-only section (``ritz_pairs="certified"``, the metric before the
weighted one) beside it, and the peak of memory the section allocated (tracemalloc)
against the N × N float64 matrices it must return.

    nice -n 10 python jobs/bench/dynamics_scale.py [--sizes 100 300 1000]
"""

from __future__ import annotations

import argparse
import time
import tracemalloc

import numpy as np


def synthetic(n_runs: int, seed: int = 0) -> list:
    from pipeline.koopman.estimator import WindowResult
    from pipeline.spectra import RunSpectra

    rng = np.random.default_rng(seed)
    out = []
    for k in range(n_runs):
        rows = []
        for layer in ("all", "l0", "l1", "l2", "out"):
            for a in range(0, 40, 10):
                lam = rng.uniform(0.5, 1.05, 8) * np.exp(1j * rng.uniform(-0.3, 0.3, 8))
                res = np.where(rng.random(8) < 0.5, 1e-4, 1.0)
                rows.append(WindowResult(layer, (a, a + 10), lam, rng.uniform(0.1, 1, 8) + 0j, res,
                                         np.ones(8), 8, conditions=np.ones(8), informative=True))
        out.append(RunSpectra.build(rows, label=f"r{k}", residual_tol=1e-2, snapshot_epochs=list(range(41))))
    return out


def main(argv=None) -> int:
    from pipeline.apps import dynamics as dyn

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 300, 1000])
    args = ap.parse_args(argv)
    base = None
    print("| runs | pairs | time (s) | time / time at 100 runs | (N/100)² | certified-only time (s) | weighted / "
          "certified-only | peak alloc (MiB) | N×N float64 × 4 roles (MiB) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for n in args.sizes:
        spectra = synthetic(n)
        labels = [f"g{k % 10}" for k in range(n)]
        ids = [f"r{k}" for k in range(n)]
        tracemalloc.start()
        t0 = time.perf_counter()
        sec = dyn.section(ids, labels, spectra)
        dt = time.perf_counter() - t0
        peak = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
        assert len(sec["distance"]) == n and len(sec["pairs"]) == 45
        tracemalloc.start()        # the same conditions as the weighted section's
        t0 = time.perf_counter()
        dyn.section(ids, labels, spectra, ritz_pairs="certified")
        dc = time.perf_counter() - t0
        tracemalloc.stop()
        base = base or (dt, n)
        print(f"| {n} | {n * (n - 1) // 2} | {dt:.2f} | {dt / base[0]:.1f} | {(n / base[1]) ** 2:.0f} "
              f"| {dc:.2f} | {dt / dc:.2f} | {peak:.0f} | {4 * 8 * n * n / 2**20:.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
