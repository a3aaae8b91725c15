"""Figures of the dynamics comparison (``kma compare``): the run-to-run distance matrix
ordered by group, and a 2-D classical-MDS embedding of the runs coloured by group.

Both read at a handful of runs and at hundreds: run ids label the matrix only up to
``MAX_RUN_LABELS`` runs (beyond, the groups label it, at their blocks' centres), markers
shrink with the number of runs, and the legend lists groups, never runs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import plots
from .dynamics import classical_mds

MAX_RUN_LABELS = 40


def _ordered(section: dict) -> tuple[list[int], list[str], list[str]]:
    """Run indices ordered by group (``section["groups"]`` order, then run id), their
    groups, and the groups present."""
    runs, group_of = section["runs"], section["group_of"]
    order = [g for g in section["groups"] if any(group_of[r] == g for r in runs)]
    idx = sorted(range(len(runs)), key=lambda i: (order.index(group_of[runs[i]]), runs[i]))
    return idx, [group_of[runs[i]] for i in idx], order


def _colors(groups: list[str]):
    import matplotlib

    cmap = matplotlib.colormaps["tab10" if len(groups) <= 10 else "tab20"]
    return {g: cmap(k % cmap.N) for k, g in enumerate(groups)}


def _title(section: dict, what: str, by: str, analysis_id: str) -> str:
    """Names the metric, the role, the aligned windows, the runs, ``--by``, the analysis
    and, for the weighted metric, the mean share of the runs' weight on certified pairs."""
    n = len(section["runs"])
    mass = [m for m in (section.get("certified_mass") or {}).values() if m is not None]
    on = f" · {np.mean(mass):.0%} of the weight on certified pairs" if mass and section.get("ritz_pairs") == "weighted" else ""
    return (f"{what}\n{section['metric']} ({section['role']}, {section['n_bins']} aligned windows) · "
            f"{n} run{'s' if n != 1 else ''} by {by}\nanalysis {analysis_id}{on}")


def matrix_figure(section: dict, *, by: str, analysis_id: str = ""):
    """The N × N distance matrix, runs ordered by group, group blocks outlined."""
    plt = plots._plt()
    idx, labels, order = _ordered(section)
    D = np.asarray(section["distance"], dtype=float)[np.ix_(idx, idx)]
    n = len(idx)
    fig, ax = plt.subplots(figsize=(7.2, 6.4))
    im = ax.imshow(D, cmap="viridis", interpolation="nearest", vmin=0.0)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="distance between training dynamics")
    bounds, start = [], 0
    for g in order:
        size = labels.count(g)
        bounds.append((g, start, size))
        start += size
    for g, s, size in bounds:
        ax.add_patch(plt.Rectangle((s - 0.5, s - 0.5), size, size, fill=False, ec="white", lw=1.2))
    runs = [section["runs"][i] for i in idx]
    if n <= MAX_RUN_LABELS:
        ticks, names = list(range(n)), [f"{r} ({g})" for r, g in zip(runs, labels)]
        size = 7 if n <= 16 else 5
    else:
        ticks, names = [s + (k - 1) / 2 for _, s, k in bounds], [f"{by}={g} ({k})" for g, _, k in bounds]
        size = 8
    ax.set_xticks(ticks)
    ax.set_xticklabels(names, rotation=90, fontsize=size)
    ax.set_yticks(ticks)
    ax.set_yticklabels(names, fontsize=size)
    fig.suptitle(_title(section, "Distance matrix", by, analysis_id), fontsize=9)
    fig.tight_layout()
    return fig


def embedding_figure(section: dict, *, by: str, analysis_id: str = ""):
    """Classical MDS of the distance matrix in 2-D, a colour per group (the axes carry
    no unit of their own: only distances between points mean something)."""
    plt = plots._plt()
    D = np.asarray(section["distance"], dtype=float)
    X = classical_mds(D, 2)
    _, _, order = _ordered(section)
    colors = _colors(order)
    n = len(section["runs"])
    size = 60 if n <= 20 else (25 if n <= 100 else 10)
    fig, ax = plt.subplots(figsize=(7.2, 6.0))
    for g in order:
        ix = [i for i, r in enumerate(section["runs"]) if section["group_of"][r] == g]
        ax.scatter(X[ix, 0], X[ix, 1], s=size, color=colors[g], alpha=0.85 if n <= 100 else 0.6,
                   edgecolors="none", label=f"{by}={g} ({len(ix)})")
    ax.set_xlabel("MDS coordinate 1")
    ax.set_ylabel("MDS coordinate 2")
    ax.set_aspect("equal", adjustable="datalim")
    ax.legend(fontsize=8, loc="best", ncol=1 if len(order) <= 10 else 2, markerscale=max(1.0, 30 / size))
    fig.suptitle(_title(section, "Runs embedded by their training dynamics (classical MDS)", by, analysis_id),
                 fontsize=9)
    fig.tight_layout()
    return fig


def save_figures(section: dict, out: Path, *, by: str, analysis_id: str = "") -> list[Path]:
    """``dynamics_matrix.png`` and ``dynamics_mds.png`` in ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    return [plots.save(matrix_figure(section, by=by, analysis_id=analysis_id), out / "dynamics_matrix.png"),
            plots.save(embedding_figure(section, by=by, analysis_id=analysis_id), out / "dynamics_mds.png")]
