"""Per-run verdicts: one dict per analysed run, merged from a list of producers.

A verdict is ``{"run_id", "class", "converged_at", "converged_epoch", "bad_init",
"evidence", ...}``. Each producer is a callable ``producer(ctx: VerdictInput) -> dict``
whose keys are merged into the run's verdict in order (later producers win on a shared
key). :data:`PRODUCERS`: the first convergence version (:mod:`pipeline.apps.convergence`:
its point stays as ``v1_converged_at`` / ``v1_converged_epoch`` / ``v1_reason`` and its
per-window ``window_checks`` / ``certified``), the second (:mod:`pipeline.apps.horizon`:
``class`` — converged / stalled / still_improving / diverging — with ``evidence``, and
``converged_at`` / ``converged_epoch`` / ``reason``), and the bad-initialization
detector's third version (:func:`pipeline.apps.badinit_loss.detect_run_v3`; the second's and
first's decisions as ``bad_init_v2`` / ``bad_init_v1``); ``bad_init`` is
``None`` (not assessed) when the stored run is not at hand.

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

# The second version's rule, as stored in each verdict (``verdict_version``): 2 judged a
# unit's remaining motion by its modes' prediction alone; 3 by its net drift (a layer that
# only jitters under minibatch noise holds) and the val loss's swing within a window
# (docs "Convergence verdicts"). A stored verdict of an older rule is shown as outdated
# (:func:`cell`, the MLflow tag ``kma.verdict_outdated``) until ``kma analyze`` runs again.
VERDICT_VERSION = 3


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
    factors: dict | None = None          # whole network's window factors {(a, b): Factor}
    layer_spectra: dict | None = None    # {layer: [WindowResult, ...]} at the verdict cut
    layer_factors: dict | None = None    # {layer: {(a, b): Factor}}


def convergence_producer(ctx: VerdictInput) -> dict:
    """``converged_at`` / ``converged_epoch`` and the criterion's evidence."""
    crit = convergence.Criterion(residual_tol=ctx.residual_tol)
    out = convergence.converged_at(ctx.spectra, crit, snapshot_epochs=ctx.snapshot_epochs,
                                   status=ctx.status)
    # the first version's point, kept beside the second's (which overrides converged_at)
    return {**out, "v1_converged_at": out["converged_at"], "v1_converged_epoch": out["converged_epoch"],
            "v1_reason": out.get("reason")}


def horizon_producer(ctx: VerdictInput) -> dict:
    """The second version (:mod:`pipeline.apps.horizon`): ``class`` with its
    ``evidence``; ``converged_at`` / ``converged_epoch`` / ``reason`` are its (the first
    version's point stays as ``v1_converged_at`` / ``v1_converged_epoch``)."""
    from . import horizon

    metrics, budget_epochs, n = {}, None, None
    if ctx.run is not None:
        try:
            metrics = ctx.run.metrics or {}
        except Exception:  # noqa: BLE001 - an ingested run may have none
            metrics = {}
        budget_epochs = (ctx.run.config or {}).get("epochs") if isinstance(ctx.run.config, dict) else None
    if ctx.spectra:
        n = max(r.window[1] for r in ctx.spectra)
    if budget_epochs is not None and ctx.snapshot_epochs is not None and n:
        last_ep = int(ctx.snapshot_epochs[min(n, len(ctx.snapshot_epochs)) - 1])
        if last_ep > 0 and budget_epochs > last_ep and ctx.status != "diverged":
            # stopped early: the budget's snapshots (snapshot 0 is the initial weights)
            n = n + int(round((n - 1) * (budget_epochs - last_ep) / last_ep))
        elif budget_epochs < last_ep:
            budget_epochs = None
    v = horizon.verdict(ctx.spectra, factors=ctx.factors, layer_spectra=ctx.layer_spectra,
                        layer_factors=ctx.layer_factors, metrics=metrics,
                        snapshot_epochs=ctx.snapshot_epochs, status=ctx.status,
                        budget_snapshots=n, budget_epochs=budget_epochs,
                        crit=horizon.HorizonCriterion(residual_tol=ctx.residual_tol))
    return {"class": v["class"], "converged_at": v["converged_at"],
            "converged_epoch": v["converged_epoch"],
            "online_converged_at": v["online_converged_at"],
            "online_converged_epoch": v["online_converged_epoch"],
            "online_confirmed_epoch": v["online_confirmed_epoch"],
            "reason": v["class_reason"], "evidence": v["evidence"], "verdict_version": VERDICT_VERSION}


def badinit_producer(ctx: VerdictInput) -> dict:
    """``bad_init`` and its evidence (:func:`pipeline.apps.badinit_loss.detect_run_v3`: the first
    snapshots of the stored run, read again, and the training losses of their epochs; the
    second and first versions' decisions stay as ``bad_init_v2`` / ``bad_init_v1``;
    nothing when the run is not at hand)."""
    if ctx.run is None:
        return {}
    from . import badinit_loss

    return badinit_loss.detect_run_v3(ctx.run, residual_tol=ctx.residual_tol)


# The producers, in order; each (ctx: VerdictInput) -> dict of verdict fields.
PRODUCERS: list[Callable[[VerdictInput], dict]] = [convergence_producer, horizon_producer,
                                                    badinit_producer]


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
    layers = [n for n in getattr(est, "window_factors_", {}) if n != "all"]
    wf = getattr(est, "window_factors_", {})
    ctx = VerdictInput(run.run_id, convergence.verdict_spectra(est), est.results_, run,
                       run.attrs.get("snapshot_epochs"), run.status, residual_tol,
                       factors=wf.get("all"),
                       layer_spectra={n: convergence.verdict_spectra(est, n) for n in layers},
                       layer_factors={n: wf[n] for n in layers})
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
    """The headline fields: ``run_id``, ``class``, ``converged_at``, ``converged_epoch``,
    ``bad_init`` (and ``reason``) — the ``kma runs`` / ``kma compare`` columns."""
    v = verdict or {}
    return {k: v.get(k) for k in ("run_id", "class", "converged_at", "converged_epoch", "bad_init", "reason")}


def _rule(verdict: dict) -> int:
    """The rule a stored second-version verdict was made by (2 when it predates the field)."""
    return int(verdict.get("verdict_version") or 2)


def outdated(verdict: dict | None) -> bool:
    """A stored second-version verdict made by an older rule (``verdict_version`` below
    :data:`VERDICT_VERSION`); verdicts stored before classes existed are not flagged."""
    v = verdict or {}
    return v.get("class") is not None and _rule(v) < VERDICT_VERSION


def cell(verdict: dict | None) -> str:
    """One table cell: ``converged 12 (ep 12)``, ``still_improving``, ``stalled``,
    ``diverging`` (second-version verdicts; ``still_improving (outdated rule v2)`` for one
    stored by an older rule: re-run ``kma analyze``), ``12 (ep 12)`` / ``no`` (first-version
    verdicts stored before classes existed), or ``-`` (no verdict stored)."""
    if not verdict:
        return "-"
    cls = verdict.get("class")
    old = f" (outdated rule v{_rule(verdict)})" if outdated(verdict) else ""
    if verdict.get("converged_at") is None:
        return (cls or "no") + old
    point = f"{verdict['converged_at']} (ep {verdict.get('converged_epoch')})"
    return (f"{cls} {point}" if cls else point) + old


def bad_init_cell(verdict: dict | None) -> str:
    b = (verdict or {}).get("bad_init")
    return "-" if b is None else ("yes" if b else "no")


def mlflow_tags(verdict: dict | None) -> dict[str, str]:
    """Tags: ``kma.converged`` (yes/no), ``kma.verdict_class`` (converged / stalled /
    still_improving / diverging; ``not classified`` for a verdict stored before classes),
    ``kma.converged_at``, ``kma.converged_epoch``, ``kma.convergence_reason``,
    ``kma.bad_init`` (yes/no/not assessed)."""
    if not verdict:
        return {}
    conv = verdict.get("converged_at") is not None
    b = verdict.get("bad_init")
    tags = {"kma.converged": "yes" if conv else "no",
            "kma.verdict_class": str(verdict.get("class") or "not classified"),
            "kma.convergence_reason": str(verdict.get("reason", ""))[:250],
            "kma.bad_init": "not assessed" if b is None else ("yes" if b else "no")}
    if outdated(verdict):
        tags["kma.verdict_outdated"] = f"rule v{_rule(verdict)}: re-run kma analyze"
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
