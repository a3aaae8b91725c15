"""The training tasks a sweep can name (``task: {name: ...}``), one schema each."""

from __future__ import annotations

from typing import ClassVar, Literal, Union

from pydantic import Field, model_validator

from .base import _Strict


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
    # of the noise (keeps the uniform grid an H^-s loss needs; docs/pages/sobolev.md)
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
