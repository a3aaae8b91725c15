"""What a sweep asks for against what the machine or cluster has, checked before work.

A Ray task that asks for more CPUs or GPUs than any node has is never scheduled (Ray
waits forever, the sweep shows "running"); a model too large to build fails inside
``ray::run_variant()`` with its cause hidden. Both are checked here first:

- :func:`check_model_sizes`: every variant has at most :data:`MAX_PARAMETERS`
  parameters (counted on the ``meta`` device by :func:`pipeline.training.runner.preflight`);
- :func:`check_fits`: every variant's ``resources`` (and a lower bound of the memory its
  training needs) fit on at least one machine — the local one (:func:`local_machine`)
  before a local Ray starts, the cluster's nodes (:func:`ray_machines`) after connecting
  and before submitting.

A variant asking for GPUs where there are none at all still runs, on CPU (with a
warning from the driver); only a request larger than every GPU node is refused.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from ..errors import KMAError, plural

log = logging.getLogger(__name__)

MAX_PARAMETERS = 10**9  # per variant (the design's upper P); beyond it a sweep is refused
_BASELINE_BYTES = 300 * 2**20  # a training process before its model (torch, data, buffers)
_OPTIMIZER_STATES = {"sgd": 0, "rmsprop": 1, "adam": 2, "adamw": 2}  # tensors per parameter


@dataclass(frozen=True)
class Machine:
    """One place a task can run: CPUs, GPUs and memory (bytes; None if unknown)."""

    name: str
    cpus: float
    gpus: float
    memory: int | None


def _gb(n: float) -> str:
    return f"{n / 2**30:.1f} GB"


def train_bytes(variant, n_model: int, n_snapshot: int) -> int:
    """A lower bound of the host memory training ``variant`` needs, in bytes.

    Weights and gradients (float32), the optimizer's state tensors, and the snapshot
    writer's buffers (up to three rows of ``n_snapshot`` values in the stored dtype).
    """
    from ..storage.store import BUFFER_BYTES

    states = _OPTIMIZER_STATES.get(variant.optimizer, 0)
    itemsize = 4 if variant.snapshot.dtype == "float32" else 2
    t_chunk = max(1, min(64, BUFFER_BYTES // max(1, 2 * n_snapshot * itemsize)))
    return 4 * n_model * (2 + states) + 3 * t_chunk * n_snapshot * itemsize + _BASELINE_BYTES


def check_model_sizes(variants, sizes: dict[str, tuple[int, int]], source: str) -> None:
    """Refuse a variant whose model has more than :data:`MAX_PARAMETERS` parameters."""
    for v in variants:
        n_model, _ = sizes[v.run_id]
        if n_model > MAX_PARAMETERS:
            raise KMAError(
                f"{source}: model.width/model.depth: variant {v.run_id} (depth {v.depth}, width "
                f"{v.width}) has {n_model:.3g} parameters; at most {MAX_PARAMETERS:.0e} per variant")


def local_machine() -> Machine:
    """This machine as a local Ray sees it: every core, the GPUs torch sees, its memory."""
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return Machine("this machine", float(os.cpu_count() or 1), float(gpus), _memory_bytes())


def _memory_bytes() -> int | None:
    """Physical memory, or the cgroup (container) limit when that is lower."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        total = None
    try:
        with open("/sys/fs/cgroup/memory.max") as f:
            limit = f.read().strip()
        if limit.isdigit():
            total = min(total or int(limit), int(limit))
    except OSError:
        pass
    return total


def ray_machines(ray) -> list[Machine]:
    """The alive nodes of the connected Ray cluster (or its totals as one machine)."""
    try:
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        out = []
        for n in nodes:
            res = n.get("Resources", {})
            mem = res.get("memory", 0) + res.get("object_store_memory", 0)
            out.append(Machine(f"node {n.get('NodeManagerAddress', '?')}", res.get("CPU", 0.0),
                               res.get("GPU", 0.0), int(mem) or None))
        if out:
            return out
    except Exception as e:  # noqa: BLE001 - ray.nodes() is a developer API; fall back to totals
        log.debug("ray.nodes() failed (%s); checking against the cluster's totals", e)
    res = ray.cluster_resources()
    mem = res.get("memory", 0) + res.get("object_store_memory", 0)
    return [Machine("the cluster", res.get("CPU", 0.0), res.get("GPU", 0.0), int(mem) or None)]


def check_fits(variants, sizes: dict[str, tuple[int, int]], machines: list[Machine], where: str,
               source: str) -> None:
    """Every variant fits on at least one of ``machines``; else one line, before work.

    ``where`` names the machines in the message (``this machine``, ``the Ray cluster at X``).
    """
    if not machines:
        raise KMAError(f"{where}: no machine to run on")
    max_cpus = max(m.cpus for m in machines)
    max_gpus = max(m.gpus for m in machines)
    mems = [m.memory for m in machines if m.memory]
    max_mem = max(mems) if mems else None
    hint = "lower it, or pass --ray-address of a larger cluster" if where == "this machine" else "lower it"
    has = f"{where} has" if len(machines) == 1 else f"the largest node of {where} has"
    for v in variants:
        r = v.resources
        if r.num_cpus > max_cpus:
            raise KMAError(f"{source}: resources.num_cpus: {plural(r.num_cpus, 'CPU', fmt='g')} per variant, but "
                           f"{has} {max_cpus:g} ({hint})")
        if r.num_gpus and max_gpus and r.num_gpus > max_gpus:
            raise KMAError(f"{source}: resources.num_gpus: {plural(r.num_gpus, 'GPU', fmt='g')} per variant, but "
                           f"{has} {max_gpus:g} ({hint})")
        if not any(m.cpus >= r.num_cpus and (not r.num_gpus or not max_gpus or m.gpus >= r.num_gpus)
                   for m in machines):
            raise KMAError(f"{source}: resources: no machine of {where} has both {plural(r.num_cpus, 'CPU', fmt='g')} "
                           f"and {plural(r.num_gpus, 'GPU', fmt='g')} ({hint})")
        if max_mem:
            need = train_bytes(v, *sizes[v.run_id])
            if need > max_mem:
                raise KMAError(
                    f"{source}: model.width/model.depth: variant {v.run_id} ({sizes[v.run_id][0]:.3g} "
                    f"parameters) needs at least {_gb(need)} of memory to train; {has} {_gb(max_mem)}")
