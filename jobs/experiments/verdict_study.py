"""Verdict study (issue 23): verdicts scored against outcome labels, thresholds fixed on
multiscale MLPs and evaluated unchanged on digits MLPs and CNNs.

Reads a store filled by the sweeps of ``configs/verdicts/`` (commands in their first
lines; ``--no-analyze``), fits every run once with the default analysis, and

1. labels every run from its validation loss (:func:`pipeline.apps.outcomes.label`; the
   reference of a run is the best loss of its group: same task, family and depth);
2. tunes the second convergence verdict's ``motion_tol`` and ``loss_tol`` and the second
   bad-init detector's ``gain_low`` / ``gain_high`` / ``motion_low`` on the tuning sweep
   (``verdicts-tune-multiscale``) only, and reports both sets unchanged on it (marked
   in-sample) and on the held-out sweeps;
3. stopping: epochs saved against validation-loss regret (best-checkpoint restore for
   every method: regret = best val loss up to the stop / the run's best − 1) for the
   spectral verdict (stopping where ``k`` holding windows are confirmed), patience 5/10/20,
   a loss-plateau rule, Ray Tune's ``TrialPlateauStopper`` and ``AsyncHyperBandScheduler``
   (the real classes, fed the recorded per-epoch results of every run of a group as
   concurrent trials: a replay, not a new training);
4. bad init within K = 6 snapshots: recall and false alarms against the outcome
   (bad = stalled or diverged) for the first and second detector, the weight-gain rule
   alone, the loss plateau after K epochs and activation statistics on a probe batch
   (each model rebuilt from its stored config; cached with the runs), on the held-out
   MLPs and CNNs together and apart.

    nice -n 10 python jobs/experiments/verdict_study.py --store /tmp/kma-verdicts [--max-runs N]
    nice -n 10 python jobs/experiments/verdict_study.py --store /tmp/kma-verdicts /tmp/kma-verdicts-seeds   # several stores

Prints markdown tables; per-run evidence to ``bench-out/verdict_study.json``; the
stopping curve to ``bench-out/verdict_study_stopping.png``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np

TUNE = "verdicts-tune-multiscale"
K_BADINIT = 6


def load(store_dir, max_runs=None, sweeps=None, skip=()):
    from pipeline.workflows.analyze import fit_run
    from pipeline.apps import badinit, convergence
    from pipeline.config import AnalysisParams
    from pipeline.storage.store import TrajectoryStore

    store = TrajectoryStore(store_dir, create=False)
    params = AnalysisParams()
    runs = []
    ids = [i for i in sorted(store.run_ids()) if i not in skip][: max_runs or None]
    for i, rid in enumerate(ids):
        run = store.open_run(rid)
        cfg = run.config
        if not isinstance(cfg, dict) or not str(cfg.get("sweep", "")).startswith("verdicts-"):
            continue
        if sweeps and cfg["sweep"] not in sweeps:
            continue
        if run.status not in ("complete", "diverged"):
            continue
        r = {"run_id": rid, "sweep": cfg["sweep"], "task": cfg["task"]["name"], "family": cfg["family"],
             "depth": cfg["depth"], "init": cfg["init"], "lr": cfg["lr"], "seed": cfg["seed"],
             "epochs": cfg["epochs"], "status": run.status, "metrics": run.metrics,
             "epochs_of": list(run.attrs.get("snapshot_epochs") or [])}
        r["group"] = f"{r['task']}/{r['family']}/d{r['depth']}"
        try:
            est = fit_run(run, params)
            wf = est.window_factors_
            layers = [n for n in wf if n != "all"]
            r["spectra"] = convergence.verdict_spectra(est)
            r["factors"] = wf.get("all")
            r["layer_spectra"] = {n: convergence.verdict_spectra(est, n) for n in layers}
            r["layer_factors"] = {n: wf[n] for n in layers}
            r["v1"] = convergence.converged_at(r["spectra"], snapshot_epochs=r["epochs_of"], status=run.status)
        except Exception as e:  # noqa: BLE001 - a run the analysis refuses (too short) has no verdict
            r["spectra"], r["error"] = [], f"{type(e).__name__}: {e}"
            r["v1"] = {"converged_at": None, "converged_epoch": None}
        try:
            Y, _ = badinit.first_snapshots(run, min(K_BADINIT, run.n_snapshots))
            r["Y0"], r["layout"] = Y, run.layout
        except Exception as e:  # noqa: BLE001
            r["Y0"] = None
            r["error"] = f"{type(e).__name__}: {e}"
        runs.append(r)
        if (i + 1) % 25 == 0:
            print(f"  loaded {i + 1}/{len(ids)}", file=sys.stderr, flush=True)
    return runs


def label_all(runs):
    from pipeline.apps import outcomes

    by = defaultdict(list)
    for r in runs:
        by[r["group"]].append(outcomes.best(r["metrics"].get("val_loss")) if r["status"] != "diverged" else None)
    refs = {g: outcomes.reference(b) for g, b in by.items()}
    for r in runs:
        r["outcome"] = outcomes.label(r["metrics"].get("val_loss"), status=r["status"], ref=refs[r["group"]])
    return refs


def verdict_of(r, crit):
    from pipeline.apps import horizon

    if not r["spectra"]:
        return {"class": "diverging" if r["status"] == "diverged" else "still_improving",
                "converged_epoch": None, "online_converged_epoch": None, "online_confirmed_epoch": None}
    v = horizon.verdict(r["spectra"], factors=r["factors"], layer_spectra=r["layer_spectra"],
                        layer_factors=r["layer_factors"], metrics=r["metrics"],
                        snapshot_epochs=r["epochs_of"], status=r["status"],
                        budget_epochs=r["epochs"], crit=crit)
    return v


# ------------------------------------------------------------------------------ stopping
def regret(val, stop_epoch):
    """Best val loss up to ``stop_epoch`` (restore) over the run's best, minus 1."""
    from pipeline.apps.outcomes import to_gain

    return to_gain(val, stop_epoch)


def patience_stop(val, p):
    best, since = math.inf, 0
    for i, x in enumerate(val):
        if x < best:
            best, since = x, 0
        else:
            since += 1
            if since >= p:
                return i + 1
    return len(val)


def plateau_stop(val, n=10, tol=0.01):
    m = np.minimum.accumulate(np.asarray(val, dtype=float))
    for i in range(n, len(m)):
        if m[i - n] - m[i] <= tol * m[i]:
            return i + 1
    return len(val)


def tune_plateau_stop(val, std=0.001, num_results=5, grace=5):
    from ray.tune.stopper import TrialPlateauStopper

    s = TrialPlateauStopper("val_loss", std=std, num_results=num_results, grace_period=grace, mode="min")
    for i, x in enumerate(val):
        if s("t", {"val_loss": float(x), "training_iteration": i + 1}):
            return i + 1
    return len(val)


class _Trial:
    def __init__(self, tid):
        self.trial_id = tid
        self.config = {}
        self.status = "RUNNING"

    def __hash__(self):
        return hash(self.trial_id)


def asha_stops(vals: dict, grace=5, rf=3):
    """The real ASHA scheduler over a group's runs as concurrent trials, fed their
    recorded epochs in lock-step; ``{run: stop epoch}``."""
    from ray.tune.schedulers import AsyncHyperBandScheduler, TrialScheduler

    T = max(len(v) for v in vals.values())
    sched = AsyncHyperBandScheduler(time_attr="training_iteration", metric="val_loss", mode="min",
                                    max_t=T, grace_period=grace, reduction_factor=rf)
    trials = {rid: _Trial(rid) for rid in vals}
    for t in trials.values():
        sched.on_trial_add(None, t)
    stop = {}
    for e in range(T):
        for rid, t in trials.items():
            if rid in stop or e >= len(vals[rid]):
                continue
            x = vals[rid][e]
            if not math.isfinite(x):
                stop[rid] = e + 1
                continue
            d = sched.on_trial_result(None, t, {"val_loss": float(x), "training_iteration": e + 1})
            if d == TrialScheduler.STOP:
                stop[rid] = e + 1
    return {rid: stop.get(rid, len(v)) for rid, v in vals.items()}


def stopping_rows(runs, crit, label=""):
    """(method, epochs saved fraction, median regret, mean regret, share of runs with regret > 1%)."""
    ok = [r for r in runs if r["status"] != "diverged" and r["metrics"].get("val_loss")]
    budget = sum(len(r["metrics"]["val_loss"]) for r in ok)
    out = []

    def row(name, stops):
        used = sum(stops[r["run_id"]] for r in ok)
        reg = np.array([regret(r["metrics"]["val_loss"], stops[r["run_id"]]) for r in ok])
        out.append((name, 1 - used / budget, float(np.median(reg)), float(np.mean(reg)),
                    float((reg > 0.01).mean()), len(ok)))

    for r in ok:
        v = r["verdict"]
        r["_spec"] = v.get("online_confirmed_epoch") or len(r["metrics"]["val_loss"])
    row("spectral v2 (confirmed)", {r["run_id"]: min(r["_spec"], len(r["metrics"]["val_loss"])) for r in ok})
    row("spectral v1 (confirmed)", {r["run_id"]: (r["v1"].get("confirmed_epoch") or len(r["metrics"]["val_loss"]))
                                    for r in ok})
    for p in (5, 10, 20):
        row(f"patience {p} + restore", {r["run_id"]: patience_stop(r["metrics"]["val_loss"], p) for r in ok})
    row("loss plateau (<1% in 10 epochs)", {r["run_id"]: plateau_stop(r["metrics"]["val_loss"]) for r in ok})
    try:
        row("Ray Tune TrialPlateauStopper", {r["run_id"]: tune_plateau_stop(r["metrics"]["val_loss"]) for r in ok})
        stops = {}
        groups = defaultdict(dict)
        for r in ok:
            groups[r["group"]][r["run_id"]] = list(r["metrics"]["val_loss"])
        for g in groups.values():
            stops.update(asha_stops(g))
        row("Ray Tune ASHA (group as trials)", stops)
    except Exception as e:  # noqa: BLE001
        print(f"ray tune baselines failed: {type(e).__name__}: {e}", file=sys.stderr)
    return out


def curve(runs, crits):
    """Spectral (over a grid of criteria) and patience (p = 1..40) operating points."""
    ok = [r for r in runs if r["status"] != "diverged" and r["metrics"].get("val_loss")]
    budget = sum(len(r["metrics"]["val_loss"]) for r in ok)
    pts = {"spectral v2": [], "patience + restore": [], "loss plateau": []}
    for c in crits:
        stops = []
        for r in ok:
            v = verdict_of(r, c)
            stops.append(min(v.get("online_confirmed_epoch") or len(r["metrics"]["val_loss"]),
                             len(r["metrics"]["val_loss"])))
        pts["spectral v2"].append(_pt(ok, stops, budget))
    for p in (1, 2, 3, 5, 7, 10, 15, 20, 30, 40):
        pts["patience + restore"].append(_pt(ok, [patience_stop(r["metrics"]["val_loss"], p) for r in ok], budget))
    for tol in (0.1, 0.05, 0.02, 0.01, 0.005, 0.002):
        pts["loss plateau"].append(_pt(ok, [plateau_stop(r["metrics"]["val_loss"], 10, tol) for r in ok], budget))
    return pts


def _pt(ok, stops, budget):
    reg = [regret(r["metrics"]["val_loss"], s) for r, s in zip(ok, stops)]
    return (1 - sum(stops) / budget, float(np.median(reg)), float(np.mean(reg)))


# ------------------------------------------------------------------------------ bad init
def badinit_features(r):
    from pipeline.apps import badinit

    if r["Y0"] is None or r["Y0"].shape[0] < badinit.MIN_SNAPSHOTS or not np.isfinite(r["Y0"]).all():
        return None
    d = badinit.detect_v2(r["Y0"], r["layout"], r["lr"])
    tl = r["metrics"].get("train_loss") or []
    K = r["Y0"].shape[0]
    drop = (tl[0] - tl[K - 2]) / abs(tl[0]) if len(tl) >= K - 1 and tl[0] else None
    return {"v1": d["bad_init_v1"], "v2": d["bad_init"], "frozen_or_collapsed": bool(
        d["init_frozen_layers"] or d["init_collapsed_layers"]), **{k: d["init_features"][k] for k in
                                                                   ("gain_min", "gain_max", "motion_min")},
        "loss_drop": drop}


PROBE = 256        # probe batch: the first training samples of the run's own task


def activation_features(run, Y0, probe=PROBE, _probes={}):
    """The practitioner's check (activation statistics on a probe batch): the run's model
    rebuilt from its stored config, loaded with snapshot 0 and with snapshot ``K − 1``
    (after the first epochs), run on a probe batch (the first ``probe`` training samples
    of the run's task, built once per task with seed 0); per hidden
    layer (every call of the model's activation) the std of its outputs and the fraction
    of dead units (a unit whose output does not vary over the batch: std ≤ 1e-4 — a ReLU
    never active, a saturated tanh, a collapsed start). ``{"std_min", "std_max",
    "dead_max"}`` at ``"init"`` and ``"early"``; None when the model cannot be rebuilt."""
    import torch

    from pipeline.config import Variant
    from pipeline.storage.layout import Layout
    from pipeline.training.models import build_model
    from pipeline.training.tasks import build_task

    try:
        v = Variant.model_validate_json(json.dumps(run.config))
        key = json.dumps(v.task.model_dump(mode="json"), sort_keys=True)
        if key not in _probes:
            task = build_task(v.task.name, seed=0, **v.task.model_dump(exclude={"name"}))
            _probes[key] = (task.x_train[:probe], task.in_dim, task.out_dim)
        x, in_dim, out_dim = _probes[key]
        model = build_model(v.family, in_dim, out_dim, v.depth, v.width, v.activation)
        layout = Layout.from_named_shapes((n, p.shape) for n, p in model.named_parameters())
        if v.snapshot.layers != "all" or layout.size != Y0.shape[1]:
            return None
    except Exception as e:  # noqa: BLE001 - a run whose config cannot be rebuilt has no baseline
        print(f"  activation stats: {run.run_id}: {type(e).__name__}: {e}", file=sys.stderr)
        return None
    outs = []
    hook = model.act.register_forward_hook(lambda m, i, o: outs.append(o.detach()))
    feats = {}
    try:
        for name, t in (("init", 0), ("early", Y0.shape[0] - 1)):
            views = layout.unflatten(torch.from_numpy(np.ascontiguousarray(Y0[t], dtype=np.float32)))
            with torch.no_grad():
                params = dict(model.named_parameters())
                for n, w in views.items():
                    params[n].copy_(w.reshape(params[n].shape))
                outs.clear()
                model(x)
            stds, dead = [], []
            for o in outs:
                u = o.transpose(0, 1).reshape(o.shape[1], -1) if o.dim() > 2 else o.T   # (units, samples[*space])
                stds.append(float(o.std()))
                dead.append(float((u.std(dim=1) <= 1e-4).float().mean()))
            feats[name] = {"std_min": min(stds) if stds else None, "std_max": max(stds) if stds else None,
                           "dead_max": max(dead) if dead else None}
    finally:
        hook.remove()
    return feats


def act_flags(a, th):
    """Activation-statistics rule: at the chosen snapshot(s), a layer's activation std below
    ``std_low`` or above ``std_high``, or a layer with more than ``dead_high`` dead units."""
    if a is None:
        return None
    hit = False
    for at in (("init",) if th["at"] == "init" else ("early",) if th["at"] == "early" else ("init", "early")):
        f = a[at]
        if f["std_min"] is None:
            continue
        hit |= f["std_min"] < th["std_low"] or f["std_max"] > th["std_high"] or f["dead_max"] > th["dead_high"]
    return hit


def tune_activation(runs):
    """Activation-statistics thresholds on the tuning runs: the most recall with false
    alarms <= 5% (as the weight rules)."""
    best = None
    for at in ("init", "early", "either"):
        for sl in (0.0, 0.01, 0.03, 0.1, 0.2, 0.3):
            for sh in (0.9, 0.95, 0.99, 1e9):
                for dh in (0.1, 0.25, 0.5, 0.9, 1.0):
                    th = {"at": at, "std_low": sl, "std_high": sh, "dead_high": dh}
                    h, nb, fa, ng = rate(runs, lambda r: act_flags(r.get("act"), th))
                    if ng and fa / ng <= 0.05 and (best is None or (h, -fa) > best[0]):
                        best = ((h, -fa), th)
    return best[1] if best else {"at": "init", "std_low": 0.0, "std_high": 1e9, "dead_high": 1.0}


def flags(f, th):
    if f is None:
        return None
    small = f["gain_min"] is not None and f["gain_min"] < th["gain_low"]
    slow = f["motion_min"] is not None and f["motion_min"] < th["motion_low"]
    big = f["gain_max"] is not None and f["gain_max"] > th["gain_high"]
    return (th.get("structure", True) and f["frozen_or_collapsed"]) or (small and slow) or big


def rate(runs, key):
    bad = [r for r in runs if r.get("bi") is not None and r["outcome"]["label"] in ("stalled", "diverged")]
    good = [r for r in runs if r.get("bi") is not None and r["outcome"]["label"] in ("converged", "still_improving")]
    hit = sum(bool(key(r)) for r in bad)
    fa = sum(bool(key(r)) for r in good)
    return hit, len(bad), fa, len(good)


def tune_badinit(runs):
    """Thresholds on the tuning runs: the most recall with false alarms <= 5%."""
    best = None
    for st in (True, False):
        for gl in (0.0, 0.01, 0.05, 0.1, 0.2, 0.4):
            for gh in (3.0, 5.0, 8.0, 15.0, 30.0, 1e9):
                for ml in (0.0, 0.01, 0.02, 0.05, 0.1, 0.3, 1.0, 1e9):
                    th = {"gain_low": gl, "gain_high": gh, "motion_low": ml, "structure": st}
                    h, nb, fa, ng = rate(runs, lambda r: flags(r["bi"], th))
                    if ng and fa / ng <= 0.05 and (best is None or (h, -fa) > best[0]):
                        best = ((h, -fa), th)
    return best[1] if best else {"gain_low": 0.05, "gain_high": 8.0, "motion_low": 0.02, "structure": True}


def tune_loss_plateau(runs):
    best = None
    for thr in (0.0, 0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2):
        h, nb, fa, ng = rate(runs, lambda r: r["bi"]["loss_drop"] is not None and r["bi"]["loss_drop"] < thr)
        if ng and fa / ng <= 0.05 and (best is None or h > best[0]):
            best = (h, thr)
    return best[1] if best else 0.0


# ------------------------------------------------------------------------------ main
def main(argv=None) -> int:
    warnings.filterwarnings("ignore")
    logging.basicConfig(level=logging.ERROR)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", required=True, nargs="+",
                    help="one or more stores (e.g. more seeds of a sweep trained into a store of their own)")
    ap.add_argument("--max-runs", type=int, default=None)
    ap.add_argument("--out", default="bench-out")
    ap.add_argument("--cache", default=None, help="pickle of the fitted runs: written once, read on re-runs "
                    "(re-scoring without refitting)")
    ap.add_argument("--sweeps", default=None, help="comma-separated sweep names (default: every verdicts-* sweep)")
    args = ap.parse_args(argv)

    from pipeline.apps import horizon, outcomes

    import pickle

    sweeps = args.sweeps.split(",") if args.sweeps else None
    cached = {}
    if args.cache and Path(args.cache).exists():
        cached = {r["run_id"]: r for r in pickle.load(open(args.cache, "rb"))}
    fresh = []
    for store_dir in args.store:
        fresh += [{**r, "store": store_dir} for r in load(store_dir, args.max_runs, sweeps,
                                                          skip=set(cached) | {r["run_id"] for r in fresh})]
    runs = [r for r in cached.values() if not sweeps or r["sweep"] in sweeps] + fresh
    if args.cache and fresh:
        pickle.dump(list(cached.values()) + fresh, open(args.cache, "wb"))
    refs = label_all(runs)
    tune = [r for r in runs if r["sweep"] == TUNE]
    held = [r for r in runs if r["sweep"] != TUNE]
    print(f"{len(runs)} runs: {len(tune)} tuning (multiscale MLP), {len(held)} held out "
          f"({', '.join(sorted({r['group'] for r in held}))})\n")

    # -- convergence: tune motion_tol, loss_tol on the tuning runs
    grid = [horizon.HorizonCriterion(motion_tol=m, layer_tol=lay, loss_tol=lt, rise_tol=rt)
            for m in (0.02, 0.05, 0.1, 0.2) for lay in (0.05, 0.1, 0.2, 1e9) for lt in (0.01, 0.02, 0.05)
            for rt in (0.1, 0.25)]

    def score(rs, crit):
        called = prem = 0
        flat_total = flat_got = agree = 0
        for r in rs:
            v = verdict_of(r, crit)
            r["verdict"] = v
            val = r["metrics"].get("val_loss") or []
            ep = v.get("online_converged_epoch")
            if ep is not None and val:
                called += 1
                prem += (outcomes.to_gain(val, ep) or 0) > 0.10
            lab = r["outcome"]["label"]
            if lab == "converged":
                flat_total += 1
                flat_got += v.get("converged_epoch") is not None
            agree += {"diverged": "diverging"}.get(lab, lab) == v["class"]
        return called, prem, flat_got, flat_total, agree

    best = None
    print("| motion_tol | layer_tol | loss_tol | rise_tol | called (online) | premature (>10% to gain) | converged runs given a point | class agrees | (tuning runs, in-sample) |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for c in grid:
        called, prem, fg, ft, ag = score(tune, c)
        print(f"| {c.motion_tol:g} | {c.layer_tol:g} | {c.loss_tol:g} | {c.rise_tol:g} | {called} | {prem} | {fg}/{ft} | {ag}/{len(tune)} | |")
        key = (prem <= 0, fg + ag, -c.layer_tol, c == horizon.HorizonCriterion())   # ties: the defaults
        if best is None or key > best[0]:
            best = (key, c)
    crit = best[1]
    print(f"\nchosen on the tuning runs (no premature call, then the most converged runs given a point "
          f"plus class agreements): {crit}\n(defaults in pipeline/apps/horizon.py: {horizon.HorizonCriterion()})\n")

    classes = ["converged", "stalled", "still_improving", "diverging"]
    labels = ["converged", "stalled", "still_improving", "diverged"]
    for name, rs in (("tuning (in-sample)", tune), ("held out", held)) + tuple(
            (f"held out: {g}", [r for r in held if r["group"] == g]) for g in sorted({r["group"] for r in held})):
        if not rs:
            continue
        called, prem, fg, ft, ag = score(rs, crit)
        v1_called = sum(r["v1"].get("converged_epoch") is not None for r in rs)
        v1_prem = sum((outcomes.to_gain(r["metrics"].get("val_loss") or [], r["v1"]["converged_epoch"]) or 0) > 0.10
                      for r in rs if r["v1"].get("converged_epoch") is not None and r["metrics"].get("val_loss"))
        print(f"### convergence, {name}: {len(rs)} runs")
        print(f"v2: {called} runs given an online convergence point, {prem} premature (>10% to gain); "
              f"{fg}/{ft} runs labelled converged get a point (converged class); class agrees with the "
              f"outcome label on {ag}/{len(rs)}. v1: {v1_called} given a point, {v1_prem} premature.")
        print("| outcome \\ verdict | " + " | ".join(classes) + " |")
        print("| --- |" + " ---: |" * len(classes))
        for lab in labels:
            row = [sum(r["outcome"]["label"] == lab and r["verdict"]["class"] == c for r in rs) for c in classes]
            print(f"| {lab} | " + " | ".join(map(str, row)) + " |")
        print()

    # -- stopping
    for name, rs in (("tuning (in-sample)", tune), ("held out", held)):
        if not rs:
            continue
        score(rs, crit)
        print(f"### stopping, {name}")
        print("| method | epochs saved | median regret | mean regret | runs with regret > 1% | runs |")
        print("| --- | ---: | ---: | ---: | ---: | ---: |")
        for m, saved, med, mean, frac, n in stopping_rows(rs, crit):
            print(f"| {m} | {saved:.1%} | {med:+.2%} | {mean:+.2%} | {frac:.0%} | {n} |")
        print()
    import dataclasses

    sweep_pts = [dataclasses.replace(crit, motion_tol=m, layer_tol=max(crit.layer_tol, m), loss_tol=lt)
                 for m, lt in ((0.02, 0.01), (0.05, 0.01), (0.1, 0.02), (0.2, 0.05), (0.5, 0.1), (1.0, 0.2))]
    pts = curve(held, sweep_pts) if held else {}
    if pts:
        _plot_curve(pts, Path(args.out) / "verdict_study_stopping.png")

    # -- bad init
    for r in runs:
        r["bi"] = badinit_features(r)
    missing = [r for r in runs if "act" not in r and r.get("Y0") is not None]
    if missing:
        from pipeline.storage.store import TrajectoryStore

        stores = {d: TrajectoryStore(d, create=False) for d in args.store}
        for i, r in enumerate(missing):
            store = stores.get(r.get("store"), stores[args.store[0]])
            r["act"] = activation_features(store.open_run(r["run_id"]), r["Y0"])
            if (i + 1) % 100 == 0:
                print(f"  activation statistics {i + 1}/{len(missing)}", file=sys.stderr, flush=True)
        if args.cache:
            pickle.dump(runs, open(args.cache, "wb"))
    th = tune_badinit([r for r in tune if r["bi"]])
    lp = tune_loss_plateau([r for r in tune if r["bi"]])
    ath = tune_activation([r for r in tune if r["bi"] and r.get("act")])
    print(f"### bad init within K = {K_BADINIT} snapshots (bad = outcome stalled or diverged)")
    from pipeline.apps import badinit as _bi

    print(f"thresholds fixed on the tuning runs: {th}; loss plateau drop < {lp}\n"
          f"(detect_v2 defaults: gain_low {_bi.GAIN_LOW}, gain_high {_bi.GAIN_HIGH}, motion_low {_bi.MOTION_LOW}, "
          f"structure {_bi.STRUCTURE}); activation statistics (probe batch of {PROBE}): {ath}\n")
    print("| rule | set | detected (bad) | false alarms (good) |")
    print("| --- | --- | ---: | ---: |")
    rules = [("spectral v1 (detect defaults)", lambda r: r["bi"]["v1"]),
             ("v2 defaults (detect_v2)", lambda r: r["bi"]["v2"]),
             ("v2, thresholds tuned here", lambda r: flags(r["bi"], th)),
             ("weight gain only", lambda r: flags({**r["bi"], "frozen_or_collapsed": False, "motion_min": -1}, th)),
             ("loss plateau after K epochs", lambda r: r["bi"]["loss_drop"] is not None and r["bi"]["loss_drop"] < lp),
             ("weight gain or loss plateau", lambda r: flags({**r["bi"], "frozen_or_collapsed": False, "motion_min": -1}, th)
              or (r["bi"]["loss_drop"] is not None and r["bi"]["loss_drop"] < lp)),
             ("activation statistics (std, dead units)", lambda r: act_flags(r.get("act"), ath)),
             ("v2 or activation statistics", lambda r: flags(r["bi"], th) or act_flags(r.get("act"), ath))]
    for name, f in rules:
        for setname, rs in (("tuning (in-sample)", tune), ("held out", held),
                            ("held out: MLPs", [r for r in held if r["family"] == "mlp"]),
                            ("held out: CNNs", [r for r in held if r["family"] == "cnn"])):
            rs = [r for r in rs if r["bi"] is not None]
            if not rs:
                continue
            h, nb, fa, ng = rate(rs, f)
            print(f"| {name} | {setname} | {h}/{nb} ({h / max(nb, 1):.0%}) | {fa}/{ng} ({fa / max(ng, 1):.0%}) |")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    _figures(runs, crit, out)
    keep = ("run_id", "sweep", "group", "init", "lr", "seed", "status", "outcome", "bi", "act")
    json.dump({"refs": refs, "criterion": crit.as_dict(), "badinit_thresholds": th, "activation_thresholds": ath,
               "runs": [{**{k: r.get(k) for k in keep},
                         "verdict": {k: r["verdict"].get(k) for k in ("class", "converged_epoch",
                                                                       "online_converged_epoch",
                                                                       "online_confirmed_epoch",
                                                                       "class_reason")},
                         "v1_converged_epoch": r["v1"].get("converged_epoch")} for r in runs]},
              open(out / "verdict_study.json", "w"), indent=1, default=str)
    print(f"\nper-run evidence: {out / 'verdict_study.json'}")
    return 0


def _figures(runs, crit, out):
    """Per-run evidence figures (one run of each class on the held-out set) and the
    class fractions over training per held-out group (what ``kma compare`` draws)."""
    import matplotlib.pyplot as plt

    from pipeline.apps import verdict_plots

    def full(r):
        v = verdict_of(r, crit)
        return {**r["v1"], "run_id": r["run_id"], "bad_init": (r.get("bi") or {}).get("v2"),
                "class": v["class"], "converged_at": v.get("converged_at"),
                "converged_epoch": v.get("converged_epoch"), "reason": v.get("class_reason"),
                "online_confirmed_epoch": v.get("online_confirmed_epoch"), "evidence": v.get("evidence")}

    held = [r for r in runs if r["sweep"] != TUNE and r["spectra"]]
    for cls in ("converged", "stalled", "still_improving"):
        r = next((r for r in held if verdict_of(r, crit)["class"] == cls), None)
        if r is None:
            continue
        lab = f"{r['group']} {r['init']} lr {r['lr']:g} s{r['seed']} (outcome: {r['outcome']['label']})"
        fig = verdict_plots.evidence_figure(full(r), label=lab, analysis_id="verdict study")
        fig.savefig(out / f"verdict_run_{cls}.png", dpi=100)
        plt.close(fig)
    groups = defaultdict(list)
    for r in held:
        groups[r["group"]].append((f"{r['init']} lr{r['lr']:g}", full(r)))
    if groups:
        fig = verdict_plots.group_figure(dict(sorted(groups.items())), by="group", analysis_id="verdict study")
        fig.savefig(out / "verdict_group_classes.png", dpi=90)
        plt.close(fig)
    print(f"figures: {out}/verdict_run_*.png, {out}/verdict_group_classes.png")


def _plot_curve(pts, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for (name, p), mk in zip(pts.items(), "osd^"):
        p = sorted(p)
        ax.plot([x[0] * 100 for x in p], [x[2] * 100 for x in p], marker=mk, label=name)
    ax.axhline(1, color="0.5", ls="--", lw=1)
    ax.axvline(40, color="0.5", ls=":", lw=1)
    ax.set_xlabel("epochs saved (% of the budget)")
    ax.set_ylabel("mean validation-loss regret (%)")
    ax.set_title("Stopping on held-out runs: epochs saved vs regret\n(best-checkpoint restore for every method; "
                 "dashed: 1% regret, dotted: 40% saved)", fontsize=10)
    ax.set_yscale("symlog", linthresh=0.1)
    from matplotlib.ticker import FuncFormatter

    ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{y:g}"))
    ax.set_ylim(bottom=0)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    print(f"stopping curve: {path}")


if __name__ == "__main__":
    sys.exit(main())
