"""Spectra placed on the training axis: what the figures draw and MLflow charts.

An analysis is a list of :class:`~pipeline.koopman.WindowResult` rows (one per layer and
window ``[a, b)`` of snapshots). To compare runs over training, every window is placed at
the epoch of its last snapshot ``b - 1`` (the ``step`` of the training metrics, which are
logged per epoch), and each Ritz pair is marked certified or not by :func:`reliable_mask`,
the one place that decides it. (With snapshots every few optimizer steps, several windows
can end in one epoch: they share that step.)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# A Ritz pair is reliable when its window's residuals are informative and the first-order
# bound on its eigenvalue's error, κ · residual (condition number times the certified
# data residual of the unit Ritz vector), is at most this: an absolute distance in the
# λ-plane, where the eigenvalues a verdict reads sit near the unit circle
# (docs/pages/numerics.md#certified-spectra). The default of every ``residual_tol``.
RELIABLE_RESIDUAL = 1e-2


def reliable_mask(result, residual_tol: float) -> np.ndarray:
    """Boolean (r,): which Ritz pairs of one window are certified — the engine's own
    rule, :meth:`pipeline.koopman.WindowResult.reliable` (κ · residual ≤ ``residual_tol``
    in a window whose residuals are informative; see docs/pages/numerics.md#certified-spectra)."""
    return np.asarray(result.reliable(residual_tol), dtype=bool)


def _criterion(results, residual_tol: float) -> str:
    """What "certified" means for these results, in words for a legend."""
    return f"κ·residual ≤ {residual_tol:g}, informative window"


def window_end_epochs(results, snapshot_epochs=None) -> np.ndarray:
    """Int (n_rows,): the epoch of each window's last snapshot.

    ``snapshot_epochs`` (n_snapshots,) is the store's ``snapshot_epochs`` attribute (epoch
    0 is the initial weights); without it (an older run) the snapshot index stands in.
    """
    return _epochs([int(r.window[1]) - 1 for r in results], snapshot_epochs)


def window_start_epochs(results, snapshot_epochs=None) -> np.ndarray:
    """Int (n_rows,): the epoch of each window's first snapshot."""
    return _epochs([int(r.window[0]) for r in results], snapshot_epochs)


def _epochs(snapshots, snapshot_epochs) -> np.ndarray:
    idx = np.array(snapshots, dtype=np.int64)
    if snapshot_epochs is not None and len(snapshot_epochs) > int(idx.max(initial=-1)):
        return np.asarray(snapshot_epochs, dtype=np.int64)[idx]
    return idx


@dataclass
class RunSpectra:
    """One analysis of one run, ready to draw or log.

    ``results`` are the WindowResult rows; ``reliable`` one boolean (r,) mask per row;
    ``end`` (n_rows,) the epoch of each window's end (``start``: of its first snapshot);
    ``total`` the training length in epochs (normalises ``end`` to the fraction of
    training, the figures' colour scale).
    """

    label: str
    results: list
    reliable: list
    end: np.ndarray
    total: float
    analysis_id: str = ""
    criterion: str = ""  # what "certified" means here, for legends
    start: np.ndarray | None = None

    @classmethod
    def build(cls, results, *, label: str, residual_tol: float, snapshot_epochs=None,
              analysis_id: str = "", reliable=None) -> "RunSpectra":
        results = list(results)
        end = window_end_epochs(results, snapshot_epochs)
        if snapshot_epochs is not None and len(snapshot_epochs):
            total = float(max(snapshot_epochs))
        else:
            total = float(max((r.window[1] - 1 for r in results), default=1))
        if reliable is not None:
            masks, criterion = [np.asarray(m, dtype=bool) for m in reliable], ""
        else:
            masks = [reliable_mask(r, residual_tol) for r in results]
            criterion = _criterion(results, residual_tol)
        return cls(label, results, masks, end, max(total, 1.0), analysis_id, criterion,
                   window_start_epochs(results, snapshot_epochs))

    @classmethod
    def of_run(cls, run, results, *, residual_tol: float, analysis_id: str = "", label: str | None = None):
        """From a stored :class:`~pipeline.storage.store.Run` (its ``snapshot_epochs``)."""
        return cls.build(results, label=label or run.run_id, residual_tol=residual_tol,
                         snapshot_epochs=run.attrs.get("snapshot_epochs"), analysis_id=analysis_id)

    def layers(self) -> list[str]:
        """Layer names, ``all`` first, in the order the analysis wrote them."""
        seen = list(dict.fromkeys(r.layer for r in self.results))
        return sorted(seen, key=lambda name: name != "all")

    def rows(self, layer: str) -> list[int]:
        """Indices of the layer's windows, in training order."""
        idx = [i for i, r in enumerate(self.results) if r.layer == layer]
        return sorted(idx, key=lambda i: (self.results[i].window[1], self.results[i].window[0]))

    def fraction(self, i: int) -> float:
        """Window ``i``'s end as a fraction of training, in [0, 1]."""
        return float(np.clip(self.end[i] / self.total, 0.0, 1.0))


LOG_FLOOR = 1e-12   # log10 metrics: a distance below this (exactly on the circle) counts as 1e-12
ROLES = ("first", "hidden", "last")


def layer_roles(layers) -> dict[str, str]:
    """Each layer's role, so that runs of different depths line up in a chart: the first
    and the last layer (in network order: ``layers.0``, ``layers.1``, ..., then ``out``),
    and the ``hidden`` ones between them. ``all`` and a network of one layer get none."""
    import re

    def order(name):
        m = re.fullmatch(r"layers\.(\d+)", name)
        return (0, int(m.group(1)), "") if m else (1, 0, name)

    named = sorted((n for n in dict.fromkeys(layers) if n != "all"), key=order)
    if len(named) < 2:
        return {}
    return {n: "first" if i == 0 else "last" if i == len(named) - 1 else "hidden" for i, n in enumerate(named)}


def _stats(r_rank: float, lam: np.ndarray, n_ok: int, residuals: np.ndarray) -> dict[str, float | None]:
    gap = float(abs(np.abs(lam).max() - 1.0)) if lam.size else None
    dist = float(np.abs(lam - 1).min()) if lam.size else None
    return {
        "rank": float(r_rank),
        "n_reliable": float(n_ok),
        "max_abs_reliable": float(np.abs(lam).max()) if lam.size else None,
        "median_abs_reliable": float(np.median(np.abs(lam))) if lam.size else None,
        "min_dist_to_1": dist,
        "median_residual": float(np.median(residuals)) if residuals.size else None,
        # distances to the unit circle and to 1 on a log scale: 1.001 and 1.06 apart in a chart
        "log10_gap_max_abs": float(np.log10(max(gap, LOG_FLOOR))) if gap is not None else None,
        "log10_min_dist_to_1": float(np.log10(max(dist, LOG_FLOOR))) if dist is not None else None,
    }


def window_metrics(spectra: RunSpectra) -> dict[str, list[tuple[int, float]]]:
    """MLflow metrics ``{"<key>/<name>": [(epoch, value), ...]}``, one point per window
    (step = the epoch of the window's last snapshot): ``n_reliable``, ``rank``,
    ``max_abs_reliable``, ``median_abs_reliable``, ``min_dist_to_1`` (closest reliable λ
    to 1), ``median_residual``, and on a log scale ``log10_gap_max_abs`` (log10 of
    ||λ|max − 1|, the largest certified modulus' distance to the unit circle) and
    ``log10_min_dist_to_1``. ``<key>`` is each layer (``all``, ``layers.0``, ..., ``out``)
    and each role (:func:`layer_roles`: ``first``, ``hidden`` — every hidden layer's
    certified λ pooled — and ``last``), which exist at every depth. Values that do not
    exist (no reliable λ) are left out."""
    out: dict[str, list[tuple[int, float]]] = {}

    def put(key, end, vals):
        for k, v in vals.items():
            if v is not None and np.isfinite(v):
                out.setdefault(f"{key}/{k}", []).append((int(end), v))

    roles = layer_roles(r.layer for r in spectra.results)
    pooled: dict[tuple, list[int]] = {}
    for i, r in enumerate(spectra.results):
        ok = spectra.reliable[i]
        put(r.layer, spectra.end[i], _stats(r.rank, r.eigenvalues[ok], int(ok.sum()), r.residuals))
        if r.layer in roles:
            pooled.setdefault((tuple(r.window), roles[r.layer]), []).append(i)
    for (_, role), idx in sorted(pooled.items(), key=lambda kv: (spectra.end[kv[1][0]], ROLES.index(kv[0][1]))):
        lam = np.concatenate([spectra.results[i].eigenvalues[spectra.reliable[i]] for i in idx])
        res = np.concatenate([np.asarray(spectra.results[i].residuals) for i in idx])
        put(role, spectra.end[idx[0]], _stats(sum(spectra.results[i].rank for i in idx), lam,
                                             sum(int(spectra.reliable[i].sum()) for i in idx), res))
    return out
