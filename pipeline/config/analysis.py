"""What an analysis computes (:class:`AnalysisParams`); its certification threshold is the
one of :func:`pipeline.spectra.reliable_mask` (:data:`pipeline.spectra.RELIABLE_RESIDUAL`)."""

from __future__ import annotations

import hashlib
import json
from typing import Literal

from pydantic import ValidationError, ValidationInfo, field_validator, model_validator

from ..errors import ConfigError
from ..koopman.windowrule import check_window
from ..spectra import RELIABLE_RESIDUAL  # noqa: F401 - the analysis' default, re-exported
from .base import _Strict

_RANK_ARGS = ("rank", "tol", "threshold")
# parameters that only one method reads: left out of the other methods' analysis keys
_METHOD_ONLY = {"randomized": ("seed", "oversample", "n_power_iter")}


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
    window: int | Literal["auto", "all"] = "auto"   # docs/pages/commands.md#windows
    stride: int | None = None
    per_layer: bool = True
    modes: bool = False
    seed: int = 0
    oversample: int = 10
    n_power_iter: int = 2
    residual_tol: float = RELIABLE_RESIDUAL

    # the window rule (pipeline.koopman.windowrule, shared with the engine): one check, one
    # message; a stride is checked with the window it goes with (its own error, if any, first)
    @field_validator("window", mode="before")
    @classmethod
    def _window(cls, v):
        check_window(v)
        return v

    @field_validator("stride", mode="before")
    @classmethod
    def _stride(cls, v, info: ValidationInfo):
        if "window" in info.data:
            check_window(info.data["window"], v)
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
        its flag (``--window 1: window must be an integer >= 2, 'auto' or 'all', got 1``)."""
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
        from ..koopman import ENGINE_VERSION

        d = self.model_dump(exclude={"enabled", "modes"})
        d["engine"] = ENGINE_VERSION
        for method, names in _METHOD_ONLY.items():
            if self.method != method:
                for k in names:
                    d.pop(k)
        return d

    def min_snapshots(self) -> int:
        """Snapshots a run needs for these windows."""
        return self.window if isinstance(self.window, int) else 2

    @property
    def analysis_id(self) -> str:
        from ..koopman import ENGINE_VERSION

        digest = hashlib.sha256(json.dumps(self.key(), sort_keys=True).encode()).hexdigest()[:8]
        w = (f"w{self.window}s{self.stride or self.window}" if isinstance(self.window, int)
             else f"w{self.window}")
        return f"{self.method}-{w}{'-layers' if self.per_layer else ''}-e{ENGINE_VERSION}-{digest}"

    def estimator(self, scheduler=None, unit_roundoff=None):
        """A :class:`~pipeline.koopman.KoopmanDMD` with these parameters (unfitted): every
        field the estimator takes is passed by its name, none listed twice."""
        import inspect

        from ..koopman import KoopmanDMD

        takes = inspect.signature(KoopmanDMD).parameters
        return KoopmanDMD(**{k: v for k, v in self if k in takes},
                          scheduler=scheduler, unit_roundoff=unit_roundoff)
