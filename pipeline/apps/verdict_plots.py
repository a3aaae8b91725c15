"""Figures of the convergence verdict: per run and per group of runs.

Drawn from stored verdicts only (:mod:`pipeline.apps.verdicts`: the certified pairs of
every window, ``certified``, and the window ends, ``window_epochs``), so ``kma compare``
draws them without recomputing a spectrum. Conventions: x = epoch of the window's end;
top row: distance of each certified eigenvalue to 1, ``|λ − 1|`` (log scale, floored at
1e-8), marker area ∝ the pair's share of the window's amplitude, filled where the window
holds the criterion, hollow where not; δ dashed; bottom row: moduli ``|λ|`` with the band
``1 ± δ``; the converged-at point a vertical line; the bad-initialization verdict in the
panel title (``bad init: yes / no / not assessed``).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

FLOOR = 1e-8
MODULUS_RANGE = (0.0, 1.6)


def _pairs(verdict: dict):
    """Per certified pair: (epoch, |λ−1|, |λ|, share, window holds)."""
    rows = []
    checks = verdict.get("window_checks") or []
    epochs = verdict.get("window_epochs") or [c[1] - 1 for c in checks]
    for c, ep, cert in zip(checks, epochs, verdict.get("certified") or []):
        for re, im, share in cert:
            lam = complex(re, im)
            rows.append((ep, max(abs(lam - 1), FLOOR), abs(lam), share, bool(c[2])))
    if not rows:
        return np.zeros((0, 5))
    return np.array(rows, dtype=float)


def _bad_init_text(verdict: dict) -> str:
    b = verdict.get("bad_init")
    return "bad init: " + ("not assessed" if b is None else ("YES" if b else "no"))


def _conv_text(verdict: dict) -> str:
    if verdict.get("converged_at") is None:
        return f"not converged ({verdict.get('reason', 'no verdict')})"
    return f"converged at snapshot {verdict['converged_at']} (epoch {verdict.get('converged_epoch')})"


def _draw(ax_d, ax_m, verdict: dict, color, label=None, mark=True):
    p = _pairs(verdict)
    delta = float((verdict.get("criterion") or {}).get("delta", 0.01))
    if p.size:
        size = 12 + 140 * p[:, 3]
        held = p[:, 4] > 0
        for sel, face in ((held, color), (~held, "none")):
            if sel.any():
                ax_d.scatter(p[sel, 0], p[sel, 1], s=size[sel], facecolors=face, edgecolors=color,
                             linewidths=0.9, label=label if face is color else None)
                ax_m.scatter(p[sel, 0], np.clip(p[sel, 2], *MODULUS_RANGE), s=size[sel], facecolors=face,
                             edgecolors=color, linewidths=0.9)
        grow = p[:, 2] > 1 + delta     # certified growing pairs: a red ring
        if grow.any():
            ax_d.scatter(p[grow, 0], p[grow, 1], s=size[grow] + 60, facecolors="none", edgecolors="red",
                         linewidths=1.2)
            ax_m.scatter(p[grow, 0], np.clip(p[grow, 2], *MODULUS_RANGE), s=size[grow] + 60,
                         facecolors="none", edgecolors="red", linewidths=1.2)
    checks = verdict.get("window_checks") or []
    epochs = verdict.get("window_epochs") or [c[1] - 1 for c in checks]
    empty = [ep for ep, cert in zip(epochs, verdict.get("certified") or []) if not cert]
    if empty:   # windows with no certified pair: an x on the floor
        ax_d.scatter(empty, [FLOOR] * len(empty), marker="x", color=color, s=18, linewidths=0.8)
    if mark and verdict.get("converged_at") is not None:
        ep = verdict.get("converged_epoch")
        for ax in (ax_d, ax_m):
            ax.axvline(ep, color=color, lw=1.5, ls="-", alpha=0.8)
    return delta


def _frame(ax_d, ax_m, delta):
    ax_d.set_yscale("log")
    ax_d.set_ylim(FLOOR * 0.5, 3)
    ax_d.axhline(delta, color="0.3", ls="--", lw=1)
    ax_d.set_ylabel("|λ − 1| (certified)")
    ax_m.axhspan(1 - delta, 1 + delta, color="0.85")
    ax_m.axhline(1, color="0.3", lw=0.8)
    ax_m.set_ylim(*MODULUS_RANGE)
    ax_m.set_ylabel("|λ| (certified)")
    ax_m.set_xlabel("epoch of the window's end")


CLASS_COLORS = {"converged": "tab:green", "stalled": "tab:orange", "still_improving": "tab:blue",
                "diverging": "tab:red"}


def evidence_figure(verdict: dict, *, label: str = "", analysis_id: str = ""):
    """One run, second-version verdict, on one epoch axis: (1) training and validation
    loss at each window's end, the class each window read as (background), the
    convergence point (solid) and the online point a stopper would use (dashed);
    (2) predicted remaining motion / motion so far and the predicted val-loss gain, with
    their tolerances; (3) certified amplitude share at 1 with its threshold; (4) per layer,
    predicted remaining motion / motion so far."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ev = verdict.get("evidence") or {}
    crit = ev.get("criterion") or {}
    x = np.asarray(ev.get("window_epochs") or [], dtype=float)
    fig, axes = plt.subplots(4, 1, figsize=(8, 9.5), sharex=True)
    ax_l, ax_r, ax_s, ax_k = axes
    cls = ev.get("class_by_window") or []
    edges = np.concatenate([[x[0] - (x[1] - x[0] if x.size > 1 else 1)], x]) if x.size else []
    for i, c in enumerate(cls):
        for ax in axes:
            ax.axvspan(edges[i], edges[i + 1], color=CLASS_COLORS.get(c, "0.9"), alpha=0.10, lw=0)
    for key, name, st in (("train_loss_at", "training loss", "--"), ("val_loss_at", "validation loss", "-")):
        y = np.array([np.nan if v is None else v for v in ev.get(key) or []], dtype=float)
        if y.size and np.isfinite(y).any():
            ax_l.plot(x, y, st, marker=".", label=name, color="k")
    if ax_l.lines:
        ax_l.set_yscale("log")
        ax_l.legend(fontsize=7, loc="upper right", handlelength=3.5)
    ax_l.set_ylabel("loss at window end")
    ratio = [np.nan if (m is None or s_ in (None, 0)) else m / s_ for m, s_ in
             zip(ev.get("predicted_motion") or [], ev.get("motion_so_far") or [])]
    gain = [np.nan if g is None else g for g in ev.get("loss_gain") or []]
    floor = 1e-6
    if ratio:
        ax_r.plot(x, np.maximum(ratio, floor), marker="o", ms=3, color="tab:purple",
                  label=f"weights: remaining motion ({crit.get('motion', 'sum')}) / motion so far")
        ax_r.axhline(crit.get("motion_tol", 0.05), color="tab:purple", ls=":", lw=1)
    if gain and np.isfinite(gain).any():
        ax_r.plot(x, np.maximum(gain, floor), marker="s", ms=3, color="tab:brown",
                  label="loss: predicted remaining val-loss gain (relative)")
        ax_r.axhline(crit.get("loss_tol", 0.05), color="tab:brown", ls=":", lw=1)
    spread = [np.nan if v is None else v for v in ev.get("loss_spread") or []]
    if crit.get("loss_spread") is not None and spread and np.isfinite(spread).any():
        ax_r.plot(x, np.maximum(spread, floor), marker="^", ms=3, color="tab:olive",
                  label="loss: val-loss swing within the window (max/min − 1)")
        ax_r.axhline(crit["loss_spread"], color="tab:olive", ls=":", lw=1)
    ax_r.set_yscale("log")
    ax_r.set_ylabel("over the remaining budget")
    if ax_r.lines:
        ax_r.legend(fontsize=7, loc="best")
    ax_s.plot(x, ev.get("share_at_1") or [np.nan] * x.size, marker="o", ms=3, color="tab:gray")
    ax_s.axhline(crit.get("share", 0.8), color="0.3", ls=":", lw=1)
    ax_s.set_ylim(-0.05, 1.05)
    ax_s.set_ylabel("certified share at 1")
    cmap = plt.get_cmap("tab10")
    for i, (name, r) in enumerate((ev.get("layer_motion_ratio") or {}).items()):
        y = np.array([np.nan if v is None else v for v in r], dtype=float)
        if y.size == x.size:
            ax_k.plot(x, np.maximum(y, floor), marker=".", color=cmap(i % 10), label=name)
    ax_k.axhline(crit.get("motion_tol", 0.05), color="0.3", ls=":", lw=1)
    ax_k.set_yscale("log")
    ax_k.set_ylabel("per layer: predicted /\nmotion so far")
    if ax_k.get_legend_handles_labels()[0]:   # the tolerance line alone has no label
        ax_k.legend(fontsize=6, loc="upper right", ncol=2)
    ax_k.set_xlabel("epoch (window end)")
    for ax in axes:
        if verdict.get("converged_epoch") is not None:
            ax.axvline(verdict["converged_epoch"], color="tab:green", lw=1.6)
        if verdict.get("online_confirmed_epoch") is not None:
            ax.axvline(verdict["online_confirmed_epoch"], color="tab:green", lw=1, ls="--")
    ax_l.set_title(f"{label or verdict.get('run_id', '')} · {_bad_init_text(verdict)}\n"
                   f"class: {verdict.get('class')} — {str(verdict.get('reason', ''))[:110]}", fontsize=9)
    lim = ev.get("limitation")
    fig.text(0.01, 0.005, f"{analysis_id} · background: class as read at each window (green converged, "
             f"blue still improving, orange stalled, red diverging) · solid line: converged at · dashed: "
             f"confirmed (stop point) · dotted: tolerances" + (f"\n{lim}" if lim else ""), fontsize=6.5,
             color="0.3", wrap=True)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    return fig


def class_fractions(runs: list[dict], grid=None):
    """``(epochs, {class: fraction of runs})``: the class each run read as at each epoch of
    ``grid`` (its latest window ending at or before it; runs not yet judged are left out)."""
    per = [(np.asarray((v.get("evidence") or {}).get("window_epochs") or [], dtype=float),
            (v.get("evidence") or {}).get("class_by_window") or []) for v in runs]
    per = [(e, c) for e, c in per if len(e) and len(c) == len(e)]
    if not per:
        return np.zeros(0), {}
    if grid is None:
        grid = np.unique(np.concatenate([e for e, _ in per]))
    out = {c: np.zeros(len(grid)) for c in CLASS_COLORS}
    n = np.zeros(len(grid))
    for e, c in per:
        for i, t in enumerate(grid):
            j = np.searchsorted(e, t, side="right") - 1
            if j >= 0:
                out[c[j]][i] += 1
                n[i] += 1
    return grid, {c: np.divide(v, n, out=np.zeros_like(v), where=n > 0) for c, v in out.items()}


def run_figure(verdict: dict, *, label: str = "", analysis_id: str = ""):
    """One run: the second version's evidence (:func:`evidence_figure`) when the verdict
    has it; else ``|λ − 1|`` and ``|λ|`` of the certified pairs per window, converged-at
    line, bad-init verdict in the title."""
    if verdict.get("evidence"):
        return evidence_figure(verdict, label=label, analysis_id=analysis_id)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_d, ax_m) = plt.subplots(2, 1, figsize=(7.5, 6.5), sharex=True)
    delta = _draw(ax_d, ax_m, verdict, "tab:blue")
    _frame(ax_d, ax_m, delta)
    crit = verdict.get("criterion") or {}
    ax_d.set_title(f"{label or verdict.get('run_id', '')} · {_bad_init_text(verdict)}\n{_conv_text(verdict)}",
                   fontsize=10)
    fig.text(0.01, 0.005, f"{analysis_id} · criterion: certified |λ−1| ≤ {crit.get('delta')} carry ≥ "
             f"{crit.get('share')} of the amplitude, no certified |λ| > 1+δ, {crit.get('k')} consecutive "
             f"windows\nfilled: the window holds · area ∝ amplitude share · x: no certified pair "
             f"· red ring: growing, |λ| > 1+δ · vertical line: converged at", fontsize=7, color="0.3")
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    return fig


def share_at_1(verdict: dict) -> tuple[np.ndarray, np.ndarray]:
    """(window-end epochs, certified amplitude share within δ of 1) of one verdict: the
    quantity the convergence criterion compares with its share threshold (the stored
    ``evidence.share_at_1`` when the verdict has it, else summed from ``certified``)."""
    checks = verdict.get("window_checks") or []
    epochs = verdict.get("window_epochs") or [c[1] - 1 for c in checks]
    stored = (verdict.get("evidence") or {}).get("share_at_1")
    if stored is not None and len(stored) == len(epochs):
        share = [np.nan if v is None else float(v) for v in stored]
    else:
        delta = float((verdict.get("criterion") or {}).get("delta", 0.01))
        share = [sum(float(w) for re, im, w in cert if abs(complex(re, im) - 1) <= delta)
                 for cert in (verdict.get("certified") or [[]] * len(epochs))]
    return np.asarray(epochs, dtype=float), np.asarray(share, dtype=float)


CLASS_SHORT = {"converged": "converged", "stalled": "stalled", "still_improving": "still improving",
               "diverging": "diverging"}


def group_figure(groups: dict[str, list[tuple[str, dict]]], *, by: str = "", analysis_id: str = ""):
    """Convergence by group, on one epoch axis, each group in its colour
    (:func:`pipeline.plots.group_colour`, as in the other group figures). Top: the
    certified amplitude share within δ of 1 per window — the group's median over its runs
    with a band (10–90 % from 5 runs, else min–max) — and the criterion's threshold.
    Middle: the share of the group's runs converged by each epoch. Bottom: one filled dot
    per run at the epoch it converged; runs that never met the criterion sit in the
    "not met" strip right of the axis (a diamond), bad initialisations ringed in black;
    final classes counted beside each group. One key, outside the data, names every mark.
    ``groups`` is ``{group: [(label, verdict), ...]}``; readable at 4 and at 200 runs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    from ..plots import _group_band, group_colour

    names = list(groups)
    n_runs = sum(len(r) for r in groups.values())
    ends = [e for runs in groups.values() for _, v in runs for e in (v.get("window_epochs") or [])]
    total = float(max(ends, default=1) or 1)
    miss_lo, miss_hi = 1.05 * total, 1.2 * total      # the "not met" strip, right of the epochs
    fig, (a_s, a_c, a_r) = plt.subplots(
        3, 1, sharex=True, layout="constrained", figsize=(11, 6.2 + 0.45 * max(len(names), 1)),
        gridspec_kw={"height_ratios": [2.4, 1.6, 0.55 * max(len(names), 1) + 0.5]})
    crit = next(((v.get("criterion") or {}) for runs in groups.values() for _, v in runs if v.get("criterion")), {})
    threshold = float(crit.get("share", 0.8))
    handles, bands, ticks = [], set(), []
    dot = float(np.clip(60 * np.sqrt(8 / max(n_runs, 1)), 14, 60))
    for gi, g in enumerate(names):
        colour, runs = group_colour(gi), groups[g]
        x, med, lo, hi, what = _group_band([share_at_1(v) for _, v in runs])
        if len(x):
            a_s.fill_between(x, lo, hi, color=colour, alpha=0.15, lw=0)
            a_s.plot(x, med, color=colour, lw=2.2, marker="o" if len(x) <= 40 else None, ms=4)
            bands.add(what)
        conv = np.array([v.get("converged_epoch") for _, v in runs if v.get("converged_at") is not None], float)
        steps = np.unique(np.concatenate([[0.0], conv, [total]]))
        dodge = (gi - (len(names) - 1) / 2) * 0.012   # equal curves of several groups stay visible
        a_c.step(steps, [(conv <= t).sum() / len(runs) + dodge for t in steps], where="post",
                 color=colour, lw=2.2)
        # one row per group: converged runs at their epoch, the rest in the strip
        y0 = len(names) - 1 - gi
        rng = np.random.default_rng(gi)                # fixed jitter: the same figure every time
        jy, jx = rng.uniform(-0.5, 0.5, len(runs)), rng.uniform(-0.4, 0.4, len(runs))
        for (label, v), j, k in zip(runs, jy, jx):
            met = v.get("converged_at") is not None
            xv = float(v.get("converged_epoch") or 0) if met else (miss_lo + miss_hi) / 2 + k * (miss_hi - miss_lo)
            bad = bool(v.get("bad_init"))
            a_r.scatter([xv], [y0 + 0.6 * j * (len(runs) > 1)], s=dot, marker="o" if met else "D",
                        c=[colour], edgecolors="k" if bad else "white", linewidths=1.3 if bad else 0.4,
                        alpha=0.85, zorder=3)
        final = [v.get("class") for _, v in runs]
        counts = [f"{CLASS_SHORT.get(c, c)} {final.count(c)}" for c in CLASS_COLORS if final.count(c)]
        ticks.append((y0, "\n".join([g] + [" · ".join(counts[i:i + 2]) for i in range(0, len(counts), 2)])))
        n_met = int(conv.size)
        handles.append(Line2D([], [], color=colour, lw=2.2, marker="o", ms=6,
                              label=f"{by}={g}: {len(runs)} run{'s' * (len(runs) != 1)}, "
                                    f"{n_met} converged, {len(runs) - n_met} not met"))
    a_s.axhline(threshold, color="0.3", ls="--", lw=1)
    a_s.set_ylim(-0.03, 1.03)
    a_s.set_ylabel("certified amplitude\nshare within δ of 1")
    a_c.set_ylim(-0.03, 1.03)
    a_c.set_ylabel("share of runs\nconverged by epoch")
    a_r.axvspan(miss_lo, miss_hi, color="0.93", lw=0, zorder=0)
    a_r.text((miss_lo + miss_hi) / 2, len(names) - 0.45, "not met", ha="center", va="bottom", fontsize=8,
             color="0.3")
    a_r.set_ylim(-0.6, len(names) - 0.4 + 0.35)
    a_r.set_yticks([t for t, _ in ticks], [lab for _, lab in ticks], fontsize=7.5)
    a_r.set_xlabel("epoch (end of window)")
    a_r.set_xlim(-0.02 * total, miss_hi + 0.01 * total)
    for ax in (a_s, a_c, a_r):
        ax.grid(True, axis="x", color="0.92", lw=0.6)
    for ax in (a_s, a_c):
        ax.grid(True, axis="y", color="0.92", lw=0.6)
    grey = "0.35"
    key = [Line2D([], [], color=grey, lw=2.2, marker="o", ms=4, label="top: median of the group's runs"),
           Patch(color=grey, alpha=0.15, label=f"top: band, {' / '.join(sorted(bands)) or 'none'} of the runs"),
           Line2D([], [], color="0.3", ls="--", lw=1, label=f"top: criterion, share ≥ {threshold:g} "
                                                          f"(δ = {crit.get('delta', 0.01)})"),
           Line2D([], [], color=grey, lw=2.2, drawstyle="steps-post", label="middle: share converged by then"),
           Line2D([], [], ls="", marker="o", ms=7, color=grey, markeredgecolor="white",
                  label="bottom: one run, the epoch it converged"),
           Line2D([], [], ls="", marker="D", ms=6, color=grey, markeredgecolor="white",
                  label="bottom: one run that never met it (strip)"),
           Line2D([], [], ls="", marker="o", ms=7, color=grey, markeredgecolor="k", markeredgewidth=1.3,
                  label="black edge: judged a bad init"),
           Line2D([], [], ls="", marker="", label="marker size: the same for every run")]
    fig.legend(handles=handles + key, loc="outside right upper", fontsize=8, frameon=False,
               title=f"{by} (colour) and marks", title_fontsize=8)
    fig.suptitle(f"Convergence verdicts by {by} ({n_runs} run{'s' * (n_runs != 1)})"
                 + (f" · analysis {analysis_id}" if analysis_id else ""), fontsize=10, x=0.01, ha="left")
    return fig


def save_run_figure(run, verdict: dict, path: Path, *, label: str = "", analysis_id: str = "") -> Path:
    """:func:`run_figure` written to ``path`` (PNG)."""
    import matplotlib.pyplot as plt

    fig = run_figure(verdict, label=label or run.run_id, analysis_id=analysis_id)
    try:
        fig.savefig(path, dpi=110)
    finally:
        plt.close(fig)
    return Path(path)


def save_group_figure(groups, path: Path, *, by: str = "", analysis_id: str = "") -> Path:
    import matplotlib.pyplot as plt

    fig = group_figure(groups, by=by, analysis_id=analysis_id)
    try:
        fig.savefig(path, dpi=110)
    finally:
        plt.close(fig)
    return Path(path)
