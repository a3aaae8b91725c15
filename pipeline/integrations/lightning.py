"""PyTorch Lightning: :class:`KMACallback` records a ``Trainer.fit`` as a KMA run.

::

    from pipeline.integrations.lightning import KMACallback

    trainer = lightning.Trainer(max_epochs=20, callbacks=[KMACallback("kma-store", "my-fit")])
    trainer.fit(model, train_loader, val_loader)
    # then: kma runs --store kma-store; kma analyze --store kma-store --run my-fit

One snapshot of the module's parameters at fit start (epoch 0; the run and its lease are
taken in ``on_fit_start``, the snapshot when training starts, once a resumed fit knows
its epoch), one at the end of every
``every_n_epochs``-th training epoch (after that epoch's validation), with the losses
Lightning has logged by then (``trainer.callback_metrics``: ``train_loss`` /
``val_loss`` for the verdicts, from the names in ``losses`` or the usual ones, see
:data:`pipeline.integrations.common.LOSS_NAMES`; every other logged number is stored by
its own name). The run is ``complete`` at fit end, ``failed`` when the fit raises,
``interrupted`` on Ctrl-C. ``trainer.max_epochs`` is stored as the budget (``epochs``).

With ``stop_on_converged=True`` the spectral verdict so far
(:meth:`pipeline.record.Recorder.verdict`, one pass over the stored snapshots) is taken
after each snapshot; on ``converged`` the trainer stops (``trainer.should_stop``) and the
stop is recorded with the run (attribute ``stop``, MLflow tags ``kma.stop.*``). Each
verdict goes to Lightning's loggers as ``kma/converged`` (1/0), ``kma/converged_epoch``,
``kma/snapshots``.

Only global rank 0 records (one writer per run); the stop decision is broadcast to every
rank. Lightning is imported from ``lightning.pytorch``, else ``pytorch_lightning``: the
callback must come from the package your ``Trainer`` does. A fit resumed from a
checkpoint records a run of its own (give it a new ``run_id``; the same one starts the
unfinished run over) whose first snapshot is the epoch it resumed at.
"""

from __future__ import annotations

import logging

from ..errors import KMAError
from ..record import Recorder
from .common import positive_int, stop_record, verdict_metrics, with_losses

try:
    import lightning.pytorch as pl
except ImportError:  # the older package name
    try:
        import pytorch_lightning as pl
    except ImportError:
        raise ImportError("pipeline.integrations.lightning needs PyTorch Lightning: "
                          "pip install 'kma[integrations]' (or lightning)") from None

log = logging.getLogger(__name__)

__all__ = ["KMACallback"]


class KMACallback(pl.Callback):
    """Record the fit as run ``run_id`` of ``store`` (see the module docstring).

    Parameters
    ----------
    store : str or TrajectoryStore
        Where the run goes (a path or URL, as ``kma sweep --store``).
    run_id : str
        The run's id (the run-id rule; a finished run of that id is refused unless
        ``overwrite``).
    every_n_epochs : int
        Snapshot every this many training epochs (and always at fit start).
    layers : "all" or list of str
        Which layers' parameters make up a snapshot.
    stop_on_converged : bool
        Stop the fit on a ``converged`` spectral verdict.
    tracking_uri : str, None or False
        MLflow, as :class:`~pipeline.record.Recorder` takes it (False: the store only).
    dtype, config, experiment, overwrite :
        Passed to the Recorder (``config`` is merged over ``{"epochs": max_epochs,
        "framework": "lightning", "model": class name}``).
    losses : dict, optional
        ``{"train_loss": logged name, "val_loss": logged name}`` when yours are not
        among the usual names.
    """

    def __init__(self, store, run_id: str, every_n_epochs: int = 1, layers="all",
                 stop_on_converged: bool = False, tracking_uri=None, *, dtype: str = "float32",
                 config: dict | None = None, experiment: str = "recorded", overwrite: bool = False,
                 losses: dict | None = None):
        super().__init__()
        self.store, self.run_id = store, run_id
        self.every_n_epochs = positive_int(every_n_epochs, "every_n_epochs")
        self.layers, self.stop_on_converged, self.tracking_uri = layers, bool(stop_on_converged), tracking_uri
        self.dtype, self.config, self.experiment, self.overwrite = dtype, dict(config or {}), experiment, overwrite
        if losses is not None and not (isinstance(losses, dict) and set(losses) <= {"train_loss", "val_loss"}):
            raise KMAError(f"losses must map 'train_loss' / 'val_loss' to logged names, got {losses!r}")
        self.losses = losses
        self.recorder: Recorder | None = None
        self.last_verdict: dict | None = None
        self._validated = False          # a validation ran in this epoch (its metrics are fresh)

    # -------------------------------------------------------------------- hooks
    def on_fit_start(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero:
            return
        budget = trainer.max_epochs if isinstance(trainer.max_epochs, int) and trainer.max_epochs > 0 else None
        config = {"framework": "lightning", "model": type(pl_module).__name__,
                  **({"epochs": budget} if budget else {}), **self.config}
        self.recorder = Recorder(self.store, self.run_id, layers=self.layers, dtype=self.dtype,
                                 tracking_uri=self.tracking_uri, config=config,
                                 experiment=self.experiment, overwrite=self.overwrite)

    def on_train_start(self, trainer, pl_module) -> None:
        # the first snapshot: the weights the fit starts from (the same as at fit start, the
        # sanity check changes nothing), taken here because a fit resumed from a checkpoint
        # knows its epoch only now: the run's first snapshot then says where it resumed
        if self.recorder is not None and self.recorder.n_snapshots == 0:
            self.recorder.snapshot(pl_module, epoch=trainer.current_epoch, step=trainer.global_step)

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self._validated = True

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        epoch = trainer.current_epoch + 1           # epochs completed, 1-based as the store counts
        stop = False
        rec = self.recorder
        if rec is not None:
            metrics = with_losses(trainer.callback_metrics, self.losses)
            if not self._validated:   # (check_val_every_n_epoch > 1) last validation's values: not this epoch's
                metrics = {k: v for k, v in metrics.items() if "val" not in k.lower()}
            self._validated = False
            if epoch % self.every_n_epochs == 0:
                rec.snapshot(pl_module, epoch=epoch, step=trainer.global_step, metrics=metrics)
            else:
                rec.log_metrics(metrics, epoch)
            if self.stop_on_converged and epoch % self.every_n_epochs == 0:
                stop = self._check(trainer, epoch)
        if self.stop_on_converged:               # every rank stops when rank 0 says so
            stop = bool(trainer.strategy.broadcast(stop, src=0))
            if stop:
                trainer.should_stop = True

    def _check(self, trainer, epoch: int) -> bool:
        v = self.last_verdict = self.recorder.verdict()
        if v.get("class") is None:               # too few snapshots yet
            return False
        for logger in trainer.loggers:
            logger.log_metrics(verdict_metrics(v), step=trainer.global_step)
        if v.get("class") != "converged":
            return False
        self.recorder.note(stop=stop_record(v, epoch, self.recorder.n_snapshots - 1), stopped_early=True)
        log.info("run %s: converged (epoch %s); stopping the fit after epoch %d",
                 self.run_id, v.get("converged_epoch"), epoch)
        return True

    def on_fit_end(self, trainer, pl_module) -> None:
        if self.recorder is not None and self.recorder.status == "running":
            self.recorder.finish()

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        rec = self.recorder
        if rec is None or rec.status != "running":
            return
        if isinstance(exception, KeyboardInterrupt):
            rec.interrupt()
        else:
            rec.fail(f"{type(exception).__name__}: {exception}")
