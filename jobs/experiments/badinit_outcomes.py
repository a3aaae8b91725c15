"""Bad-initialization detectors against outcome labels, at K = 3, 4 and 6 snapshots: the
third version (:func:`pipeline.apps.badinit_loss.detect_v3`: the training loss against the
task's chance level and the run's own first epoch, beside the weights' evidence) and the
baselines — weight gain, loss plateau, their OR, activation statistics on a probe batch —
on the runs of the verdict study (``configs/verdicts/``: 63 multiscale MLPs to tune; digits
MLPs and CNNs of depth 1-3 held out).

Labels (:mod:`pipeline.apps.outcomes`, as the verdict study): *bad* = the run's outcome is
stalled or diverged (from its validation losses over the whole budget, the reference being
the best loss of its group: same task, family, depth), *good* = converged or still
improving. Every rule reads the first ``K`` snapshots (the initial weights and ``K − 1``
epochs) and the training losses of those ``K − 1`` epochs. Each rule's thresholds are
fitted on the tuning runs at that ``K`` (the most recall at <= 5 % false alarms, then the
fewest false alarms, ties broken toward the middle of the feasible grid); held-out numbers
are with those thresholds unchanged. The ROC-style operating points of every baseline's
grid on the held-out runs are printed too (choosing among them would be tuning on the
held-out runs: an oracle, marked as such).

    nice -n 10 python jobs/experiments/badinit_outcomes.py --store /tmp/kma-verdicts \\
        --cache /tmp/vs-cache.pkl --out DIR [--act-cache FILE]

The chance level of a run is what its training records now (``chance_loss``:
:func:`pipeline.apps.badinit_loss.chance_level` of the task built with the run's seed: log 10
for digits, the variance of the training targets for the multiscale regression).
Prints markdown tables; per-run evidence to ``DIR/badinit_outcomes.json``, the operating
points to ``DIR/badinit_roc.png``.
"""

from __future__ import annotations

import argparse
import json
import pickle
import sys
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import verdict_study as vs  # noqa: E402

KS = (3, 4, 6)
MAX_FA = 0.05


# ------------------------------------------------------------------------------ features
def chance_of(run) -> float | None:
    """The chance level the run's training records now (run attribute ``chance_loss``)."""
    from pipeline.apps.badinit_loss import chance_level
    from pipeline.training.tasks import build_task

    cfg = run.config
    task = build_task(cfg["task"]["name"], seed=cfg["torch_seed"],
                      **{k: v for k, v in cfg["task"].items() if k != "name"})
    return chance_level(cfg["loss"], n_classes=task.out_dim if task.kind == "classification" else None,
                        targets=task.y_train.numpy() if task.kind == "regression" else None)


def features(r, K):
    """Everything the rules read from the first ``K`` snapshots (None: not finite)."""
    from pipeline.apps import badinit, badinit_loss

    Y = r["Y0"]
    if Y is None or Y.shape[0] < K or not np.isfinite(Y[:K]).all():
        return None
    tl = list((r["metrics"].get("train_loss") or [])[:K - 1])
    wf = badinit.weight_features(Y[:K], r["layout"], r["lr"])
    lf = badinit_loss.loss_features(tl, r["chance"])
    f = {"gain_min": wf["gain_min"], "gain_max": wf["gain_max"], "motion_min": wf["motion_min"],
         "loss": lf, "loss_drop": lf["drop"]}
    if K >= badinit.MIN_SNAPSHOTS:
        d = badinit.detect_v2(Y[:K], r["layout"], r["lr"])
        f.update(v1=d["bad_init_v1"], v2=d["bad_init"], frozen_or_collapsed=bool(
            d["init_frozen_layers"] or d["init_collapsed_layers"]))
    else:
        f.update(v1=None, v2=bool(badinit.gain_marks(wf, badinit.GAIN_LOW, badinit.GAIN_HIGH,
                                                        badinit.MOTION_LOW)), frozen_or_collapsed=False)
    return f


# ------------------------------------------------------------------------------ rules
def v3_flag(f, th):
    from pipeline.apps import badinit_loss

    marks = badinit_loss.loss_marks(f["loss"], chance_band=th["chance_band"], rate_low=th["rate_low"],
                               plateau_drop=th["plateau_drop"], rise_high=th["rise_high"],
                               stall_progress=th["stall_progress"], mode_tol=th["mode_tol"])
    if th["weights"]:
        marks += ["w"] if vs.flags({**f, "frozen_or_collapsed": False}, th["v2"]) else []
    return bool(marks)


def gain_flag(f, th):
    return vs.flags({**f, "frozen_or_collapsed": False, "motion_min": -1}, th)


def plateau_flag(f, lp):
    return f["loss_drop"] is not None and f["loss_drop"] < lp


GAIN_GRID = [{"gain_low": gl, "gain_high": gh, "motion_low": 1e9, "structure": False}
             for gl in (0.0, 1e-6, 0.001, 0.01, 0.05, 0.1, 0.2, 0.4, 0.7) for gh in (3.0, 5.0, 8.0, 15.0, 30.0, 60.0, 1e9)]
PLATEAU_GRID = [0.0, 0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5]


def v3_grid(v2_th, lp):
    """The third version's grid, simplest rule first in each dimension (no weight marks, no
    rise mark, no predicted-stall mark): ties prefer them (:func:`fit`)."""
    return [{"chance_band": cb, "rate_low": rl, "plateau_drop": lp, "rise_high": rh, "stall_progress": sp,
             "mode_tol": 0.5, "weights": w, "v2": v2_th}
            for w in (False, True) for rh in (float("inf"), 1.0, 0.5, 0.2) for sp in (0.0, 0.1, 0.25, 0.4, 0.5)
            for cb in (0.02, 0.05, 0.1, 0.2, 0.3) for rl in (0.001, 0.003, 0.01, 0.02, 0.05, 0.1)]


SIMPLER = ("weights", "rise_high", "stall_progress")   # off is simpler: ties go to the rule without the mark


def rate(rs, key):
    bad = [r for r in rs if r["bad"]]
    good = [r for r in rs if not r["bad"]]
    return sum(bool(key(r)) for r in bad), len(bad), sum(bool(key(r)) for r in good), len(good)


def fit(rs, grid, key):
    """The grid point with the most recall at <= MAX_FA false alarms on ``rs``, then the
    fewest false alarms; among the ties the middle one (in grid order: the middle of the
    feasible range, away from both edges)."""
    scored = []
    for th in grid:
        h, nb, fa, ng = rate(rs, lambda r: key(r, th))
        if ng and fa / ng <= MAX_FA:
            scored.append(((h, -fa), th))
    if not scored:
        return grid[0]
    top = max(s for s, _ in scored)
    ties = [th for s, th in scored if s == top]
    if isinstance(ties[0], dict):     # the fewest marks switched on first (grid order: off first)
        for k in SIMPLER:
            if k in ties[0]:
                first = ties[0][k]
                ties = [th for th in ties if th[k] == first]
    return ties[len(ties) // 2]


def pct(h, n):
    return f"{h}/{n} ({h / max(n, 1):.0%})"


LOGIT_FEATURES = ("|log(loss/chance)|", "last epoch's drop", "drop since epoch 1", "log10 slowest motion/lr")


def logit_x(f):
    """The tiny logistic score's features of one run (:data:`LOGIT_FEATURES`)."""
    lf = f["loss"]
    if lf["last"] is None:
        return None
    ratio = lf["ratio"] if lf["ratio"] else 1e6
    return [abs(np.log(max(ratio, 1e-12))), lf["rate"], lf["drop"], np.log10(max(f["motion_min"] or 0.0, 1e-8))]


def fit_logit(tune):
    """A logistic score on :data:`LOGIT_FEATURES`, fitted on the tuning runs (standardised,
    L2, C = 1), with its cut at the most recall within the false-alarm budget there."""
    from sklearn.linear_model import LogisticRegression

    rs = [r for r in tune if logit_x(r["f"]) is not None]
    X = np.array([logit_x(r["f"]) for r in rs])
    y = np.array([r["bad"] for r in rs])
    mu, sd = X.mean(0), X.std(0) + 1e-12
    model = LogisticRegression(C=1.0).fit((X - mu) / sd, y)
    score = lambda r: (float(model.decision_function(((np.array([logit_x(r["f"])]) - mu) / sd))[0])  # noqa: E731
                       if logit_x(r["f"]) is not None else -np.inf)
    cuts = sorted({score(r) for r in rs})
    cut = fit(rs, cuts, lambda r, c: score(r) >= c)
    return (lambda r: score(r) >= cut), dict(zip(LOGIT_FEATURES, np.round(model.coef_[0], 3).tolist()))


# ------------------------------------------------------------------------------ main
def main(argv=None) -> int:
    warnings.filterwarnings("ignore")
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", required=True, nargs="+",
                    help="one or more stores (the ones verdict_study.py --store read for this cache)")
    ap.add_argument("--cache", required=True, help="the fitted-runs pickle verdict_study.py --cache wrote")
    ap.add_argument("--act-cache", default=None, help="pickle of the activation statistics per run and K "
                    "(written once, read on re-runs)")
    ap.add_argument("--out", default="bench-out")
    args = ap.parse_args(argv)

    from pipeline.storage.store import TrajectoryStore

    runs = pickle.load(open(args.cache, "rb"))
    vs.label_all(runs)
    stores = {d: TrajectoryStore(d, create=False) for d in args.store}

    def open_run(r):
        return stores.get(r.get("store"), stores[args.store[0]]).open_run(r["run_id"])

    chances = {}
    for r in runs:
        run = open_run(r)
        key = json.dumps([run.config["task"], run.config["torch_seed"], run.config["loss"]], sort_keys=True)
        if key not in chances:
            chances[key] = chance_of(run)
        r["chance"] = chances[key]
        r["bad"] = r["outcome"]["label"] in ("stalled", "diverged")
    act = pickle.load(open(args.act_cache, "rb")) if args.act_cache and Path(args.act_cache).exists() else {}
    n_act = len(act)
    for i, r in enumerate(runs):
        for K in KS:
            if (r["run_id"], K) not in act and r["Y0"] is not None:
                act[(r["run_id"], K)] = vs.activation_features(open_run(r), r["Y0"][:K])
        if (i + 1) % 100 == 0:
            print(f"  activation statistics {i + 1}/{len(runs)}", file=sys.stderr, flush=True)
    if args.act_cache and len(act) > n_act:
        pickle.dump(act, open(args.act_cache, "wb"))

    tune_all = [r for r in runs if r["sweep"] == vs.TUNE]
    held_all = [r for r in runs if r["sweep"] != vs.TUNE]
    sets = {"tuning (in-sample)": None, "held out": None, "held out: MLPs": "mlp", "held out: CNNs": "cnn"}
    print(f"{len(runs)} runs: {len(tune_all)} tuning (multiscale MLPs), {len(held_all)} held out; bad = stalled "
          f"or diverged: {sum(r['bad'] for r in tune_all)} tuning, {sum(r['bad'] for r in held_all)} held out "
          f"(MLPs {sum(r['bad'] for r in held_all if r['family'] == 'mlp')}, "
          f"CNNs {sum(r['bad'] for r in held_all if r['family'] == 'cnn')})")
    print("chance levels: " + ", ".join(sorted({f"{r['task']} {r['chance']:.4g}" for r in runs if r['chance']})
                                         [:4]) + " ...\n")

    table, roc, chosen, per_run, fitted_v3 = [], {}, {}, {}, {}
    for K in KS:
        for r in runs:
            r["f"] = features(r, K)
            r["a"] = act.get((r["run_id"], K))
        tune = [r for r in tune_all if r["f"] is not None]
        held = [r for r in held_all if r["f"] is not None]
        gth = fit(tune, GAIN_GRID, lambda r, th: gain_flag(r["f"], th))
        lp = fit(tune, PLATEAU_GRID, lambda r, th: plateau_flag(r["f"], th))
        agrid = [{"at": at, "std_low": sl, "std_high": sh, "dead_high": dh}
                 for at in ("init", "early", "either") for sl in (0.0, 0.01, 0.03, 0.1, 0.2, 0.3)
                 for sh in (0.9, 0.95, 0.99, 1.5, 3.0, 1e9) for dh in (0.1, 0.25, 0.5, 0.9, 1.0)]
        ath = fit([r for r in tune if r["a"]], agrid, lambda r, th: vs.act_flags(r["a"], th))
        v2th = {"gain_low": 0.01, "gain_high": 30.0, "motion_low": 0.01, "structure": False}   # v2 defaults
        v3th = fit(tune, v3_grid(v2th, lp), lambda r, th: v3_flag(r["f"], th))
        orgrid = [(g, p) for g in GAIN_GRID for p in PLATEAU_GRID]
        orth = fit(tune, orgrid, lambda r, th: gain_flag(r["f"], th[0]) or plateau_flag(r["f"], th[1]))
        fitted_v3[K] = v3th
        chosen[K] = {"v3": {k: v for k, v in v3th.items() if k != "v2"}, "weight gain": gth, "loss plateau": lp,
                     "gain or plateau": orth, "activation": ath}
        logit, coefs = fit_logit(tune)
        chosen[K]["logistic coefficients (standardised)"] = coefs
        rules = {
            "**v3** (loss at chance / plateau, fitted)": lambda r: v3_flag(r["f"], v3th),
            "tiny logistic score (4 features, fitted)": logit,
            "v3, shipped defaults": lambda r: v3_flag(r["f"], DEFAULTS),
            "(ablation) v3 defaults + predicted stall 0.25, not chosen by the fit":
                lambda r: v3_flag(r["f"], {**DEFAULTS, "stall_progress": 0.25}),
            "(ablation) v3 defaults + weight marks": lambda r: v3_flag(r["f"], {**DEFAULTS, "weights": True}),
            "v2 defaults (weights only)": lambda r: r["f"]["v2"],
            "v1 (detect defaults)": lambda r: r["f"]["v1"],
            "weight gain": lambda r: gain_flag(r["f"], gth),
            "loss plateau": lambda r: plateau_flag(r["f"], lp),
            "weight gain or loss plateau": lambda r: gain_flag(r["f"], orth[0]) or plateau_flag(r["f"], orth[1]),
            "activation statistics": lambda r: vs.act_flags(r["a"], ath),
        }
        for name, key in rules.items():
            for sname, fam in sets.items():
                rs = tune if sname.startswith("tuning") else [r for r in held if fam is None or r["family"] == fam]
                if name.startswith("v1") and K < 4:
                    continue
                h, nb, fa, ng = rate(rs, key)
                table.append((K, name, sname, h, nb, fa, ng))
        # operating points on the held-out runs, per family (the whole grid: an oracle's choice)
        for fam in ("mlp", "cnn"):
            rs = [r for r in held if r["family"] == fam]
            pts = {"weight gain": [rate(rs, lambda r, th=th: gain_flag(r["f"], th)) for th in GAIN_GRID],
                   "loss plateau": [rate(rs, lambda r, th=th: plateau_flag(r["f"], th)) for th in PLATEAU_GRID],
                   "weight gain or loss plateau": [rate(rs, lambda r, th=th: gain_flag(r["f"], th[0])
                                                        or plateau_flag(r["f"], th[1])) for th in orgrid[::3]],
                   "activation statistics": [rate(rs, lambda r, th=th: vs.act_flags(r["a"], th)) for th in agrid],
                   "v3 (fitted at this K)": [rate(rs, lambda r: v3_flag(r["f"], v3th))],
                   "v3 (defaults: the K = 6 fit)": [rate(rs, lambda r: v3_flag(r["f"], DEFAULTS))]}
            roc[(K, fam)] = pts
        if K == max(KS):
            for r in held_all:
                if r["f"] is not None:
                    per_run[r["run_id"]] = {"v3": bool(v3_flag(r["f"], v3th)), "loss": r["f"]["loss"]}

    print("| K | rule | set | detected (bad) | false alarms (good) |")
    print("| ---: | --- | --- | ---: | ---: |")
    for K, name, sname, h, nb, fa, ng in table:
        print(f"| {K} | {name} | {sname} | {pct(h, nb)} | {pct(fa, ng)} |")
    print("\nthresholds fitted on the tuning runs:")
    for K, c in chosen.items():
        print(f"  K={K}: {c}")

    print("\n### held-out operating points (every grid point; best recall at a false-alarm budget — an oracle)")
    print("| K | family | rule | recall at FA <= 2% | <= 5% | <= 10% | <= 20% |")
    print("| ---: | --- | --- | ---: | ---: | ---: | ---: |")
    for (K, fam), pts in roc.items():
        for name, p in pts.items():
            cells = []
            for cap in (0.02, 0.05, 0.10, 0.20):
                ok = [(h / nb, fa / ng) for h, nb, fa, ng in p if fa / ng <= cap]
                cells.append(f"{max(ok)[0]:.0%}" if ok else "—")
            print(f"| {K} | {fam} | {name} | " + " | ".join(cells) + " |")

    # -- what the v3 rule misses at K = 6, and whether it could be seen
    K = max(KS)
    for r in runs:
        r["f"] = features(r, K)
    th = fitted_v3[K]
    miss = [r for r in held_all if r["bad"] and r["f"] is not None and not v3_flag(r["f"], th)]
    healthy = [r for r in miss if r["f"]["loss"]["ratio"] is not None and r["f"]["loss"]["ratio"] < 0.5]
    bad_held = [r for r in held_all if r["bad"]]
    print(f"\n### held-out bad runs v3 misses at K = {K}: {len(miss)} of {len(bad_held)}")
    print(f"{len(healthy)} of them look healthy in the first {K - 1} epochs (training loss below half the chance "
          f"level at epoch {K - 1}); recall is bounded by {len(bad_held) - len(healthy)}/{len(bad_held)} "
          f"({(len(bad_held) - len(healthy)) / len(bad_held):.0%}) for any rule that flags only runs whose loss "
          f"has not left chance")
    looks = [r for r in held_all if r["f"] is not None and r["f"]["loss"]["ratio"] is not None
             and r["f"]["loss"]["ratio"] < 0.5]
    print(f"held-out runs whose loss is below half the chance level at epoch {K - 1}: {len(looks)}, of them "
          f"{sum(r['bad'] for r in looks)} bad and {sum(not r['bad'] for r in looks)} good; at lr 0.03: "
          f"{sum(r['bad'] for r in looks if r['lr'] == 0.03)} bad, {sum(not r['bad'] for r in looks if r['lr'] == 0.03)} "
          "good (flagging them would cost that many false alarms)")
    print("| group | init | lr | seed | outcome | loss epochs 1..5 / chance | best val / group best |")
    print("| --- | --- | ---: | ---: | --- | --- | ---: |")
    for r in sorted(miss, key=lambda r: (r["group"], r["lr"], r["init"], r["seed"])):
        tl = (r["metrics"].get("train_loss") or [])[:K - 1]
        ref = min(x["outcome"]["best"] for x in runs if x["group"] == r["group"] and x["outcome"]["best"])
        b = r["outcome"]["best"]
        rel = f"{b / ref:.2f}" if b else "—"
        print(f"| {r['group']} | {r['init']} | {r['lr']:g} | {r['seed']} | {r['outcome']['label']} | "
              + " ".join(f"{x / r['chance']:.2f}" for x in tl) + f" | {rel} |")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    json.dump({"thresholds": {str(k): v for k, v in chosen.items()},
               "table": [dict(zip(("K", "rule", "set", "hit", "bad", "fa", "good"), row)) for row in table],
               "runs": [{"run_id": r["run_id"], "group": r["group"], "init": r["init"], "lr": r["lr"],
                         "seed": r["seed"], "outcome": r["outcome"]["label"], "bad": r["bad"], "chance": r["chance"],
                         **per_run.get(r["run_id"], {})} for r in runs]},
              open(out / "badinit_outcomes.json", "w"), indent=1, default=str)
    _plot(roc, out / "badinit_roc.png")
    print(f"\nper-run evidence: {out / 'badinit_outcomes.json'}; operating points: {out / 'badinit_roc.png'}")
    return 0


def _defaults():
    from pipeline.apps import badinit, badinit_loss as bl

    return {"chance_band": bl.CHANCE_BAND, "rate_low": bl.RATE_LOW, "plateau_drop": bl.PLATEAU_DROP,
            "rise_high": bl.RISE_HIGH, "stall_progress": bl.STALL_PROGRESS, "mode_tol": bl.MODE_TOL,
            "weights": bl.WEIGHTS,
            "v2": {"gain_low": badinit.GAIN_LOW, "gain_high": badinit.GAIN_HIGH, "motion_low": badinit.MOTION_LOW,
                   "structure": False}}


DEFAULTS = _defaults()


def _plot(roc, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    Ks = sorted({k for k, _ in roc})
    fig, axes = plt.subplots(2, len(Ks), figsize=(4.2 * len(Ks), 7.6), sharex=True, sharey=True)
    style = {"weight gain": ("#0072B2", "o"), "loss plateau": ("#E69F00", "s"),
             "weight gain or loss plateau": ("#009E73", "^"), "activation statistics": ("#CC79A7", "d"),
             "v3 (fitted at this K)": ("white", "*"), "v3 (defaults: the K = 6 fit)": ("#D55E00", "*")}
    for i, fam in enumerate(("mlp", "cnn")):
        for j, K in enumerate(Ks):
            ax = axes[i, j]
            for name, p in roc[(K, fam)].items():
                c, m = style[name]
                xs = [100 * fa / ng for h, nb, fa, ng in p]
                ys = [100 * h / nb for h, nb, fa, ng in p]
                ax.scatter(xs, ys, s=140 if name.startswith("v3") else 14, c=c, marker=m, alpha=1 if
                           name.startswith("v3") else 0.45, label=name, edgecolors="k" if name.startswith("v3")
                           else "none", zorder=3 if name.startswith("v3") else 2)
            ax.axvline(5, color="0.5", ls=":", lw=1)
            ax.axhline(90, color="0.5", ls="--", lw=1)
            ax.set_title(f"held-out digits {fam.upper()}s, K = {K} snapshots", fontsize=10)
            if i == 1:
                ax.set_xlabel("false alarms (% of good runs)")
            if j == 0:
                ax.set_ylabel("recall (% of bad runs)")
            ax.set_xlim(-2, 102)
            ax.set_ylim(-2, 102)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.suptitle("Bad-init detectors on held-out runs: every baseline threshold (small marks, an oracle's choice) "
                 "vs the v3 rule fixed on the tuning runs (stars)\ndashed: 90 % recall target, dotted: 5 % false "
                 "alarms", fontsize=10)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
