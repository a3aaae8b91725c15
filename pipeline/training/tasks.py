"""Learning tasks: named builders returning train/validation tensors.

Every builder takes a ``seed`` and keyword parameters and returns a :class:`TaskData`.
Nothing is downloaded: the data are generated, or come bundled with scikit-learn.

=================  ==============  ===========================================
name               kind            data
=================  ==============  ===========================================
``multiscale``     regression      Σ a_i sin(2π f_i x + φ_i) on a grid of [0, 1)
``digits``         classification  scikit-learn's 8×8 digits, 10 classes
``blobs``          classification  ``make_classification``: one cluster per class
=================  ==============  ===========================================
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch

from ..errors import ConfigError, plural
from .registry import check_params, lookup, register


@dataclass
class TaskData:
    """Tensors of one task.

    Attributes
    ----------
    x_train, x_val : torch.Tensor
        ``(n, in_dim)`` float32 inputs.
    y_train, y_val : torch.Tensor
        ``(n, out_dim)`` float32 targets (regression) or ``(n,)`` int64 labels
        (classification).
    kind : str
        ``"regression"`` or ``"classification"``.
    in_dim, out_dim : int
        Input features; outputs (number of classes for classification).
    grid, clean : torch.Tensor or None
        Regression only: the full input grid ``(n_points, 1)`` and the noise-free target
        on it ``(n_points, 1)``, for spectral analysis of the target and for measuring
        how well a noisy fit recovers the signal.
    input_shape : tuple of int
        Shape of one sample before flattening, e.g. ``(1, 8, 8)`` for digits.
    params : dict
        The resolved builder parameters (name, seed and keywords).
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    kind: str
    in_dim: int
    out_dim: int
    grid: torch.Tensor | None = None
    clean: torch.Tensor | None = None
    input_shape: tuple[int, ...] = ()
    params: dict = field(default_factory=dict)

    @property
    def n_train(self) -> int:
        return int(self.x_train.shape[0])

    @property
    def n_val(self) -> int:
        return int(self.x_val.shape[0])


TASKS: dict[str, Callable[..., TaskData]] = {}


def build_task(name: str, seed: int, **params) -> TaskData:
    """Build task ``name`` with ``seed`` and keyword ``params``.

    Raises
    ------
    ConfigError
        Unknown task (the message lists the known ones), unknown or invalid parameter.
    """
    builder = lookup(TASKS, name, "task")
    check_params(builder, params, f"task {name!r}", reserved=("seed",))
    task = builder(seed=int(seed), **params)
    task.params = {"name": name, "seed": int(seed), **params}
    return task


# -- helpers -------------------------------------------------------------------------------
def _check_fraction(val_fraction: float) -> None:
    if not 0.0 < val_fraction < 1.0:
        raise ConfigError(f"val_fraction must be in (0, 1), got {val_fraction}")


def _split(n: int, val_fraction: float, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Random (train, val) index split drawn from ``generator``."""
    _check_fraction(val_fraction)
    n_val = max(1, int(round(n * val_fraction)))
    if n_val >= n:
        raise ConfigError(f"val_fraction={val_fraction} leaves no training samples (n={n})")
    perm = torch.randperm(n, generator=generator)
    return perm[n_val:], perm[:n_val]


def _classification(x: np.ndarray, y: np.ndarray, n_classes: int, val_fraction: float,
                    seed: int, input_shape: tuple[int, ...]) -> TaskData:
    """Split, standardize with training statistics, wrap as tensors."""
    tr, va = _split(len(x), val_fraction, torch.Generator().manual_seed(seed))
    x = torch.as_tensor(x, dtype=torch.float32)
    y = torch.as_tensor(y, dtype=torch.int64)
    mean = x[tr].mean(0)
    std = x[tr].std(0)
    std = torch.where(std > 0, std, torch.ones_like(std))  # constant pixels stay 0
    x = (x - mean) / std
    return TaskData(
        x_train=x[tr].contiguous(), y_train=y[tr].contiguous(),
        x_val=x[va].contiguous(), y_val=y[va].contiguous(),
        kind="classification", in_dim=int(x.shape[1]), out_dim=int(n_classes),
        input_shape=input_shape,
    )


# -- builders ------------------------------------------------------------------------------
@register(TASKS, "multiscale")
def multiscale(
    *,
    seed: int,
    n_points: int = 256,
    frequencies: Sequence[float] = (1.0, 4.0, 16.0),
    amplitudes: Sequence[float] = (1.0, 0.5, 0.25),
    phases: Sequence[float] | None = None,
    noise: float = 0.0,
    val_fraction: float = 0.2,
    val: str = "split",
) -> TaskData:
    """Multi-scale 1-D regression, y(x) = Σ_i a_i sin(2π f_i x + φ_i) on x_j = j / n_points.

    ``val="split"``: a random ``val_fraction`` of the grid is held out; Gaussian noise of
    standard deviation ``noise`` is added to the training targets only, validation
    targets are noise-free. ``val="fresh_noise"``: the whole grid trains, in grid order,
    and validation is the same grid with an independent draw of the noise (the grid stays
    whole for an H^-s loss). ``clean`` is the noise-free target on the whole grid either
    way. ``phases`` defaults to zeros.
    """
    frequencies, amplitudes = list(frequencies), list(amplitudes)
    phases = [0.0] * len(frequencies) if phases is None else list(phases)
    if n_points < 2:
        raise ConfigError(f"n_points must be at least 2, got {n_points}")
    if not frequencies:
        raise ConfigError("frequencies must not be empty")
    if len(amplitudes) != len(frequencies):
        raise ConfigError(
            f"amplitudes has {plural(len(amplitudes), 'entry', 'entries')} but frequencies has {len(frequencies)}"
        )
    if len(phases) != len(frequencies):
        raise ConfigError(
            f"phases has {plural(len(phases), 'entry', 'entries')} but frequencies has {len(frequencies)}"
        )
    if not noise >= 0:
        raise ConfigError(f"noise must be >= 0, got {noise}")

    x = torch.arange(n_points, dtype=torch.float64).unsqueeze(1) / n_points
    y = torch.zeros_like(x)
    for f, a, p in zip(frequencies, amplitudes, phases):
        y += a * torch.sin(2 * torch.pi * f * x + p)
    x, y = x.float(), y.float()

    gen = torch.Generator().manual_seed(seed)
    if val == "fresh_noise":
        y_train, y_val = y.clone(), y.clone()
        if noise > 0:
            y_train = y_train + noise * torch.randn(y.shape, generator=gen)
            y_val = y_val + noise * torch.randn(y.shape, generator=gen)
        return TaskData(
            x_train=x.clone(), y_train=y_train.contiguous(), x_val=x.clone(), y_val=y_val.contiguous(),
            kind="regression", in_dim=1, out_dim=1, grid=x, clean=y, input_shape=(1,),
        )
    if val != "split":
        raise ConfigError(f"val must be 'split' or 'fresh_noise', got {val!r}")
    tr, va = _split(n_points, val_fraction, gen)
    y_train = y[tr]
    if noise > 0:
        y_train = y_train + noise * torch.randn(y_train.shape, generator=gen)
    return TaskData(
        x_train=x[tr].contiguous(), y_train=y_train.contiguous(),
        x_val=x[va].contiguous(), y_val=y[va].contiguous(),
        kind="regression", in_dim=1, out_dim=1, grid=x, clean=y, input_shape=(1,),
    )


@register(TASKS, "digits")
def digits(*, seed: int, val_fraction: float = 0.2) -> TaskData:
    """scikit-learn's bundled 8×8 digits (1797 images, 10 classes), standardized.

    Inputs are flattened to 64 features; ``input_shape`` is ``(1, 8, 8)``.
    """
    from sklearn.datasets import load_digits

    data = load_digits()
    return _classification(data.data, data.target, 10, val_fraction, seed, (1, 8, 8))


@register(TASKS, "blobs")
def blobs(
    *, seed: int, n_samples: int = 512, n_features: int = 16, n_classes: int = 3,
    val_fraction: float = 0.2,
) -> TaskData:
    """Small synthetic classification (``sklearn.datasets.make_classification``).

    One Gaussian cluster per class on the vertices of a hypercube in
    ``max(2, n_features // 2)`` informative dimensions, the rest noise; standardized.
    """
    from sklearn.datasets import make_classification

    if n_samples < 2 * n_classes:
        raise ConfigError(f"n_samples must be at least 2 * n_classes, got {n_samples}")
    if n_features < 2:
        raise ConfigError(f"n_features must be >= 2, got {n_features}")
    if n_classes < 2:
        raise ConfigError(f"n_classes must be >= 2, got {n_classes}")
    n_informative = max(2, n_features // 2)
    if n_classes > 2**n_informative:
        raise ConfigError(
            f"n_classes={n_classes} is too many for n_features={n_features} "
            f"(at most {2**n_informative})"
        )
    x, y = make_classification(
        n_samples=n_samples, n_features=n_features, n_informative=n_informative,
        n_redundant=0, n_classes=n_classes, n_clusters_per_class=1, random_state=seed,
    )
    return _classification(x, y, n_classes, val_fraction, seed, (n_features,))


