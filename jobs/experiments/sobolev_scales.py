"""H^-s losses where every scale is learnable: 4096 points, a Fourier-feature MLP that
fits all four scales of the target on clean data, noise 0.5x-5x the signal's std (white
and 1/f), against early-stopped MSE, MSE + weight decay and MSE on a Wiener-filtered
target. The clean error is reported per scale.

Command (about 8 CPU-minutes on one thread, 25 CPU-s per (noise, seed) case; pure torch,
no sweep machinery: the nine models of a case are trained side by side as one batched
network, which is exactly nine separate trainings — separate parameters, Adam elementwise)::

    nice -n 10 python jobs/experiments/sobolev_scales.py --seeds 2 --epochs 600 --out sobolev_scales.json

or split over seeds and merged (what made the docs' table)::

    nice -n 10 python jobs/experiments/sobolev_scales.py --seed-list 0 --epochs 600 --out s0.json &
    nice -n 10 python jobs/experiments/sobolev_scales.py --seed-list 1 --epochs 600 --out s1.json
    python jobs/experiments/sobolev_scales.py --merge s0.json s1.json --out sobolev_scales.json

Target on x = j/4096, j < 4096 (periodic):  sin 2πx + 0.5 sin(8πx + 1) + 0.25 sin(32πx + 2)
+ 0.25 sin(96πx + 3): frequencies 1, 4, 16, 48, std 0.83. Noise of std c × 0.83,
c in {0.5, 1, 2, 5}; white (randn) or 1/f (power ∝ 1/k, random phases, scaled to that
std), and c = 0 (clean). Model: x -> [sin 2πBx, cos 2πBx] (64 fixed frequencies
B ~ N(0, 24²), drawn per seed) -> 64 tanh -> 64 tanh -> 1; full-batch Adam, lr 3e-3.

Off the FFT grid (--offgrid 0.37): every frequency + 0.37 cycles per window (1.37, 4.37,
16.37, 48.37), not periodic on the window, so the H^-s weights and the Wiener filter see
leakage; per-scale errors project on the shifted frequencies, "above" is relative to
‖clean‖. `--out ON.json --versus OFF.json` prints the two side by side::

    nice -n 10 python jobs/experiments/sobolev_scales.py --offgrid 0.37 --seeds 3 \
        --cases clean:0,white:0.5,white:1,white:2,white:5 --out offgrid.json

Methods (same initialisation within a seed, same noise draw):
  mse          MSE on all 4096 points, last epoch (and the oracle-best epoch, labelled)
  mse_es       MSE on a random 80 % of the points, stopped at the least MSE on the other
               20 % (noisy labels: a stop anyone can use)
  mse_wd       AdamW-style decoupled weight decay λ in {0.01, 0.1, 1} on the same 80 %;
               λ chosen by the least held-out MSE at the last epoch, last epoch reported
  wiener       MSE on all points against the Wiener-filtered target
               (pipeline.training.sobolev.wiener_target, white-noise model), last epoch
  hm0.5/1/2    H^-s loss (pipeline.training.sobolev.hminus_loss) on all points, last
               epoch (and the oracle-best epoch)
Per scale: clean_errors (the relative error of the projection on cos/sin 2πfx, f the
target's frequencies) and band_errors for k >= 64 (what the model put above the target's
band, relative to ‖clean‖: fitted noise).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from pipeline.training.sobolev import (  # noqa: E402
    band_errors, clean_errors, hminus_loss, metric_name, wiener_target)

N = 4096
FREQS = (1.0, 4.0, 16.0, 48.0)
AMPS = (1.0, 0.5, 0.25, 0.25)
PHASES = (0.0, 1.0, 2.0, 3.0)
LEVELS = (0.5, 1.0, 2.0, 5.0)
WDS = (0.01, 0.1, 1.0)
SS = (0.5, 1.0, 2.0)
# model index -> (name, uses split, weight decay, loss s or None, wiener target)
MODELS = ([("mse", False, 0.0, None, False), ("mse_es", True, 0.0, None, False)]
          + [(f"mse_wd{wd:g}", True, wd, None, False) for wd in WDS]
          + [("wiener", False, 0.0, None, True)]
          + [(f"hm{s:g}", False, 0.0, s, False) for s in SS])
K = len(MODELS)


def freqs(offgrid: float = 0.0) -> tuple[float, ...]:
    """The target's frequencies (cycles per window): 1, 4, 16, 48, each shifted by
    ``offgrid`` (a fraction of an FFT bin; 0 = on the grid, periodic on the window)."""
    return tuple(f + offgrid for f in FREQS)


def target(offgrid: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.arange(N, dtype=torch.float64) / N
    y = sum(a * torch.sin(2 * math.pi * f * x + p)
            for f, a, p in zip(freqs(offgrid), AMPS, PHASES))
    return x, y


def above_band(pred: torch.Tensor, clean: torch.Tensor, lo: int = 64) -> float:
    """‖(pred − clean) restricted to rfft bins k >= lo‖ / ‖clean‖ (float64). On the grid
    this is ``band_errors(pred, clean, [lo, N//2+1])[0]`` (no clean power there); off the
    grid the clean target leaks into those bins, and ``band_errors`` would divide by
    that leakage instead of by ‖clean‖."""
    p, c = pred.detach().reshape(-1).double(), clean.detach().reshape(-1).double()
    mult = torch.full((N // 2 + 1,), 2.0, dtype=torch.float64)
    mult[0] = mult[-1] = 1.0
    pe = mult * torch.fft.rfft(p - c).abs() ** 2
    pc = mult * torch.fft.rfft(c).abs() ** 2
    return float((pe[lo:].sum() / pc.sum()) ** 0.5)


def noise(kind: str, std: float, g: torch.Generator) -> torch.Tensor:
    if kind == "white":
        e = torch.randn(N, generator=g, dtype=torch.float64)
    else:  # 1/f: power ∝ 1/k for k >= 1, random phases
        k = torch.arange(N // 2 + 1, dtype=torch.float64)
        amp = torch.zeros_like(k)
        amp[1:] = k[1:] ** -0.5
        ph = 2 * math.pi * torch.rand(N // 2 + 1, generator=g, dtype=torch.float64)
        e = torch.fft.irfft(amp * torch.exp(1j * ph), n=N)
    return std * (e - e.mean()) / e.std()


def init(fan_in: int, fan_out: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    b = 1.0 / math.sqrt(fan_in)
    w = (torch.rand(fan_in, fan_out, generator=g) * 2 - 1) * b     # one init per seed,
    c = (torch.rand(fan_out, generator=g) * 2 - 1) * b             # shared by all K models
    return (w.expand(K, -1, -1).clone().requires_grad_(),
            c.expand(K, -1).clone().unsqueeze(1).requires_grad_())


def run_case(kind: str, level: float, seed: int, epochs: int, every: int,
             offgrid: float = 0.0) -> dict:
    x, clean = target(offgrid)
    sd = float(clean.std())
    g = torch.Generator().manual_seed(1000 * seed + 7)
    y = clean + (noise(kind, level * sd, g) if level > 0 else 0.0)
    split = torch.randperm(N, generator=g)
    train_mask = torch.zeros(N, dtype=torch.bool)
    train_mask[split[: int(0.8 * N)]] = True
    val_mask = ~train_mask
    y_w = wiener_target(y)
    B = 24.0 * torch.randn(64, generator=g)
    feats = torch.cat([torch.sin(2 * math.pi * x.float()[:, None] * B),
                       torch.cos(2 * math.pi * x.float()[:, None] * B)], 1)      # (N, 128)
    params = [*init(128, 64, g), *init(64, 64, g), *init(64, 1, g)]
    opt = torch.optim.Adam(params, lr=3e-3)
    wd = torch.tensor([m[2] for m in MODELS]).view(K, 1, 1)
    yf, ywf = y.float(), y_w.float()
    tm = train_mask.float()

    def forward() -> torch.Tensor:
        h = torch.tanh(feats @ params[0] + params[1])          # (K, N, 64)
        h = torch.tanh(h @ params[2] + params[3])
        return (h @ params[4] + params[5]).squeeze(2)          # (K, N)

    snaps, vals = [], []
    for epoch in range(epochs + 1):
        pred = forward()
        if epoch % every == 0 or epoch == epochs:
            with torch.no_grad():
                snaps.append((epoch, pred.detach().double().clone()))
                vals.append(((pred.detach() - yf)[:, val_mask] ** 2).mean(1))
        if epoch == epochs:
            break
        losses = []
        for i, (_, use_split, _, s, wien) in enumerate(MODELS):
            t = ywf if wien else yf
            if s is not None:
                losses.append(hminus_loss(pred[i], t, s))
            elif use_split:
                losses.append((((pred[i] - t) ** 2) * tm).sum() / tm.sum())
            else:
                losses.append(((pred[i] - t) ** 2).mean())
        opt.zero_grad()
        torch.stack(losses).sum().backward()     # separate parameters: = K separate trainings
        opt.step()
        with torch.no_grad():                    # decoupled weight decay (AdamW), per model
            for p in params:
                p.mul_(1 - 3e-3 * wd.view(K, *([1] * (p.ndim - 1))))

    vals_t = torch.stack(vals)                   # (evals, K)

    def metrics(pred: torch.Tensor) -> dict:
        ce = clean_errors(pred, clean, x, freqs(offgrid))
        # per-scale keys stay f1/f4/f16/f48 (the unshifted scale) off the grid too
        return {"total": ce["clean_error"],
                **{f"f{f:g}": ce[metric_name(fs)] for f, fs in zip(FREQS, freqs(offgrid))},
                "above": (band_errors(pred, clean, [64, N // 2 + 1])[0] if offgrid == 0
                          else above_band(pred, clean))}

    def best_oracle(i: int) -> tuple[int, dict]:
        ms = [(metrics(p[i]), ep) for ep, p in snaps]
        m, ep = min(ms, key=lambda t: t[0]["total"])
        return ep, m

    out = {"kind": kind, "level": level, "seed": seed, "methods": {}}
    if offgrid:
        out["offgrid"] = offgrid
    last = snaps[-1][1]
    names = [m[0] for m in MODELS]
    for i, name in enumerate(names):
        if name.startswith("mse_wd"):
            continue
        r = {"final": metrics(last[i])}
        if name == "mse_es":
            j = int(vals_t[:, i].argmin())
            r = {"final": metrics(snaps[j][1][i]), "epoch": snaps[j][0]}
        elif name in ("mse",) or name.startswith("hm"):
            ep, m = best_oracle(i)
            r["oracle"], r["oracle_epoch"] = m, ep
        out["methods"][name] = r
    wd_idx = [names.index(f"mse_wd{wd:g}") for wd in WDS]
    pick = min(wd_idx, key=lambda i: float(vals_t[-1, i]))
    out["methods"]["mse_wd"] = {"final": metrics(last[pick]), "wd": MODELS[pick][2]}
    return out


ROWS = [("mse", "final", "MSE, last epoch"), ("mse", "oracle", "MSE, best epoch (oracle)"),
        ("mse_es", "final", "MSE, early-stopped on 20 % held out"),
        ("mse_wd", "final", "MSE + weight decay (λ by held-out)"),
        ("wiener", "final", "MSE on Wiener-filtered target"),
        ("hm0.5", "final", "H^-0.5, last epoch"), ("hm1", "final", "H^-1, last epoch"),
        ("hm2", "final", "H^-2, last epoch"), ("hm1", "oracle", "H^-1, best epoch (oracle)")]


def tables(results: list[dict]) -> str:
    """Markdown: per noise colour, methods x noise levels; a cell is the mean over seeds of
    the total clean error, then per scale f = 1/4/16/48 and above the band (k >= 64)."""
    def cell(kind, level, name, which):
        rs = [r["methods"][name][which] for r in results
              if r["kind"] == kind and r["level"] == level]
        if not rs:
            return "-"
        mean = {k: sum(r[k] for r in rs) / len(rs) for k in rs[0]}
        best = min(rows_total(kind, level))
        tot = f"{mean['total']:.3f}"
        if which != "oracle" and abs(mean["total"] - best) < 1e-12:
            tot = f"**{tot}**"
        return (f"{tot} ({mean['f1']:.2f}/{mean['f4']:.2f}/{mean['f16']:.2f}/"
                f"{mean['f48']:.2f}; {mean['above']:.2f})")

    def rows_total(kind, level):
        out = []
        for name, which, label in ROWS:
            if which == "oracle":
                continue                      # the bold mark is for usable methods only
            rs = [r["methods"][name][which]["total"] for r in results
                  if r["kind"] == kind and r["level"] == level]
            out.append(sum(rs) / len(rs))
        return out

    seeds = len({r["seed"] for r in results})
    shifts = sorted({r.get("offgrid", 0.0) for r in results})
    where = ("" if shifts == [0.0] else
             ", off the grid: f + " + "/".join(f"{s:g}" for s in shifts) + " bin")
    lines = []
    for kind, levels in (("clean", (0.0,)), ("white", LEVELS), ("pink", LEVELS)):
        if not any(r["kind"] == kind for r in results):
            continue
        head = "noise = 0" if kind == "clean" else " | ".join(
            f"{kind} {c:g}×" for c in levels)
        lines += [f"**{kind}** ({seeds} seeds, mean{where})", "",
                  f"| method | {head} |", "|---|" + "---|" * len(levels)]
        for name, which, label in ROWS:
            lines.append(f"| {label} | " + " | ".join(
                cell(kind, c, name, which) for c in levels) + " |")
        lines.append("")
    return "\n".join(lines)


def versus(on: list[dict], off: list[dict]) -> str:
    """Markdown: the total clean error on the grid → off it, per method and level (mean
    over the seeds both runs share), then per scale f = 1/4/16/48 for each."""
    seeds = sorted({r["seed"] for r in on} & {r["seed"] for r in off})
    shift = "/".join(f"{s:g}" for s in sorted({r.get("offgrid", 0.0) for r in off}))
    keys = sorted({(r["kind"], r["level"]) for r in on} & {(r["kind"], r["level"]) for r in off},
                  key=lambda t: (t[0] != "clean", t[0], t[1]))

    def mean(rs, kind, level, name, which):
        vs = [r["methods"][name][which] for r in rs if r["seed"] in seeds
              and r["kind"] == kind and r["level"] == level]
        return {k: sum(v[k] for v in vs) / len(vs) for k in vs[0]}

    head = " | ".join("clean" if k == "clean" else f"{k} {c:g}×" for k, c in keys)
    lines = [(f"Total clean error, on the grid → off it (+{shift} bin); mean over seeds "
              f"{', '.join(map(str, seeds))}"), "",
             f"| method | {head} |", "|---|" + "---|" * len(keys)]
    for name, which, label in ROWS:
        lines.append(f"| {label} | " + " | ".join(
            f"{mean(on, k, c, name, which)['total']:.3f} → "
            f"{mean(off, k, c, name, which)['total']:.3f}" for k, c in keys) + " |")
    cols = [f"f{f:g}" for f in FREQS] + ["above"]
    lines += ["", "Per scale (f = 1, 4, 16, 48; above: k >= 64 relative to ‖clean‖), on → off",
              "", "| method | noise | " + " | ".join(cols) + " |",
              "|---|---|" + "---|" * len(cols)]
    for name, label in (("mse_es", "MSE, early-stopped"), ("wiener", "MSE on Wiener target"),
                        ("hm1", "H^-1, last epoch")):
        for k, c in keys:
            a, b = mean(on, k, c, name, "final"), mean(off, k, c, name, "final")
            lines.append(f"| {label} | {'clean' if k == 'clean' else f'{k} {c:g}×'} | "
                         + " | ".join(f"{a[q]:.2f} → {b[q]:.2f}" for q in cols) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--seed-list", default=None,
                    help="comma-separated seeds instead of range(--seeds), e.g. to split a run")
    ap.add_argument("--merge", nargs="+", type=Path, default=None,
                    help="JSON outputs of split runs: concatenate them into --out, print tables")
    ap.add_argument("--epochs", type=int, default=600)
    ap.add_argument("--every", type=int, default=25)
    ap.add_argument("--out", type=Path, default=Path("sobolev_scales.json"))
    ap.add_argument("--cases", default="all", help="'all' or e.g. 'white:1,clean:0'")
    ap.add_argument("--table", action="store_true", help="print the tables of --out; no training")
    ap.add_argument("--offgrid", type=float, default=0.0, metavar="FRACTION",
                    help="shift every target frequency by FRACTION of an FFT bin (cycles per "
                         "window), e.g. 0.37: not periodic on the window, every FFT-based "
                         "method (H^-s weights, Wiener filter) sees leakage; 0 = on the grid")
    ap.add_argument("--versus", type=Path, default=None, metavar="OFF_JSON",
                    help="print on-grid --out against off-grid OFF_JSON side by side; no training")
    a = ap.parse_args(argv)
    if a.versus:
        print(versus(json.loads(a.out.read_text()), json.loads(a.versus.read_text())))
        return 0
    if not (math.isfinite(a.offgrid) and 0 <= a.offgrid < 1):
        print(f"kma: error: --offgrid must be in [0, 1) (a fraction of a bin), got {a.offgrid}",
              file=sys.stderr)
        return 2
    if a.merge:
        merged: dict = {}                   # one result per (noise, level, seed): first wins
        for p in a.merge:
            for r in json.loads(p.read_text()):
                merged.setdefault((r["kind"], r["level"], r["seed"], r.get("offgrid", 0.0)), r)
        a.out.write_text(json.dumps(list(merged.values()), indent=1))
        a.table = True
    if a.table:
        print(tables(json.loads(a.out.read_text())))
        return 0
    torch.set_num_threads(1)
    cases = [("clean", 0.0)] + [(k, c) for k in ("white", "pink") for c in LEVELS]
    if a.cases != "all":
        cases = [(c.split(":")[0], float(c.split(":")[1])) for c in a.cases.split(",")]
    results = []
    for kind, level in cases:
        seeds = ([int(t) for t in a.seed_list.split(",")] if a.seed_list
                 else range(a.seeds))
        for seed in seeds:
            t0 = time.process_time()
            results.append(run_case(kind, level, seed, a.epochs, a.every, a.offgrid))
            m = results[-1]["methods"]
            print(f"{kind} {level:g} seed {seed}: " + ", ".join(
                f"{k} {v['final']['total']:.3f}" for k, v in m.items())
                + f"  ({time.process_time() - t0:.0f} cpu-s)", flush=True)
            a.out.write_text(json.dumps(results, indent=1))
    print(tables(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
