"""Record your own training loop as a KMA run: :class:`Recorder`.

The one thing the framework integrations (:mod:`pipeline.integrations`) build on::

    from pipeline.record import Recorder

    with Recorder("kma-store", "my-run", config={"epochs": 20}) as rec:
        rec.snapshot(model, epoch=0)                     # the initial weights
        for epoch in range(1, 21):
            train_one_epoch(model)
            rec.snapshot(model, epoch=epoch, metrics={"train_loss": tl, "val_loss": vl})
            if rec.verdict()["class"] == "converged":    # optional: the spectral verdict so far
                break
    # leaving the block: the run is complete (an exception: failed; Ctrl-C: interrupted)

Interface
---------
``Recorder(store, run_id, layers="all", dtype="float32", every=1, tracking_uri=None,
config=None, *, experiment="recorded", overwrite=False)``

- ``store``: a store path or URL (as ``kma sweep --store``) or a ``TrajectoryStore``;
  ``run_id``: the run's id (the run-id rule of :mod:`pipeline.storage.runids`);
  ``layers``: ``"all"`` or a list of layer names (a parameter's name minus its last part);
  ``dtype``: ``float32`` / ``float16`` / ``bfloat16`` storage; ``every``: keep every
  ``every``-th :meth:`snapshot` call's weights (the first always; metrics are kept from
  every call); ``tracking_uri``: MLflow, resolved as ``kma sweep`` does (``None``:
  ``$MLFLOW_TRACKING_URI``, else the store's recorded one, else ``./mlflow.db``); ``False``: the
  store only (``kma sync`` registers later — use it in worker processes, so only one
  process writes to a SQLite MLflow); ``config``: a JSON-able dict stored with the run
  and logged as MLflow params — give ``{"epochs": N}`` so verdicts know the budget;
  ``experiment``: the MLflow experiment; ``overwrite``: replace a finished run of that id.
- ``snapshot(model_or_state_dict, epoch=None, step=None, metrics=None) -> bool``: an
  ``nn.Module`` (its ``named_parameters()``) or a state_dict (its floating tensors).
  ``epoch`` defaults to the call's index (0 for the first), ``step`` likewise.
  ``metrics`` (name → number) are stored per epoch as the sweep stores its history
  (``metrics[name][epoch - 1]``; epoch 0's go to the ``initial_metrics`` attribute);
  the verdicts read ``train_loss`` and ``val_loss``. Returns whether the weights were
  stored. Non-finite weights or a non-finite ``train_loss``/``val_loss`` end the run as
  ``diverged`` (as in a sweep); later calls are then ignored (False).
- ``log_metrics(metrics, epoch)``: metrics for an epoch whose snapshot was already taken;
  ``note(**attrs)``: attributes stored with the run when it ends (``stop={...}``).
- ``finish()``: the run ``complete`` (registered in MLflow); ``fail(reason)``: ``failed``;
  ``interrupt()``: everything written, status left ``running`` and the lease released, so
  ``kma runs`` shows it ``interrupted`` and a new Recorder of that id starts it over.
- ``verdict() -> dict``: the spectral verdict so far (:mod:`pipeline.apps.verdicts`,
  computed as ``kma analyze`` would on the snapshots recorded so far: one pass over those
  in the store and those the writer still buffers; nothing is written).
  With fewer snapshots than the default window needs: ``class`` None and the reason.
- ``status``, ``n_snapshots``, ``run_id``, ``store``.

Same store layout, run-id rule, lease and MLflow registration as ``kma sweep``: the run
is created by :meth:`TrajectoryStore.create_run` at the first stored snapshot and
streamed through its :class:`~pipeline.storage.writer.RunWriter`; a lease
(:mod:`pipeline.storage.lease`) is held from construction to the end, so a second
Recorder (or sweep, or ingest) of the same id is refused while this one lives; the
registration is :func:`pipeline.workflows.sync.register_run`, from this process only.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Mapping

from .errors import KMAError, plural

log = logging.getLogger(__name__)

DTYPES = ("float32", "float16", "bfloat16")
LOSSES = ("train_loss", "val_loss")   # the metrics the verdicts read; non-finite: diverged

__all__ = ["Recorder", "DTYPES", "LOSSES"]


def positive_int(value, what: str) -> int:
    """``value`` when it is an integer >= 1 (not a bool), else one :class:`KMAError` line
    naming ``what``: the check every counting option here and in the integrations uses."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise KMAError(f"{what} must be an integer >= 1, got {value!r}")
    return value


class Recorder:
    """Streams a user's training loop into the trajectory store as one run (see the
    module docstring for the interface)."""

    def __init__(self, store, run_id: str, layers="all", dtype: str = "float32", every: int = 1,
                 tracking_uri=None, config: dict | None = None, *, experiment: str = "recorded",
                 overwrite: bool = False):
        from .storage.runids import check_run_id
        from .storage.store import FINISHED, TrajectoryStore

        self.run_id = check_run_id(run_id, what="run id")
        if dtype not in DTYPES:
            raise KMAError(f"dtype {dtype!r}: expected one of {', '.join(DTYPES)}")
        positive_int(every, "every")
        if isinstance(layers, str) and layers != "all":
            layers = [layers]
        if layers != "all" and (not layers or not all(isinstance(x, str) for x in layers)):
            raise KMAError(f"layers must be 'all' or a list of layer names, got {layers!r}")
        if config is not None and not isinstance(config, Mapping):
            raise KMAError(f"config must be a dict, got {type(config).__name__}")
        try:
            self.config = json.loads(json.dumps(dict(config or {})))
        except (TypeError, ValueError) as e:
            raise KMAError(f"config must be JSON-serialisable ({e})") from None
        if not isinstance(experiment, str) or not experiment.strip():
            raise KMAError("experiment must be a non-empty name")
        self.layers, self.dtype, self.every, self.experiment = layers, dtype, every, experiment

        if isinstance(store, TrajectoryStore):
            self.store = store
        else:
            from .storage.location import StoreLocation

            self.store = TrajectoryStore(StoreLocation(str(store)).absolute())
        self.store.check_writable()
        self.tracking_uri = self._resolve_tracking(tracking_uri)
        if self.store.status(self.run_id) in FINISHED and not overwrite:
            raise KMAError(f"run {self.run_id}: already {self.store.status(self.run_id)} in "
                           f"{self.store.location} (pass overwrite=True to replace it)")

        from .storage.lease import LeaseKeeper

        self._leases = LeaseKeeper(self.store, experiment).__enter__()
        holder = self._leases.claim(self.run_id)
        if holder is not None:
            self._leases.__exit__(None, None, None)
            raise KMAError(f"run {self.run_id}: already being recorded by {holder.describe()}; "
                           "one writer per run (finish the other first, or choose another run id)")
        if overwrite and self.store.status(self.run_id) is not None:
            self.store.delete_run(self.run_id)
        self._writer = None
        self._layout = None
        self._calls = 0
        self._history: dict[str, list] = {}
        self._initial: dict[str, float] = {}
        self._last_epoch = self._last_step = 0
        self._notes: dict = {}
        self.status = "running"          # until finish / fail / interrupt / divergence
        self.message = ""

    # ------------------------------------------------------------------ set-up
    def _resolve_tracking(self, uri) -> str | None:
        if uri is False:
            return None
        from .tracking.tracker import tracking_uri_for
        from .tracking.uri import TrackingURI

        if uri is not None and not isinstance(uri, str):
            raise KMAError(f"tracking_uri must be a string, None or False, got {type(uri).__name__}")
        resolved = TrackingURI(tracking_uri_for(uri, self.store)).absolute()
        self.store.remember_tracking_uri(resolved)   # later commands find this MLflow
        return resolved

    def _tensors(self, obj) -> Mapping:
        if hasattr(obj, "named_parameters") and callable(obj.named_parameters):
            return dict(obj.named_parameters())
        if isinstance(obj, Mapping):
            return obj
        raise KMAError(f"snapshot: expected a torch.nn.Module or a state_dict, got {type(obj).__name__}")

    def _open(self, tensors: Mapping) -> None:
        from .storage.layout import Layout

        layout = Layout.from_state_dict(tensors)
        if self.layers != "all":
            layout = layout.select(self.layers)
        if layout.size == 0:
            raise KMAError(f"run {self.run_id}: no floating-point parameters to record")
        self._layout = layout
        self._writer = self.store.create_run(
            self.run_id, layout, config=self.config, capacity=None, dtype=self.dtype,
            extra={"sweep": self.experiment, "source": "recorder", "t_start": time.time()})

    # ------------------------------------------------------------------ recording
    @property
    def n_snapshots(self) -> int:
        return self._writer.n_snapshots if self._writer is not None else 0

    def snapshot(self, model_or_state_dict, epoch: int | None = None, step: int | None = None,
                 metrics: Mapping | None = None) -> bool:
        """Record the weights (every ``every``-th call) and ``metrics``; see the module
        docstring. Returns whether the weights were stored."""
        if self.status != "running":
            if self.status == "diverged":
                return False
            raise KMAError(f"run {self.run_id}: already {self.status}; no more snapshots")
        i = self._calls
        self._calls += 1
        epoch = i if epoch is None else int(epoch)
        step = i if step is None else int(step)
        if metrics:
            self.log_metrics(metrics, epoch)
            if self.status != "running":
                return False
        if i % self.every:
            return False
        tensors = self._tensors(model_or_state_dict)
        if self._writer is None:
            self._open(tensors)
        import torch

        flat = self._layout.flatten(tensors)
        if not isinstance(flat, torch.Tensor):   # a state_dict of numpy arrays
            flat = torch.from_numpy(flat)
        flat = flat.detach().to("cpu", torch.float32).contiguous()
        if not bool(torch.isfinite(flat).all()):
            self._end("diverged", f"weights not finite at epoch {epoch}, step {step}")
            return False
        self._writer.append(flat, epoch=epoch, step=step)
        self._last_epoch, self._last_step = max(self._last_epoch, epoch), max(self._last_step, step)
        return True

    def log_metrics(self, metrics: Mapping, epoch: int) -> None:
        """Store ``metrics`` (name → number) as epoch ``epoch``'s (``metrics[name][epoch
        - 1]``; epoch 0: ``initial_metrics``). Values that are not numbers are skipped."""
        if not isinstance(metrics, Mapping):
            raise KMAError(f"metrics must be a mapping of names to numbers, got {type(metrics).__name__}")
        epoch = int(epoch)
        for name, value in metrics.items():
            try:
                x = float(value.item() if hasattr(value, "item") else value)
            except (TypeError, ValueError, RuntimeError):
                log.debug("metric %s: not a number (%r); skipped", name, value)
                continue
            if epoch <= 0:
                self._initial[str(name)] = x
                continue
            col = self._history.setdefault(str(name), [])
            col.extend([None] * (epoch - len(col)))
            col[epoch - 1] = x
            if name in LOSSES and not math.isfinite(x) and self.status == "running":
                if self._writer is None:
                    self.status, self.message = "diverged", f"{name} is {x} at epoch {epoch}"
                else:
                    self._end("diverged", f"{name} is {x} at epoch {epoch}")

    def note(self, **attrs) -> None:
        """Attributes stored with the run when it ends (JSON-able), e.g. ``stop={...}``:
        where and why an integration stopped training, as a sweep's ``stop:`` option
        records it (MLflow tags ``kma.stop.*``)."""
        self._notes.update(json.loads(json.dumps(attrs)))

    # ------------------------------------------------------------------ endings
    def _attrs(self) -> dict:
        out = {**self._notes, "epochs_run": self._last_epoch, "steps": self._last_step, "t_end": time.time()}
        if self._initial:
            out["initial_metrics"] = dict(self._initial)
        if self.message:
            out["message"] = self.message[:500]
        return out

    def _end(self, status: str, message: str = "") -> None:
        self.status, self.message = status, message or self.message
        if message:
            log.info("run %s: %s (%s)", self.run_id, status, message)
        try:
            self._writer.finish(status, metrics=self._history, extra=self._attrs())
        finally:
            self._register()
            self._release()

    def finish(self) -> None:
        """Mark the run ``complete`` (all snapshots written first) and register it."""
        if self.status != "running":
            self._release()
            return
        if self._writer is None:
            self.status = "failed"
            self._release()
            raise KMAError(f"run {self.run_id}: no snapshot was recorded; nothing to finish")
        self._end("complete")

    def fail(self, reason: str) -> None:
        """Mark the run ``failed`` with ``reason`` (a re-run of the id starts it over)."""
        if self.status != "running":
            self._release()
            return
        self.status, self.message = "failed", str(reason)
        if self._writer is None:   # nothing stored: nothing to mark
            self._release()
            return
        try:
            self._writer.finish("failed", metrics=self._history, extra={**self._attrs(), "error": str(reason)[:500]})
        finally:
            self._register()
            self._release()

    def interrupt(self) -> None:
        """Write what was recorded and leave the run unfinished: ``kma runs`` shows it
        ``interrupted``; a new Recorder of the id starts it over."""
        if self.status != "running":
            self._release()
            return
        self.status = "interrupted"
        try:
            if self._writer is not None:
                self._writer.finish("running", metrics=self._history, extra=self._attrs())
        finally:
            self._release()

    def _register(self) -> None:
        """Register the stored run in MLflow (this process is the run's only writer); a
        tracking server that does not answer leaves it for ``kma sync``."""
        if self.tracking_uri is None:
            return
        from .tracking.tracker import Tracker
        from .workflows.sync import register_run

        try:
            register_run(Tracker(self.tracking_uri), self.store, self.run_id)
        except KMAError as e:
            from .secrets import mask_url

            log.warning(mask_url(f"run {self.run_id}: stored but not registered in MLflow ({e}); once it "
                                 f"answers: kma sync --store {self.store.location} --tracking-uri {self.tracking_uri}"))

    def _release(self) -> None:
        leases, self._leases = getattr(self, "_leases", None), None
        if leases is not None:
            leases.__exit__(None, None, None)

    def __enter__(self) -> "Recorder":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            self.finish()
        elif issubclass(exc_type, (KeyboardInterrupt, SystemExit)):
            # stopped from outside (Ctrl-C; a Ray Tune scheduler ending the trial's process
            # with SystemExit): what was recorded stands, the run is not a failure
            self.interrupt()
        else:
            self.fail(f"{exc_type.__name__}: {exc}")
        return False

    # ------------------------------------------------------------------ the verdict so far
    def verdict(self) -> dict:
        """The spectral verdict of the snapshots stored so far (see the module docstring):
        ``{"run_id", "class", "converged_at", "converged_epoch", "bad_init", "reason",
        "evidence", ..., "n_snapshots", "budget_epochs", "budget", "in_progress"}``
        (``budget``: what the verdict assumed about the rest of training, in words). ``class`` is
        None while there are fewer snapshots than the default analysis window needs. The
        budget is ``config["epochs"]`` when given (the verdict then asks what the rest of
        it would bring); without it, the snapshots so far are taken as the budget."""
        from .apps import verdicts
        from .config import AnalysisParams
        from .koopman.core import dtype_roundoff

        params = AnalysisParams()
        n = self.n_snapshots
        budget = self.config.get("epochs")
        base = {"run_id": self.run_id, "n_snapshots": n, "budget_epochs": budget,
                "in_progress": self.status == "running",
                "budget": (f"{budget} epochs (config): the motion and loss gain left over the rest of it are judged"
                           if isinstance(budget, int) and self.status == "running" else
                           "unknown (no config['epochs']): judged as if training ended at the last snapshot"
                           if self.status == "running" else "the run has ended")}
        need = max(params.min_snapshots(), 4)
        if self.status == "diverged":
            return {**base, "class": "diverging", "converged_at": None, "converged_epoch": None,
                    "bad_init": None, "reason": self.message}
        if n < need:
            return {**base, "class": None, "converged_at": None, "converged_epoch": None, "bad_init": None,
                    "reason": f"{plural(n, 'snapshot')} so far; a verdict needs at least {need}"}
        run = self.store.open_run(self.run_id)
        if self.status == "running":   # the rows written so far and those still buffered
            run = _LiveRun(run, self._writer, self._history)
        est = params.estimator(unit_roundoff=dtype_roundoff(self.dtype)).fit(run.trajectory(rows=n))
        return {**verdicts.for_estimator(run, est, params.residual_tol), **base}


class _LiveRun:
    """A run being recorded, as the verdicts read a stored :class:`~pipeline.storage.store.Run`
    (``run_id``, ``attrs``, ``config``, ``metrics``, ``status``, ``layout``,
    ``n_snapshots``, ``trajectory``): its attributes as they stand now, and a trajectory of
    the rows in the store followed by those the writer still buffers (nothing is written)."""

    def __init__(self, run, writer, history: dict):
        from .storage.writer import _json_safe

        self._run, self.run_id, self.store = run, run.run_id, run.store
        self._written, self._buffered = writer.pending()
        self.attrs = {**run.attrs, "n_snapshots": writer.n_snapshots, "snapshot_epochs": list(writer.epochs),
                      "snapshot_steps": list(writer.steps), "metrics": _json_safe(history)}
        self.layout = run.layout

    config = property(lambda self: self.attrs.get("config", {}))
    metrics = property(lambda self: self.attrs.get("metrics", {}))
    status = property(lambda self: self.attrs.get("status", "running"))
    n_snapshots = property(lambda self: int(self.attrs["n_snapshots"]))

    def trajectory(self, dtype=None, rows: int | None = None):
        """The first ``rows`` snapshots (default all) as a :class:`pipeline.koopman.Trajectory`."""
        import dask.array as da
        import numpy as np

        from .koopman import Trajectory

        dtype = np.dtype(dtype or np.float32)
        n = self.n_snapshots if rows is None else int(rows)
        stored = self._run.trajectory(dtype, rows=min(n, self._written)).array if self._written else None
        cols = stored.chunks[1] if stored is not None else min(self.layout.size, 2**18)
        parts = [] if stored is None else [stored]
        if n > self._written:
            mem = self._buffered[:n - self._written].astype(dtype, copy=False)
            parts.append(da.from_array(mem, chunks=(mem.shape[0], cols)))
        array = parts[0] if len(parts) == 1 else da.concatenate(parts, axis=0)
        return Trajectory(array, groups=tuple(self.layout.layer_ranges()))
