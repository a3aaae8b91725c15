"""Out-of-core Koopman/DMD engine: compress once, analyse many windows and layers.

Shapes: a trajectory ``Y`` is snapshot-major, ``(T, P)`` (``X = Y.T`` is ``P × T``);
layers are contiguous column ranges ``[(name, start, stop), ...]``.

- :func:`compress` — one pass over ``Y`` gives per-layer factors ``C`` (``k × T``) with
  ``X_layer ≈ Q C`` (exact Gram/TSQR, or randomized: Halko, Martinsson & Tropp 2011;
  Erichson et al. 2019).
- :func:`pipeline.koopman.windows.window_factors` — the exact pass ``KoopmanDMD`` uses:
  every window's Gram from the band of ``T × T`` that some window needs.
- :func:`dmd` — refined Rayleigh–Ritz DMD with residuals on a small matrix (Drmač,
  Mezić & Mohr 2018; LAPACK xGEDMD, LAWN 298).
- :class:`KoopmanDMD` — scikit-learn-style estimator over windows and layers.
- :class:`Trajectory` — what the engine reads: the dask array, an in-task chunk loader
  (and whether re-loading is cheap), the layers; a storage adapter builds it.
- :mod:`pipeline.koopman.strategies` — compression strategies (band Gram, TSQR,
  randomized) behind one interface, sharing the pass machinery of
  :mod:`pipeline.koopman.passes`.

Pure math: no Ray, no MLflow, no store.

``ENGINE_VERSION`` names what the engine computes; it enters every analysis id, so
results of an older engine are never mistaken for current ones. 4: per-window misfit
(gate and a misfit term in the residuals), a default cut that estimates the noise from
the whole spectrum (Gavish–Donoho, capped so residuals stay informative), one pass by
default, auto windows of 16+ snapshots from T = 32. 3: windows cover the end;
automatic window rule. 2: windows in their own span, data residuals with certification
floors, storage-dtype cut, refined Ritz vectors, ``unit_circle``. 1 (implicit):
before.
"""

from __future__ import annotations

import importlib
import sys
import types

# name -> the submodule defining it, imported on first use (PEP 562): the engine's
# modules load numpy and dask, and the configuration imports the window rule
# (pipeline.koopman.windowrule) and ENGINE_VERSION from here without them
_LAZY = {"compress": "compress", "dmd": "core", "DMDResult": "core", "KoopmanDMD": "estimator",
         "WindowResult": "estimator", "Factor": "factor", "KoopmanInputError": "factor",
         "Trajectory": "source"}

ENGINE_VERSION = 4  # 4: misfit gate, noise-estimating default cut, GD on the whole
#                    spectrum, one pass by default, auto window W >= 16
#                    3: windows always cover the end; automatic window rule

__all__ = ["ENGINE_VERSION", "KoopmanDMD", "WindowResult", "dmd", "DMDResult", "compress", "Factor",
           "KoopmanInputError", "Trajectory"]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_LAZY])


class _Engine(types.ModuleType):
    """The package: a submodule named like the function it defines (``compress``) is
    bound to the package by the import system when it loads; the name stays the
    function, as it was when this package imported its names eagerly."""

    def __setattr__(self, name, value):
        if name in _LAZY and isinstance(value, types.ModuleType):
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Engine
