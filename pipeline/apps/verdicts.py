"""Per-run verdicts: one dict per analysed run, merged from a list of producers.

A verdict is ``{"run_id", "converged_at", "converged_epoch", "bad_init", ...evidence}``.
Each producer is a callable ``producer(ctx: VerdictInput) -> dict`` whose keys are merged
into the run's verdict in order (later producers win on a shared key). The convergence
producer (:mod:`pipeline.apps.convergence`) and the bad-initialization one
(:mod:`pipeline.apps.badinit`) are in :data:`PRODUCERS`; ``bad_init`` is ``None`` (not
assessed) when the stored run is not at hand.

The verdict is computed once, when the analysis is made (``kma analyze``, a sweep's
default analysis), stored with the analysis (its ``verdict`` attribute, see
:func:`pipeline.workflows.analyze.write_results`), and read back by ``kma runs``, ``kma compare``
and ``kma sync`` without recomputation. MLflow gets it as tags and metrics
(:func:`mlflow_tags`, :func:`mlflow_metrics`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable

from . import convergence

log = logging.getLogger(__name__)


@dataclass
class VerdictInput:
    """What a producer may look at.

    ``spectra``: the verdict spectra (whole network, :func:`convergence.verdict_spectra`),
    ``results``: every WindowResult of the analysis (all layers, the analysis' own cut),
    ``run``: the stored :class:`~pipeline.storage.store.Run` (its trajectory, metrics,
    config) or None, ``snapshot_epochs`` (n_snapshots,) or None, ``status`` of the run.
    """

    run_id: str
    spectra: list
    results: list = field(default_factory=list)
    run: Any = None
    snapshot_epochs: Any = None
    status: str | None = None
    residual_tol: float = convergence.RELIABLE_RESIDUAL


def convergence_producer(ctx: VerdictInput) -> dict:
    """``converged_at`` / ``converged_epoch`` and the criterion's evidence."""
    crit = convergence.Criterion(residual_tol=ctx.residual_tol)
    return convergence.converged_at(ctx.spectra, crit, snapshot_epochs=ctx.snapshot_epochs,
                                    status=ctx.status)


def badinit_producer(ctx: VerdictInput) -> dict:
    """``bad_init`` and its evidence (:func:`pipeline.apps.badinit.detect_run`: the first
    snapshots of the stored run, read again; nothing when the run is not at hand)."""
    if ctx.run is None:
        return {}
    from . import badinit

    return badinit.detect_run(ctx.run, residual_tol=ctx.residual_tol)


# The producers, in order; each (ctx: VerdictInput) -> dict of verdict fields.
PRODUCERS: list[Callable[[VerdictInput], dict]] = [convergence_producer, badinit_producer]


def build_verdict(ctx: VerdictInput, producers=None) -> dict:
    """The run's verdict: the defaults (``bad_init`` None = not assessed), then every
    producer's dict merged in order. A producer that fails is logged and recorded under
    ``verdict_errors``; the others still count."""
    out: dict = {"run_id": ctx.run_id, "converged_at": None, "converged_epoch": None, "bad_init": None}
    for producer in PRODUCERS if producers is None else producers:
        try:
            out.update(producer(ctx) or {})
        except Exception as e:  # noqa: BLE001 - one producer's bug must not lose the others' verdicts
            name = getattr(producer, "__name__", repr(producer))
            log.exception("verdict producer %s failed on run %s", name, ctx.run_id)
            out.setdefault("verdict_errors", []).append(f"{name}: {type(e).__name__}: {e}")
    out["run_id"] = ctx.run_id
    return out


def for_estimator(run, est, residual_tol: float) -> dict:
    """The verdict of a stored run from its fitted estimator (``kma analyze``)."""
    ctx = VerdictInput(run.run_id, convergence.verdict_spectra(est), est.results_, run,
                       run.attrs.get("snapshot_epochs"), run.status, residual_tol)
    return build_verdict(ctx)


def for_stored(run, results, residual_tol: float) -> dict:
    """The verdict of a stored analysis that has none (made before verdicts existed):
    from its stored whole-network spectra as they are (no factors to re-cut); the
    evidence says so (``spectra_source``)."""
    whole = [r for r in results if r.layer == "all"]
    ctx = VerdictInput(run.run_id, whole, list(results), run, run.attrs.get("snapshot_epochs"),
                       run.status, residual_tol)
    out = build_verdict(ctx)
    out["spectra_source"] = "stored spectra (analysis made before verdicts)"
    if isinstance(out.get("criterion"), dict):
        out["criterion"] = {**out["criterion"], "cut": "the analysis' own"}
    return out


def summary(verdict: dict | None) -> dict:
    """The headline fields: ``run_id``, ``converged_at``, ``converged_epoch``,
    ``bad_init`` (and ``reason``) — the ``kma runs`` / ``kma compare`` columns."""
    v = verdict or {}
    return {k: v.get(k) for k in ("run_id", "converged_at", "converged_epoch", "bad_init", "reason")}


def cell(verdict: dict | None) -> str:
    """One table cell: ``12 (ep 12)``, ``no``, or ``-`` (no verdict stored)."""
    if not verdict:
        return "-"
    if verdict.get("converged_at") is None:
        return "no"
    return f"{verdict['converged_at']} (ep {verdict.get('converged_epoch')})"


def bad_init_cell(verdict: dict | None) -> str:
    b = (verdict or {}).get("bad_init")
    return "-" if b is None else ("yes" if b else "no")


def mlflow_tags(verdict: dict | None) -> dict[str, str]:
    """Tags: ``kma.converged`` (yes/no), ``kma.converged_at``, ``kma.converged_epoch``,
    ``kma.convergence_reason``, ``kma.bad_init`` (yes/no/not assessed)."""
    if not verdict:
        return {}
    conv = verdict.get("converged_at") is not None
    b = verdict.get("bad_init")
    tags = {"kma.converged": "yes" if conv else "no",
            "kma.convergence_reason": str(verdict.get("reason", ""))[:250],
            "kma.bad_init": "not assessed" if b is None else ("yes" if b else "no")}
    if conv:
        tags["kma.converged_at"] = str(verdict["converged_at"])
        tags["kma.converged_epoch"] = str(verdict.get("converged_epoch"))
    return tags


def mlflow_metrics(verdict: dict | None) -> dict[str, list[tuple[int, float]]]:
    """Metrics (step 0): ``verdict/converged`` (1/0), ``verdict/converged_at`` and
    ``verdict/converged_epoch`` when converged, ``verdict/bad_init`` (1/0) when assessed,
    ``verdict/windows_held``."""
    if not verdict:
        return {}
    out = {"verdict/converged": [(0, float(verdict.get("converged_at") is not None))]}
    for key in ("converged_at", "converged_epoch", "windows_held"):
        if verdict.get(key) is not None:
            out[f"verdict/{key}"] = [(0, float(verdict[key]))]
    if verdict.get("bad_init") is not None:
        out["verdict/bad_init"] = [(0, float(bool(verdict["bad_init"])))]
    return out


def latest(run) -> tuple[str | None, dict | None]:
    """``(analysis id, verdict)`` of the run's most recent current analysis that stores a
    verdict (``(None, None)`` when none does): what ``kma runs`` shows, read from the
    store, never recomputed."""
    from ..results import list_analyses

    best = (None, None, "")
    for aid in list_analyses(run, outdated=False):
        info = run.analysis_info(aid)
        v = info.get("verdict")
        if v is not None and str(info.get("created", "")) >= best[2]:
            best = (aid, v, str(info.get("created", "")))
    return best[0], best[1]
