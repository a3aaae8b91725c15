"""Compression strategies: how one pass turns the trajectory into every window's factor.

A strategy is a small object with a ``name`` and one verb::

    strategy.compress(Y, groups, windows, *, per_group, scheduler) -> Compressed

``Y`` is a :class:`pipeline.koopman.source.Trajectory` (``T × P``), ``groups`` the
validated layers, ``windows`` ``[(a, b), ...]``. :class:`Compressed` holds, for ``"all"``
and (with ``per_group``) every layer, one :class:`pipeline.koopman.factor.Factor` per
window whose ``C`` has exactly the window's ``b - a`` columns, and the whole-trajectory
factors where the strategy makes them. All strategies read the data through the same
pass machinery (:mod:`pipeline.koopman.passes`).

- :class:`BandGram` — exact, one pass: every window's Gram from the band of ``T × T``
  that some window needs (:mod:`pipeline.koopman.windows`). Its factors resolve
  singular values only down to ``Factor.error`` (``resolution_limited``): a fit checks
  every window's cut against it (:func:`pipeline.koopman.factor.resolves`) and falls
  back to the next strategy when a window keeps what the Gram cannot resolve.
- :class:`TSQR` — exact, one pass: Householder QR of every block and TSQR of the stacked
  ``R`` (Demmel, Grigori, Hoemmen & Langou 2012); the whole-trajectory factor is sliced
  per window (:class:`WindowSlice`). Resolution at float64 level.
- :class:`Randomized` — ``k ≪ T``, ``n_power_iter + 1`` passes (Halko, Martinsson &
  Tropp 2011; Erichson et al. 2019): :mod:`pipeline.koopman.randomized`, sliced per window.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Protocol

from .compress import _qr_factors
from .factor import Factor
from .randomized import randomized_factors
from .windows import window_factors

__all__ = ["Compressed", "Strategy", "BandGram", "TSQR", "Randomized", "WindowSlice"]


@dataclass(frozen=True)
class Compressed:
    """What a strategy produced.

    Attributes
    ----------
    windows : dict of str to dict of (int, int) to Factor
        ``windows[name][(a, b)].C`` has shape ``(k, b - a)``.
    factors : dict of str to Factor
        Whole-trajectory factors (``C``: ``k × T``); empty for :class:`BandGram`.
    """

    windows: dict
    factors: dict


class Strategy(Protocol):
    """The interface of a compression strategy (see the module docstring)."""

    name: ClassVar[str]
    resolution_limited: ClassVar[bool]

    def compress(self, Y, groups, windows, *, per_group: bool, scheduler=None) -> Compressed:
        ...


@dataclass(frozen=True)
class BandGram:
    """Every window's factor from the band of the float64 Gram (one pass)."""

    name: ClassVar[str] = "band-gram"
    resolution_limited: ClassVar[bool] = True

    def compress(self, Y, groups, windows, *, per_group, scheduler=None) -> Compressed:
        return Compressed(window_factors(Y, groups, windows, per_group=per_group,
                                         scheduler=scheduler), {})


@dataclass(frozen=True)
class TSQR:
    """The stable exact factor of the whole trajectory (one pass), sliced per window."""

    name: ClassVar[str] = "tsqr"
    resolution_limited: ClassVar[bool] = False

    def compress(self, Y, groups, windows, *, per_group, scheduler=None) -> Compressed:
        factors = _qr_factors(Y, groups, per_group, "tsqr", None, scheduler)
        return Compressed(_sliced(factors, windows), factors)


@dataclass(frozen=True)
class Randomized:
    """A randomized sketch of ``rank + oversample`` columns, sliced per window.

    ``seed`` seeds the Gaussian test matrices afresh on every call."""

    rank: int | None = None
    oversample: int = 10
    n_power_iter: int = 2
    seed: int = 0

    name: ClassVar[str] = "randomized"
    resolution_limited: ClassVar[bool] = False

    def compress(self, Y, groups, windows, *, per_group, scheduler=None) -> Compressed:
        factors = randomized_factors(Y, groups, per_group=per_group, rank=self.rank,
                                     oversample=self.oversample,
                                     n_power_iter=self.n_power_iter, seed=self.seed,
                                     scheduler=scheduler)
        return Compressed(_sliced(factors, windows), factors)


class WindowSlice:
    """Window ``[a, b)`` of a whole-trajectory factor: same basis, ``C[:, a:b]``
    (read like a :class:`Factor`)."""

    def __init__(self, f: Factor, a: int, b: int):
        self.name, self.start, self.stop, self.segments = f.name, f.start, f.stop, f.segments
        self.method, self.rows, self.error = f.method, f.rows, f.error
        self.C = f.C[:, a:b]

    @property
    def rank(self) -> int:
        return self.C.shape[0]


def _sliced(factors, windows):
    return {name: {(a, b): WindowSlice(f, a, b) for a, b in windows}
            for name, f in factors.items()}
