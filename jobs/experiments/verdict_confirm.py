"""Where the convergence verdict calls each full-budget run of a store, at a given window
plan: the rule before (v2), the default (v3) and the default without the confirmation span
(``confirm_span=0``: any ``k`` consecutive windows confirm). For the in-training monitor's
geometry (``stop: {window: 10, every: 2}``: windows a step or two apart) against the
analysis' half-overlapping plan.

    nice -n 10 python jobs/experiments/stopping.py configs/stopping.yaml stop.rule=v3 --store DIR
    nice -n 10 python jobs/experiments/verdict_confirm.py --store DIR --window 10 --stride 2
"""

from __future__ import annotations

import argparse
import sys
import warnings


def main(argv=None) -> int:
    warnings.filterwarnings("ignore")
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", required=True)
    ap.add_argument("--window", type=int, default=10)
    ap.add_argument("--stride", type=int, default=2)
    args = ap.parse_args(argv)
    from pipeline.apps import convergence, horizon, outcomes
    from pipeline.config import AnalysisParams
    from pipeline.storage.store import TrajectoryStore
    from pipeline.workflows.analyze import fit_run

    rules = {"v2 (before)": horizon.RULES["v2"], "v3 (default)": horizon.HorizonCriterion(),
             "v3, no confirmation span": horizon.HorizonCriterion(confirm_span=0.0)}
    st = TrajectoryStore(args.store, create=False)
    params = AnalysisParams(window=args.window, stride=args.stride)
    print(f"window {args.window}, stride {args.stride}: confirmed at epoch (point's val loss still to gain)\n")
    print("| run | " + " | ".join(rules) + " |")
    print("| --- |" + " ---: |" * len(rules))
    prem = dict.fromkeys(rules, 0)
    n = 0
    for rid in sorted(st.run_ids()):
        run = st.open_run(rid)
        budget = (run.config or {}).get("epochs")
        if run.attrs.get("stopped_early") or run.attrs.get("epochs_run") != budget:
            continue
        n += 1
        est = fit_run(run, params)
        wf = est.window_factors_
        layers = [x for x in wf if x != "all"]
        kw = dict(factors=wf["all"], layer_spectra={x: convergence.verdict_spectra(est, x) for x in layers},
                  layer_factors={x: wf[x] for x in layers}, metrics=run.metrics,
                  snapshot_epochs=run.attrs["snapshot_epochs"], budget_epochs=budget)
        cells = []
        for name, crit in rules.items():
            v = horizon.verdict(convergence.verdict_spectra(est), crit=crit, **kw)
            at = v["online_converged_epoch"]
            if at is None:
                cells.append("-")
                continue
            gain = outcomes.to_gain(run.metrics["val_loss"], at) or 0.0
            prem[name] += gain > 0.10
            cells.append(f"{v['online_confirmed_epoch']} ({gain:+.1%})")
        print(f"| {rid} | " + " | ".join(cells) + " |", flush=True)
    print(f"\npremature (> 10 % to gain) of {n} runs: " + ", ".join(f"{k} {v}" for k, v in prem.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
