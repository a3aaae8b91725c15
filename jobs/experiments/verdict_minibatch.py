"""Why the second convergence verdict gives so few flattened minibatch runs a point, and
whether a looser reading helps: every choice made on the multiscale tuning runs only,
reported on the held-out digits runs.

Reads the fitted runs of the verdict study (``jobs/experiments/verdict_study.py
--cache``; run that first) and

1. for every run labelled converged, the windows after its validation loss came within
   1 % of its best: which of the verdict's tests fails there (the whole network's
   predicted remaining motion > ``motion_tol`` × motion so far, a layer's > ``layer_tol``
   × its own, the predicted loss gain > ``loss_tol``) and the quantiles of the ratios;
2. a grid over the predicted motion's form (``sum``: Σ|bᵢ|·|λᵢ^{W−1}|·|λᵢᴴ − 1|, the
   default; ``vector``: the norm of the predicted displacement, the modes' contents added
   as vectors) × ``motion_tol`` × ``layer_tol``, scored on the tuning runs with the
   study's rule (no premature call first, then the most converged runs given a point plus
   class agreements);
3. the held-out numbers of the chosen criterion and of the looser ones (marked: not
   chosen, their tuning-set premature calls rule them out).

    nice -n 10 python jobs/experiments/verdict_minibatch.py --cache /tmp/vs-cache.pkl
"""

from __future__ import annotations

import argparse
import collections
import pickle
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import verdict_study as vs  # noqa: E402


def flat_epoch(val, tol=0.01):
    """First epoch whose best so far is within ``tol`` of the run's best."""
    m = np.minimum.accumulate(np.asarray(val, dtype=float))
    return int(np.argmax(m <= (1 + tol) * m[-1])) + 1


def diagnose(rs, crit):
    """Which test fails in the windows after the flat epoch of the runs labelled converged."""
    fails, n, ratios, lratios, got = collections.Counter(), 0, [], [], 0
    for r in rs:
        v = vs.verdict_of(r, crit)
        ev = v["evidence"]
        got += v["converged_epoch"] is not None
        fe = flat_epoch(r["metrics"]["val_loss"])
        for j, e in enumerate(ev["window_epochs"]):
            if e < fe:
                continue
            n += 1
            mp, ms = ev["predicted_motion"][j], ev["motion_so_far"][j]
            rat = mp / ms if mp is not None and ms else np.inf
            lay = [x[j] for x in ev["layer_motion_ratio"].values() if j < len(x)]
            ratios.append(rat)
            lratios.append(max([np.inf if x is None else x for x in lay] or [0.0]))
            hit = [name for name, bad in (("whole network", rat > crit.motion_tol),
                                          ("a layer", bool(ev["layers_moving"][j])),
                                          ("loss gain", (ev["loss_gain"][j] or 0) > crit.loss_tol)) if bad]
            fails.update(hit or ["none (holds)"])
    return got, n, fails, np.asarray(ratios, float), np.asarray(lratios, float)


def score(rs, crit, stops=None):
    """(called, premature, converged runs given a point, runs labelled converged, class
    agreements); ``stops``: a list that gets (epochs used, epochs of the budget, regret)
    per run that did not diverge, stopping at the confirmation with restore."""
    called = prem = fg = ft = ag = 0
    from pipeline.apps import outcomes

    for r in rs:
        v = vs.verdict_of(r, crit)
        val = r["metrics"].get("val_loss") or []
        if stops is not None and val and r["status"] != "diverged":
            s = min(v.get("online_confirmed_epoch") or len(val), len(val))
            stops.append((s, len(val), vs.regret(val, s)))
        ep = v.get("online_converged_epoch")
        if ep is not None and val:
            called += 1
            prem += (outcomes.to_gain(val, ep) or 0) > 0.10
        lab = r["outcome"]["label"]
        if lab == "converged":
            ft += 1
            fg += v.get("converged_epoch") is not None
        ag += {"diverged": "diverging"}.get(lab, lab) == v["class"]
    return called, prem, fg, ft, ag


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", required=True, help="the study's pickle of fitted runs (verdict_study.py --cache)")
    args = ap.parse_args(argv)
    from pipeline.apps import horizon

    runs = pickle.load(open(args.cache, "rb"))
    vs.label_all(runs)
    tune = [r for r in runs if r["sweep"] == vs.TUNE and r["spectra"]]
    held = [r for r in runs if r["sweep"] != vs.TUNE and r["spectra"]]
    crit = horizon.HorizonCriterion()

    print("### 1. windows after the validation loss flattened (within 1 % of the run's best), runs labelled converged\n")
    print("| set | runs | given a point | windows | fails: whole network | fails: a layer | fails: loss gain | all tests hold "
          "| whole ratio p25 / p50 / p75 | worst layer ratio p25 / p50 / p75 |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |")
    for name, rs in (("tuning (in-sample)", tune), ("held out", held)):
        rs = [r for r in rs if r["outcome"]["label"] == "converged"]
        got, n, f, rat, lrat = diagnose(rs, crit)
        q = lambda a: " / ".join(f"{x:.3g}" for x in np.percentile(a[np.isfinite(a)], [25, 50, 75]))
        print(f"| {name} | {len(rs)} | {got} | {n} | {f['whole network']} | {f['a layer']} | {f['loss gain']} | "
              f"{f['none (holds)']} | {q(rat)} | {q(lrat)} |")

    print("\n### 2. grid on the tuning runs (in-sample): called (online) / premature / converged runs given a point / class agrees\n")
    print("| motion | motion_tol | layer_tol | called | premature | converged given a point | class agrees |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    grid = [horizon.HorizonCriterion(motion=mo, motion_tol=m, layer_tol=lay)
            for mo in ("sum", "vector") for m in (0.05, 0.2) for lay in (0.05, 0.2, 1e9)]
    best, rows = None, {}
    t0 = time.perf_counter()
    for c in grid:
        called, prem, fg, ft, ag = rows[c] = score(tune, c)
        print(f"| {c.motion} | {c.motion_tol:g} | {c.layer_tol:g} | {called} | {prem} | {fg}/{ft} | {ag}/{len(tune)} |",
              flush=True)
        key = (prem <= 0, fg + ag, c.motion == "sum", -c.layer_tol, -c.motion_tol)
        if best is None or key > best[0]:
            best = (key, c)
    chosen = best[1]
    print(f"\nchosen on the tuning runs: motion {chosen.motion}, motion_tol {chosen.motion_tol}, layer_tol "
          f"{chosen.layer_tol} ({time.perf_counter() - t0:.0f} s)\n")

    print("### 3. held out (digits MLP + CNN)\n")
    print("| criterion | chosen on tuning? | tuning premature | called | premature (> 10 % to gain) | converged runs given a point "
          "| class agrees | stopping at the confirmation: epochs saved · mean regret |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |")
    shown = [chosen] + [c for c in grid if c != chosen and c.layer_tol in (0.2, 1e9) and c.motion_tol == 0.05]
    for c in shown:
        stops = []
        called, prem, fg, ft, ag = score(held, c, stops)
        used, budget = sum(x[0] for x in stops), sum(x[1] for x in stops)
        print(f"| {c.motion}, motion_tol {c.motion_tol:g}, layer_tol {c.layer_tol:g} | "
              f"{'yes' if c == chosen else 'no'} | {rows[c][1]} | {called} | {prem} | {fg}/{ft} | {ag}/{len(held)} | "
              f"{1 - used / budget:.1%} · {np.mean([x[2] for x in stops]):+.2%} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
