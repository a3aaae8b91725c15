"""Figures of an analysis: spectra on the unit circle, eigenvalues over training,
singular-value decay. Matplotlib with the non-interactive Agg backend; each function
writes PNG files and returns their paths.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _by_layer(results) -> dict[str, list]:
    out: dict[str, list] = {}
    for r in results:
        out.setdefault(r.layer, []).append(r)
    return out


def spectrum_figure(results, path: Path, *, title: str = "", max_layers: int = 9) -> Path:
    """Ritz values of every window on the unit circle, coloured by log10 residual;
    one panel per layer (``all`` first)."""
    plt = _plt()
    from matplotlib.colors import Normalize

    layers = list(_by_layer(results).items())[:max_layers]
    n = len(layers)
    cols = min(n, 3)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 4 * rows), squeeze=False)
    res_all = np.concatenate([r.residuals for r in results if r.residuals.size] or [np.ones(1)])
    logres = np.log10(np.clip(res_all, 1e-16, None))
    norm = Normalize(vmin=max(float(logres.min()), -12), vmax=max(float(logres.max()), -1))
    t = np.linspace(0, 2 * np.pi, 400)
    sc = None
    for ax, (layer, rows_) in zip(axes.flat, layers):
        ax.plot(np.cos(t), np.sin(t), color="0.6", lw=0.8)
        lam = np.concatenate([r.eigenvalues for r in rows_])
        res = np.concatenate([r.residuals for r in rows_])
        if lam.size:
            sc = ax.scatter(lam.real, lam.imag, c=np.log10(np.clip(res, 1e-16, None)), cmap="viridis_r",
                            norm=norm, s=14, alpha=0.8, edgecolors="none")
        ax.set_aspect("equal")
        ax.set_title(layer, fontsize=9)
        ax.axhline(0, color="0.85", lw=0.5)
        ax.axvline(0, color="0.85", lw=0.5)
        lim = max(1.1, float(np.abs(lam).max()) * 1.05) if lam.size else 1.1
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    if sc is not None:
        fig.colorbar(sc, ax=axes, label="log10 residual", shrink=0.8)
    fig.suptitle(f"Koopman spectrum (all windows) {title}", fontsize=10)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def eigenvalues_over_training(results, path: Path, *, residual_tol: float, layer: str = "all",
                              title: str = "") -> Path:
    """|λ| and arg λ of the reliable Ritz values against the window's end snapshot."""
    plt = _plt()
    rows = _by_layer(results).get(layer, [])
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    for r in rows:
        ok = r.reliable(residual_tol)
        lam = r.eigenvalues[ok]
        x = np.full(lam.size, r.window[1])
        a1.scatter(x, np.abs(lam), s=10, color="C0")
        a2.scatter(x, np.angle(lam), s=10, color="C1")
        bad = r.eigenvalues[~ok]
        a1.scatter(np.full(bad.size, r.window[1]), np.abs(bad), s=6, color="0.75", marker="x")
    a1.axhline(1.0, color="k", lw=0.7, ls="--")
    a1.set_ylabel("|λ|")
    a2.set_ylabel("arg λ (rad)")
    a2.set_xlabel("window end (snapshot)")
    a1.set_title(f"{layer}: reliable (κ·residual ≤ {residual_tol:g}) eigenvalues over training {title}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def singular_values_figure(results, path: Path, *, layer: str = "all", title: str = "") -> Path:
    """Normalised singular values σ_i/σ_1 of every window, coloured by position."""
    plt = _plt()
    rows = _by_layer(results).get(layer, [])
    fig, ax = plt.subplots(figsize=(6, 4))
    cmap = plt.get_cmap("plasma")
    for i, r in enumerate(rows):
        s = r.singular_values
        if s.size and s[0] > 0:
            ax.semilogy(np.arange(1, s.size + 1), s / s[0], color=cmap(i / max(len(rows) - 1, 1)), lw=1)
    ax.set_xlabel("index")
    ax.set_ylabel("σ_i / σ_1")
    ax.set_title(f"{layer}: singular-value decay per window (early → late: dark → light) {title}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def analysis_figures(results, out_dir: Path, *, title: str = "", residual_tol: float) -> list[Path]:
    out_dir = Path(out_dir)
    return [
        spectrum_figure(results, out_dir / "spectrum.png", title=title),
        eigenvalues_over_training(results, out_dir / "eigenvalues_over_training.png",
                                  residual_tol=residual_tol, title=title),
        singular_values_figure(results, out_dir / "singular_values.png", title=title),
    ]
