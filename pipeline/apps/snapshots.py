"""The last W snapshots a training callback holds: :class:`SnapshotWindow`.

Every callback that runs a DMD inside the training task (spectral stopping's monitor,
pruning, acceleration, freezing, the bad-initialization detector) keeps the snapshots it
needs in one of these: float32 copies of the flattened snapshot, oldest first, at most
``width`` of them (``W × P`` float32 in memory).
"""

from __future__ import annotations

from collections import deque

import numpy as np


class SnapshotWindow:
    """The last ``width`` snapshots, oldest first (see the module docstring)."""

    def __init__(self, width: int):
        self.width = int(width)
        self._rows: deque = deque(maxlen=self.width)

    def append(self, flat) -> None:
        """Keep a float32 copy of ``flat`` (a 1-D array or CPU tensor of the snapshot)."""
        self._rows.append(np.array(flat, dtype=np.float32, copy=True))

    def __len__(self) -> int:
        return len(self._rows)

    @property
    def full(self) -> bool:
        return len(self._rows) == self.width

    @property
    def last(self) -> np.ndarray:
        return self._rows[-1]

    def array(self) -> np.ndarray:
        """The held snapshots as one ``(n, P)`` array, oldest first."""
        return np.stack(self._rows)

    def clear(self) -> None:
        self._rows.clear()
