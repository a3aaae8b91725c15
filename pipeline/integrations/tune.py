"""Ray Tune: stop trials on the spectral verdict their :class:`~pipeline.record.Recorder` reports.

::

    from ray import tune
    from pipeline.record import Recorder
    from pipeline.integrations.tune import SpectralStopper, TuneReporter, trial_run_id

    def trainable(config):
        model, opt = build(config)
        with Recorder("/shared/kma-store", trial_run_id(), tracking_uri=False,
                      config={"epochs": 40, **config}) as rec:
            rec.snapshot(model, epoch=0)
            report = TuneReporter(rec)                    # stop_on=("converged", "diverging")
            for epoch in range(1, 41):
                train_loss, val_loss = train_one_epoch(model, opt)
                rec.snapshot(model, epoch=epoch, metrics={"train_loss": train_loss, "val_loss": val_loss})
                if report({"val_loss": val_loss}, epoch=epoch):   # tune.report + the verdict so far
                    break

    tune.Tuner(trainable, param_space=..., run_config=tune.RunConfig(stop=SpectralStopper())).fit()
    # then: kma sync --store /shared/kma-store; kma runs --store /shared/kma-store

**Where the verdict is made, and the decision: in the trial.** :class:`TuneReporter`
computes :meth:`Recorder.verdict` in the trial's own process and adds it to the trial's
``tune.report`` metrics (``kma_class``, ``kma_converged``, ``kma_converged_epoch``,
``kma_snapshots``, ``kma_stop``). When the class is one of its ``stop_on`` it completes
the run (with a ``stop`` record) and *then* reports ``kma_stop = 1``;
:class:`SpectralStopper`, in Tune's driver, stops the trials that carry the flag. Reading
the store from the stopper instead was rejected: the Recorder is the run's only writer
and holds its last snapshots in its chunk buffer (its ``verdict`` reads them, another
process cannot); on a cluster the driver may not reach a worker's store path; and Tune's
controller calls every stopper for every result on one thread, so an analysis pass there
would hold up all trials. Completing the run before the report matters: Tune stops a
function trainable by raising ``SystemExit`` out of ``tune.report`` in its (daemon)
training thread while it ends the trial's process, and work done after that can be cut
off (seen in testing: a run left with its claim, once in three runs of the test).

**Stops by the search** (ASHA or any scheduler, another stopper): the reporter completes
the run from the training thread, or from an ``atexit`` hook when the process exit comes
first, with a ``stop`` record naming Ray Tune and the class at the time. That is best
effort: Ray may end the process first (the run then shows ``interrupted`` and its claim
expires on its own). Tune's ``stop`` returns to the driver before that thread has
finished, so ``Tuner.fit()`` can return a moment before such a run shows ``complete``.

``stalled`` is not a default stopping class: early in training a short plateau can read
as stalled before the run moves on. Give each trial its own run id (:func:`trial_run_id`)
and ``tracking_uri=False`` (one MLflow writer): ``kma sync`` registers the runs
afterwards. The stopper composes with any scheduler
(``TuneConfig(scheduler=ASHAScheduler(...))``) and, through
``tune.stopper.CombinedStopper``, with other stoppers.
"""

from __future__ import annotations

import atexit
import logging
import threading
import weakref
from collections.abc import Mapping, Sequence

from ray import tune

from ..errors import KMAError
from ..record import Recorder
from .common import outside_stop_record, positive_int

log = logging.getLogger(__name__)

CLASSES = ("converged", "stalled", "still_improving", "diverging")
FIELDS = ("kma_class", "kma_converged", "kma_converged_epoch", "kma_snapshots", "kma_stop")

__all__ = ["SpectralStopper", "TuneReporter", "trial_run_id", "verdict_fields", "CLASSES"]


def _classes(values, what: str) -> tuple[str, ...]:
    values = (values,) if isinstance(values, str) else tuple(values or ())
    unknown = [v for v in values if v not in CLASSES]
    if not values or unknown:
        raise KMAError(f"{what}: expected one or more of {', '.join(CLASSES)}, got {list(values)!r}")
    return values


def verdict_fields(verdict: Mapping | None) -> dict:
    """A verdict as ``tune.report`` metrics: ``kma_class`` (a class, or ``"none"`` while
    there are too few snapshots), ``kma_converged`` (1/0), ``kma_snapshots``, and
    ``kma_converged_epoch`` once converged."""
    v = verdict or {}
    out = {"kma_class": v.get("class") or "none", "kma_converged": int(v.get("class") == "converged"),
           "kma_snapshots": int(v.get("n_snapshots") or 0)}
    if v.get("converged_epoch") is not None:
        out["kma_converged_epoch"] = v["converged_epoch"]
    return out


def trial_run_id(prefix: str = "tune") -> str:
    """``<prefix>-<trial id>``: a run id of the current Tune trial (call it in the trainable)."""
    trial_id = tune.get_context().get_trial_id()
    if not trial_id:
        raise KMAError("trial_run_id(): not inside a Ray Tune trial")
    return f"{prefix}-{trial_id}"


class TuneReporter:
    """In the trainable: ``tune.report`` with the recorder's verdict so far added, and
    the decision to stop on it.

    Parameters
    ----------
    recorder : Recorder
        The trial's recorder (its snapshots are what the verdict reads).
    stop_on : classes
        Verdict classes that end the trial (default ``converged`` and ``diverging``): the
        run is completed, with its ``stop`` record, *before* the report that carries
        ``kma_stop = 1`` to :class:`SpectralStopper`.
    check_every : int
        Compute the verdict at every ``check_every``-th report (one pass over the stored
        snapshots each); in between, the last verdict's fields are reported again.
    """

    def __init__(self, recorder: Recorder, stop_on: Sequence[str] = ("converged", "diverging"),
                 check_every: int = 1):
        if not isinstance(recorder, Recorder):
            raise KMAError(f"TuneReporter needs a pipeline.record.Recorder, got {type(recorder).__name__}")
        self.recorder = recorder
        self.stop_on = _classes(stop_on, "stop_on")
        self.check_every = positive_int(check_every, "check_every")
        self.last_verdict: dict | None = None
        self._reports = 0
        self._epoch: int | None = None
        self._in_report = False
        self._lock = threading.Lock()
        me = weakref.ref(self)
        atexit.register(lambda: (me() is not None) and me()._at_exit())

    def __call__(self, metrics: Mapping | None = None, epoch: int | None = None) -> bool:
        """Report ``metrics`` plus :func:`verdict_fields` and ``kma_stop``. Returns True
        when the verdict ended the trial (its run is complete: leave the training loop;
        with :class:`SpectralStopper` Tune stops the trial in this call already).
        ``epoch`` (for the stop record) defaults to the recorder's last snapshot's."""
        if metrics is not None and not isinstance(metrics, Mapping):
            raise KMAError(f"metrics must be a mapping of names to numbers, got {type(metrics).__name__}")
        clash = sorted(set(metrics or ()) & set(FIELDS))
        if clash:
            raise KMAError(f"metrics: {', '.join(clash)} are the verdict's own fields; rename yours")
        rec = self.recorder
        if self._reports % self.check_every == 0 or rec.status != "running":
            self.last_verdict = rec.verdict()
        self._reports += 1
        self._epoch = epoch
        stop = (self.last_verdict or {}).get("class") in self.stop_on
        if stop:   # complete the run first: the stop that follows may end this process at once
            self._end(spectral=True)
        self._in_report = True
        try:
            tune.report({**dict(metrics or {}), **verdict_fields(self.last_verdict), "kma_stop": int(stop)})
        except SystemExit:   # Tune stopped the trial (our flag, a scheduler, another stopper)
            self._end(spectral=False)
            raise
        finally:
            self._in_report = False
        return stop

    def _end(self, spectral: bool) -> None:
        """Complete the run with its stop record (once, whichever of the trial's thread
        and the process exit gets here first)."""
        with self._lock:
            rec = self.recorder
            if rec.status != "running" or rec.n_snapshots == 0:
                return
            epoch = self._epoch if self._epoch is not None else getattr(rec, "_last_epoch", rec.n_snapshots - 1)
            rec.note(stop=outside_stop_record("ray tune", self.last_verdict, int(epoch), rec.n_snapshots - 1,
                                              spectral=spectral), stopped_early=True)
            rec.finish()

    def _at_exit(self) -> None:
        """A stop by the search (a scheduler such as ASHA, another stopper) releases the
        (daemon) training thread with ``SystemExit`` while Tune ends the trial's process:
        the thread may not get to complete the run. At the process's exit, a trial still
        waiting in ``tune.report`` is completed here; best effort: Ray may end the process
        before this is done (then ``kma runs`` shows the run interrupted, and its claim
        expires on its own)."""
        if self._in_report:
            self._end(spectral=False)


class SpectralStopper(tune.Stopper):
    """Stop a trial whose :class:`TuneReporter` flagged ``kma_stop`` (its verdict was one
    of the reporter's ``stop_on``; its run is already complete).

    ``stopped`` maps each trial id this stopper stopped to ``(class, training_iteration)``.
    A result without the flag (a trial not reporting through :class:`TuneReporter`) is
    never stopped here.
    """

    def __init__(self):
        self.stopped: dict[str, tuple[str, int | None]] = {}

    def __call__(self, trial_id: str, result: dict) -> bool:
        if not result.get("kma_stop"):
            return False
        cls = result.get("kma_class")
        self.stopped[trial_id] = (cls, result.get("training_iteration"))
        log.info("trial %s: spectral verdict %s; stopping it", trial_id, cls)
        return True

    def stop_all(self) -> bool:
        return False
