"""A sweep and its variants: the :class:`SweepConfig` schema, grid expansion into
:class:`Variant` objects, and stable run ids.

A sweep YAML describes a grid; :func:`expand` turns it into :class:`Variant` objects,
each a fully resolved, scalar configuration. A variant's run id is derived from its
resolved content (:func:`identity`), so the same sweep always maps to the same run ids
and a re-run finds its earlier results.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, BeforeValidator, Field, field_validator, model_validator

from ..errors import ConfigError
from .analysis import AnalysisParams
from .base import IntGrid, NameGrid, _as_list
from .grids import ModelGrid, OptimizerGrid
from .losses import LossGrid, LossValue, loss_label
from .policies import TRAINING_OPTIONS, Resources, SnapshotPolicy, TrainingOptions
from .tasks import MultiscaleTask, TaskConfig

MAX_GRID = 10_000  # variants above which a sweep asks for confirmation (or --yes)
MAX_SEEDS = 1_000_000  # ``seeds: N`` expands to a list: N is bounded before it is built
MAX_NAME = 256  # MLflow's experiment-name column is VARCHAR(256) (enforced on PostgreSQL)


EXECUTION_ONLY = {"identity": False}  # ``Field(json_schema_extra=EXECUTION_ONLY)``: never in a run id


def identity(model: BaseModel) -> dict:
    """The part of ``model`` that defines a trajectory, as JSON-ready data.

    The rule (so that a new config key does not change every existing run id):

    - a field marked execution-only (``json_schema_extra=EXECUTION_ONLY``: resources,
      packing, anything that does not change the trajectory) never enters;
    - a required field, or one listed in the model's ``ID_KEYS_V1`` (the keys hashed
      before the rule existed), always enters;
    - any other field enters only when its value differs from its default, or, when the
      model's ``ID_DEFAULTS`` names it, from the value given there (the value runs made
      before the field existed had implicitly: a new default that changes the trajectory
      then enters the id, the old value keeps the old ids).

    Nested models follow the same rule, recursively.
    """
    cls = type(model)
    dumped = model.model_dump(mode="json")
    out = {}
    for name, field in cls.model_fields.items():
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        if extra.get("identity") is False:
            continue
        value = getattr(model, name)
        if not (field.is_required() or name in cls.ID_KEYS_V1):
            default = cls.ID_DEFAULTS[name] if name in cls.ID_DEFAULTS else field.get_default(call_default_factory=True)
            if value == default:
                continue
        out[name] = identity(value) if isinstance(value, BaseModel) else dumped[name]
    return out


class SweepConfig(TrainingOptions):
    """A whole sweep (one YAML file)."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    seed: int = Field(0, ge=0)
    seeds: IntGrid = Field(default_factory=lambda: [0])
    task: TaskConfig = Field(default_factory=MultiscaleTask, discriminator="name")
    model: ModelGrid = Field(default_factory=ModelGrid)
    init: NameGrid = "kaiming"
    optimizer: OptimizerGrid = Field(default_factory=OptimizerGrid)
    loss: LossGrid = "mse"   # names and mappings ({name: sobolev, s: 1.0}), or a list of them
    epochs: int = Field(20, ge=1)
    batch_size: int = Field(64, ge=1)
    snapshot: SnapshotPolicy = Field(default_factory=SnapshotPolicy)
    resources: Resources = Field(default_factory=Resources)
    analysis: AnalysisParams = Field(default_factory=AnalysisParams)
    store: str | None = None  # default store URL (the command line wins)
    # the training options (stop, on_bad_init, prune, accelerate, freeze): TrainingOptions
    # train variants of one architecture packed, pack_max per task (never in a run id)
    pack: Annotated[Literal["auto", "off"], BeforeValidator(  # YAML reads a bare off as False
        lambda v: ("auto" if v else "off") if isinstance(v, bool) else v)] = Field("auto", json_schema_extra=EXECUTION_ONLY)
    pack_max: int = Field(32, ge=1, json_schema_extra=EXECUTION_ONLY)

    @field_validator("name")
    @classmethod
    def _name_length(cls, v):
        if len(v) > MAX_NAME:  # it names the MLflow experiment
            raise ValueError(f"{len(v)} characters; at most {MAX_NAME} (MLflow's limit for an experiment name)")
        return v

    @model_validator(mode="after")
    def _stop_v2_needs_epochs(self):
        if self.stop is not None and self.stop.rule != "v1" and self.snapshot.unit != "epoch":
            raise ValueError(f"stop: rule {self.stop.rule} needs snapshot.unit: epoch (its horizon is the rest of the "
                             "budget in snapshots); set stop.rule: v1 for per-step snapshots")
        return self

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v):
        if isinstance(v, int):
            if not 1 <= v <= MAX_SEEDS:
                raise ValueError(f"seeds as a count must be between 1 and {MAX_SEEDS:,}")
            return list(range(v))
        if any(x < 0 for x in v):
            raise ValueError("replica seeds must be >= 0")
        return v


# --------------------------------------------------------------------------- variant
class Variant(TrainingOptions):
    """One fully resolved training configuration (no grids left).

    Its run id hashes :func:`identity`: every field below is required, so each enters;
    a field added later takes a default and enters only away from it; execution-only
    fields (``sweep``: a name; ``resources``) never enter.
    """

    sweep: str = Field(json_schema_extra=EXECUTION_ONLY)
    seed: int  # the replica index from ``seeds``
    torch_seed: int  # derived from the sweep's root seed and the replica
    task: TaskConfig = Field(discriminator="name")
    family: str
    depth: int
    width: int
    activation: str
    init: str
    optimizer: str
    lr: float
    momentum: float
    weight_decay: float
    loss: LossValue  # a plain name hashes as before; a mapping as its fields (identity rule)
    epochs: int
    batch_size: int
    snapshot: SnapshotPolicy
    resources: Resources = Field(json_schema_extra=EXECUTION_ONLY)
    attempt: int = Field(0, ge=0)  # restart attempt (pipeline.training.restart); stored under <id>-r<attempt>
    # the training options (TrainingOptions): each enters the run id only when set

    def identity(self) -> dict:
        """The content that defines the run (see :func:`identity`)."""
        return identity(self)

    @property
    def run_id(self) -> str:
        digest = hashlib.sha256(
            json.dumps(self.identity(), sort_keys=True).encode()
        ).hexdigest()[:10]
        return (
            f"{self.family}-d{self.depth}-w{self.width}-{self.activation}-{self.init}"
            f"-{self.optimizer}-s{self.seed}-{digest}"
        )

    def snapshot_capacity(self) -> int:
        """Upper bound on the number of snapshots this variant takes."""
        if self.snapshot.unit == "epoch":
            return 1 + self.epochs // self.snapshot.every
        return None  # depends on the data size; the store grows as needed


def _axes(cfg: SweepConfig) -> list[tuple[str, list]]:
    """The grid's axes, ``(config path, values)``, in expansion order."""
    m, o = cfg.model, cfg.optimizer
    return [
        ("model.depth", [int(x) for x in _as_list(m.depth)]),
        ("model.width", [int(x) for x in _as_list(m.width)]),
        ("model.activation", [str(x) for x in _as_list(m.activation)]),
        ("init", [str(x) for x in _as_list(cfg.init)]),
        ("optimizer.name", [str(x) for x in _as_list(o.name)]),
        ("optimizer.lr", [float(x) for x in _as_list(o.lr)]),
        ("loss", [x if isinstance(x, BaseModel) else str(x) for x in _as_list(cfg.loss)]),
        ("seeds", [int(x) for x in cfg.seeds]),
    ]


def grid_size(cfg: SweepConfig) -> int:
    """Number of variants :func:`expand` would produce, counted without building them."""
    return math.prod(len(values) for _, values in _axes(cfg))


def expand(cfg: SweepConfig) -> list[Variant]:
    """All variants of the sweep grid, in a stable order, with unique run ids."""
    m, o = cfg.model, cfg.optimizer
    axes = [values for _, values in _axes(cfg)]
    torch_seeds = {  # one per replica, shared by every variant of that replica
        seed: int(np.random.SeedSequence(cfg.seed, spawn_key=(seed,)).generate_state(1)[0])
        for seed in axes[-1]
    }
    variants = []
    for depth, width, act, init, opt, lr, loss, seed in itertools.product(*axes):
        variants.append(
            Variant(
                sweep=cfg.name,
                seed=seed,
                torch_seed=torch_seeds[seed],
                task=cfg.task,
                family=m.family,
                depth=depth,
                width=width,
                activation=act,
                init=init,
                optimizer=opt,
                lr=lr,
                momentum=o.momentum,
                weight_decay=o.weight_decay,
                loss=loss,
                epochs=cfg.epochs,
                batch_size=cfg.batch_size,
                snapshot=cfg.snapshot,
                resources=cfg.resources,
                **{name: getattr(cfg, name) for name in TRAINING_OPTIONS},
            )
        )
    ids = [v.run_id for v in variants]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"sweep {cfg.name!r}: the grid repeats a variant (duplicate values in a list)")
    return variants


def resolved_dict(cfg: SweepConfig) -> dict:
    return cfg.model_dump(mode="json")


def variant_params(variant: "Variant") -> dict[str, Any]:
    """A variant's MLflow params: its fields flattened (``loss.name``, ``loss.s``, ...);
    a loss given by a mapping also logs its label as ``loss`` (``sobolev(s=1)``), so
    runs group by ``loss`` alike whatever form their loss takes. Options left out (None:
    no ``accelerate``, ``freeze``, ``prune``, ``stop``, ``on_bad_init``) are not logged,
    so the UI shows no column of "None"s."""
    params = {k: v for k, v in flatten_dict(variant.model_dump(mode="json")).items() if v is not None}
    if not isinstance(variant.loss, str):
        params["loss"] = loss_label(variant.loss)
    return params


def flatten_dict(d: dict, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` → ``{"a.b": 1}`` (lists kept as values)."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten_dict(v, key + "."))
        else:
            out[key] = v
    return out
