"""Per-variant policies of a sweep: snapshots, resources, and the training options
(spectral stopping, bad initializations, pruning, acceleration, freezing; each absent =
off), declared once in :class:`TrainingOptions`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Callable, ClassVar, Literal, Union

from pydantic import Field, field_validator, model_validator

from ..apps import hooks
from .analysis import RELIABLE_RESIDUAL
from .base import _show, _Strict


class SnapshotPolicy(_Strict):
    ID_KEYS_V1: ClassVar[frozenset[str]] = frozenset({"every", "unit", "layers", "dtype"})

    every: int = Field(1, ge=1)
    unit: Literal["epoch", "step"] = "epoch"
    layers: Union[Literal["all"], Annotated[list[str], Field(min_length=1)]] = "all"

    @field_validator("layers", mode="before")
    @classmethod
    def _layers(cls, v):
        if isinstance(v, list) and not v:
            raise ValueError("empty list: give 'all' or at least one module name")
        if not (v == "all" or (isinstance(v, list) and all(isinstance(x, str) for x in v))):
            raise ValueError(f"expected 'all' or a list of module names, got {_show(v)}")
        return v
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"


class StopPolicy(_Strict):
    """Spectral stopping: every ``every`` snapshots, once ``window`` are held, the
    spectra of the last ``window`` snapshots are computed in the training task and a
    convergence rule applied; the variant stops when it holds. Absent (None) = off.

    ``rule``: ``v2`` (default) the second-version verdict of :mod:`pipeline.apps.horizon`
    (predicted remaining motion over the rest of the budget against the motion so far,
    per layer, and the predicted validation-loss gain; stops where ``k`` holding windows
    are confirmed, as the offline verdict's ``online_confirmed_epoch``); ``v1`` the first
    version of :mod:`pipeline.apps.convergence` (certified share at 1), what ``stop:``
    ran before ``rule`` existed. ``rule: v1`` keeps those runs' ids; ``v2`` enters the id
    (a different stopping point is a different trajectory)."""

    ID_DEFAULTS: ClassVar[dict] = {"rule": "v1"}   # the value earlier runs had implicitly

    when: Literal["converged"] = "converged"
    rule: Literal["v2", "v1"] = "v2"
    window: int = Field(10, ge=6)
    every: int = Field(2, ge=1)


class OnBadInit(_Strict):
    """``on_bad_init:``: what a variant does when the detector of
    :mod:`pipeline.apps.badinit` finds its initialization bad after ``after`` snapshots
    (docs/pages/badinit.md). ``restart``: end the attempt (status ``bad_init``) and
    train attempt ``<run id>-r1``, ``-r2``, ... (at most ``max_restarts``) with a new
    initialization seed and, when given, the ``fallback_init`` scheme; ``stop``: end the
    variant with status ``bad_init``; ``continue``: only record the verdict. ``rule``: the
    detector, ``v3`` (default: :func:`~pipeline.apps.badinit_loss.detect_v3`: the training loss
    against the task's chance level, the weights' evidence where no loss is known), ``v2``
    (:func:`~pipeline.apps.badinit.detect_v2`: weight gain and lr-normalised motion) or
    ``v1`` (:func:`~pipeline.apps.badinit.detect`: what ``on_bad_init`` ran before ``rule``
    existed; ``rule: v1`` keeps those runs' ids, ``v2``/``v3`` enter the id)."""

    ID_DEFAULTS: ClassVar[dict] = {"rule": "v1"}   # the value earlier runs had implicitly

    action: Literal["restart", "stop", "continue"] = "restart"
    rule: Literal["v3", "v2", "v1"] = "v3"
    max_restarts: int = Field(1, ge=1, le=9)
    fallback_init: str | None = None
    after: int = Field(6, ge=4)   # K snapshots (the initial weights and after-1 more)


class Resources(_Strict):
    num_cpus: float = Field(1.0, gt=0)
    num_gpus: float = Field(0.0, ge=0)
    # Ray custom resources each variant's task needs ({"node2": 1}: only on nodes started with
    # `ray start --resources '{"node2": 1}'`); execution-only like the rest (never in a run id)
    custom: dict[str, float] = Field(default_factory=dict)

    @field_validator("custom")
    @classmethod
    def _custom(cls, v):
        for name, amount in v.items():
            if name in ("CPU", "GPU", "memory", "object_store_memory"):
                raise ValueError(f"{name}: a Ray built-in resource; set num_cpus/num_gpus instead")
            if not amount > 0:
                raise ValueError(f"{name}: must be > 0")
        return v


class PruneConfig(_Strict):
    """``prune:`` mask a fraction of the weights once, after ``after`` snapshots, and keep
    training with the mask fixed (:mod:`pipeline.apps.prune`). ``koopman``: by the
    magnitude of each weight's predicted end point, the DMD mode of the eigenvalue
    nearest 1 over the last ``window`` snapshots (Koopman magnitude pruning, Redman et
    al., ICLR 2022); ``magnitude``: by the current magnitude (the baseline). ``scope``
    ``global`` ranks all weight matrices together (as Redman et al.), ``layer`` each
    on its own. ``rank``: DMD truncation (default ``(window - 1) // 2``)."""

    method: Literal["koopman", "magnitude"]
    sparsity: float = Field(gt=0.0, lt=1.0)
    after: int = Field(ge=2)
    window: int = Field(6, ge=3)
    scope: Literal["global", "layer"] = "global"
    rank: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _window_fits(self):
        if self.window > self.after:
            raise ValueError(f"window ({self.window}) must be <= after ({self.after}): "
                             "the DMD needs that many snapshots before the prune")
        return self


class AccelerateConfig(_Strict):
    """``accelerate:`` every ``every`` snapshots, DMD of the last ``window`` (since the
    last jump), and a jump of the weights ``horizon`` snapshots ahead along the
    certified, non-growing modes; kept only if the training loss falls (Dogra & Redman,
    NeurIPS 2020; :mod:`pipeline.apps.accelerate`). ``optimizer_state``: what the
    optimizer's moments do at an accepted jump (``keep`` or ``reset``); ``residual_tol``
    the certification threshold (default the analysis' ``RELIABLE_RESIDUAL``)."""

    window: int = Field(ge=3)
    every: int = Field(ge=1)
    horizon: int = Field(ge=1)
    rank: int | None = Field(None, ge=1)
    optimizer_state: Literal["keep", "reset"] = "keep"
    residual_tol: float = Field(RELIABLE_RESIDUAL, gt=0.0)   # certification: κ · residual <= this
    # Dogra & Redman's form (absent = the whole-network jump above, so old runs keep their
    # ids): ``scope: layer`` fits one operator per layer on the weight updates of the
    # window (per step with ``snapshot: {unit: step}``) and checks the jump on a held-out
    # batch; ``horizon_rule: certified`` chooses the horizon among horizon, horizon/2, ...
    # whose first-order error bound (relative to the layer's norm) is <= ``bound_tol``.
    scope: Literal["network", "layer"] = "network"
    horizon_rule: Literal["fixed", "certified"] = "fixed"
    bound_tol: float = Field(0.01, gt=0.0)

    @model_validator(mode="after")
    def _layer_only(self):
        if self.scope == "network" and (self.horizon_rule != "fixed" or "bound_tol" in self.model_fields_set):
            raise ValueError("horizon_rule and bound_tol need scope: layer")
        if self.scope == "layer" and self.window < 4:
            raise ValueError(f"scope: layer needs window >= 4 (got {self.window}): "
                             "the per-layer fit needs three updates")
        return self


class FreezeConfig(_Strict):
    """``freeze:`` after ``after`` snapshots (and, with ``every``, every ``every`` after
    that), DMD of the last ``window`` snapshots, and freeze each weight whose predicted
    motion over the next ``horizon`` snapshots (default ``window``) from its modes is at
    most ``tol`` times the RMS of its tensor; frozen weights never unfreeze
    (:mod:`pipeline.apps.freeze`). ``rank``: DMD truncation (default
    ``(window - 1) // 2``); ``residual_tol`` the certification threshold."""

    after: int = Field(ge=3)
    window: int = Field(6, ge=3)
    every: int | None = Field(None, ge=1)
    tol: float = Field(1e-2, gt=0.0)
    horizon: int | None = Field(None, ge=1)
    rank: int | None = Field(None, ge=1)
    residual_tol: float = Field(RELIABLE_RESIDUAL, gt=0.0)

    @model_validator(mode="after")
    def _window_fits(self):
        if self.window > self.after:
            raise ValueError(f"window ({self.window}) must be <= after ({self.after}): "
                             "the DMD needs that many snapshots before the first freeze")
        return self


@dataclass(frozen=True)
class TrainingOption:
    """The one registration of a training option: ``name: Annotated[Config | None,
    TrainingOption(...)] = None``, a field of :class:`TrainingOptions`.

    ``build``: the builder of its training callback, ``build(config, model, optimizer, task,
    loss_fn, layout, device) -> callback`` (:func:`pipeline.apps.hooks.training_hooks` calls
    it; what the callback records, ``events`` and the like, goes into the run's metadata by
    :func:`pipeline.apps.hooks.hook_records`). None: the trainers wire the option themselves
    (:data:`pipeline.training.runner.TRAINER_OPTIONS`: ``stop``, ``on_bad_init``).
    ``packed``: the packed trainer runs it too; otherwise a variant with the option set
    trains unpacked, one task of its own, never packed with the option ignored. A callback
    holds its member's own model and optimizer, which a packed member has not: only an
    option the trainers wire may say ``packed=True``. ``needs``: the field of its config
    that counts the snapshots it needs before it acts (a sweep whose runs take fewer is
    refused: the option would never fire).
    """

    build: Callable | None = None
    packed: bool = False
    needs: str | None = None

    def __post_init__(self):
        if self.build is not None and self.packed:
            raise TypeError("a training callback needs its variant's own model and optimizer: "
                            "the packed trainer cannot build it (declare packed=False)")


class TrainingOptions(_Strict):
    """The training options a sweep (and each of its variants) may carry; absent = off, so
    a run without them keeps its id, and a set one enters the id.

    Each option is one field here, its :class:`TrainingOption` saying how it is wired and
    whether the packed trainer runs it; :class:`~pipeline.config.SweepConfig` and
    :class:`~pipeline.config.Variant` inherit the fields, :func:`~pipeline.config.expand`
    copies them, the packing planner (:func:`pipeline.training.packing.why_unpacked`)
    asks :meth:`unpacked_options`, and the trainers build the callbacks from
    :meth:`option_fields`. Adding an option: its config model and callback in their own
    modules, and one field here.
    """

    stop: Annotated[StopPolicy | None, TrainingOption(packed=True, needs="window")] = None
    on_bad_init: Annotated[OnBadInit | None, TrainingOption(packed=True, needs="after")] = None
    # callbacks run in this order (freeze last: its step post-hook restores frozen weights
    # after the others)
    prune: Annotated[PruneConfig | None, TrainingOption(build=hooks.pruner, needs="after")] = None
    accelerate: Annotated[AccelerateConfig | None,
                          TrainingOption(build=hooks.accelerator, needs="window")] = None
    freeze: Annotated[FreezeConfig | None, TrainingOption(build=hooks.freezer, needs="after")] = None

    @model_validator(mode="after")
    def _prune_or_accelerate(self):
        if self.prune is not None and self.accelerate is not None:
            raise ValueError("prune and accelerate together are not supported; set one of them")
        return self

    @classmethod
    def option_fields(cls) -> dict[str, TrainingOption]:
        """``{name: TrainingOption}`` of every training option the model declares, in order."""
        return {name: m for name, f in cls.model_fields.items() for m in f.metadata
                if isinstance(m, TrainingOption)}

    def options(self) -> dict:
        """``{name: config}`` of the training options that are set."""
        return {name: getattr(self, name) for name in self.option_fields() if getattr(self, name) is not None}

    def unpacked_options(self) -> list[str]:
        """The training options set here that the packed trainer does not run."""
        flags = self.option_fields()
        return [name for name in self.options() if not flags[name].packed]


TRAINING_OPTIONS = tuple(TrainingOptions.option_fields())
