"""``kma compare``: runs side by side, grouped by a config key (depth, init, seed, ...).

For every finished run with a stored analysis: the final losses and, from the whole
network's spectrum in the last window, how many Ritz values are reliable, the largest
reliable |λ| and the distance of the closest reliable λ to 1 (converging training
clusters its eigenvalues at 1). A table per run, means per group, and two figures:
the largest reliable |λ| over training per run, and last-window spectra per group.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .analysis import RELIABLE_RESIDUAL, list_analyses, load_results
from .errors import KMAError
from .storage.store import FINISHED, TrajectoryStore


def _last(values):
    vals = [v for v in (values or []) if v is not None]
    return float(vals[-1]) if vals else float("nan")


def collect(store: TrajectoryStore, run_ids=None, analysis_id=None, by="depth", sweep=None,
            skipped: dict | None = None) -> list[dict]:
    """One row per finished run (with its latest or the named analysis).

    Runs named in ``run_ids`` must exist (else KMAError, before anything is read). A run
    with damaged metadata or an unreadable analysis is not compared: ``skipped`` (if
    given) receives ``{run_id: reason}``.
    """
    from .storage.health import split_runs

    skipped = {} if skipped is None else skipped
    if run_ids:
        known = set(store.run_ids())
        unknown = [r for r in run_ids if r not in known]
        if unknown:
            raise KMAError(f"run {unknown[0]}: not in store {store.url}")
    ids, damaged = split_runs(store, FINISHED)
    skipped.update({rid: msg for rid, msg in damaged.items() if not run_ids or rid in run_ids})
    for rid in run_ids or []:  # a named run that is not finished is said so, not dropped
        if rid not in ids and rid not in damaged:
            skipped[rid] = f"run {rid}: skipped: not finished (status {store.status(rid)})"
    rows = []
    for rid in ids:
        if run_ids and rid not in run_ids:
            continue
        try:
            row = _row(store, rid, analysis_id, by, sweep)
        except (KMAError, KeyError, ValueError, TypeError, OSError) as e:
            skipped[rid] = f"run {rid}: skipped: its analysis cannot be read ({type(e).__name__}: {str(e)[:150]})"
            continue
        if row is not None:
            rows.append(row)
    if not rows:
        raise KMAError(f"no finished runs{' with analysis ' + analysis_id if analysis_id else ''} in {store.url}"
                       + (f" ({len(skipped)} skipped: {next(iter(skipped.values()))})" if skipped else ""))
    return rows


def _row(store: TrajectoryStore, rid: str, analysis_id, by: str, sweep) -> dict | None:
    run = store.open_run(rid)
    if sweep and run.attrs.get("sweep") != sweep:
        return None
    ids = list_analyses(run)
    if analysis_id:
        aid = analysis_id if analysis_id in ids else None
    else:  # the most recent current analysis of this run (else the most recent outdated one)
        ids = list_analyses(run, outdated=False) or ids
        aid = max(ids, key=lambda a: run.analysis_info(a).get("created", ""), default=None)
    if analysis_id and aid is None:
        return None
    results = [r for r in load_results(run, aid) if r.layer == "all"] if aid else []
    row = {
        "run_id": rid,
        "group": str(run.config.get(by, run.attrs.get(by, "-"))),
        "status": run.status,
        "train_loss": _last(run.metrics.get("train_loss")),
        "val_loss": _last(run.metrics.get("val_loss")),
        "val_accuracy": _last(run.metrics.get("val_accuracy")),
        "analysis_id": aid,
        "series": [],
    }
    for r in results:
        lam = r.eigenvalues[r.reliable(RELIABLE_RESIDUAL)]
        row["series"].append((r.window[1], float(np.abs(lam).max()) if lam.size else np.nan))
    if results:
        last = results[-1]
        ok = last.reliable(RELIABLE_RESIDUAL)
        lam = last.eigenvalues[ok]
        row.update(
            n_reliable=int(ok.sum()),
            max_abs_reliable=float(np.abs(lam).max()) if lam.size else float("nan"),
            min_dist_to_1=float(np.abs(lam - 1).min()) if lam.size else float("nan"),
            last_eigenvalues=last.eigenvalues, last_residuals=last.residuals, last_reliable=ok,
        )
    return row


def table(rows: list[dict]) -> str:
    cols = ["group", "run_id", "status", "train_loss", "val_loss", "val_accuracy", "n_reliable",
            "max_abs_reliable", "min_dist_to_1"]

    def fmt(v):
        if isinstance(v, float):
            return "-" if np.isnan(v) else f"{v:.4g}"
        return "-" if v is None else str(v)

    data = [[fmt(r.get(c)) for c in cols] for r in sorted(rows, key=lambda r: (r["group"], r["run_id"]))]
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(r["group"], []).append(r)
    for g, rs in sorted(groups.items()):
        mean = [g, f"(mean of {len(rs)})", ""] + [
            fmt(float(np.nanmean([r.get(c, np.nan) for r in rs])) if any(np.isfinite(r.get(c, np.nan)) for r in rs) else np.nan)
            for c in cols[3:]
        ]
        data.append(mean)
    widths = [max(len(c), *(len(row[i]) for row in data)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(cols, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in data]
    return "\n".join(lines)


def figures(rows: list[dict], out: Path, by: str) -> list[Path]:
    from .plots import _plt

    plt = _plt()
    out.mkdir(parents=True, exist_ok=True)
    groups = sorted({r["group"] for r in rows})
    color = {g: f"C{i % 10}" for i, g in enumerate(groups)}
    fig, ax = plt.subplots(figsize=(7, 4))
    for r in rows:
        if r["series"]:
            x, y = zip(*r["series"])
            ax.plot(x, y, color=color[r["group"]], marker="o", ms=3, lw=1, alpha=0.8)
    for g in groups:
        ax.plot([], [], color=color[g], label=f"{by}={g}")
    ax.axhline(1, color="k", ls="--", lw=0.7)
    ax.set_xlabel("window end (snapshot)")
    ax.set_ylabel("largest reliable |λ|")
    ax.legend(fontsize=8)
    fig.tight_layout()
    p1 = out / "max_abs_eigenvalue_over_training.png"
    fig.savefig(p1, dpi=110)
    plt.close(fig)

    n = len(groups)
    fig, axes = plt.subplots(1, n, figsize=(3.6 * n, 3.8), squeeze=False)
    t = np.linspace(0, 2 * np.pi, 300)
    for ax, g in zip(axes[0], groups):
        ax.plot(np.cos(t), np.sin(t), color="0.6", lw=0.8)
        for r in rows:
            if r["group"] == g and "last_eigenvalues" in r:
                lam, ok = r["last_eigenvalues"], r["last_reliable"]
                ax.scatter(lam[ok].real, lam[ok].imag, s=10, color=color[g])
                ax.scatter(lam[~ok].real, lam[~ok].imag, s=8, color="0.75", marker="x")
        ax.set_aspect("equal")
        ax.set_title(f"{by}={g}", fontsize=9)
    fig.suptitle("last-window spectra (dots reliable, crosses not)", fontsize=9)
    fig.tight_layout()
    p2 = out / "last_window_spectra.png"
    fig.savefig(p2, dpi=110)
    plt.close(fig)
    return [p1, p2]
