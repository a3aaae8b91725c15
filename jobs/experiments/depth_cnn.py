"""The depth rule on a 1-D CNN: denoising the random multi-scale targets of
``depth_offladder.py`` with dilated convolution stacks of depth 1-6.

    nice -n 10 python jobs/experiments/depth_cnn.py [--targets 20] [--seeds 1]
        [--noise 1.0] [--steps 1500] [--json out.json] [--figure docs/pages/figures/depth_cnn.png]
    nice -n 10 python jobs/experiments/depth_cnn.py --quick          # smoke: seconds

A scalar-input regression gives a convolution nothing to act on, so the CNN gets a
signal-to-signal task: **denoising**. Target ``i`` is ``draw_target(i)`` of
``depth_offladder.py`` (same 20 targets, same 80/20 split of the 256 grid points, same
recommendations from :func:`pipeline.apps.depth.recommend_depth`, both routes, read on
the clean target before anything is trained). The input is the target plus fresh white
noise at every step (std ``--noise`` times the target's std, ``--batch`` draws a step),
the output the clean target; the loss is the MSE on the training points, the error the
MSE on the test points (``/ Var(target)``), averaged over 16 fixed noisy inputs (drawn
from ``numpy.random.default_rng(20000 + i)``, the same for every depth and seed). Passing
the noisy input through unchanged scores ``noise**2``; outputting zero scores 1.

Model: ``depth`` convolution layers ``Conv1d(·, width=32, kernel 5, dilation 2**l)`` with
tanh, ``l = 0 … depth-1``, zero "same" padding, then a 1x1 convolution to one channel;
Adam (lr 3e-3) on ``--batch`` 4 noisy copies a step, 1500 steps, one torch thread. The
dilation doubles with depth (as in WaveNet/TCN stacks) so that the receptive field,
``1 + 4 (2**depth - 1)`` = 5, 13, 29, 61, 125, 253 samples, runs from below the finest period of any target (12.8 samples
at 20 cycles) to the whole window: each layer adds one octave of scale, the CNN's nearest
analogue of the rule's one stage per scale. Without dilation a depth-6 stack would see 25
samples, less than one period of most components, and depth would mean little more
than width. ``--no-dilation`` runs that variant.

Measured depth and verdicts: as in ``depth_offladder.py`` (``transition_depth`` on the
mean test error over seeds, extra depth gaining < 50 %; exact / ±1 / off; a model *fits*
when its best mean error is < FIT; the post hoc floor 1e-3), plus the constant guesses
(every depth 1-6) as the baseline a rule must beat. ``--from-json`` merges saved runs
(more seeds or more targets) and redraws without training.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from depth_offladder import FIT, FLOOR, GAIN, N_POINTS, _corr, draw_target, verdict
from pipeline.apps.depth import recommend_depth, transition_depth

N_EVAL = 16           # fixed noisy inputs the test error is averaged over
KERNEL = 5


class DilatedCNN(nn.Module):
    """``depth`` tanh convolution layers (kernel 5, dilation 2**l or 1) and a 1x1 readout."""

    def __init__(self, depth: int, width: int = 32, dilated: bool = True):
        super().__init__()
        layers, c = [], 1
        for li in range(depth):
            dil = 2 ** li if dilated else 1
            layers += [nn.Conv1d(c, width, KERNEL, dilation=dil, padding=dil * (KERNEL // 2)), nn.Tanh()]
            c = width
        self.body = nn.Sequential(*layers)
        self.out = nn.Conv1d(c, 1, 1)

    def forward(self, x):
        return self.out(self.body(x))


def receptive_field(depth: int, dilated: bool = True) -> int:
    return 1 + (KERNEL - 1) * ((2 ** depth - 1) if dilated else depth)


def rf_depth(row, depths) -> int:
    """Post hoc (proposed after seed 0 showed the transition following the lowest
    frequency): the smallest depth whose receptive field spans the coarsest period the
    DMD route detected (a priori information), the deepest depth when none does."""
    period = N_POINTS / min(row["dmd_freqs"]) if row["dmd_freqs"] else N_POINTS
    for d in depths:
        if receptive_field(d, row["dilated"]) >= period:
            return d
    return depths[-1]


def train_denoiser(model, y, train_mask, noise_std, eval_noise, steps, lr, batch, seed) -> float:
    """Adam on fresh noisy copies of ``y``; test MSE / Var(y) on the fixed ``eval_noise``."""
    yt = torch.tensor(y, dtype=torch.float32)[None, None]
    tr, te = torch.tensor(train_mask), torch.tensor(~train_mask)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        xin = yt + noise_std * torch.randn(batch, 1, len(y), generator=gen)
        loss = ((model(xin)[..., tr] - yt[..., tr]) ** 2).mean()
        loss.backward()
        opt.step()
    with torch.no_grad():
        xin = yt + torch.tensor(eval_noise, dtype=torch.float32)[:, None]
        return float(((model(xin)[..., te] - yt[..., te]) ** 2).mean() / yt.var())


def run(args) -> list:
    rows = []
    depths = list(range(1, args.max_depth + 1))
    for i in range(args.first, args.first + args.targets):
        t = draw_target(i)
        y = t["y"]
        rec = recommend_depth(y.astype(np.float32), 1.0 / N_POINTS)
        sigma = args.noise * float(y.std())
        eval_noise = sigma * np.random.default_rng(20000 + i).standard_normal((N_EVAL, len(y)))
        errs = np.zeros((args.seeds, len(depths)))
        for si, s in enumerate(range(args.seed_offset, args.seed_offset + args.seeds)):
            for j, d in enumerate(depths):
                torch.manual_seed(s)
                model = DilatedCNN(d, args.width, not args.no_dilation)
                errs[si, j] = train_denoiser(model, y, ~t["test"], sigma, eval_noise, args.steps,
                                             args.lr, args.batch, seed=1000 * s + d)
        mean = errs.mean(0)
        row = {"target": i, "freqs": t["freqs"], "amps": t["amps"], "dmd": rec.depth,
               "fourier": rec.fourier["depth"], "dmd_freqs": sorted(1.0 / p for p in rec.scales),
               "depths": depths, "noise": args.noise, "dilated": not args.no_dilation,
               "cnn": {"errors": errs.tolist(), "mean": mean.tolist(),
                       "transition": transition_depth(depths, mean, GAIN)}}
        print(f"target {i}: f={[round(f, 2) for f in t['freqs']]} rule DMD {rec.depth} "
              f"Fourier {rec.fourier['depth']} | cnn transition {row['cnn']['transition']} | "
              + " ".join(f"{e:.1e}" for e in mean), flush=True)
        rows.append(row)
        if args.json:                     # after each target: a cut-short run keeps its rows
            Path(args.json).write_text(json.dumps(rows, indent=1))
    return rows


def tables(rows, floor: float = 0.0) -> str:
    depths = rows[0]["depths"]
    for r in rows:
        r["cnn"]["transition"] = transition_depth(depths, r["cnn"]["mean"], GAIN, floor)
    out = ["| target | frequencies (amplitudes) | DMD | Fourier | CNN transition | "
           + " | ".join(f"d{d}" for d in depths) + " |",
           "|" + " --- |" * 5 + " ---: |" * len(depths)]
    for r in rows:
        fa = ", ".join(f"{f:.2f} ({a:.2f})" for f, a in zip(r["freqs"], r["amps"]))
        cells = " | ".join(f"{e:.1e}" for e in r["cnn"]["mean"])
        out.append(f"| {r['target']} | {fa} | {r['dmd']} | {r['fourier']} | "
                   f"{r['cnn']['transition']} | {cells} |")
    fit = [r for r in rows if min(r["cnn"]["mean"]) < FIT]
    out += ["", "| predictor | targets | exact | ±1 | off |", "| --- | --- | ---: | ---: | ---: |"]
    preds = [("Hankel DMD", lambda r: r["dmd"]), ("Fourier", lambda r: r["fourier"])]
    preds += [(f"constant {d}", lambda r, d=d: d) for d in depths]
    preds += [("RF >= coarsest DMD period (post hoc)", lambda r: rf_depth(r, depths))]
    for label, f in preds:
        sels = [(f"all {len(rows)}", rows)] + ([(f"{len(fit)} fitted", fit)] if len(fit) < len(rows) else [])
        for sel_label, sel in sels:
            v = [verdict(f(r), r["cnn"]["transition"]) for r in sel]
            out.append(f"| {label} | {sel_label} | {v.count('exact')} | {v.count('±1')} | {v.count('off')} |")
    tm = [r["cnn"]["transition"] for r in rows]
    hist = {d: tm.count(d) for d in depths}
    out += ["", "CNN transitions: " + ", ".join(f"depth {d}: {c}" for d, c in hist.items() if c)]
    if len(set(tm)) > 1:
        fr = [r["freqs"] for r in rows]
        out.append(f"CNN transition vs: true number of components r = {_corr([len(f) for f in fr], tm):+.2f}, "
                   f"DMD depth r = {_corr([r['dmd'] for r in rows], tm):+.2f}, "
                   f"log max frequency r = {_corr(np.log([max(f) for f in fr]), tm):+.2f}, "
                   f"log min frequency r = {_corr(np.log([min(f) for f in fr]), tm):+.2f} "
                   f"(Pearson, {len(rows)} targets)")
    return "\n".join(out)


def figure(rows, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    depths = rows[0]["depths"]
    nseed = len(rows[0]["cnn"]["errors"])
    fig, (a0, a1) = plt.subplots(1, 2, figsize=(10, 4.2))
    cmap = plt.get_cmap("viridis")
    top = max(r["dmd"] for r in rows)
    for r in rows:
        c = cmap((r["dmd"] - 1) / max(top - 1, 1))
        a0.semilogy(depths, r["cnn"]["mean"], "-", color=c, lw=1, alpha=0.8)
        k = depths.index(r["cnn"]["transition"])
        a0.semilogy([r["cnn"]["transition"]], [r["cnn"]["mean"][k]], "o", color=c, ms=4)
    for d in range(1, top + 1):
        a0.plot([], [], color=cmap((d - 1) / max(top - 1, 1)), label=f"DMD depth {d}")
    a0.plot([], [], "ko", ms=4, label="transition")
    a0.set_xlabel("CNN depth (conv layers); receptive field in samples")
    a0.set_ylabel("test MSE / Var(target)")
    seeds = "1 seed" if nseed == 1 else f"mean of {nseed} seeds"
    a0.set_title(f"denoising error, {len(rows)} targets, {seeds}", fontsize=10)
    a0.set_xticks(depths)
    a0.set_xticklabels([f"{d}\n({receptive_field(d, rows[0]['dilated'])})" for d in depths])
    a0.grid(alpha=0.3, which="both")
    a0.legend(fontsize=7, loc="lower left")
    rng = np.random.default_rng(0)
    for route, mk, c in (("dmd", "o", "tab:blue"), ("fourier", "x", "tab:orange")):
        rec = np.array([r[route] for r in rows]) + rng.uniform(-0.12, 0.12, len(rows))
        tr = np.array([r["cnn"]["transition"] for r in rows]) + rng.uniform(-0.12, 0.12, len(rows))
        a1.scatter(rec, tr, marker=mk, color=c, label=f"{route} route")
    hi = max([depths[-1]] + [max(r["dmd"], r["fourier"]) for r in rows])
    a1.plot([0.5, hi + 0.5], [0.5, hi + 0.5], "k:", lw=1, label="recommended = transition")
    a1.set_xlabel("recommended depth (a priori)")
    a1.set_ylabel("measured CNN transition depth")
    a1.set_title("recommended vs measured (jittered)", fontsize=10)
    a1.set_xlim(0.5, hi + 0.5)
    a1.set_ylim(0.5, depths[-1] + 0.5)
    a1.set_xticks(range(1, hi + 1))
    a1.set_yticks(depths)
    a1.grid(alpha=0.3)
    a1.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"figure: {path}")


def merge(files) -> list:
    by_target: dict = {}
    for f in files:
        for r in json.loads(Path(f).read_text()):
            if r["target"] not in by_target:
                by_target[r["target"]] = r
                continue
            m = by_target[r["target"]]["cnn"]         # more seeds of the same target
            m["errors"] += r["cnn"]["errors"]
            m["mean"] = np.mean(m["errors"], axis=0).tolist()
    return [by_target[k] for k in sorted(by_target)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--targets", type=int, default=20)
    ap.add_argument("--first", type=int, default=0, help="index of the first target (to split a run)")
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--seed-offset", type=int, default=0, help="first torch seed (to add seeds later)")
    ap.add_argument("--max-depth", type=int, default=6)
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--batch", type=int, default=4, help="noisy copies per step")
    ap.add_argument("--noise", type=float, default=1.0, help="noise std / target std")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--no-dilation", action="store_true")
    ap.add_argument("--json", default=None)
    ap.add_argument("--figure", default=None)
    ap.add_argument("--from-json", nargs="+", default=None,
                    help="re-draw tables/figure from saved runs (their rows merged)")
    ap.add_argument("--quick", action="store_true", help="2 targets, depths 1-3, 1 seed, 50 steps")
    args = ap.parse_args(argv)
    if args.quick:
        args.targets, args.seeds, args.max_depth, args.steps = 2, 1, 3, 50
    if (min(args.targets, args.seeds, args.max_depth, args.width, args.steps, args.batch) < 1
            or not args.lr > 0 or not args.noise > 0):
        print("kma: error: --targets, --seeds, --max-depth, --width, --steps, --batch must be >= 1 "
              "and --lr, --noise > 0", file=sys.stderr)
        return 2
    if args.from_json:
        try:
            rows = merge(args.from_json)
        except (OSError, ValueError, KeyError) as e:
            print(f"kma: error: cannot read {' '.join(args.from_json)}: {e}", file=sys.stderr)
            return 2
        if not rows:
            print("kma: error: no rows in the given files", file=sys.stderr)
            return 2
        print(f"{len(rows)} targets, {len(rows[0]['cnn']['errors'])} seeds, from {' '.join(args.from_json)}")
        _report(rows, args.figure)
        return 0
    torch.set_num_threads(1)
    t0 = time.process_time()
    rows = run(args)
    _report(rows, args.figure)
    print(f"{args.targets} targets x depths 1-{args.max_depth} x {args.seeds} seeds, "
          f"{args.steps} steps, batch {args.batch}: {time.process_time() - t0:.0f} s CPU")
    return 0


def _report(rows, fig) -> None:
    r0 = rows[0]
    print(f"noise {r0['noise']}x target std, {'dilated' if r0['dilated'] else 'undilated'}; "
          f"receptive fields {[receptive_field(d, r0['dilated']) for d in r0['depths']]} samples; "
          f"transition: extra depth gains < {GAIN:.0%} (pre-registered)")
    print(tables(rows))
    if fig:
        figure(rows, fig)
    print(f"\npost hoc: the same with errors below {FLOOR:g} counted as equal")
    print(tables(rows, FLOOR).split("\n\n", 1)[1])


if __name__ == "__main__":
    sys.exit(main())
