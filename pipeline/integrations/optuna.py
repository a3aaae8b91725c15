"""Optuna: prune and finish trials on the spectral verdict of their :class:`~pipeline.record.Recorder`.

::

    import optuna
    from pipeline.record import Recorder
    from pipeline.integrations.optuna import SpectralPruner, report

    def objective(trial):
        lr = trial.suggest_float("lr", 1e-3, 1.0, log=True)
        model, opt = build(lr)
        with Recorder("kma-store", f"study-t{trial.number}", config={"epochs": 40, "lr": lr}) as rec:
            rec.snapshot(model, epoch=0)
            for epoch in range(1, 41):
                train_loss, val_loss = train_one_epoch(model, opt)
                rec.snapshot(model, epoch=epoch, metrics={"train_loss": train_loss, "val_loss": val_loss})
                if report(trial, rec, val_loss, epoch):   # converged: the trial is done
                    break                                 # (pruned: report raises TrialPruned)
        return val_loss

    study = optuna.create_study(pruner=SpectralPruner(optuna.pruners.MedianPruner()))
    study.optimize(objective, n_trials=20)

:func:`report` does ``trial.report(value, epoch)``, computes the verdict so far
(:meth:`Recorder.verdict`) and keeps it as the trial's user attributes ``kma_class``,
``kma_converged_epoch``, ``kma_snapshots`` (so ``study.trials_dataframe()`` shows them),
then:

- on ``converged`` it returns True (and notes the stop with the run): the objective
  returns its value, the Recorder's block completes the run, and the trial is
  **complete**. A converged trial is finished, not unpromising: pruning it would drop it
  from ``study.best_trial``, so convergence is never a pruning reason;
- else it asks ``trial.should_prune()``: :class:`SpectralPruner` prunes on the classes in
  ``prune_on`` (default ``diverging``) and otherwise defers to the pruner it wraps (a
  ``MedianPruner``, a ``SuccessiveHalvingPruner``, ... or none). A pruned trial's run is
  marked ``complete`` with a ``stop`` attribute (who stopped it, the class at the time)
  before ``optuna.TrialPruned`` is raised, so the run stays analysable.

The pruner reads the verdict from the trial's user attributes; the verdict is made in
the objective, where the Recorder (the run's only writer) is. With ``n_jobs > 1`` or
several processes, give the Recorders ``tracking_uri=False`` and run ``kma sync``
afterwards (one MLflow writer).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import optuna

from ..errors import KMAError
from ..record import Recorder
from .common import outside_stop_record, positive_int

log = logging.getLogger(__name__)

CLASSES = ("converged", "stalled", "still_improving", "diverging")
ATTRS = ("kma_class", "kma_converged_epoch", "kma_snapshots")

__all__ = ["SpectralPruner", "report", "CLASSES"]


class SpectralPruner(optuna.pruners.BasePruner):
    """Prune a trial whose spectral verdict (user attribute ``kma_class``, set by
    :func:`report`) is one of ``prune_on``; otherwise ask ``wrapped`` (another pruner),
    or keep the trial when there is none. ``converged`` cannot be a pruning class (see
    the module docstring)."""

    def __init__(self, wrapped: optuna.pruners.BasePruner | None = None,
                 prune_on: Sequence[str] = ("diverging",)):
        prune_on = (prune_on,) if isinstance(prune_on, str) else tuple(prune_on or ())
        allowed = [c for c in CLASSES if c != "converged"]
        if not prune_on or any(c not in allowed for c in prune_on):
            raise KMAError(f"prune_on: expected one or more of {', '.join(allowed)} (a converged trial "
                           f"completes, it is not pruned), got {list(prune_on)!r}")
        if wrapped is not None and not isinstance(wrapped, optuna.pruners.BasePruner):
            raise KMAError(f"wrapped must be an Optuna pruner, got {type(wrapped).__name__}")
        self.wrapped, self.prune_on = wrapped, prune_on

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        cls = trial.user_attrs.get("kma_class")
        if cls in self.prune_on:
            return True
        if cls == "converged":   # finished, whatever the wrapped pruner thinks of its curve
            return False
        return bool(self.wrapped.prune(study, trial)) if self.wrapped is not None else False


def report(trial: optuna.Trial, recorder: Recorder, value: float, epoch: int, check_every: int = 1) -> bool:
    """Report ``value`` at ``epoch`` and the verdict so far (see the module docstring).
    Returns True when the run has converged (end the objective, return its value);
    raises ``optuna.TrialPruned`` when the trial is pruned. The verdict is computed at
    every ``check_every``-th epoch (one pass over the stored snapshots each)."""
    if not isinstance(recorder, Recorder):
        raise KMAError(f"report needs a pipeline.record.Recorder, got {type(recorder).__name__}")
    check_every = positive_int(check_every, "check_every")
    epoch = int(epoch)
    value = float(value.item() if hasattr(value, "item") else value)
    trial.report(value, epoch)
    verdict = None
    if epoch % check_every == 0 or recorder.status != "running":
        verdict = recorder.verdict()
        trial.set_user_attr("kma_class", verdict.get("class") or "none")
        trial.set_user_attr("kma_snapshots", int(verdict.get("n_snapshots") or 0))
        if verdict.get("converged_epoch") is not None:
            trial.set_user_attr("kma_converged_epoch", verdict["converged_epoch"])
        if verdict.get("class") == "converged":
            if recorder.status == "running":   # the objective's own exit completes the run
                recorder.note(stop=outside_stop_record("optuna", verdict, epoch, recorder.n_snapshots - 1,
                                                       spectral=True), stopped_early=True)
            return True
    if trial.should_prune():
        last = trial.user_attrs.get("kma_class")   # the last verdict's class, when none was made now
        verdict = verdict or {"class": None if last in (None, "none") else last}
        pruner = getattr(trial.study, "pruner", None)
        spectral = isinstance(pruner, SpectralPruner) and verdict.get("class") in pruner.prune_on
        _end(recorder, "optuna pruner", verdict, epoch, spectral)
        raise optuna.TrialPruned(f"pruned at epoch {epoch} (spectral class "
                                 f"{(verdict or {}).get('class') or trial.user_attrs.get('kma_class', 'none')})")
    return False


def _end(recorder: Recorder, by: str, verdict: dict | None, epoch: int, spectral: bool) -> None:
    if recorder.status != "running" or recorder.n_snapshots == 0:
        return
    recorder.note(stop=outside_stop_record(by, verdict, epoch, recorder.n_snapshots - 1, spectral=spectral),
                  stopped_early=True)
    recorder.finish()
