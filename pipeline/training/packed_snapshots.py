"""Snapshots of a packed task: one copy of the packed parameters per snapshot,
split into the members' store writers in blocks.

Each snapshot copies the packed parameters ``flat`` ``(M, P)`` (or the snapshot's
columns of it) once into slot ``t`` of a host buffer ``(T, M, S)``; every ``T``
snapshots (``T`` = the writers' chunk rows, :class:`~pipeline.storage.writer.RunWriter`)
member m's rows ``[:, m, :]`` are copied straight into its writer's chunk buffer
(:meth:`RunWriter.append_rows`), which writes them to the store in its own thread. So a
snapshot costs one ``M × S`` copy (one device-to-host copy on a GPU) and one finiteness
sum, and no per-member array is made. A member whose row is not finite is reported
(diverged) and gets no further rows: a member's rows are always a prefix of the slots.
"""

from __future__ import annotations

import math

import torch


class PackedSnapshots:
    """The snapshot sink of a pack: ``sinks[m]`` receives member m's snapshots.

    ``flat`` ``(M, P)`` float32 (any device); ``cols`` ``(S,)`` int64 (the snapshot's
    columns of ``flat``) or None (all of them, in order). Sinks with ``append_rows`` and
    ``t_chunk`` (store writers) get blocks; any other ``sink(row, epoch=, step=)`` gets
    each snapshot as a fresh ``(S,)`` CPU tensor.
    """

    def __init__(self, flat: torch.Tensor, cols: torch.Tensor | None, sinks: list):
        self.flat, self.cols, self.sinks = flat, cols, sinks
        M = flat.shape[0]
        S = flat.shape[1] if cols is None else int(cols.numel())
        blocks = all(hasattr(s, "append_rows") and hasattr(s, "t_chunk") for s in sinks)
        self.T = min(int(s.t_chunk) for s in sinks) if blocks and sinks else 1
        self.blocks = blocks
        pin = flat.device.type == "cuda"
        self.buf = torch.empty((self.T, M, S), dtype=torch.float32, pin_memory=pin)
        self.buf_np = self.buf.numpy()
        self.count = [0] * M          # snapshots stored per member (a prefix of all slots)
        self.fill = 0                 # slots of buf in use
        self.base = 0                 # slots flushed before buf's first
        self.epochs: list[int] = []
        self.steps: list[int] = []
        self.last: torch.Tensor | None = None   # the slot :meth:`take` filled last (M, S)

    def take(self, epoch: int, step: int, alive: list[bool]) -> list[int]:
        """Snapshot every live member; returns the members whose weights are not finite
        (not stored; the caller marks them diverged)."""
        slot = self.last = self.buf[self.fill]
        with torch.no_grad():
            src = self.flat if self.cols is None else self.flat.index_select(1, self.cols)
            slot.copy_(src)
        sums = slot.sum(1).tolist()
        bad = []
        for m, a in enumerate(alive):
            if not a:
                continue
            # a finite sum proves every entry finite; the exact check runs only when not
            if not math.isfinite(sums[m]) and not bool(torch.isfinite(slot[m]).all()):
                bad.append(m)
                continue
            self.count[m] += 1
            if not self.blocks:
                self.sinks[m](slot[m].clone(), epoch=epoch, step=step)
        self.epochs.append(int(epoch))
        self.steps.append(int(step))
        self.fill += 1
        if self.fill == self.T:
            self.flush()
        return bad

    def flush(self) -> None:
        """Hand each member its rows of the filled slots."""
        if self.blocks and self.fill:
            for m, sink in enumerate(self.sinks):
                k = min(self.fill, self.count[m] - self.base)
                if k > 0:
                    sink.append_rows(self.buf_np[:k, m], self.epochs[self.base:self.base + k],
                                     self.steps[self.base:self.base + k])
        self.base += self.fill
        self.fill = 0

    def close(self) -> None:
        self.flush()
