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
            report = TuneReporter(rec)
            for epoch in range(1, 41):
                train_loss, val_loss = train_one_epoch(model, opt)
                rec.snapshot(model, epoch=epoch, metrics={"train_loss": train_loss, "val_loss": val_loss})
                report({"val_loss": val_loss})       # tune.report, plus the verdict so far

    tune.Tuner(trainable, param_space=..., run_config=tune.RunConfig(stop=SpectralStopper())).fit()
    # then: kma sync --store /shared/kma-store; kma runs --store /shared/kma-store

**Where the verdict is made: in the trial.** :class:`TuneReporter` computes
:meth:`Recorder.verdict` in the trial's own process and adds it to the trial's
``tune.report`` metrics (``kma_class``, ``kma_converged``, ``kma_converged_epoch``,
``kma_snapshots``); :class:`SpectralStopper`, in Tune's driver, only reads those fields.
Reading the store from the stopper instead was rejected: the Recorder is the run's only
writer and holds its last snapshots in its chunk buffer until it syncs them (its
``verdict`` does that, another process cannot); on a cluster the driver may not reach a
worker's store path; and Tune's controller calls every stopper for every result on one
thread, so an analysis pass there would hold up all trials. The verdict also ends up in
Tune's results (``ResultGrid``, TensorBoard, any logger).

**Which classes stop a trial** (``stop_on``): ``converged`` (the trial's result stands: its
last report is what Tune keeps) and ``diverging`` by default. ``stalled`` is left out by
default: early in training a short plateau can read as stalled before the run moves on.

**Every stop leaves a complete run.** A function trainable that Tune stops (this stopper,
a scheduler such as ASHA, or any other stopper) gets ``SystemExit`` from ``tune.report``
in its training thread while Tune ends the trial's process; the reporter marks the run
``complete`` with a ``stop`` attribute saying who stopped it and the class at the time,
from that thread or, when the process exit comes first, from an ``atexit`` hook (Tune's
training thread is a daemon: without the hook it dies mid-write and the run is left
``running``, seen in testing). The run is analysable, and a re-run of the search does not
find it interrupted.

Give each trial its own run id (:func:`trial_run_id`) and ``tracking_uri=False`` in the
trials (one MLflow writer): ``kma sync`` registers the runs afterwards. The stopper
composes with any scheduler (``TuneConfig(scheduler=ASHAScheduler(...))``) and, through
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
FIELDS = ("kma_class", "kma_converged", "kma_converged_epoch", "kma_snapshots")

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
    """In the trainable: ``tune.report`` with the recorder's verdict so far added.

    Parameters
    ----------
    recorder : Recorder
        The trial's recorder (its snapshots are what the verdict reads).
    check_every : int
        Compute the verdict at every ``check_every``-th report (one pass over the stored
        snapshots each); in between, the last verdict's fields are reported again.
    """

    def __init__(self, recorder: Recorder, check_every: int = 1):
        if not isinstance(recorder, Recorder):
            raise KMAError(f"TuneReporter needs a pipeline.record.Recorder, got {type(recorder).__name__}")
        self.recorder = recorder
        self.check_every = positive_int(check_every, "check_every")
        self.last_verdict: dict | None = None
        self._reports = 0
        self._epoch: int | None = None
        self._in_report = False
        self._lock = threading.Lock()
        me = weakref.ref(self)
        atexit.register(lambda: (me() is not None) and me()._at_exit())

    def __call__(self, metrics: Mapping | None = None, epoch: int | None = None) -> dict:
        """Report ``metrics`` plus :func:`verdict_fields`; returns the verdict so far.
        ``epoch`` (for the stop record) defaults to the recorder's last snapshot's."""
        if metrics is not None and not isinstance(metrics, Mapping):
            raise KMAError(f"metrics must be a mapping of names to numbers, got {type(metrics).__name__}")
        rec = self.recorder
        if self._reports % self.check_every == 0 or rec.status != "running":
            self.last_verdict = rec.verdict()
        self._reports += 1
        clash = sorted(set(metrics or ()) & set(FIELDS))
        if clash:
            raise KMAError(f"metrics: {', '.join(clash)} are the verdict's own fields; rename yours")
        self._epoch = epoch
        self._in_report = True
        try:
            tune.report({**dict(metrics or {}), **verdict_fields(self.last_verdict)})
        except SystemExit:   # Tune stopped the trial (a stopper or a scheduler)
            self._stopped()
            raise
        finally:
            self._in_report = False
        return self.last_verdict

    def _stopped(self) -> None:
        """Complete the run, noting the stop (once, whichever of the trial's thread and
        the process exit gets here first)."""
        with self._lock:
            rec = self.recorder
            if rec.status != "running" or rec.n_snapshots == 0:
                return
            epoch = self._epoch if self._epoch is not None else getattr(rec, "_last_epoch", rec.n_snapshots - 1)
            rec.note(stop=outside_stop_record("ray tune", self.last_verdict, int(epoch), rec.n_snapshots - 1),
                     stopped_early=True)
            rec.finish()

    def _at_exit(self) -> None:
        """Tune stops a trial by releasing its (daemon) training thread with ``SystemExit``
        and ending the actor's process at once: the thread's own :meth:`_stopped` may not
        get to run or finish. At the process's exit, a trial still waiting in
        ``tune.report`` is completed here (a trial cut mid-epoch is left for ``kma runs``
        to show interrupted)."""
        if self._in_report:
            self._stopped()


class SpectralStopper(tune.Stopper):
    """Stop a trial when the verdict its :class:`TuneReporter` reports is one of
    ``stop_on`` (default ``converged`` and ``diverging``; see the module docstring).

    ``stopped`` maps each trial id this stopper stopped to ``(class, training_iteration)``.
    A result without ``kma_class`` (a trial not reporting through :class:`TuneReporter`)
    is never stopped here.
    """

    def __init__(self, stop_on: Sequence[str] = ("converged", "diverging")):
        self.stop_on = _classes(stop_on, "stop_on")
        self.stopped: dict[str, tuple[str, int | None]] = {}

    def __call__(self, trial_id: str, result: dict) -> bool:
        cls = result.get("kma_class")
        if cls not in self.stop_on:
            return False
        self.stopped[trial_id] = (cls, result.get("training_iteration"))
        log.info("trial %s: spectral verdict %s; stopping it", trial_id, cls)
        return True

    def stop_all(self) -> bool:
        return False
