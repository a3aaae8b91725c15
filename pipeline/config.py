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
from pathlib import Path
from typing import Any, Literal, Union

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import ConfigError

Grid = Union[Any, list]  # a scalar, or a list of values to sweep over


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _as_list(v) -> list:
    return list(v) if isinstance(v, (list, tuple)) else [v]


# --------------------------------------------------------------------------- tasks
class MultiscaleTask(_Strict):
    """Synthetic multi-scale 1-D regression: Σ a_i sin(2π f_i x + φ_i) (+ noise)."""

    name: Literal["multiscale"] = "multiscale"
    n_points: int = Field(256, ge=8)
    frequencies: list[float] = Field(default_factory=lambda: [1.0, 4.0, 16.0])
    amplitudes: list[float] = Field(default_factory=lambda: [1.0, 0.5, 0.25])
    noise: float = Field(0.0, ge=0.0)
    val_fraction: float = Field(0.2, gt=0.0, lt=1.0)

    @model_validator(mode="after")
    def _same_length(self):
        if len(self.frequencies) != len(self.amplitudes):
            raise ValueError("frequencies and amplitudes must have the same length")
        return self


class DigitsTask(_Strict):
    """scikit-learn's bundled 8×8 digits (10 classes)."""

    name: Literal["digits"] = "digits"
    val_fraction: float = Field(0.2, gt=0.0, lt=1.0)


class BlobsTask(_Strict):
    """Synthetic classification (scikit-learn ``make_classification``)."""

    name: Literal["blobs"] = "blobs"
    n_samples: int = Field(512, ge=16)
    n_features: int = Field(16, ge=2)
    n_classes: int = Field(3, ge=2)
    val_fraction: float = Field(0.2, gt=0.0, lt=1.0)


TaskConfig = Union[MultiscaleTask, DigitsTask, BlobsTask]


# --------------------------------------------------------------------------- parts
class ModelGrid(_Strict):
    family: Literal["mlp", "cnn"] = "mlp"
    depth: Union[int, list[int]] = 2
    width: Union[int, list[int]] = 32
    activation: Union[str, list[str]] = "tanh"

    @field_validator("depth", "width")
    @classmethod
    def _positive(cls, v):
        if any(int(x) < 1 for x in _as_list(v)):
            raise ValueError("must be >= 1")
        return v


class OptimizerGrid(_Strict):
    name: Union[str, list[str]] = "adam"
    lr: Union[float, list[float]] = 1e-3
    momentum: float = Field(0.0, ge=0.0, lt=1.0)
    weight_decay: float = Field(0.0, ge=0.0)

    @field_validator("lr")
    @classmethod
    def _lr_positive(cls, v):
        if any(float(x) <= 0 for x in _as_list(v)):
            raise ValueError("learning rate must be > 0")
        return v


class SnapshotPolicy(_Strict):
    every: int = Field(1, ge=1)
    unit: Literal["epoch", "step"] = "epoch"
    layers: Union[Literal["all"], list[str]] = "all"
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"


class Resources(_Strict):
    num_cpus: float = Field(1.0, gt=0)
    num_gpus: float = Field(0.0, ge=0)


class AnalysisConfig(_Strict):
    """Default analysis run by ``kma sweep`` after training (``kma analyze`` flags win)."""

    enabled: bool = True
    method: Literal["qr", "randomized"] = "qr"
    rank: int | None = Field(None, ge=1)
    window: int | None = Field(None, ge=2)
    stride: int | None = Field(None, ge=1)
    per_layer: bool = True


class SweepConfig(_Strict):
    """A whole sweep (one YAML file)."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    seed: int = 0
    seeds: Union[int, list[int]] = Field(default_factory=lambda: [0])
    task: TaskConfig = Field(default_factory=MultiscaleTask, discriminator="name")
    model: ModelGrid = Field(default_factory=ModelGrid)
    init: Union[str, list[str]] = "kaiming"
    optimizer: OptimizerGrid = Field(default_factory=OptimizerGrid)
    loss: Union[str, list[str]] = "mse"
    epochs: int = Field(20, ge=1)
    batch_size: int = Field(64, ge=1)
    snapshot: SnapshotPolicy = Field(default_factory=SnapshotPolicy)
    resources: Resources = Field(default_factory=Resources)
    analysis: AnalysisConfig = Field(default_factory=AnalysisConfig)
    store: str | None = None  # default store URL (the command line wins)

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v):
        if isinstance(v, int):
            if v < 1:
                raise ValueError("seeds as a count must be >= 1")
            return list(range(v))
        if not v:
            raise ValueError("seeds must not be empty")
        return v


# --------------------------------------------------------------------------- variant
class Variant(_Strict):
    """One fully resolved training configuration (no grids left)."""

    sweep: str
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
    loss: str
    epochs: int
    batch_size: int
    snapshot: SnapshotPolicy
    resources: Resources

    def identity(self) -> dict:
        """The content that defines the run (resources and sweep name excluded)."""
        return self.model_dump(mode="json", exclude={"resources", "sweep"})

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


def expand(cfg: SweepConfig) -> list[Variant]:
    """All variants of the sweep grid, in a stable order, with unique run ids."""
    m, o = cfg.model, cfg.optimizer
    axes = [
        _as_list(m.depth),
        _as_list(m.width),
        _as_list(m.activation),
        _as_list(cfg.init),
        _as_list(o.name),
        _as_list(o.lr),
        _as_list(cfg.loss),
        list(cfg.seeds),
    ]
    variants = []
    for depth, width, act, init, opt, lr, loss, seed in itertools.product(*axes):
        torch_seed = int(
            np.random.SeedSequence(cfg.seed, spawn_key=(int(seed),)).generate_state(1)[0]
        )
        variants.append(
            Variant(
                sweep=cfg.name,
                seed=int(seed),
                torch_seed=torch_seed,
                task=cfg.task,
                family=m.family,
                depth=int(depth),
                width=int(width),
                activation=str(act),
                init=str(init),
                optimizer=str(opt),
                lr=float(lr),
                momentum=o.momentum,
                weight_decay=o.weight_decay,
                loss=str(loss),
                epochs=cfg.epochs,
                batch_size=cfg.batch_size,
                snapshot=cfg.snapshot,
                resources=cfg.resources,
            )
        )
    ids = [v.run_id for v in variants]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"sweep {cfg.name!r}: the grid repeats a variant (duplicate values in a list)")
    return variants


# --------------------------------------------------------------------------- loading
def _format_error(source: str, err: ValidationError) -> str:
    first = err.errors()[0]
    path = ".".join(str(p) for p in first["loc"] if not (isinstance(p, str) and p in _TAGS))
    kind = first["type"]
    if kind == "extra_forbidden":
        msg = "unknown key"
    else:
        msg = first["msg"].removeprefix("Value error, ")
    more = f" (and {len(err.errors()) - 1} more problem(s))" if len(err.errors()) > 1 else ""
    return f"{source}: {path or '<top>'}: {msg}{more}"


_TAGS = {"multiscale", "digits", "blobs"}


def parse_overrides(overrides: list[str] | None) -> dict:
    """``["model.depth=[2,4]", "epochs=3"]`` → nested dict (values parsed as YAML)."""
    out: dict = {}
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected KEY=VALUE, e.g. epochs=5")
        key, value = item.split("=", 1)
        node = out
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = yaml.safe_load(value)
    return out


def _merge(base: dict, over: dict) -> dict:
    merged = dict(base)
    for k, v in over.items():
        merged[k] = _merge(merged[k], v) if isinstance(v, dict) and isinstance(merged.get(k), dict) else v
    return merged


def validate(data: Any, source: str = "config") -> SweepConfig:
    """Validate a mapping into a :class:`SweepConfig`; ConfigError with the path if not."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of keys to values at the top level")
    try:
        cfg = SweepConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_error(source, err)) from None
    _check_names(cfg, source)
    return cfg


def load(path: str | Path, overrides: list[str] | None = None) -> SweepConfig:
    """Read, merge ``KEY=VALUE`` overrides into, and validate a sweep YAML file."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read ({e.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{where}") from None
    if data is None:
        data = {}
    if isinstance(data, dict):
        data = _merge(data, parse_overrides(overrides))
    return validate(data, str(path))


def _check_names(cfg: SweepConfig, source: str) -> None:
    """Registry names (activation, init, optimizer, loss) must exist."""
    from . import inits, losses, models, optim

    checks = [
        ("model.activation", cfg.model.activation, models.ACTIVATIONS),
        ("init", cfg.init, inits.INITS),
        ("optimizer.name", cfg.optimizer.name, optim.OPTIMIZERS),
        ("loss", cfg.loss, losses.LOSSES),
    ]
    for path, value, registry in checks:
        for name in _as_list(value):
            if name not in registry:
                known = ", ".join(sorted(registry))
                raise ConfigError(f"{source}: {path}: unknown name {name!r}; known: {known}")
    if cfg.model.family == "cnn" and cfg.task.name != "digits":
        raise ConfigError(f"{source}: model.family: 'cnn' needs an image task (digits)")


def resolved_dict(cfg: SweepConfig) -> dict:
    return cfg.model_dump(mode="json")


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
