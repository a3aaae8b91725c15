"""Parameter layout: which stored column belongs to which layer.

A snapshot is the concatenation of the flattened parameter tensors of the selected
layers, in a fixed order. The layout records, for every tensor, its layer (the owning
module's name, e.g. ``"net.0"``), its parameter name (``"net.0.weight"``), its shape,
and its ``[offset, offset + size)`` span in the flat vector. Tensors of one layer are
contiguous, so a layer is a single column range of the weights array and row blocks of
the analysis never straddle layers.
"""

from __future__ import annotations

import bisect
from dataclasses import asdict, dataclass
from typing import Iterable, Mapping, Sequence

import numpy as np

from ..errors import ConfigError, plural


@dataclass(frozen=True)
class Entry:
    """One parameter tensor inside the flat snapshot vector."""

    layer: str
    name: str
    shape: tuple[int, ...]
    offset: int
    size: int


class Layout:
    """Ordered list of :class:`Entry`; maps flat indices back to layers.

    Parameters
    ----------
    entries : sequence of Entry
        Contiguous, in order, starting at offset 0.
    """

    def __init__(self, entries: Sequence[Entry]):
        self.entries = list(entries)
        expected = 0
        for e in self.entries:
            if e.offset != expected or e.size != int(np.prod(e.shape, dtype=np.int64)):
                raise ValueError(f"layout entry {e.name!r} is not contiguous")
            expected += e.size
        self.size = expected
        self._starts = [e.offset for e in self.entries]

    # -- construction -----------------------------------------------------------------
    @classmethod
    def from_named_shapes(cls, named: Iterable[tuple[str, Sequence[int]]]) -> "Layout":
        """Build from ``(parameter_name, shape)`` pairs; layer = name minus last part.

        Parameters are regrouped so that each layer's tensors are contiguous, layers
        in order of first appearance.
        """
        named = [(n, tuple(int(s) for s in shape)) for n, shape in named]
        order: dict[str, list[tuple[str, tuple[int, ...]]]] = {}
        for name, shape in named:
            layer = name.rsplit(".", 1)[0] if "." in name else name
            order.setdefault(layer, []).append((name, shape))
        entries, offset = [], 0
        for layer, items in order.items():
            for name, shape in items:
                size = int(np.prod(shape, dtype=np.int64))
                entries.append(Entry(layer, name, shape, offset, size))
                offset += size
        return cls(entries)

    @classmethod
    def from_state_dict(cls, state: Mapping, layers: Sequence[str] | None = None) -> "Layout":
        """Layout of the floating-point tensors of a state_dict (optionally some layers)."""
        named = [(k, tuple(v.shape)) for k, v in state.items() if _is_float_tensor(v)]
        layout = cls.from_named_shapes(named)
        return layout.select(layers) if layers else layout

    def select(self, layers: Sequence[str]) -> "Layout":
        """A new layout with only the named layers (in this layout's order)."""
        known = self.layers
        unknown = [name for name in layers if name not in known]
        if unknown:
            raise ConfigError(
                f"unknown {plural(len(unknown), 'layer', count=False)} {', '.join(unknown)}; known layers: {', '.join(known)}"
            )
        wanted = set(layers)
        return Layout.from_named_shapes(
            (e.name, e.shape) for e in self.entries if e.layer in wanted
        )

    # -- queries ----------------------------------------------------------------------
    @property
    def layers(self) -> list[str]:
        """Layer names in order."""
        return list(dict.fromkeys(e.layer for e in self.entries))

    @property
    def names(self) -> list[str]:
        return [e.name for e in self.entries]

    def layer_ranges(self) -> list[tuple[str, int, int]]:
        """``[(layer, start, stop), ...]`` column ranges, in order."""
        out: dict[str, list[int]] = {}
        for e in self.entries:
            span = out.setdefault(e.layer, [e.offset, e.offset + e.size])
            span[1] = e.offset + e.size
        return [(name, a, b) for name, (a, b) in out.items()]

    def locate(self, index: int) -> tuple[Entry, tuple[int, ...]]:
        """The entry holding flat ``index`` and the index within that tensor."""
        if not 0 <= index < self.size:
            raise IndexError(f"parameter index {index} out of range [0, {self.size})")
        i = bisect.bisect_right(self._starts, index) - 1
        e = self.entries[i]
        return e, tuple(int(j) for j in np.unravel_index(index - e.offset, e.shape))

    def layer_of(self, index: int) -> str:
        return self.locate(index)[0].layer

    # -- flattening ---------------------------------------------------------------------
    def flatten(self, tensors: Mapping, out=None):
        """Concatenate the layout's tensors from ``tensors`` (name → tensor) into 1-D.

        Works for torch tensors (returns a torch tensor on their device) and numpy
        arrays; ``out`` (torch only) receives the result in place. Raises
        :class:`ConfigError` naming a missing key or a wrong shape.
        """
        parts = []
        for e in self.entries:
            if e.name not in tensors:
                raise ConfigError(f"missing parameter {e.name!r}")
            t = tensors[e.name]
            if tuple(t.shape) != e.shape:
                raise ConfigError(
                    f"parameter {e.name!r} has shape {tuple(t.shape)}, expected {e.shape}"
                )
            parts.append(t.reshape(-1))
        if parts and not isinstance(parts[0], np.ndarray):
            import torch

            with torch.no_grad():
                return torch.cat([p.detach() for p in parts], out=out)
        return np.concatenate(parts) if parts else np.zeros(0, np.float32)

    def unflatten(self, flat) -> dict:
        """Inverse of :meth:`flatten`: name → tensor/array view."""
        return {e.name: flat[e.offset : e.offset + e.size].reshape(e.shape) for e in self.entries}

    # -- (de)serialisation --------------------------------------------------------------
    def to_records(self) -> list[dict]:
        return [dict(asdict(e), shape=list(e.shape)) for e in self.entries]

    @classmethod
    def from_records(cls, records: Iterable[Mapping]) -> "Layout":
        return cls(
            [
                Entry(r["layer"], r["name"], tuple(r["shape"]), int(r["offset"]), int(r["size"]))
                for r in records
            ]
        )

    def __eq__(self, other) -> bool:
        return isinstance(other, Layout) and self.entries == other.entries

    def __len__(self) -> int:
        return len(self.entries)

    def __repr__(self) -> str:
        return f"Layout({len(self.layers)} layers, {self.size} parameters)"


def _is_float_tensor(v) -> bool:
    dtype = getattr(v, "dtype", None)
    if dtype is None:
        return False
    try:
        import torch

        if isinstance(v, torch.Tensor):
            return v.is_floating_point()
    except ImportError:  # pragma: no cover
        pass
    return np.issubdtype(np.dtype(dtype), np.floating)
