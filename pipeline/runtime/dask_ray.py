"""Dask-on-Ray: ``kma analyze --scheduler ray`` runs the analysis' Dask graph as Ray tasks.

The passes of :mod:`pipeline.koopman.passes` build ordinary Dask graphs and hand them to
``dask.compute(..., scheduler=...)``; :class:`RayScheduler` is a scheduler ``get`` that
submits every Dask task as a Ray task (``ray.util.dask.ray_dask_get``), on the Ray
cluster the driver connects to the way ``kma sweep`` does (:func:`pipeline.runtime.ray_connect.init_ray`:
``RAY_ADDRESS`` — set inside ``ray job submit`` — or ``ray:ADDRESS``, else a local Ray
started for the command and stopped after it). Chunks are read inside the Ray tasks, on
whichever node runs them: the store must be one every node reaches (object storage or a
shared file system), and each node reads it with its own credentials (the graph carries
the store's URL only, :mod:`pipeline.storage.remote`).

Tested with the pinned pair ray 2.60.0 / dask 2026.8.0 (``pyproject.toml``'s ``cluster``
extra, ``infra/Dockerfile``).
"""

from __future__ import annotations

import logging

from ..errors import KMAError

log = logging.getLogger(__name__)

__all__ = ["RayScheduler", "parse_ray_scheduler"]


def parse_ray_scheduler(name: str) -> str | None | bool:
    """``"ray"`` -> None (``RAY_ADDRESS`` or a local Ray), ``"ray:HOST:PORT"`` /
    ``"ray:auto"`` -> that address, anything else -> False (not a Ray scheduler)."""
    if name == "ray":
        return None
    if name.startswith("ray:") and not name.startswith("ray://"):
        address = name[4:]
        if not address:
            raise KMAError("--scheduler ray:ADDRESS: give the Ray cluster's HOST:PORT (or 'auto')")
        return address
    return False


class RayScheduler:
    """A Dask scheduler ``get(dsk, keys, **kwargs)`` that runs the graph on Ray.

    Connects on construction (one line ``kma: error: Ray at ...`` when it cannot) and,
    if it started Ray itself, stops it on :meth:`close`. Extra keyword arguments of the
    threaded scheduler (``num_workers``) are dropped: Ray schedules by resources.
    """

    def __init__(self, address: str | None = None, console=None):
        import ray

        try:
            from ray.util.dask import ray_dask_get
        except ImportError as e:  # pragma: no cover - ray[default] is a dependency
            raise KMAError(f"--scheduler ray: Ray's Dask scheduler is not available ({e}); "
                           "install kma[cluster]") from None
        from ..console import Console
        from .ray_connect import init_ray

        self._get = ray_dask_get
        self._started = not ray.is_initialized()
        init_ray(address, console or Console(quiet=True))
        self.address = address

    def __call__(self, dsk, keys, **kwargs):
        kwargs.pop("num_workers", None)
        return self._get(dsk, keys, **kwargs)

    def close(self) -> None:
        if self._started:
            import ray

            ray.shutdown()
            self._started = False

    def __repr__(self) -> str:
        return f"RayScheduler({self.address or 'RAY_ADDRESS or local'})"
