"""Hugging Face Trainer: :class:`KMATrainerCallback` records ``Trainer.train`` as a KMA run.

::

    from pipeline.integrations.hf import KMATrainerCallback

    kma = KMATrainerCallback("kma-store", "my-finetune")
    trainer = Trainer(model=model, args=args, train_dataset=train, eval_dataset=val, callbacks=[kma])
    with kma:                    # optional: an exception marks the run failed, Ctrl-C interrupted
        trainer.train()

One snapshot of the model's parameters when training begins (epoch 0), then one at the
end of every ``every_n_epochs``-th epoch, or — with ``every_n_steps`` — after every
``every_n_steps``-th optimizer step (``snapshot_epochs`` then holds the epoch each was
taken in, as a sweep's ``snapshot: {unit: step}`` does). The Trainer's logs are stored
per epoch (``loss`` as ``train_loss``, ``eval_loss`` as ``val_loss`` for the verdicts,
every other number by its own name; ``losses`` renames): log once an epoch
(``logging_strategy="epoch"``, or ``logging_steps`` within an epoch) so that every epoch
has its training loss. The run is ``complete`` when training ends; the budget
(``epochs``) is ``num_train_epochs`` unless ``max_steps`` is set.

The Trainer has no hook for exceptions: use the callback as a context manager around
``trainer.train()`` to mark the run ``failed`` (``interrupted`` on Ctrl-C); without it a
crashed run stays ``running`` until the process exits, then reads ``interrupted``.

With ``stop_on_converged=True`` the spectral verdict so far is taken after each snapshot
(once that epoch's evaluation is in, when the Trainer evaluates); on ``converged``
training stops (``control.should_training_stop``), the stop is recorded with the run
(attribute ``stop``, MLflow tags ``kma.stop.*``), and each verdict is appended to
``state.log_history`` as ``kma/converged``, ``kma/converged_epoch``, ``kma/snapshots``.

Only the world process zero records (one writer per run).
"""

from __future__ import annotations

import logging
import math

from ..errors import KMAError
from ..record import Recorder
from .common import positive_int, stop_record, verdict_metrics, with_losses

try:
    from transformers import TrainerCallback
except ImportError:
    raise ImportError("pipeline.integrations.hf needs transformers: pip install 'kma[integrations]'") from None

log = logging.getLogger(__name__)

__all__ = ["KMATrainerCallback", "HF_LOSSES"]

HF_LOSSES = {"train_loss": "loss", "val_loss": "eval_loss"}   # the Trainer's names for them
_NOT_METRICS = ("epoch", "step", "total_flos")


def _epoch_of(epoch_float) -> int:
    """The 1-based epoch a fractional ``state.epoch`` falls in (1.0: the end of epoch 1)."""
    return max(1, math.ceil(float(epoch_float or 0.0) - 1e-9))


class KMATrainerCallback(TrainerCallback):
    """Record ``Trainer.train`` as run ``run_id`` of ``store`` (see the module docstring).

    Parameters are those of :class:`pipeline.integrations.lightning.KMACallback`, plus
    ``every_n_steps`` (snapshot every this many optimizer steps instead of per epoch).
    """

    def __init__(self, store, run_id: str, every_n_epochs: int = 1, layers="all",
                 stop_on_converged: bool = False, tracking_uri=None, *, every_n_steps: int | None = None,
                 dtype: str = "float32", config: dict | None = None, experiment: str = "recorded",
                 overwrite: bool = False, losses: dict | None = None):
        self.store, self.run_id = store, run_id
        self.every_n_epochs = positive_int(every_n_epochs, "every_n_epochs")
        self.every_n_steps = None if every_n_steps is None else positive_int(every_n_steps, "every_n_steps")
        self.layers, self.stop_on_converged, self.tracking_uri = layers, bool(stop_on_converged), tracking_uri
        self.dtype, self.config, self.experiment, self.overwrite = dtype, dict(config or {}), experiment, overwrite
        if losses is not None and not (isinstance(losses, dict) and set(losses) <= {"train_loss", "val_loss"}):
            raise KMAError(f"losses must map 'train_loss' / 'val_loss' to logged names, got {losses!r}")
        self.losses = {**HF_LOSSES, **(losses or {})}
        self.recorder: Recorder | None = None
        self.last_verdict: dict | None = None
        self._pending = False            # a verdict to take once this epoch's evaluation is in

    # -------------------------------------------------------------------- hooks
    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if not state.is_world_process_zero:
            return
        if model is None:
            raise KMAError("KMATrainerCallback: the Trainer passed no model to its callbacks")
        budget = None
        if (args.max_steps is None or args.max_steps <= 0) and args.num_train_epochs:
            budget = int(math.ceil(args.num_train_epochs))
        config = {"framework": "transformers", "model": type(model).__name__,
                  **({"epochs": budget} if budget else {}), **self.config}
        self.recorder = Recorder(self.store, self.run_id, layers=self.layers, dtype=self.dtype,
                                 tracking_uri=self.tracking_uri, config=config,
                                 experiment=self.experiment, overwrite=self.overwrite)
        # (training resumed from a checkpoint starts at its epoch: the run's first snapshot says so)
        self.recorder.snapshot(model, epoch=int(round(state.epoch or 0)), step=state.global_step)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if self.recorder is None or self.every_n_steps is None or state.global_step % self.every_n_steps:
            return
        self._snapshot(args, state, control, model, _epoch_of(state.epoch))

    def on_epoch_end(self, args, state, control, model=None, **kwargs):
        if self.recorder is None or self.every_n_steps is not None:
            return
        epoch = _epoch_of(state.epoch)
        if epoch % self.every_n_epochs == 0:
            self._snapshot(args, state, control, model, epoch)

    def _snapshot(self, args, state, control, model, epoch: int) -> None:
        if self.recorder.status != "running":
            return
        self.recorder.snapshot(model, epoch=epoch, step=state.global_step)
        if self.stop_on_converged:
            if str(getattr(args, "eval_strategy", "no")).lower().endswith("no"):
                self._check(state, control, epoch)     # no evaluation coming: judge now
            else:
                self._pending = True

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.recorder is None or not logs or "train_runtime" in logs:   # (the run's summary line)
            return
        numbers = {k: v for k, v in with_losses(logs, self.losses).items() if k not in _NOT_METRICS}
        if numbers and self.recorder.status == "running":
            self.recorder.log_metrics(numbers, _epoch_of(logs.get("epoch", state.epoch)))

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if self._pending and self.recorder is not None and self.recorder.status == "running":
            self._pending = False
            self._check(state, control, _epoch_of(state.epoch))

    def _check(self, state, control, epoch: int) -> None:
        v = self.last_verdict = self.recorder.verdict()
        if v.get("class") is None:
            return
        state.log_history.append({**verdict_metrics(v), "epoch": state.epoch, "step": state.global_step})
        if v.get("class") == "converged":
            self.recorder.note(stop=stop_record(v, epoch, self.recorder.n_snapshots - 1), stopped_early=True)
            log.info("run %s: converged (epoch %s); stopping training", self.run_id, v.get("converged_epoch"))
            control.should_training_stop = True

    def on_train_end(self, args, state, control, **kwargs):
        if self.recorder is not None and self.recorder.status == "running":
            self.recorder.finish()

    # -------------------------------------------------------------------- failures
    def __enter__(self) -> "KMATrainerCallback":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        rec = self.recorder
        if exc_type is None or rec is None or rec.status != "running":
            return False
        if issubclass(exc_type, KeyboardInterrupt):
            rec.interrupt()
        else:
            rec.fail(f"{exc_type.__name__}: {exc}")
        return False
