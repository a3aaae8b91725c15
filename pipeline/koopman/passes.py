"""One read pass over column blocks of a snapshot-major trajectory (the pass machinery
every compression strategy shares).

``Y`` is a :class:`pipeline.koopman.source.Trajectory`: a dask array of shape ``(T, P)``
chunked ``(t_chunk, p_chunk)`` and, optionally, a loader of its chunks inside a task.
With a loader, a pass loads each task's chunks inside the task, so no chunk is held in
memory between tasks. A chunk two tasks need is loaded twice: free for mapped files
(``cheap``), a second read otherwise (then the loader is only used for row spans that
bound the memory of long trajectories, and when columns are not split). A column block
of ``Y`` is a row block of ``X = Y.T`` (``P × T``). Each task of a pass receives all
time chunks of one column block, splits it at group boundaries (so a block never mixes
layers, whatever the chunking), casts to float64 in slabs of a few MiB, applies the
exact column transform ``E`` (subtract the first snapshot from the others:
``[x_0, x_1 - x_0, ..., x_{T-1} - x_0]``) and hands each slab ``(T, p)`` to a kernel.
Per-block partial results are combined by a tree of small reductions, so the data are
read once and only ``T × T``-sized objects travel.
"""

from __future__ import annotations

import bisect
import contextlib
import os
from typing import Callable

import dask
import numpy as np

from .source import Trajectory

_SLAB_BYTES = 2 * 2**20
TASK_BYTES = 128 * 2**20   # time chunks one task of a pass may hold (per column block)
_MIN_SLAB = 256
_FAN_IN = 8


def transformed_slabs(parts, part_rows, c0, c1, starts, stops, s0=None, s1=None, span=None,
                      width=None):
    """Yield ``(group_index, slab)`` for one column block (or its sub-range ``[s0, s1)``).

    Parameters
    ----------
    parts : list of ndarray, shapes (t_i, c1 - c0)
        Time chunks of the block, in order; the first holds snapshot 0.
    part_rows : list of int
        Row of the trajectory at which each part starts.
    c0, c1 : int
        Column range of the block in ``Y``.
    starts, stops : list of int
        Sorted group column ranges.
    s0, s1 : int, optional
        Only these columns of the block (default: all of ``[c0, c1)``).
    span : (int, int), optional
        Rows ``[r0, r1)`` (``r0 >= 1``) to transform besides snapshot 0 (default: all).
    width : int, optional
        Columns per slab (default: a few MiB of float64).

    Yields
    ------
    (int, ndarray of shape (1 + r1 - r0, p), float64)
        ``slab[0]`` is the first snapshot, ``slab[1 + t - r0] = x_t - x_0``
        (exact: float64 subtraction of float32/float16 values). The slab is a view of a
        buffer reused for the next slab: kernels must not keep references to it.
    """
    ends = [r + q.shape[0] for r, q in zip(part_rows, parts)]
    r0, r1 = span if span is not None else (1, ends[-1])
    pieces = [(q, max(r, r0) - r, min(e, r1) - r, 1 + max(r, r0) - r0)
              for q, r, e in zip(parts, part_rows, ends) if max(r, r0) < min(e, r1)]
    n = 1 + r1 - r0
    width = width or max(_MIN_SLAB, _SLAB_BYTES // (8 * n))
    s0 = c0 if s0 is None else s0
    s1 = c1 if s1 is None else s1
    buf = np.empty((n, min(width, s1 - s0)))
    g = bisect.bisect_right(starts, s0) - 1
    while g < len(starts) and starts[g] < s1:
        lo, hi = max(starts[g], s0), min(stops[g], s1)
        for a in range(lo, hi, width):
            cols = slice(a - c0, min(a + width, hi) - c0)
            x = buf[:, :cols.stop - cols.start]
            np.copyto(x[0], parts[0][0, cols])    # x_0, cast
            for q, q0, q1, at in pieces:          # cast, no concat
                np.copyto(x[at:at + q1 - q0], q[q0:q1, cols])
            # then subtract in float64: the same values as a mixed-dtype subtract (both
            # operands are cast first), faster (no buffered casting loop)
            np.subtract(x[1:], x[0], out=x[1:])
            yield g, x
        g += 1


def n_workers() -> int:
    """Threads of a pass: one more than cores, so a task waiting on its chunk reads does
    not leave a core idle and reading overlaps the products (measured: cold-cache fit
    1.6 s -> 1.1 s, warm 0.97 s -> 0.84 s for 100 x 2e6 on 2 cores)."""
    return (os.cpu_count() or 1) + 1


def chunk_edges(chunks) -> list[int]:
    """``[0, c_0, c_0 + c_1, ...]``: the boundaries of one axis' chunks."""
    return np.concatenate([[0], np.cumsum(chunks)]).astype(int).tolist()


def run_pass(Y: Trajectory, kernel: Callable, merge: Callable, starts, stops, *, scheduler=None,
             spans=None):
    """Apply ``kernel`` to every transformed slab and reduce with ``merge``.

    Parameters
    ----------
    Y : Trajectory (or dask.array.Array: read as dask chunks), shape (T, P)
    kernel : callable ``(group_index, slab) -> dict``, or ``(group_index, slab, span_index)``
        Partial result for one slab, keyed by whatever the caller wants.
    merge : callable ``(list of dict) -> dict``
        Associative combination of partial results.
    starts, stops : list of int
        Group column ranges covering ``[0, P)``.
    scheduler : str or None
        Passed to :func:`dask.compute` (None: the default, threaded).
    spans : list of (int, int), optional
        Row ranges ``[r0, r1)`` (``r0 >= 1``): every column block is then processed
        span by span, a task holding only the time chunks of snapshot 0 and of its span
        (memory per task bounded in ``T``); the kernel gets the span's index. Default:
        one span of all rows, and a two-argument kernel.

    Returns
    -------
    dict
        The merged partial results of all blocks.
    """
    Y = Y if isinstance(Y, Trajectory) else Trajectory(Y)   # a bare dask array: dask chunks
    loader = Y.load_chunk
    n_col_blocks = len(Y.chunks[1])
    col_edges, row_edges = chunk_edges(Y.chunks[1]), chunk_edges(Y.chunks[0])
    T = row_edges[-1]
    call = kernel if spans is not None else (lambda g, x, s: kernel(g, x))
    spans = list(spans) if spans is not None else [(1, T)]

    def block_task(parts, part_rows, c0, c1, s0, s1, si):
        if loader is not None:                   # parts are chunk indices: load here
            parts = [loader(i, j) for i, j in parts]
        acc = {}
        for g, x in transformed_slabs(parts, part_rows, c0, c1, starts, stops, s0, s1, spans[si]):
            acc = merge([acc, call(g, x, si)])         # incremental: O(1) partials alive
        return acc

    span_chunks = _span_chunks(row_edges, spans)
    # Few, wide column chunks (small P, long T) would leave workers idle: split each
    # chunk's columns among several tasks, which share its chunk reads (same dask keys).
    split = max(1, -(-2 * n_workers() // (n_col_blocks * len(spans))))
    pieces = [max(1, min(split, (c1 - c0) // _MIN_SLAB)) for c0, c1 in zip(col_edges[:-1], col_edges[1:])]
    if loader is not None and not Y.cheap and (max(pieces) > 1 or len(spans) == 1):
        # reads through zarr: column pieces would each read whole chunks again, and with
        # one span per block dask's own chunk tasks read in parallel (measured faster)
        loader = None
    blocks = None if loader else Y.array.to_delayed()  # (n_t, n_p) Delayed chunks
    level = []
    for j in range(n_col_blocks):
        c0, c1 = col_edges[j], col_edges[j + 1]
        edges = np.linspace(c0, c1, pieces[j] + 1).astype(int).tolist()
        for si, (idx, part_rows) in enumerate(span_chunks):
            parts = [(i, j) for i in idx] if loader else [blocks[i, j] for i in idx]
            level += [dask.delayed(block_task)(parts, part_rows, c0, c1, a, b, si)
                      for a, b in zip(edges[:-1], edges[1:])]
    return _reduce(level, merge, scheduler)


def _span_chunks(row_edges, spans):
    """For each span ``[r0, r1)``: the time chunks holding row 0 and the span's rows,
    and the first row of each."""
    out = []
    for r0, r1 in spans:
        idx = [i for i in range(len(row_edges) - 1)
               if i == 0 or (row_edges[i] < r1 and row_edges[i + 1] > r0)]
        out.append((idx, [row_edges[i] for i in idx]))
    return out


def _reduce(level, merge, scheduler):
    """Tree-reduce the block tasks' partial results with ``merge`` and compute them."""
    while len(level) > 1:
        level = [dask.delayed(merge)(level[i:i + _FAN_IN])
                 for i in range(0, len(level), _FAN_IN)]
    # Parallelism comes from the dask workers (n_workers): one BLAS thread each avoids
    # oversubscription (OpenBLAS threads spin). Process-based schedulers are unaffected.
    kwargs = {}
    if scheduler in (None, "threads", "threading") and dask.config.get("num_workers", None) is None:
        kwargs["num_workers"] = n_workers()
    if scheduler in ("threads", "threading"):
        # the threaded scheduler itself, not its name: dask resolves a name by first
        # importing dask.distributed to look for a Client (~0.1 s of CPU per process),
        # which a named local scheduler then ignores
        from dask.threaded import get as scheduler
    with _single_threaded_blas():
        (out,) = dask.compute(level[0], scheduler=scheduler, **kwargs)
    return out


def stream_pass(Y: Trajectory, block_fn: Callable, merge: Callable, starts, stops, *, spans,
                scheduler=None):
    """A pass whose tasks stream their column block span by span, as often as they like.

    For trajectories with an in-task chunk loader (``Y.load_chunk``; returns None for
    others).
    One task per column block calls ``block_fn(slabs)``: ``slabs(si)`` loads the time
    chunks of snapshot 0 and span ``si`` and yields ``(group_index, slab)`` as
    :func:`transformed_slabs` does, with the same column slabs for every span; the chunks
    are dropped when the iteration ends. So a task can sweep its block twice holding
    one span at a time (the randomized pass: ``Z = X M`` over all rows, then ``X^T Z``).
    The partial results of the tasks are reduced with ``merge``.
    """
    loader = Y.load_chunk if isinstance(Y, Trajectory) else None
    if loader is None:
        return None
    col_edges, row_edges = chunk_edges(Y.chunks[1]), chunk_edges(Y.chunks[0])
    width = max(_MIN_SLAB, _SLAB_BYTES // (8 * (1 + max(r1 - r0 for r0, r1 in spans))))
    span_chunks = _span_chunks(row_edges, spans)

    def block_task(j, c0, c1, s0, s1):
        def slabs(si):
            idx, part_rows = span_chunks[si]
            parts = [loader(i, j) for i in idx]
            yield from transformed_slabs(parts, part_rows, c0, c1, starts, stops, s0, s1,
                                         span=spans[si], width=width)
        return block_fn(slabs)

    # few column blocks: split them among the workers when re-loading chunks is free
    n_blocks = len(col_edges) - 1
    split = -(-2 * n_workers() // n_blocks) if Y.cheap else 1
    level = []
    for j in range(n_blocks):
        c0, c1 = col_edges[j], col_edges[j + 1]
        edges = np.linspace(c0, c1, max(1, min(split, (c1 - c0) // width)) + 1).astype(int).tolist()
        level += [dask.delayed(block_task)(j, c0, c1, a, b) for a, b in zip(edges[:-1], edges[1:])]
    return _reduce(level, merge, scheduler)


@contextlib.contextmanager
def _single_threaded_blas():
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:                                    # pragma: no cover
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield


def sum_merge(partials):
    """Merge dicts of arrays by summing values with equal keys."""
    out = {}
    for p in partials:
        for key, v in p.items():
            if key in out:
                out[key] = out[key] + v
            else:
                out[key] = v
    return out


def tsqr_merge(partials):
    """Merge dicts of lists of R factors: stack per key and re-factor (TSQR)."""
    stacked = {}
    for p in partials:
        for key, rs in p.items():
            stacked.setdefault(key, []).extend(rs)
    return {key: [qr_r(np.concatenate(rs, axis=0))] if len(rs) > 1 else rs
            for key, rs in stacked.items()}


def qr_r(a):
    """R factor of a Householder QR (``mode='r'``)."""
    return np.linalg.qr(a, mode="r")
