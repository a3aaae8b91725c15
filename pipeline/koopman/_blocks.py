"""One read pass over column blocks of a snapshot-major trajectory.

``Y`` is a dask array of shape ``(T, P)`` chunked ``(t_chunk, p_chunk)``; a column block
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
from typing import Callable

import dask
import numpy as np

_SLAB_BYTES = 16 * 2**20
_FAN_IN = 8


def transformed_slabs(parts, c0, c1, starts, stops):
    """Yield ``(group_index, slab)`` for one column block.

    Parameters
    ----------
    parts : list of ndarray, shapes (t_i, c1 - c0)
        Time chunks of the block, in order (concatenated along axis 0).
    c0, c1 : int
        Column range of the block in ``Y``.
    starts, stops : list of int
        Sorted group column ranges.

    Yields
    ------
    (int, ndarray of shape (T, p), float64, C-contiguous)
        ``slab[0]`` is the first snapshot, ``slab[j] = x_j - x_0`` for ``j >= 1``
        (exact: float64 subtraction of float32/float16 values).
    """
    block = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)
    T = block.shape[0]
    width = max(1, _SLAB_BYTES // (8 * T))
    g = bisect.bisect_right(starts, c0) - 1
    while g < len(starts) and starts[g] < c1:
        lo, hi = max(starts[g], c0), min(stops[g], c1)
        for a in range(lo, hi, width):
            b = min(a + width, hi)
            x = block[:, a - c0:b - c0].astype(np.float64)
            x[1:] -= x[0]
            yield g, x
        g += 1


def run_pass(Y, kernel: Callable, merge: Callable, starts, stops, *, scheduler=None):
    """Apply ``kernel`` to every transformed slab and reduce with ``merge``.

    Parameters
    ----------
    Y : dask.array.Array, shape (T, P)
    kernel : callable ``(group_index, slab) -> dict``
        Partial result for one slab, keyed by whatever the caller wants.
    merge : callable ``(list of dict) -> dict``
        Associative combination of partial results.
    starts, stops : list of int
        Group column ranges covering ``[0, P)``.
    scheduler : str or None
        Passed to :func:`dask.compute` (None: the default, threaded).

    Returns
    -------
    dict
        The merged partial results of all blocks.
    """
    blocks = Y.to_delayed()                      # (n_t, n_p) Delayed chunks
    col_edges = np.concatenate([[0], np.cumsum(Y.chunks[1])]).tolist()

    def block_task(parts, c0, c1):
        partials = [kernel(g, x) for g, x in transformed_slabs(parts, c0, c1, starts, stops)]
        return merge(partials)

    level = [
        dask.delayed(block_task)(list(blocks[:, j]), col_edges[j], col_edges[j + 1])
        for j in range(blocks.shape[1])
    ]
    while len(level) > 1:
        level = [dask.delayed(merge)(level[i:i + _FAN_IN])
                 for i in range(0, len(level), _FAN_IN)]
    (out,) = dask.compute(level[0], scheduler=scheduler)
    return out


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
    return {key: [_qr_r(np.concatenate(rs, axis=0))] if len(rs) > 1 else rs
            for key, rs in stacked.items()}


def _qr_r(a):
    return np.linalg.qr(a, mode="r")


def qr_r(a):
    """R factor of a Householder QR (``mode='r'``)."""
    return _qr_r(a)
