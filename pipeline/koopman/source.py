"""The trajectory source the engine reads: a dask array and how a task loads its chunks.

A :class:`Trajectory` is what a storage adapter hands to the engine
(:meth:`pipeline.storage.store.Run.trajectory` builds one): the snapshot-major dask array ``Y``
(``T × P``), optionally a picklable ``load_chunk(i, j)`` that returns chunk ``(i, j)``
of ``Y`` inside a task of a pass, whether loading a chunk again is ``cheap`` (a mapped
file: free; a read through zarr: a second read and decode), and the layers as
``groups``. With ``load_chunk`` a pass (:mod:`pipeline.koopman.passes`) loads each
task's chunks inside the task, so no chunk is held in memory between tasks; without it
(any dask or numpy array) the pass reads ordinary dask chunks. Nothing is registered
anywhere: the source travels with the call.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

import numpy as np

__all__ = ["Trajectory"]


@dataclass(frozen=True, eq=False)
class Trajectory:
    """A snapshot-major trajectory and how to read it.

    Attributes
    ----------
    array : dask.array.Array, shape (T, P)
        The snapshots (float16/32/64).
    load_chunk : callable ``(i, j) -> ndarray``, optional
        Chunk ``(i, j)`` of ``array`` (shape ``array.chunks[0][i] × array.chunks[1][j]``),
        picklable, called inside the tasks of a pass. None: read dask chunks.
    cheap : bool
        Loading a chunk again costs (almost) nothing (mapped files), so a pass may let
        several tasks load the same chunk.
    groups : tuple of (str, int, int), optional
        The layers as contiguous column ranges (the default groups of a fit).
    """

    array: object
    load_chunk: Callable | None = None
    cheap: bool = False
    groups: tuple | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return self.array.shape

    @property
    def dtype(self):
        return self.array.dtype

    @property
    def chunks(self):
        return self.array.chunks

    def converted(self, fn: Callable, dtype) -> "Trajectory":
        """The trajectory with ``fn`` applied to every chunk (a dtype conversion);
        the in-task loader, if any, converts the chunks it loads."""
        array = self.array.map_blocks(fn, dtype=np.dtype(dtype))
        load = _Converted(self.load_chunk, fn) if self.load_chunk is not None else None
        return replace(self, array=array, load_chunk=load)

    def with_groups(self, groups) -> "Trajectory":
        return replace(self, groups=None if groups is None else tuple(tuple(g) for g in groups))


class _Converted:
    """Picklable chunk loader applying ``fn`` to the chunks of another loader."""

    def __init__(self, loader: Callable, fn: Callable):
        self.loader, self.fn = loader, fn

    def __call__(self, i: int, j: int) -> np.ndarray:
        return self.fn(self.loader(i, j))
