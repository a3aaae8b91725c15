"""Sweep configuration: a validated schema, grid expansion and stable run ids.

A sweep YAML describes a grid; :func:`expand` turns it into :class:`Variant` objects,
each a fully resolved, scalar configuration. A variant's run id is derived from its
resolved content, so the same sweep always maps to the same run ids and a re-run finds
its earlier results.

Every model forbids unknown keys: a typo is an error naming its path
(``model.widht: unknown key``), never a silently ignored value.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Union

import numpy as np
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import ConfigError, plural
from .yamlload import join_path, load_file, load_text

MAX_GRID = 10_000  # variants above which a sweep asks for confirmation (or --yes)
MAX_SEEDS = 1_000_000  # ``seeds: N`` expands to a list: N is bounded before it is built
MAX_NAME = 256  # MLflow's experiment-name column is VARCHAR(256) (enforced on PostgreSQL)


class _Strict(BaseModel):
    # strict: "32" is not an integer, 1 is not True; a non-finite float is refused
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)

    # The fields a run id hashed when the identity rule was set (issue 9): they always
    # enter the identity, at their defaults too, so that the ids of existing runs stay.
    # A field added later enters only when it differs from its default (see identity()).
    ID_KEYS_V1: ClassVar[frozenset[str]] = frozenset()


EXECUTION_ONLY = {"identity": False}  # ``Field(json_schema_extra=EXECUTION_ONLY)``: never in a run id


def identity(model: BaseModel) -> dict:
    """The part of ``model`` that defines a trajectory, as JSON-ready data.

    The rule (so that a new config key does not change every existing run id):

    - a field marked execution-only (``json_schema_extra=EXECUTION_ONLY``: resources,
      packing, anything that does not change the trajectory) never enters;
    - a required field, or one listed in the model's ``ID_KEYS_V1`` (the keys hashed
      before the rule existed), always enters;
    - any other field enters only when its value differs from its default.

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
            if value == field.get_default(call_default_factory=True):
                continue
        out[name] = identity(value) if isinstance(value, BaseModel) else dumped[name]
    return out


def _as_list(v) -> list:
    return list(v) if isinstance(v, (list, tuple)) else [v]


def _show(x) -> str:
    if isinstance(x, str):
        return f"the string {x[:40]!r}"
    return f"{type(x).__name__} {str(x)[:40]}"


_KIND_NAMES = {int: "an integer", float: "a number", str: "a name"}


def _is_kind(x, kind) -> bool:
    if isinstance(x, bool):
        return False
    if kind is float:
        return isinstance(x, (int, float)) and math.isfinite(x)
    return isinstance(x, kind)


def _grid_check(kind):
    """A grid field holds one value or a non-empty list of values, each of ``kind``."""

    def check(v):
        if isinstance(v, list) and not v:
            raise ValueError("empty list: give at least one value (a list sweeps over its values)")
        for x in _as_list(v):
            if not _is_kind(x, kind):
                raise ValueError(f"expected {_KIND_NAMES[kind]} or a list of them, got {_show(x)}")
        return v

    return BeforeValidator(check)


IntGrid = Annotated[Union[int, list[int]], _grid_check(int)]
FloatGrid = Annotated[Union[float, list[float]], _grid_check(float)]
NameGrid = Annotated[Union[str, list[str]], _grid_check(str)]


# --------------------------------------------------------------------------- tasks
class MultiscaleTask(_Strict):
    """Synthetic multi-scale 1-D regression: Σ a_i sin(2π f_i x + φ_i) (+ noise)."""

    ID_KEYS_V1: ClassVar[frozenset[str]] = frozenset(
        {"name", "n_points", "frequencies", "amplitudes", "noise", "val_fraction"})

    name: Literal["multiscale"] = "multiscale"
    n_points: int = Field(256, ge=8)
    frequencies: list[float] = Field(default_factory=lambda: [1.0, 4.0, 16.0], min_length=1)
    amplitudes: list[float] = Field(default_factory=lambda: [1.0, 0.5, 0.25], min_length=1)
    noise: float = Field(0.0, ge=0.0)
    val_fraction: float = Field(0.2, gt=0.0, lt=1.0)
    # "split": a random val_fraction of the grid's points is held out (noise-free);
    # "fresh_noise": train on the whole grid, validate on the same grid with a fresh draw
    # of the noise (keeps the uniform grid an H^-s loss needs; README "Negative Sobolev losses")
    val: Literal["split", "fresh_noise"] = "split"

    @model_validator(mode="after")
    def _same_length(self):
        if len(self.frequencies) != len(self.amplitudes):
            raise ValueError("frequencies and amplitudes must have the same length")
        return self

    @model_validator(mode="after")
    def _fraction_needs_split(self):
        if self.val == "fresh_noise" and self.val_fraction != 0.2:
            raise ValueError("val_fraction is not used with val: fresh_noise (the whole grid trains)")
        return self


class DigitsTask(_Strict):
    """scikit-learn's bundled 8×8 digits (10 classes)."""

    ID_KEYS_V1: ClassVar[frozenset[str]] = frozenset({"name", "val_fraction"})

    name: Literal["digits"] = "digits"
    val_fraction: float = Field(0.2, gt=0.0, lt=1.0)


class BlobsTask(_Strict):
    """Synthetic classification (scikit-learn ``make_classification``)."""

    ID_KEYS_V1: ClassVar[frozenset[str]] = frozenset(
        {"name", "n_samples", "n_features", "n_classes", "val_fraction"})

    name: Literal["blobs"] = "blobs"
    n_samples: int = Field(512, ge=16)
    n_features: int = Field(16, ge=2)
    n_classes: int = Field(3, ge=2)
    val_fraction: float = Field(0.2, gt=0.0, lt=1.0)


TaskConfig = Union[MultiscaleTask, DigitsTask, BlobsTask]


# --------------------------------------------------------------------------- losses
class SobolevLossSpec(_Strict):
    """``loss: {name: sobolev, s: 1.0, mse_weight: 0.0}``: the H^-s loss on the task's
    uniform grid, blended with ``mse_weight`` × MSE (:mod:`pipeline.training.sobolev`)."""

    name: Literal["sobolev"]
    s: float = Field(ge=0.0)
    mse_weight: float = Field(0.0, ge=0.0, le=1.0)


LossSpec = SobolevLossSpec             # losses configured by a mapping (name → schema below)
LOSS_SPECS: dict[str, type[_Strict]] = {"sobolev": SobolevLossSpec}
GRID_TASKS = ("multiscale",)          # tasks whose data live on a uniform grid
GRID_LOSSES = ("sobolev",)            # losses that need that grid, whole and in order


def _loss_entry(x):
    """One loss of a grid: a name, or a mapping → its schema; ``{name: mse}`` is ``mse``."""
    if isinstance(x, str) and x in LOSS_SPECS:  # `loss: sobolev` is {name: sobolev}: needs its s
        x = {"name": x}
    if isinstance(x, str) or isinstance(x, tuple(LOSS_SPECS.values())):
        return x
    if not isinstance(x, dict):
        raise ValueError(f"expected a loss name, a mapping such as {{name: sobolev, s: 1.0}} "
                         f"or a list of them, got {_show(x)}")
    name = x.get("name")
    if not isinstance(name, str):
        raise ValueError("a loss mapping needs a name, e.g. {name: sobolev, s: 1.0}")
    if set(x) == {"name"} and name not in LOSS_SPECS:
        return name
    if name not in LOSS_SPECS:
        raise ValueError(f"loss {name!r} takes no parameters; give its plain name "
                         f"(mappings configure: {', '.join(LOSS_SPECS)})")
    try:
        return LOSS_SPECS[name].model_validate(x)
    except ValidationError as err:
        first = err.errors()[0]
        where = join_path(list(first["loc"]))
        msg = "unknown key" if first["type"] == "extra_forbidden" else first["msg"]
        raise ValueError(f"{name}: {where}: {msg}") from None


def _loss_grid_check(v):
    if isinstance(v, list):
        if not v:
            raise ValueError("empty list: give at least one value (a list sweeps over its values)")
        return [_loss_entry(x) for x in v]
    return _loss_entry(v)


LossValue = Union[str, SobolevLossSpec]
LossGrid = Annotated[Union[str, SobolevLossSpec, list[Union[str, SobolevLossSpec]]],
                     BeforeValidator(_loss_grid_check)]


def loss_name(loss) -> str:
    """The registry name of a loss value (a name, a spec model or its dumped mapping)."""
    if isinstance(loss, str):
        return loss
    return str(loss["name"] if isinstance(loss, dict) else loss.name)


def loss_label(loss) -> str:
    """A loss's canonical label: ``mse``, ``sobolev(s=1)``, ``sobolev(s=2,mse_weight=0.5)``
    (parameters at their defaults left out); what ``kma compare --by loss`` groups by and
    the MLflow param ``loss`` of a variant whose loss is a mapping."""
    if isinstance(loss, str):
        return loss
    d = dict(loss) if isinstance(loss, dict) else loss.model_dump()
    name = str(d.pop("name"))
    spec = LOSS_SPECS.get(name)
    parts = []
    for k, v in d.items():
        field = spec.model_fields.get(k) if spec else None
        if field is not None and not field.is_required() and v == field.get_default():
            continue
        parts.append(f"{k}={v:g}" if isinstance(v, (int, float)) and not isinstance(v, bool) else f"{k}={v}")
    return f"{name}({','.join(parts)})" if parts else name


# --------------------------------------------------------------------------- parts
class ModelGrid(_Strict):
    family: Literal["mlp", "cnn", "hier"] = "mlp"
    depth: IntGrid = 2
    width: IntGrid = 32
    activation: NameGrid = "tanh"

    @field_validator("depth", "width")
    @classmethod
    def _positive(cls, v):
        if any(int(x) < 1 for x in _as_list(v)):
            raise ValueError("must be >= 1")
        return v


class OptimizerGrid(_Strict):
    name: NameGrid = "adam"
    lr: FloatGrid = 1e-3
    momentum: float = Field(0.0, ge=0.0, lt=1.0)
    weight_decay: float = Field(0.0, ge=0.0)

    @field_validator("lr")
    @classmethod
    def _lr_positive(cls, v):
        if any(float(x) <= 0 for x in _as_list(v)):
            raise ValueError("learning rate must be > 0")
        return v


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
    """Spectral stopping (issue 11): every ``every`` snapshots, once ``window`` are held,
    the whole network's spectrum of the last ``window`` snapshots is computed in the
    training task and the convergence criterion of :mod:`pipeline.apps.convergence`
    applied; the variant stops when it holds. Absent (None) = off."""

    when: Literal["converged"] = "converged"
    window: int = Field(10, ge=6)
    every: int = Field(2, ge=1)


class OnBadInit(_Strict):
    """``on_bad_init:``: what a variant does when the detector of
    :mod:`pipeline.apps.badinit` finds its initialization bad after ``after`` snapshots
    (README "Bad initializations"). ``restart``: end the attempt (status ``bad_init``) and
    train attempt ``<run id>-r1``, ``-r2``, ... (at most ``max_restarts``) with a new
    initialization seed and, when given, the ``fallback_init`` scheme; ``stop``: end the
    variant with status ``bad_init``; ``continue``: only record the verdict."""

    action: Literal["restart", "stop", "continue"] = "restart"
    max_restarts: int = Field(1, ge=1, le=9)
    fallback_init: str | None = None
    after: int = Field(6, ge=4)   # K snapshots (the initial weights and after-1 more)


class Resources(_Strict):
    num_cpus: float = Field(1.0, gt=0)
    num_gpus: float = Field(0.0, ge=0)


# A Ritz pair is reliable when its window's residuals are informative and the first-order
# bound on its eigenvalue's error, κ · residual (condition number times the certified
# data residual of the unit Ritz vector), is at most this: an absolute distance in the
# λ-plane, where the eigenvalues a verdict reads sit near the unit circle (README).
RELIABLE_RESIDUAL = 1e-2

_RANK_ARGS = ("rank", "tol", "threshold")


# --------------------------------------------------------------------------- applications
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


class AnalysisParams(_Strict):
    """What an analysis computes: one model for the sweep YAML's ``analysis:`` section
    and the flags of ``kma analyze`` (same defaults), validated when it is built.

    Its :meth:`key` hashes into :attr:`analysis_id`, which names the analysis in the
    store; ``enabled`` (the sweep's switch) and ``modes`` (an extra output) are not
    part of it.
    """

    enabled: bool = True            # sweep only: analyse after training
    method: Literal["qr", "randomized"] = "qr"
    rank: int | None = None
    tol: float | None = None
    threshold: Literal["gavish-donoho"] | None = None
    window: int | Literal["auto", "all"] = "auto"   # README "Windows"
    stride: int | None = None
    per_layer: bool = True
    modes: bool = False
    seed: int = 0
    oversample: int = 10
    n_power_iter: int = 2
    residual_tol: float = RELIABLE_RESIDUAL

    @field_validator("window")
    @classmethod
    def _window(cls, v):
        if isinstance(v, int) and v < 2:
            raise ValueError("must be >= 2 snapshots")
        return v

    @model_validator(mode="after")
    def _stride_needs_window(self):
        if self.stride is not None and not isinstance(self.window, int):
            raise ValueError(f"stride needs a window width (window is {self.window!r})")
        return self

    @field_validator("stride")
    @classmethod
    def _stride(cls, v):
        if v is not None and v < 1:
            raise ValueError("must be >= 1")
        return v

    @field_validator("rank")
    @classmethod
    def _rank(cls, v):
        if v is not None and v < 1:
            raise ValueError("rank must be a positive integer")
        return v

    @field_validator("seed", "oversample", "n_power_iter")
    @classmethod
    def _non_negative(cls, v):
        if v < 0:
            raise ValueError("must be >= 0")
        return v

    @field_validator("tol")
    @classmethod
    def _tol(cls, v):
        if v is not None and not 0 <= v < 1:
            raise ValueError("must be in [0, 1)")
        return v

    @field_validator("residual_tol")
    @classmethod
    def _residual_tol(cls, v):
        if not v > 0:
            raise ValueError("must be > 0")
        return v

    @model_validator(mode="after")
    def _one_truncation(self):
        given = [k for k in _RANK_ARGS if getattr(self, k) is not None]
        if len(given) > 1:
            raise ValueError(f"give at most one of rank, tol, threshold (got {', '.join(given)})")
        return self

    @classmethod
    def from_flags(cls, **flags) -> "AnalysisParams":
        """Build from command-line values; a bad one is a :class:`ConfigError` naming
        its flag (``--window 1: must be >= 2 snapshots``)."""
        try:
            return cls(**flags)
        except ValidationError as err:
            first = err.errors()[0]
            loc = [p for p in first["loc"] if isinstance(p, str) and p in cls.model_fields]
            msg = first["msg"].removeprefix("Value error, ")
            if loc:
                raise ConfigError(f"--{loc[0].replace('_', '-')} {flags.get(loc[0])}: {msg}") from None
            raise ConfigError(f"analysis parameters: {msg}") from None

    def key(self) -> dict:
        """The parameters that define the result, with the engine version (hashed)."""
        from .koopman import ENGINE_VERSION

        d = self.model_dump(exclude={"enabled", "modes"})
        d["engine"] = ENGINE_VERSION
        if self.method != "randomized":
            for k in ("seed", "oversample", "n_power_iter"):
                d.pop(k)
        return d

    def min_snapshots(self) -> int:
        """Snapshots a run needs for these windows."""
        return self.window if isinstance(self.window, int) else 2

    @property
    def analysis_id(self) -> str:
        from .koopman import ENGINE_VERSION

        digest = hashlib.sha256(json.dumps(self.key(), sort_keys=True).encode()).hexdigest()[:8]
        w = (f"w{self.window}s{self.stride or self.window}" if isinstance(self.window, int)
             else f"w{self.window}")
        return f"{self.method}-{w}{'-layers' if self.per_layer else ''}-e{ENGINE_VERSION}-{digest}"

    def estimator(self, scheduler=None, unit_roundoff=None):
        """A :class:`~pipeline.koopman.KoopmanDMD` with these parameters (unfitted)."""
        from .koopman import KoopmanDMD

        return KoopmanDMD(
            method=self.method, rank=self.rank, tol=self.tol, threshold=self.threshold,
            window=self.window, stride=self.stride, per_layer=self.per_layer,
            oversample=self.oversample, n_power_iter=self.n_power_iter, seed=self.seed,
            scheduler=scheduler, unit_roundoff=unit_roundoff,
        )


class SweepConfig(_Strict):
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
    stop: StopPolicy | None = None  # spectral stopping (issue 11); absent = off
    on_bad_init: OnBadInit | None = None  # restart policy (absent: off)
    prune: PruneConfig | None = None            # issue 13: absent = off
    accelerate: AccelerateConfig | None = None  # issue 13: absent = off
    freeze: FreezeConfig | None = None          # issue 13: absent = off

    @field_validator("name")
    @classmethod
    def _name_length(cls, v):
        if len(v) > MAX_NAME:  # it names the MLflow experiment
            raise ValueError(f"{len(v)} characters; at most {MAX_NAME} (MLflow's limit for an experiment name)")
        return v

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

    @model_validator(mode="after")
    def _prune_or_accelerate(self):
        if self.prune is not None and self.accelerate is not None:
            raise ValueError("prune and accelerate together are not supported; set one of them")
        return self


# --------------------------------------------------------------------------- variant
class Variant(_Strict):
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
    stop: StopPolicy | None = None  # enters the run id only when set
    on_bad_init: OnBadInit | None = None  # in the id only when set
    attempt: int = Field(0, ge=0)  # restart attempt (pipeline.training.restart); stored under <id>-r<attempt>
    prune: PruneConfig | None = None
    accelerate: AccelerateConfig | None = None
    freeze: FreezeConfig | None = None

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
                stop=cfg.stop,
                on_bad_init=cfg.on_bad_init,
                prune=cfg.prune,
                accelerate=cfg.accelerate,
                freeze=cfg.freeze,
            )
        )
    ids = [v.run_id for v in variants]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"sweep {cfg.name!r}: the grid repeats a variant (duplicate values in a list)")
    return variants


# --------------------------------------------------------------------------- loading
_TYPE_ERRORS = {"int_type", "float_type", "string_type", "bool_type", "list_type", "dict_type",
                "model_type", "int_from_float", "literal_error", "finite_number"}


def _format_error(source: str, err: ValidationError) -> str:
    first = err.errors()[0]
    path = join_path([p for p in first["loc"] if not _is_tag(p)])
    kind = first["type"]
    if kind == "extra_forbidden":
        msg = "unknown key"
    else:
        msg = first["msg"].removeprefix("Value error, ")
        if kind in _TYPE_ERRORS and "input" in first:
            msg += f", got {_show(first['input'])}"
    more = f" (and {plural(len(err.errors()) - 1, 'more problem')})" if len(err.errors()) > 1 else ""
    return f"{source}: {path or '<top>'}: {msg}{more}"


_TAGS = {"multiscale", "digits", "blobs"}


def _is_tag(p) -> bool:
    """A union member's tag in an error location (``list[int]``, ``multiscale``)."""
    return isinstance(p, str) and (p in _TAGS or "[" in p or p in {"int", "float", "str", "bool"})


def parse_overrides(overrides: list[str] | None, source: str = "override") -> dict:
    """``["model.depth=[2,4]", "epochs=3"]`` → nested dict (values parsed as YAML)."""
    out: dict = {}
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"{source}: override {item!r}: expected KEY=VALUE, e.g. epochs=5")
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        if not all(p.strip() for p in parts):
            raise ConfigError(f"{source}: override {item!r}: expected KEY=VALUE with a dotted key, "
                              "e.g. model.depth=4")
        parsed = load_text(value, f"{source}: {key.strip()}", what=f"override value {value!r} is not valid YAML")
        node = out
        for p in parts[:-1]:
            child = node.setdefault(p, {})
            if not isinstance(child, dict):  # `a=1 a.b=2`: the later override wins
                child = node[p] = {}
            node = child
        node[parts[-1]] = parsed
    return out


def _merge(base: dict, over: dict) -> dict:
    merged = dict(base)
    for k, v in over.items():
        merged[k] = _merge(merged[k], v) if isinstance(v, dict) and isinstance(merged.get(k), dict) else v
    return merged


def _check_finite(data: Any, source: str, path: list) -> None:
    """Every number in the raw config is finite (``.nan``/``.inf`` are YAML floats)."""
    if isinstance(data, float) and not math.isfinite(data):
        raise ConfigError(f"{source}: {join_path(path) or '<top>'}: must be a finite number, got {data}")
    if isinstance(data, dict):
        for k, v in data.items():
            _check_finite(v, source, [*path, k])
    elif isinstance(data, list):
        for i, v in enumerate(data):
            _check_finite(v, source, [*path, i])


def validate(data: Any, source: str = "config", *, names: bool = True) -> SweepConfig:
    """Validate a mapping into a :class:`SweepConfig`; ConfigError with the path if not.

    ``names=False`` leaves the registry names (which import torch, seconds) to a later
    :func:`check_names`, so that a grid can be counted and refused at once.
    """
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of keys to values at the top level")
    _check_finite(data, source, [])
    try:
        cfg = SweepConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_error(source, err)) from None
    _check_axes(cfg, source)
    _check_grid_losses(cfg, source)
    if names:
        check_names(cfg, source)
    return cfg


def load(path: str | Path, overrides: list[str] | None = None, *, names: bool = True) -> SweepConfig:
    """Read, merge ``KEY=VALUE`` overrides into, and validate a sweep YAML file."""
    path = Path(path)
    data = load_file(path)
    over = parse_overrides(overrides, str(path))
    if data is None:
        data = {}
    if isinstance(data, dict):
        data = _merge(data, over)
    return validate(data, str(path), names=names)


def _check_axes(cfg: SweepConfig, source: str) -> None:
    """No value twice in a grid list (it would train the same variant twice)."""
    for path, values in _axes(cfg):
        seen = set()
        for x in values:
            if x in seen:
                shown = repr(loss_label(x)) if isinstance(x, BaseModel) else repr(x)
                raise ConfigError(f"{source}: {path}: {shown} is listed twice; a grid lists each value once")
            seen.add(x)


def _check_grid_losses(cfg: SweepConfig, source: str) -> None:
    """A loss that needs the grid (sobolev) needs a grid task that trains on the whole
    grid, in full-batch steps (so that every loss of the sweep takes the same steps)."""
    for loss in _as_list(cfg.loss):
        if loss_name(loss) not in GRID_LOSSES:
            continue
        label, task = loss_label(loss), cfg.task
        if task.name not in GRID_TASKS:
            raise ConfigError(f"{source}: loss: {label} needs a task on a uniform grid "
                              f"({', '.join(GRID_TASKS)}); task {task.name!r} has none")
        fixes = []
        if task.val != "fresh_noise":
            fixes.append("task.val: fresh_noise (train on the whole grid, validate on a fresh noise draw)")
        if cfg.batch_size < task.n_points:
            fixes.append(f"batch_size >= {task.n_points} (task.n_points: it steps full-batch)")
        if fixes:
            raise ConfigError(f"{source}: loss: {label} needs the whole grid in order; set "
                              + " and ".join(fixes))


def check_names(cfg: SweepConfig, source: str) -> None:
    """Registry names (activation, init, optimizer, loss) must exist."""
    from .training import inits
    from .training import losses
    from .training import models
    from .training import optim

    checks = [
        ("model.activation", cfg.model.activation, models.ACTIVATIONS),
        ("init", cfg.init, inits.INITS),
        ("optimizer.name", cfg.optimizer.name, optim.OPTIMIZERS),
        ("loss", [loss_name(x) for x in _as_list(cfg.loss)], losses.LOSSES),
    ]
    for path, value, registry in checks:
        for name in _as_list(value):
            if name not in registry:
                known = ", ".join(sorted(registry))
                raise ConfigError(f"{source}: {path}: unknown name {name!r}; known: {known}")
    fallback = cfg.on_bad_init.fallback_init if cfg.on_bad_init is not None else None
    if fallback is not None and fallback not in inits.INITS:
        known = ", ".join(sorted(inits.INITS))
        raise ConfigError(f"{source}: on_bad_init.fallback_init: unknown name {fallback!r}; known: {known}")
    if cfg.on_bad_init is not None and cfg.snapshot.unit == "epoch":
        taken = 1 + cfg.epochs // cfg.snapshot.every
        if cfg.on_bad_init.after > taken:
            raise ConfigError(f"{source}: on_bad_init.after: {cfg.on_bad_init.after} snapshots, but a run "
                              f"takes only {taken} (epochs {cfg.epochs}, snapshot.every {cfg.snapshot.every})")
    if cfg.model.family == "cnn" and cfg.task.name != "digits":
        raise ConfigError(f"{source}: model.family: 'cnn' needs an image task (digits)")


def resolved_dict(cfg: SweepConfig) -> dict:
    return cfg.model_dump(mode="json")


def variant_params(variant: "Variant") -> dict[str, Any]:
    """A variant's MLflow params: its fields flattened (``loss.name``, ``loss.s``, ...);
    a loss given by a mapping also logs its label as ``loss`` (``sobolev(s=1)``), so
    runs group by ``loss`` alike whatever form their loss takes."""
    params = flatten_dict(variant.model_dump(mode="json"))
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
