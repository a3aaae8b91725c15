"""Figures of spectra over training, for one run and for a group of runs.

Every figure reads a :class:`~pipeline.spectra.RunSpectra` (the windows of one analysis,
each placed at the epoch of its last snapshot, with a certified/uncertified mask per Ritz
value decided by the caller). Conventions shared by all figures, so that figures of
different runs can be laid side by side:

- colour = the window's end as a fraction of training (``viridis``: 0 = start, dark;
  1 = end, yellow), with a labelled colour bar; the scale is fixed, never the data range;
- certified Ritz values are filled markers, uncertified ones hollow grey circles;
- unit-circle panels have fixed axes ``[-LIM, LIM]²`` (Re λ, Im λ); a value beyond the frame
  is drawn on its border, along its own direction, as a square;
- one panel per layer (``all`` first), rows centred, no empty slots.

Matplotlib with the non-interactive Agg backend. ``*_figure`` functions return the
:class:`~matplotlib.figure.Figure`; :func:`analysis_figures` writes the PNGs of one run.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np

from .errors import plural
from .spectra import RunSpectra

LIM = 1.5  # unit-circle panels show [-LIM, LIM]² in Re λ, Im λ
CMAP = "viridis"
TIME_LABEL = "window end (fraction of training)"
MAX_PANELS = 12
MAX_LINES = 60  # singular-value curves drawn per panel (evenly spaced windows beyond)
FLOAT32_EPS = float(np.finfo(np.float32).eps)
DIST_FLOOR = 1e-16  # |λ − 1| drawn no lower (log axis; exactly 1 happens)


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _norm():
    from matplotlib.colors import Normalize

    return Normalize(vmin=0.0, vmax=1.0)


def _time_colorbar(fig, axes, cmap):
    from matplotlib.cm import ScalarMappable

    cb = fig.colorbar(ScalarMappable(norm=_norm(), cmap=cmap), ax=axes, shrink=0.85, pad=0.02)
    cb.set_label(TIME_LABEL)
    cb.set_ticks([0.0, 0.25, 0.5, 0.75, 1.0])
    cb.set_ticklabels(["0 start", "0.25", "0.5", "0.75", "1 end"])
    return cb


def _grid(n: int, max_cols: int = 3) -> tuple[int, int]:
    """(rows, cols) for ``n`` panels: the fewest rows of at most ``max_cols``, filled evenly
    (4 panels: 2 × 2, not 3 + 1)."""
    n = max(n, 1)
    rows = -(-n // max_cols)
    return rows, -(-n // rows)


def _panels(fig, n: int, max_cols: int = 3, **kw) -> list:
    """``n`` axes in rows of at most ``max_cols``, the last row centred: no empty slots."""
    rows, cols = _grid(n, max_cols)
    gs = fig.add_gridspec(rows, 2 * cols)
    axes = []
    for i in range(n):
        r, c = divmod(i, cols)
        in_row = cols if r < rows - 1 else n - cols * (rows - 1)
        offset = cols - in_row  # half-columns to centre a short last row
        axes.append(fig.add_subplot(gs[r, offset + 2 * c: offset + 2 * c + 2], **kw))
    return axes


def _title(fig, lines: list[str], width_in: float, left: bool = False) -> None:
    """A suptitle wrapped to the figure's width (about 11 characters per inch at size 10);
    ``left``: flush with the figure's left edge (clear of a key outside on the right)."""
    width = max(40, int(width_in * 11))
    text = "\n".join(textwrap.fill(line, width) for line in lines if line)
    fig.suptitle(text, fontsize=10, **({"x": 0.01, "ha": "left"} if left else {}))


def _circle_axes(ax, title: str) -> None:
    t = np.linspace(0, 2 * np.pi, 400)
    ax.plot(np.cos(t), np.sin(t), color="0.45", lw=0.8, zorder=1)
    ax.axhline(0, color="0.88", lw=0.5, zorder=0)
    ax.axvline(0, color="0.88", lw=0.5, zorder=0)
    ax.set_xlim(-LIM, LIM)
    ax.set_ylim(-LIM, LIM)
    ax.set_aspect("equal")
    ax.set_xlabel("Re λ")
    ax.set_ylabel("Im λ")
    ax.set_title(title, fontsize=9)


def _clip(lam: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(positions, outside): values beyond the frame moved onto its border, along their ray."""
    edge = np.maximum(np.abs(lam.real), np.abs(lam.imag))
    outside = edge > LIM * 0.98
    pos = lam.copy()
    pos[outside] = lam[outside] * (LIM * 0.98 / edge[outside])
    return pos, outside


def _scatter_spectrum(ax, spectra: RunSpectra, layer: str, cmap) -> tuple[int, int, int]:
    """Draw one run's windows of ``layer`` (uncertified underneath, later windows on top);
    returns (certified, total, outside) counts."""
    idx = spectra.rows(layer)
    lam_c, col_c, lam_u = [], [], []
    for i in idx:
        r, ok = spectra.results[i], spectra.reliable[i]
        lam_c.append(r.eigenvalues[ok])
        col_c.append(np.repeat(spectra.fraction(i), int(ok.sum())))
        lam_u.append(r.eigenvalues[~ok])
    lam_c = np.concatenate(lam_c) if lam_c else np.zeros(0, complex)
    col_c = np.concatenate(col_c) if col_c else np.zeros(0)
    lam_u = np.concatenate(lam_u) if lam_u else np.zeros(0, complex)
    pos_u, out_u = _clip(lam_u)
    pos_c, out_c = _clip(lam_c)
    dot = float(np.clip(16 * np.sqrt(400 / max(lam_c.size + lam_u.size, 1)), 4, 16))  # crowds: smaller dots
    for mask, marker, size in ((~out_u, "o", dot), (out_u, "s", 30)):
        if mask.any():
            ax.scatter(pos_u[mask].real, pos_u[mask].imag, s=size, marker=marker, zorder=2, facecolors="none",
                       edgecolors="0.65" if marker == "o" else "0.3", linewidths=0.6)
    for mask, marker, size in ((~out_c, "o", dot + 2), (out_c, "s", 30)):
        if mask.any():
            ax.scatter(pos_c[mask].real, pos_c[mask].imag, s=size, marker=marker, zorder=3,
                       c=cmap(col_c[mask]), edgecolors="none" if marker == "o" else "k", linewidths=0.6)
    return int(lam_c.size), int(lam_c.size + lam_u.size), int(out_c.sum() + out_u.sum())


def _spectrum_legend(fig, cmap, criterion: str, ncol: int = 2) -> None:
    from matplotlib.lines import Line2D

    handles = [
        Line2D([], [], ls="", marker="o", color=cmap(0.6), markeredgecolor="none",
               label=f"certified{f' ({criterion})' if criterion else ''}"),
        Line2D([], [], ls="", marker="o", markerfacecolor="none", markeredgecolor="0.6", label="not certified"),
        Line2D([], [], ls="", marker="s", markerfacecolor="none", markeredgecolor="0.3",
               label=f"beyond |Re λ| or |Im λ| = {LIM:g}, drawn on the border"),
        Line2D([], [], color="0.45", lw=0.8, label="unit circle"),
    ]
    fig.legend(handles=handles, loc="outside lower center", ncol=ncol, fontsize=8, frameon=False)


def _span(spectra: RunSpectra) -> str:
    n = len({tuple(r.window) for r in spectra.results})
    if not len(spectra.end):
        return "no windows"
    first, last = int(spectra.end.min()), int(spectra.end.max())
    ends = f"ending at epoch {first}" if first == last else f"ending at epochs {first}–{last}"
    return f"{plural(n, 'window')} {ends}"


def spectrum_figure(spectra: RunSpectra, *, max_layers: int = MAX_PANELS):
    """Ritz values of every window on the unit circle, coloured by the window's position
    in training; one panel per layer (``all`` first)."""
    plt = _plt()
    cmap = plt.get_cmap(CMAP)
    layers = spectra.layers()
    shown = layers[:max_layers]
    rows, cols = _grid(len(shown))
    width = max(3.3 * cols + 1.3, 6.4)
    fig = plt.figure(figsize=(width, 3.3 * rows + 1.4), layout="constrained")
    axes = _panels(fig, max(len(shown), 1))
    for ax, layer in zip(axes, shown):
        n_ok, n_all, n_out = _scatter_spectrum(ax, spectra, layer, cmap)
        _circle_axes(ax, f"{layer}\n{n_ok} of {n_all} certified" + (f", {n_out} beyond" if n_out else ""))
    _time_colorbar(fig, axes, cmap)
    _spectrum_legend(fig, cmap, spectra.criterion, ncol=2 if cols > 1 else 1)
    more = f" (first {len(shown)} of {len(layers)} layers)" if len(layers) > len(shown) else ""
    _title(fig, [f"Koopman spectrum of {spectra.label}{more}",
                 f"analysis {spectra.analysis_id} · {_span(spectra)}" if spectra.analysis_id else _span(spectra)],
           width)
    return fig


def _layer_summary(spectra: RunSpectra, layer: str):
    """Per window of ``layer`` (training order): epochs, max / median / 10% / 90% of the
    certified |λ|, min |λ − 1| over certified λ, and the number certified (NaN if none)."""
    idx = spectra.rows(layer)
    x = np.array([spectra.end[i] for i in idx], dtype=float)
    stats = np.full((len(idx), 5), np.nan)
    count = np.zeros(len(idx))
    for j, i in enumerate(idx):
        lam = spectra.results[i].eigenvalues[spectra.reliable[i]]
        count[j] = lam.size
        if lam.size:
            mod = np.abs(lam)
            stats[j] = [mod.max(), np.median(mod), np.quantile(mod, 0.1), np.quantile(mod, 0.9),
                        max(np.abs(lam - 1).min(), DIST_FLOOR)]
    return x, stats, count


def moduli_figure(spectra: RunSpectra, *, max_layers: int = 8):
    """Against training (epoch of each window's end): the largest certified |λ| per layer,
    with the median and 10–90 % band of the whole network's certified |λ| (top); the
    distance of the closest certified λ to 1 (middle, log scale); how many are certified
    (bottom)."""
    plt = _plt()
    layers = spectra.layers()[:max_layers]
    fig, (a1, a2, a3) = plt.subplots(3, 1, figsize=(8, 8), sharex=True, layout="constrained",
                                     gridspec_kw={"height_ratios": [3, 2, 1.3]})
    any_certified = False
    for k, layer in enumerate(layers):
        x, st, count = _layer_summary(spectra, layer)
        any_certified |= bool(np.isfinite(st[:, 4]).any())
        few = len(x) <= 40
        mk = dict(marker="o", ms=4) if few else {}
        color = "k" if layer == "all" else f"C{(k - 1) % 10}"
        lw = 1.8 if layer == "all" else 1.0
        if layer == "all":
            lo, hi = st[:, 2], st[:, 3]
            if len(x) == 1:
                a1.errorbar(x, st[:, 1], yerr=[st[:, 1] - lo, hi - st[:, 1]], color="0.5", capsize=6,
                            marker="D", ms=5, ls="", label="all: median, 10–90 % of certified |λ|")
            else:
                a1.fill_between(x, lo, hi, color="0.8", alpha=0.7, lw=0, label="all: 10–90 % of certified |λ|")
                a1.plot(x, st[:, 1], color="0.4", lw=1, ls="--", label="all: median certified |λ|")
        a1.plot(x, st[:, 0], color=color, lw=lw, label=f"{layer}: largest certified |λ|", **mk)
        a2.plot(x, st[:, 4], color=color, lw=lw, label=layer, **mk)
        a3.plot(x, count, color=color, lw=lw, drawstyle="default" if few else "steps-post", label=layer, **mk)
    a1.axhline(1.0, color="k", lw=0.7, ls=":", label="|λ| = 1")
    a1.set_xlim(-0.02 * spectra.total, 1.02 * spectra.total)  # the whole training, whatever the windows
    a1.ticklabel_format(axis="y", useOffset=False)
    start = spectra.start if spectra.start is not None else spectra.end
    spans = sorted({(int(start[i]), int(spectra.end[i])) for i in spectra.rows(layers[0])} if layers else set())
    if 0 < len(spans) <= 3:  # few windows: shade the epochs each one covers
        for k, (a, b) in enumerate(spans):
            for ax in (a1, a2, a3):
                ax.axvspan(a, b, color="C0", alpha=0.07, lw=0, label=None if k or ax is not a1 else (
                    f"window: epochs {a}–{b}" if len(spans) == 1 else "epochs the windows cover"))
    a1.set_ylabel("|λ|")
    a1.legend(fontsize=7, loc="best", ncol=2)  # after every labelled artist
    a2.set_yscale("log")
    if not any_certified:  # nothing to draw: a log axis needs limits of its own
        a2.set_ylim(1e-8, 1)
        a1.set_ylim(0, 1.5)
        a1.text(0.5, 0.5, "no certified eigenvalue in any window", transform=a1.transAxes,
                ha="center", va="center", color="0.3")
    a2.set_ylabel("min |λ − 1| (certified)")
    a3.set_ylabel("# certified")
    a3.set_xlabel("epoch (end of window)")
    a3.yaxis.get_major_locator().set_params(integer=True)
    a3.xaxis.get_major_locator().set_params(integer=True)
    if len(layers) > 1:
        a2.legend(fontsize=7, loc="best", ncol=min(len(layers), 4), title="layer", title_fontsize=7)
    _title(fig, [f"Eigenvalue moduli over training: {spectra.label}",
                 (f"analysis {spectra.analysis_id} · " if spectra.analysis_id else "") + _span(spectra)
                 + (f" · certified: {spectra.criterion}" if spectra.criterion else "")], 8)
    return fig


def singular_values_figure(spectra: RunSpectra, *, max_layers: int = MAX_PANELS):
    """Normalised singular values σ_i/σ_1 of every window (one curve per window, coloured
    by its position in training), one panel per layer; the float32 resolution marked."""
    plt = _plt()
    from matplotlib.ticker import MaxNLocator

    cmap = plt.get_cmap(CMAP)
    layers = spectra.layers()[:max_layers]
    rows, cols = _grid(len(layers))
    fig = plt.figure(figsize=(3.6 * cols + 1.3, 3.0 * rows + 1.2), layout="constrained")
    axes = _panels(fig, max(len(layers), 1))
    drawn_note = ""
    for ax, layer in zip(axes, layers):
        idx = spectra.rows(layer)
        if len(idx) > MAX_LINES:
            idx = [idx[j] for j in np.unique(np.linspace(0, len(idx) - 1, MAX_LINES).round().astype(int))]
            drawn_note = f" ({MAX_LINES} evenly spaced windows drawn per layer)"
        top = 1
        for i in idx:
            s = spectra.results[i].singular_values
            if s.size and s[0] > 0:
                ax.semilogy(np.arange(1, s.size + 1), s / s[0], color=cmap(spectra.fraction(i)), lw=1,
                            marker="o" if s.size <= 12 else None, ms=3)
                top = max(top, s.size)
        ax.axhline(FLOAT32_EPS, color="0.5", lw=0.8, ls=":")
        ax.text(1, FLOAT32_EPS, " float32 ε", fontsize=7, color="0.4", ha="left", va="bottom")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("index i")
        ax.set_ylabel(r"$\sigma_i\,/\,\sigma_1$")
        ax.set_title(layer, fontsize=9)
    _time_colorbar(fig, axes, cmap)
    _title(fig, [f"Singular-value decay per window: {spectra.label}{drawn_note}",
                 (f"analysis {spectra.analysis_id} · " if spectra.analysis_id else "") + _span(spectra)],
           3.6 * cols + 1.3)
    return fig


# --------------------------------------------------------------------------- groups
def group_spectrum_figure(groups: dict[str, list[RunSpectra]], *, by: str, layer: str = "all"):
    """Where each group's Ritz values of ``layer`` lie, and how many are certified over
    training. Top: one unit-circle panel per group, in the group's colour
    (:func:`group_colour`, the same as in ``group_moduli.png``): certified values of the
    runs' last windows dark and large, of earlier windows light, uncertified ones small grey
    dots underneath (all marks filled; a value beyond the frame a square on its border).
    Bottom: certified Ritz values per window against epoch, per group its median over the
    runs with a band (10–90 % from 5 runs, else min–max). The key, outside the data, says
    what every mark is; readable at 4 and at 200 runs."""
    plt = _plt()
    from matplotlib.colors import to_rgba
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    names = list(groups)
    n_runs = sum(len(sps) for sps in groups.values())
    cols = min(max(len(names), 1), 4)
    rows = -(-max(len(names), 1) // cols)
    fig = plt.figure(figsize=(3.1 * cols + 3.2, 3.1 * rows + 3.4), layout="constrained")
    gs = fig.add_gridspec(rows + 1, cols, height_ratios=[3.1] * rows + [2.4])
    circles = [fig.add_subplot(gs[i // cols, i % cols]) for i in range(max(len(names), 1))]
    a_n = fig.add_subplot(gs[rows, :])
    bands = set()
    total = max((sp.total for sps in groups.values() for sp in sps), default=1.0)
    for gi, (ax, g) in enumerate(zip(circles, names)):
        colour = group_colour(gi)
        n_ok, n_all, n_out, none = _scatter_group(ax, groups[g], layer, colour)
        runs = len(groups[g])
        _circle_axes(ax, f"{by}={g} ({plural(runs, 'run')})\n{n_ok:,} of {n_all:,} certified"
                     + (f", {n_out} beyond" if n_out else "")
                     + (f"\n{none} of {runs} runs: none certified" if none else ""))
        ax.title.set_color(colour if colour != "#F0E442" else "0.3")
        x, med, lo, hi, what = _group_band([_certified_share(sp, layer) for sp in groups[g]])
        if len(x):
            # equal medians of different groups stay visible: each group's marks a little apart
            x = x + (gi - (len(names) - 1) / 2) * 0.006 * total
            a_n.fill_between(x, lo, hi, color=colour, alpha=0.13, lw=0)
            for edge in (lo, hi):
                a_n.plot(x, edge, color=colour, lw=0.6, alpha=0.7)
            a_n.plot(x, med, color=colour, lw=2.2, marker="o" if len(x) <= 40 else None, ms=4.5,
                     label=f"{by}={g} ({plural(runs, 'run')})")
            bands.add(what)
    a_n.set_ylabel(f"share of Ritz values\ncertified ({layer})")
    a_n.set_xlabel("epoch (end of window)")
    a_n.set_ylim(-0.03, 1.03)
    a_n.xaxis.get_major_locator().set_params(integer=True)
    a_n.set_xlim(-0.02 * total, 1.02 * total)
    a_n.grid(True, color="0.92", lw=0.6)
    crit = next((sp.criterion for sps in groups.values() for sp in sps if sp.criterion), "")
    dark, first = "0.25", group_colour(0)
    key = [Line2D([], [], ls="", marker="o", ms=6, color=first, markeredgecolor="white", markeredgewidth=0.4,
                  label="certified, a run's last window (group colour)"),
           Line2D([], [], ls="", marker="o", ms=4, color=to_rgba(first, 0.35), markeredgecolor="none",
                  label="certified, earlier windows (light)"),
           Line2D([], [], ls="", marker="o", ms=2.5, color=UNCERTIFIED, markeredgecolor="none",
                  label="not certified (any window)"),
           Line2D([], [], ls="", marker="s", ms=5, color=dark, markeredgecolor="k",
                  label=f"beyond |Re λ| or |Im λ| = {LIM:g},\n  drawn on the border"),
           Line2D([], [], color="0.45", lw=0.8, label="unit circle"),
           Line2D([], [], color=dark, lw=2.2, marker="o", ms=3.5, label="bottom: median of the group's runs"),
           Patch(color=dark, alpha=0.18, label=f"bottom: band, {' / '.join(sorted(bands)) or 'none'} of the runs")]
    groups_key = [Line2D([], [], ls="", marker="o", ms=7, color=group_colour(gi),
                         label=f"{by}={g} ({plural(len(groups[g]), 'run')})") for gi, g in enumerate(names)]
    fig.legend(handles=groups_key + key, loc="outside right upper", fontsize=8, frameon=False,
               title=f"{by} (colour) and marks", title_fontsize=8)
    _title(fig, [f"Koopman spectra ({layer}) by {by} ({plural(n_runs, 'run')})",
                 (f"certified: {crit} · " if crit else "") + _analyses(groups)], 3.1 * cols, left=True)
    return fig


def _certified_share(sp: RunSpectra, layer: str) -> tuple[np.ndarray, np.ndarray]:
    """(epochs, share of the window's Ritz values that are certified) per window of ``layer``."""
    idx = sp.rows(layer)
    share = [float(sp.reliable[i].mean()) if sp.reliable[i].size else 0.0 for i in idx]
    return np.array([sp.end[i] for i in idx], dtype=float), np.array(share)


UNCERTIFIED = "#BBBBBB"


def _scatter_group(ax, runs: list[RunSpectra], layer: str, colour) -> tuple[int, int, int, int]:
    """One group's Ritz values of ``layer`` on a unit-circle panel (see
    :func:`group_spectrum_figure`); returns (certified, total, beyond the frame, runs with
    none certified). Dots shrink and fade as the panel fills, so 200 runs stay legible."""
    from matplotlib.colors import to_rgba

    last, early, unc = [], [], []
    none = 0
    for sp in runs:
        idx = sp.rows(layer)
        n = 0
        for k, i in enumerate(idx):
            r, ok = sp.results[i], sp.reliable[i]
            (last if k == len(idx) - 1 else early).append(r.eigenvalues[ok])
            unc.append(r.eigenvalues[~ok])
            n += int(ok.sum())
        none += n == 0
    cat = [np.concatenate(v) if v else np.zeros(0, complex) for v in (last, early, unc)]
    n_all = sum(v.size for v in cat)
    shrink = float(np.clip(np.sqrt(400 / max(n_all, 1)), 0.25, 1.0))   # crowds: smaller, fainter dots
    n_out = 0
    for lam, size, rgba, z in ((cat[2], 9 * shrink, to_rgba(UNCERTIFIED, 0.5 + 0.5 * shrink), 2),
                               (cat[1], 22 * shrink, to_rgba(colour, 0.15 + 0.25 * shrink), 3),
                               (cat[0], 40 * shrink + 6, to_rgba(colour, 0.55 + 0.45 * shrink), 4)):
        if not lam.size:
            continue
        pos, out = _clip(lam)
        n_out += int(out.sum())
        ax.scatter(pos[~out].real, pos[~out].imag, s=size, c=[rgba], edgecolors="white" if z == 4 else "none",
                   linewidths=0.3, zorder=z)
        if out.any():
            ax.scatter(pos[out].real, pos[out].imag, s=30, marker="s", c=[rgba], edgecolors="k",
                       linewidths=0.6, zorder=z)
    return int(cat[0].size + cat[1].size), int(n_all), n_out, none


GROUP_COLOURS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#F0E442")
# Okabe–Ito: distinct for colour-blind readers too; group i (natural order) always gets colour i


def group_colour(i: int) -> str:
    """The colour of the ``i``-th group (natural order): the same in every group figure."""
    return GROUP_COLOURS[i % len(GROUP_COLOURS)]


def _group_band(runs: list[tuple[np.ndarray, np.ndarray]]):
    """Per epoch (the union of the runs' window ends): the median over the runs that have a
    value there and a band — 10–90 % with 5 runs or more, else min–max. Returns
    ``(x, median, low, high, band label)``."""
    x = np.unique(np.concatenate([xs for xs, _ in runs])) if runs else np.array([])
    grid = np.full((len(runs), len(x)), np.nan)
    for k, (xs, ys) in enumerate(runs):
        grid[k, np.searchsorted(x, xs)] = ys
    ok = np.isfinite(grid).any(axis=0)
    x, grid = x[ok], grid[:, ok]
    if not len(x):
        return x, x, x, x, ""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)   # an epoch where only some runs have a value
        med = np.nanmedian(grid, axis=0)
        if len(runs) >= 5:
            lo, hi, what = np.nanpercentile(grid, 10, axis=0), np.nanpercentile(grid, 90, axis=0), "10–90 %"
        else:
            lo, hi, what = np.nanmin(grid, axis=0), np.nanmax(grid, axis=0), "min–max"
    return x, med, lo, hi, what


def group_moduli_figure(groups: dict[str, list[RunSpectra]], *, by: str, layer: str = "all"):
    """How far from the unit circle each group's spectra settle, against training (epoch of
    each window's end), both on a log scale: ||λ|max − 1|, the largest certified modulus'
    distance to the circle (top), and min |λ − 1| over certified λ (bottom). Per group
    (one colour, :func:`group_colour`): its runs as thin lines, their median as a thick
    line with markers, and a shaded band (10–90 % of the runs from 5 runs on, else
    min–max). The legend, outside the data, names each group with its run count and
    says what the line, band and thin lines are; readable at 4 and at 200 runs."""
    plt = _plt()
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    fig, (a1, a2) = plt.subplots(2, 1, figsize=(9, 7.2), sharex=True, layout="constrained")
    n_runs = sum(len(sps) for sps in groups.values())
    thin = dict(lw=0.6, alpha=max(0.08, min(0.5, 6.0 / max(n_runs, 1))))
    handles, bands = [], set()
    for gi, (g, sps) in enumerate(groups.items()):
        colour = group_colour(gi)
        gap, dist = [], []
        for sp in sps:
            x, st, _ = _layer_summary(sp, layer)
            gap.append((x, np.maximum(np.abs(st[:, 0] - 1.0), DIST_FLOOR)))
            dist.append((x, st[:, 4]))
            a1.plot(x, gap[-1][1], color=colour, **thin)
            a2.plot(x, st[:, 4], color=colour, **thin)
        for ax, runs in ((a1, gap), (a2, dist)):
            x, med, lo, hi, what = _group_band(runs)
            if len(x):
                ax.fill_between(x, lo, hi, color=colour, alpha=0.18, lw=0, step=None)
                ax.plot(x, med, color=colour, lw=2.2, marker="o" if len(x) <= 40 else None, ms=3.5)
                bands.add(what)
        none = "" if any(np.isfinite(y).any() for _, y in dist) else ", none certified: no line"
        handles.append(Line2D([], [], color=colour, lw=2.2,
                              label=f"{by}={g} ({len(sps)} run{'s' * (len(sps) != 1)}{none})"))
    key = [Line2D([], [], color="0.3", lw=2.2, marker="o", ms=3.5, label="median of the group's runs"),
           Patch(color="0.3", alpha=0.18, label=f"band: {' / '.join(sorted(bands)) or 'none'} of the runs"),
           Line2D([], [], color="0.3", **{**thin, "alpha": 0.5}, label="one run")]
    for ax in (a1, a2):
        ax.set_yscale("log")
        ax.grid(True, which="major", color="0.9", lw=0.6)
    a1.set_ylabel(f"||λ|max − 1| ({layer}, certified)")
    a2.set_ylabel(f"min |λ − 1| ({layer}, certified)")
    a2.set_xlabel("epoch (end of window)")
    a2.xaxis.get_major_locator().set_params(integer=True)
    total = max((sp.total for sps in groups.values() for sp in sps), default=1.0)
    a1.set_xlim(-0.02 * total, 1.02 * total)
    fig.legend(handles=handles + key, loc="outside right upper", fontsize=8, frameon=False,
               title=f"{by} (colour)", title_fontsize=8)
    _title(fig, [f"Distance to the unit circle and to 1 over training, by {by} ({n_runs} runs)",
                 _analyses(groups)], 9)
    return fig


def _analyses(groups: dict[str, list[RunSpectra]]) -> str:
    ids = sorted({sp.analysis_id for sps in groups.values() for sp in sps if sp.analysis_id})
    return f"analysis {', '.join(ids)}" if ids else ""


# --------------------------------------------------------------------------- files
def save(fig, path: Path, dpi: int = 110) -> Path:
    fig.savefig(path, dpi=dpi)
    _plt().close(fig)
    return Path(path)


def analysis_figures(spectra: RunSpectra, out_dir: Path) -> list[Path]:
    """``spectrum.png``, ``eigenvalues_over_training.png`` and ``singular_values.png`` of
    one run's analysis, written into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return [
        save(spectrum_figure(spectra), out_dir / "spectrum.png"),
        save(moduli_figure(spectra), out_dir / "eigenvalues_over_training.png"),
        save(singular_values_figure(spectra), out_dir / "singular_values.png"),
    ]
