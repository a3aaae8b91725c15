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
    # modes_layers); one group per layer of small arrays; modes/<layer>.{real,imag}.

    def list_analyses(self) -> dict[str, dict]:
        """``{analysis_id: its stored params}`` of the completely written analyses (one
        left ``writing`` by an interrupted or failed writer is never listed)."""
        try:
            group = self.group["analyses"]
        except KeyError:
            return {}
        out = {}
        for aid in sorted(group.group_keys()):
            attrs = group[aid].attrs
            if attrs.get("status") == "complete":
                out[aid] = dict(attrs.get("params", {}))
        return out

    def analysis_info(self, analysis_id: str) -> dict:
        """The attributes of a complete analysis (params, layers, n_snapshots, ...)."""
        return dict(self._analysis_group(analysis_id).attrs)

    def read_analysis(self, analysis_id: str) -> tuple[dict, dict[str, dict[str, np.ndarray]]]:
        """``(attrs, {layer: {array name: values}})`` of a complete analysis."""
        g = self._analysis_group(analysis_id)
        attrs = dict(g.attrs)
        layers = {}
        for layer in attrs.get("layers", []):
            lg = g[layer]
            layers[layer] = {name: lg[name][...] for name in lg.array_keys()}
        return attrs, layers

    def write_analysis(self, analysis_id: str, params: dict, layers: dict[str, dict[str, np.ndarray]],
                       *, modes: dict | None = None, attrs: dict | None = None) -> None:
        """Write an analysis whole, replacing one of the same id: status ``writing``
        first, ``complete`` last. ``modes``: ``{layer: complex dask array (k × P)}``
        stored as float32 real and imaginary parts; ``t_end`` (Unix seconds) records when
        it was completely written (a caller records ``t_start`` in ``attrs``). If any write fails, the
        half-written analysis is removed (best effort; if that fails too its status
        stays ``writing``, which :meth:`list_analyses` never lists) and the error is
        raised again."""
        try:
            analyses = self.group.require_group("analyses")
            if analysis_id in analyses:
                del analyses[analysis_id]
            g = analyses.create_group(analysis_id, attributes={"status": "writing", "params": params,
                                                               "created": _now()})
            for layer, arrays in layers.items():
                lg = g.create_group(layer)
                for name, arr in arrays.items():
                    lg.create_array(name, data=arr)
            for layer, arr in (modes or {}).items():
                import dask.array as da

                mg = g.require_group("modes")
                chunks = (arr.shape[0], min(arr.shape[1], _P_CHUNK))
                for part, values in (("real", arr.real), ("imag", arr.imag)):
                    da.to_zarr(values.astype(np.float32), mg.create_array(
                        f"{layer}.{part}", shape=arr.shape, chunks=chunks, dtype="float32"))
            g.update_attributes({**(attrs or {}), "status": "complete", "layers": list(layers),
                                 "modes_layers": list(modes or {}), "t_end": time.time()})
        except Exception:
            self.delete_analysis(analysis_id, quiet=True)
            raise

    def delete_analysis(self, analysis_id: str, *, quiet: bool = False) -> None:
        """Remove an analysis (``quiet``: a failure is only logged)."""
        try:
            analyses = self.group["analyses"]
            if analysis_id in analyses:
                del analyses[analysis_id]
        except Exception:  # noqa: BLE001 - quiet: the store is failing already; the status says it
            if not quiet:
                raise
            log.debug("run %s: could not remove analysis %s", self.run_id, analysis_id)

    def _analysis_group(self, analysis_id: str):
        try:
            g = self.group[f"analyses/{analysis_id}"]
        except KeyError:
            raise StoreError(f"run {self.run_id}: no analysis {analysis_id}") from None
        if g.attrs.get("status") != "complete":
            raise StoreError(f"run {self.run_id}: analysis {analysis_id} is incomplete "
                             f"(status {g.attrs.get('status')}); run kma analyze again")
        return g
