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


def run_figure(verdict: dict, *, label: str = "", analysis_id: str = ""):
    """One run: ``|λ − 1|`` and ``|λ|`` of the certified pairs per window, converged-at
    line, bad-init verdict in the title."""
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


def group_figure(groups: dict[str, list[tuple[str, dict]]], *, by: str = "", analysis_id: str = ""):
    """Groups side by side (one column each, shared axes): every run of the group in its
    own colour, its converged-at line, and per column how many runs converged and were
    judged bad inits. ``groups`` is ``{group: [(label, verdict), ...]}``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = max(1, len(groups))
    fig, axes = plt.subplots(2, n, figsize=(4.2 * n + 0.8, 6.8), sharex=True, sharey="row", squeeze=False)
    cmap = plt.get_cmap("tab10")
    delta = 0.01
    for j, (g, runs) in enumerate(groups.items()):
        ax_d, ax_m = axes[0, j], axes[1, j]
        for i, (label, verdict) in enumerate(runs):
            delta = _draw(ax_d, ax_m, verdict, cmap(i % 10), label=label)
        _frame(ax_d, ax_m, delta)
        if j:
            ax_d.set_ylabel("")
            ax_m.set_ylabel("")
        conv = sum(v.get("converged_at") is not None for _, v in runs)
        bad = [v.get("bad_init") for _, v in runs]
        bad_txt = "not assessed" if all(b is None for b in bad) else f"{sum(bool(b) for b in bad)}/{len(bad)}"
        ax_d.set_title(f"{by} = {g}\nconverged {conv}/{len(runs)} · bad init {bad_txt}", fontsize=10)
        if ax_d.get_legend_handles_labels()[0]:
            ax_d.legend(fontsize=6, loc="best", framealpha=0.7)
    fig.suptitle(f"convergence verdicts by {by} · {analysis_id}", fontsize=10)
    fig.tight_layout()
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
