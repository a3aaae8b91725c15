"""The analysis verbs of a stored run: write, read, list and delete the analyses under
``runs/<run_id>/analyses/<analysis_id>/`` (a base class of
:class:`pipeline.storage.store.Run`, so they are called as ``run.write_analysis(...)``)."""

from __future__ import annotations

import logging
import time

import numpy as np

from ..errors import StoreError
from .writer import _P_CHUNK, _now

log = logging.getLogger(__name__)


class RunAnalyses:
    """``Run``'s analysis verbs; they use ``self.group`` (the run's zarr group) and
    ``self.run_id``."""

    # runs/<id>/analyses/<analysis_id>/: attrs status ("writing" until the last write,
    # then "complete"), params, created, and what the writer adds (layers, n_snapshots,
    # modes_layers); the small arrays packed one array per field (format 2, below); modes/
    # <layer>.{real,imag}. Format 1 (before): one group per layer of small arrays, still read.

    def list_analyses(self) -> dict[str, dict]:
        """``{analysis_id: its stored params}`` of the completely written analyses (one
        left ``writing`` by an interrupted or failed writer is never listed)."""
        try:
            group = self.group["analyses"]
        except KeyError:
            return {}
        out = {}
        for key in sorted(group.group_keys()):
            aid = key.removesuffix(_NEXT)
            if aid in out:
                continue
            slot = _complete_slot(group, aid)
            if slot is not None:
                out[aid] = dict(group[slot].attrs.get("params", {}))
        return out

    def analysis_info(self, analysis_id: str) -> dict:
        """The attributes of a complete analysis (params, layers, n_snapshots, ...)."""
        return dict(self._analysis_group(analysis_id).attrs)

    def read_analysis(self, analysis_id: str) -> tuple[dict, dict[str, dict[str, np.ndarray]]]:
        """``(attrs, {layer: {array name: values}})`` of a complete analysis."""
        g = self._analysis_group(analysis_id)
        attrs = dict(g.attrs)
        if isinstance(attrs.get("packed"), dict):            # format 2
            return attrs, _unpack(g, attrs["packed"], attrs.get("layers", []))
        layers = {}
        for layer in attrs.get("layers", []):                # format 1: a group per layer
            lg = g[layer]
            layers[layer] = {name: lg[name][...] for name in lg.array_keys()}
        return attrs, layers

    def write_analysis(self, analysis_id: str, params: dict, layers: dict[str, dict[str, np.ndarray]],
                       *, modes: dict | None = None, attrs: dict | None = None) -> None:
        """Write an analysis whole, replacing one of the same id only once it is
        completely written: status ``writing`` first, ``complete`` last, in the slot the
        current analysis does not occupy (``<id>`` or ``<id>.next``); the old slot is
        removed after, so a failure midway (a full disk) keeps the old analysis. ``modes``: ``{layer: complex dask array (k × P)}``
        stored as float32 real and imaginary parts; ``t_end`` (Unix seconds) records when
        it was completely written (a caller records ``t_start`` in ``attrs``). If any write fails, the
        half-written analysis is removed (best effort; if that fails too its status
        stays ``writing``, which :meth:`list_analyses` never lists) and the error is
        raised again."""
        analyses = self.group.require_group("analyses")
        current = _complete_slot(analyses, analysis_id)
        slot = analysis_id + _NEXT if current == analysis_id else analysis_id
        try:
            if slot in analyses:  # a half-written (or older) one in the slot we write to
                del analyses[slot]
            g = analyses.create_group(slot, attributes={"status": "writing", "params": params,
                                                               "created": _now()})
            packed = _pack(g, layers)
            for layer, arr in (modes or {}).items():
                import dask.array as da

                mg = g.require_group("modes")
                chunks = (arr.shape[0], min(arr.shape[1], _P_CHUNK))
                for part, values in (("real", arr.real), ("imag", arr.imag)):
                    da.to_zarr(values.astype(np.float32), mg.create_array(
                        f"{layer}.{part}", shape=arr.shape, chunks=chunks, dtype="float32"))
            g.update_attributes({**(attrs or {}), "status": "complete", "layers": list(layers),
                                 "format": FORMAT, "packed": packed,
                                 "modes_layers": list(modes or {}), "t_end": time.time()})
        except Exception:
            self._delete_slot(slot, quiet=True)   # the current analysis, if any, stays
            raise
        for other in (analysis_id, analysis_id + _NEXT):   # the successor is whole: drop the rest
            if other != slot:
                self._delete_slot(other, quiet=True)
        if slot != analysis_id:
            self._settle(slot, analysis_id)

    def delete_analysis(self, analysis_id: str, *, quiet: bool = False) -> None:
        """Remove an analysis, both its slots (``quiet``: a failure is only logged)."""
        for slot in (analysis_id + _NEXT, analysis_id):
            self._delete_slot(slot, quiet=quiet)

    def _delete_slot(self, slot: str, *, quiet: bool = False) -> None:
        try:
            analyses = self.group["analyses"]
            if slot in analyses:
                del analyses[slot]
        except Exception:  # noqa: BLE001 - quiet: the store is failing already; the status says it
            if not quiet:
                raise
            log.debug("run %s: could not remove analysis %s", self.run_id, slot)

    def _settle(self, slot: str, analysis_id: str) -> None:
        """On a local store, rename the complete ``<id>.next`` to ``<id>`` (one atomic
        rename, the old one already gone), so that a rewritten analysis is found at its
        usual path; elsewhere (object stores: no rename) it stays in ``.next``, which
        every reader takes. A failure leaves it where it is (still complete, still read)."""
        import os
        from pathlib import Path

        root = getattr(getattr(self.store, "_zstore", None), "root", None)
        if root is None:
            return
        base = Path(root) / self.group.path / "analyses"
        try:
            if not (base / analysis_id).exists():
                os.rename(base / slot, base / analysis_id)
        except OSError as e:
            log.debug("run %s: analysis %s stays in %s (%s)", self.run_id, analysis_id, slot, e)

    def _analysis_group(self, analysis_id: str):
        try:
            analyses = self.group["analyses"]
            slot = _complete_slot(analyses, analysis_id)
            g = analyses[slot or analysis_id]
        except KeyError:
            raise StoreError(f"run {self.run_id}: no analysis {analysis_id}") from None
        if g.attrs.get("status") != "complete":
            raise StoreError(f"run {self.run_id}: analysis {analysis_id} is incomplete "
                             f"(status {g.attrs.get('status')}); run kma analyze again")
        return g


# an analysis is rewritten into its other slot, and the old slot removed only after
_NEXT = ".next"

# How the small arrays are laid out. 2: one 1-D array per field (``windows``, ``residuals``,
# ...) holding every layer's values flattened one after the other, and the attribute
# ``packed`` = ``{field: {layer: [offset, shape, dtype]}}`` to cut them out again: 11
# arrays for an analysis instead of one per layer and field (11 layers × 11 fields: 121
# small arrays, 0.6 s of a 4 s ``kma analyze``). 1 (no ``packed`` attribute): one group per
# layer holding its arrays; still read. A storage layout, not what the engine computes: the
# engine version (and so the analysis id) does not change with it.
FORMAT = 2


def _pack(g, layers: dict[str, dict[str, np.ndarray]]) -> dict:
    """Write ``layers`` (``{layer: {field: array}}``) into ``g`` as one flat array per
    field; returns the index (``{field: {layer: [offset, shape, dtype]}}``) that
    :func:`_unpack` reads them back with, shapes and dtypes exactly as given."""
    fields: dict[str, list] = {}
    for layer, arrays in layers.items():
        for name, arr in arrays.items():
            fields.setdefault(name, []).append((layer, np.asarray(arr)))
    index = {}
    for name, parts in fields.items():
        dtype = np.result_type(*(a.dtype for _, a in parts))
        flat = np.concatenate([a.reshape(-1).astype(dtype, copy=False) for _, a in parts])
        g.create_array(name, data=flat)                   # zarr refuses what it cannot store
        index[name], offset = {}, 0
        for layer, a in parts:
            index[name][layer] = [offset, list(a.shape), a.dtype.str]
            offset += a.size
    return index


def _unpack(g, index: dict, layer_names: list) -> dict[str, dict[str, np.ndarray]]:
    """The ``{layer: {field: array}}`` that :func:`_pack` wrote into ``g``."""
    out: dict[str, dict[str, np.ndarray]] = {layer: {} for layer in layer_names}
    for name, where in index.items():
        flat = g[name][...]
        for layer, (offset, shape, dtype) in where.items():
            size = int(np.prod(shape, dtype=np.int64))
            out.setdefault(layer, {})[name] = (
                flat[offset:offset + size].reshape(shape).astype(np.dtype(dtype), copy=False))
    return out


def _complete_slot(analyses, analysis_id: str) -> str | None:
    """Which of ``analysis_id``'s two slots holds its complete analysis (the later
    written when both do: a writer stopped before removing the old one), or None."""
    best, best_t = None, None
    for slot in (analysis_id, analysis_id + _NEXT):
        try:
            attrs = analyses[slot].attrs
        except KeyError:
            continue
        except Exception:  # noqa: BLE001 - unreadable slot: not a complete analysis
            continue
        if attrs.get("status") != "complete":
            continue
        t = attrs.get("t_end")
        t = float(t) if isinstance(t, (int, float)) else 0.0
        if best is None or t > best_t:
            best, best_t = slot, t
    return best
