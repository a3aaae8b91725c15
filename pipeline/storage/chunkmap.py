"""Zero-copy reads of uncompressed chunks of a local Zarr v3 array.

The store writes trajectories uncompressed (``compressors=None``: weights barely
compress, and the analysis is measured against a read pass), so on a local file system a
chunk file *is* the C-ordered chunk. Mapping it read-only instead of going through
zarr's decode pipeline makes a read pass several times cheaper in CPU (measured with
``jobs/bench/analyze_vs_read.py``), and the pages are file-backed: the kernel can drop
them under memory pressure, so a task that touches every time chunk of a column block
does not pin ``T × p_chunk`` bytes of anonymous memory.

Safe against writers: zarr's ``LocalStore`` writes chunks atomically (temporary file and
rename), so a mapping keeps the old file alive and never sees a truncated one. Anything
else (object storage, compression, sharding, a big-endian layout) reads through zarr.
"""

from __future__ import annotations

import mmap
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..koopman import Trajectory

__all__ = ["mappable", "mapped_trajectory", "zarr_trajectory"]


@dataclass(frozen=True)
class _Spec:
    """Everything a worker needs to map one chunk (picklable, no zarr objects)."""

    root: str
    separator: str
    v2_keys: bool
    chunk_shape: tuple[int, int]
    shape: tuple[int, int]
    dtype: str
    fill: float
    crc: bool = False      # each chunk file ends with a CRC32C of the chunk (zarr's crc32c codec)

    def key(self, i: int, j: int) -> str:
        if self.v2_keys:
            return f"{i}{self.separator}{j}"
        return f"c{self.separator}{i}{self.separator}{j}"


def mappable(arr) -> bool:
    """True when ``arr``'s chunks can be mapped directly (local, uncompressed, 2-D v3)."""
    try:
        from zarr.codecs import BytesCodec, Crc32cCodec
        from zarr.core.chunk_key_encodings import DefaultChunkKeyEncoding, V2ChunkKeyEncoding
        from zarr.storage import LocalStore
    except ImportError:                                          # pragma: no cover
        return False
    md = arr.metadata
    if getattr(md, "zarr_format", None) != 3 or not isinstance(arr.store, LocalStore):
        return False
    codecs = tuple(getattr(md, "codecs", ()))
    if len(codecs) == 2 and isinstance(codecs[1], Crc32cCodec):
        codecs = codecs[:1]     # a checksum after the raw chunk: verified on mapping
    if len(codecs) != 1 or not isinstance(codecs[0], BytesCodec):
        return False
    dtype = np.dtype(arr.dtype)
    if dtype.kind not in "fiu" or len(arr.shape) != 2:
        return False
    endian = getattr(codecs[0].endian, "value", codecs[0].endian)
    if dtype.itemsize > 1 and endian not in (None, sys.byteorder):
        return False
    if not isinstance(md.chunk_key_encoding, (DefaultChunkKeyEncoding, V2ChunkKeyEncoding)):
        return False
    return len(tuple(arr.chunks)) == 2


def mapped_trajectory(arr, rows: int | None = None) -> Trajectory:
    """The first ``rows`` rows of ``arr`` as a Trajectory whose chunks are read-only maps.

    Requires :func:`mappable`. Its dask array maps each chunk in its own task, and its
    ``load_chunk`` lets a pass map a task's chunks inside the task (no chunk held
    between tasks; re-mapping costs nothing, hence ``cheap``). A missing chunk reads as
    the fill value (as through zarr); a chunk file of the wrong size raises ``OSError``
    naming it.
    """
    import dask.array as da
    from dask.base import tokenize
    from zarr.core.chunk_key_encodings import V2ChunkKeyEncoding

    rows = arr.shape[0] if rows is None else int(rows)
    enc = arr.metadata.chunk_key_encoding
    fill = arr.metadata.fill_value
    spec = _Spec(root=str(Path(arr.store.root) / arr.path), separator=enc.separator,
                 v2_keys=isinstance(enc, V2ChunkKeyEncoding),
                 chunk_shape=tuple(int(c) for c in arr.chunks),
                 shape=(rows, int(arr.shape[1])), dtype=np.dtype(arr.dtype).str,
                 fill=float(fill) if fill is not None else 0.0, crc=_has_crc(arr))
    tc, pc = spec.chunk_shape
    chunks = (_edges(rows, tc), _edges(spec.shape[1], pc))
    array = da.map_blocks(_load, chunks=chunks, dtype=np.dtype(spec.dtype), spec=spec,
                          name="mapped-" + tokenize(spec),
                          meta=np.empty((0, 0), np.dtype(spec.dtype)))
    return Trajectory(array, load_chunk=_Mapped(spec), cheap=True)


def zarr_trajectory(arr, rows: int | None = None) -> Trajectory:
    """``da.from_zarr(arr)[:rows]`` as a Trajectory whose passes may read each task's
    chunks inside the task (through zarr: object storage, compression), so no chunk is
    held between tasks; each load is a read and a decode (not ``cheap``)."""
    import dask.array as da

    rows = arr.shape[0] if rows is None else int(rows)
    return Trajectory(da.from_zarr(arr)[:rows], load_chunk=_ZarrChunks(arr, rows), cheap=False)


class _Mapped:
    """Chunk loader of a mapped array (re-loading a chunk costs nothing)."""

    def __init__(self, spec: _Spec):
        self.spec = spec

    def __call__(self, i: int, j: int) -> np.ndarray:
        return load_chunk(self.spec, i, j)


class _ZarrChunks:
    """Chunk loader through zarr (each load is a read and a decode)."""

    def __init__(self, arr, rows: int):
        self.arr, self.rows = arr, rows

    def __call__(self, i: int, j: int) -> np.ndarray:
        tc, pc = self.arr.chunks
        return self.arr[i * tc:min((i + 1) * tc, self.rows), j * pc:(j + 1) * pc]


def _has_crc(arr) -> bool:
    from zarr.codecs import Crc32cCodec

    return any(isinstance(c, Crc32cCodec) for c in getattr(arr.metadata, "codecs", ()))


def _edges(n: int, c: int) -> tuple[int, ...]:
    return tuple(min(c, n - a) for a in range(0, n, c)) or (0,)


def _load(block_id=None, spec: _Spec = None):
    return load_chunk(spec, *block_id)


def load_chunk(spec: _Spec, i: int, j: int) -> np.ndarray:
    """Chunk ``(i, j)`` (trimmed at the array's edges) as a read-only mapped array."""
    tc, pc = spec.chunk_shape
    t = min(tc, spec.shape[0] - i * tc)
    p = min(pc, spec.shape[1] - j * pc)
    dtype = np.dtype(spec.dtype)
    key = spec.key(i, j)
    try:
        fd = os.open(_path(spec, i, j), os.O_RDONLY)
    except FileNotFoundError:
        return np.full((t, p), spec.fill, dtype)
    try:
        size = os.fstat(fd).st_size
        expected = tc * pc * dtype.itemsize + (4 if spec.crc else 0)
        if size != expected:
            raise OSError(f"chunk {key} has {size} bytes, expected {expected} (corrupt)")
        mm = mmap.mmap(fd, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
    finally:
        os.close(fd)
    if spec.crc:
        _verify(mm, size, spec, key)
    # read-ahead without blocking this thread; the consumer faults the pages in lazily
    # (measured faster than MAP_POPULATE, from the page cache and from disk; prefetching
    # the next tasks' chunks from a separate thread measured no faster from disk)
    if hasattr(mm, "madvise") and hasattr(mmap, "MADV_WILLNEED"):
        mm.madvise(mmap.MADV_WILLNEED)
    return np.frombuffer(mm, dtype, count=tc * pc).reshape(tc, pc)[:t, :p]


def _verify(mm, size: int, spec: _Spec, key: str) -> None:
    """The chunk's CRC32C (its last 4 bytes, as zarr's crc32c codec writes it) matches."""
    import google_crc32c

    data = np.frombuffer(mm, np.uint8)   # numpy's buffer is what google_crc32c takes (as zarr does)
    computed = int(google_crc32c.value(data[:size - 4]))
    stored = int(data[size - 4:].view(np.uint32)[0])
    if computed != stored:
        raise OSError(f"chunk {key} fails its checksum (CRC32C {stored:08x} stored, {computed:08x} "
                      "computed): a flipped bit or a tampered file")


def _path(spec: _Spec, i: int, j: int) -> str:
    return os.path.join(spec.root, *spec.key(i, j).split("/"))
