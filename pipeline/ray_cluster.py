"""A sweep on a multi-node Ray cluster: paths every node can use, failures named by
their cause and node, custom resources that exist.

- **Paths.** A local store path or SQLite tracking path is made absolute on the driver
  (:class:`~pipeline.storage.location.StoreLocation`,
  :class:`~pipeline.tracking.uri.TrackingURI`) before any task is shipped: a
  Ray task runs in its node's own working directory, so a relative path would mean a
  different folder on every node (``ray job submit`` even runs the driver inside the
  head's working directory). On a cluster of more than one live node a local store path
  is refused (:func:`check_store_shared`) unless the user says every node mounts it at
  the same path (``kma sweep --shared-store``): use an ``s3://`` (fsspec) store. A store
  or SQLite file inside Ray's temporary copy of a job's working directory (``ray job
  submit --working-dir``) is refused everywhere (:func:`check_not_job_scratch`).
- **Failures.** :func:`run_on_node` is the body of a sweep's Ray task: it calls
  :func:`pipeline.training.runner.run_variant` and turns any exception that escapes it
  (a store a node cannot reach: missing credentials, say) into a ``failed`` result
  carrying ``failure = {"type", "message", "node_ip", "node_id"}`` and a one-line
  ``error``, instead of Ray's ``ray::run_variant() (pid=...)``. A task that died for
  good (its worker killed more often than the retries allow) is described from Ray's
  exception by :func:`ray_failure`. :func:`record_failure` writes the cause into the
  store's record of the run, creating the record (a ``failed`` run with no snapshot)
  when the task could not even create it, so ``kma runs`` names it too.
- A task adds the test seams' callbacks (:func:`pipeline.seams.task_callbacks`: none in
  normal use).
"""

from __future__ import annotations

import logging
from pathlib import Path

from .errors import KMAError
from .runtime.ray_connect import node_of_task
from .seams import task_callbacks
from .storage.location import StoreLocation
from .tracking.uri import TrackingURI

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- paths
RAY_SCRATCH = "runtime_resources"  # Ray unpacks a job's --working-dir under <session>/runtime_resources/


def check_not_job_scratch(store_url: str, tracking_uri: str) -> None:
    """Refuse a local store or SQLite file inside Ray's temporary copy of a job's working
    directory (``ray job submit --working-dir .`` runs the driver there, so a relative
    ``--store``, the default ``kma-store`` and ``./mlflow.db`` would land in it): Ray
    deletes it with the session, and no other node has it."""
    store = StoreLocation(store_url)
    for what, path in (("store", store.path if store.is_local else None),
                       ("MLflow database", TrackingURI(tracking_uri).sqlite_path)):
        if path and RAY_SCRATCH in Path(path).parts:
            flag = "--store" if what == "store" else "--tracking-uri"
            raise KMAError(
                f"{what} {path} is inside Ray's temporary copy of the job's working directory, deleted "
                f"with the Ray session: give {flag} an absolute path outside it"
                + (" or an s3:// store" if what == "store" else " or a tracking server (http://...)"))


def alive_nodes(ray) -> list[dict]:
    """The cluster's live nodes, as ``ray.nodes()`` reports them."""
    return [n for n in ray.nodes() if n.get("Alive")]


def check_store_shared(ray, store_url: str, shared: bool, address: str) -> None:
    """Refuse a local store path on a cluster of more than one live node (each node
    would write its runs to its own disk), unless ``shared`` (``--shared-store``: every
    node mounts that path, e.g. NFS)."""
    if shared or not StoreLocation(store_url).is_local:
        return
    n = len(alive_nodes(ray))
    if n > 1:
        raise KMAError(
            f"store {store_url} is a local path, but the Ray cluster at {address} has {n} nodes that "
            "cannot all write there: use an object store (--store s3://BUCKET/PREFIX), or pass "
            "--shared-store if every node mounts this path")


def check_custom_resources(ray, variants, source: str, where: str) -> None:
    """Every custom resource a variant asks for (``resources.custom``) exists on some
    node: otherwise Ray would queue its task forever."""
    have = ray.cluster_resources() if ray is not None else {}
    for v in variants:
        for name, amount in v.resources.custom.items():
            if have.get(name, 0.0) < amount:
                raise KMAError(
                    f"{source}: resources.custom.{name}: {amount:g} per variant, but {where} has "
                    + (f"{have[name]:g}" if name in have else "no node with that resource")
                    + " (start nodes with ray start --resources)")


# --------------------------------------------------------------------------- failures
def failure_line(failure: dict) -> str:
    """``NoCredentialsError: Unable to locate credentials (node 10.0.0.2, id 3f2a9c1e)``."""
    where = ""
    if failure.get("node_ip") or failure.get("node_id"):
        nid = failure.get("node_id")
        where = f" (node {failure.get('node_ip') or '?'}" + (f", id {nid[:8]}" if nid else "") + ")"
    return f"{failure['type']}: {failure['message']}{where}"


def _first_line(text: str) -> str:
    lines = [ln.strip() for ln in str(text).splitlines() if ln.strip()]
    return lines[0][:300] if lines else ""


def run_on_node(variant: dict, store_url: str) -> dict:
    """Ray task body: train ``variant`` (:func:`~pipeline.training.runner.run_variant`);
    its result gains ``node``, and a failure ``failure`` and a one-line ``error``."""
    from .config import Variant
    from .training.runner import run_variant

    node = node_of_task()
    variant = Variant.model_validate(variant) if isinstance(variant, dict) else variant
    try:
        res = run_variant(variant, store_url, callbacks=task_callbacks(variant.run_id))
    except Exception as e:  # noqa: BLE001 - reported to the driver as the run's failure
        rid = variant.run_id
        log.exception("run %s failed on node %s", rid, node)
        failure = {"type": type(e).__name__, "message": _first_line(e) or type(e).__name__, **node}
        return {"run_id": rid, "status": "failed", "failure": failure, "error": failure_line(failure),
                "node": node}
    for one in res.get("attempts") or [res]:
        one["node"] = node
        if one.get("status") == "failed":
            err = str(one.get("error") or "")
            kind, _, msg = _first_line(err).partition(": ")
            one["failure"] = {"type": kind if msg else "Error", "message": msg or kind, **node}
            one["error"] = failure_line(one["failure"])
    return res


def ray_failure(e: BaseException) -> dict:
    """The cause of a Ray error (a worker killed more often than the retries allow, a
    node lost, an exception raised outside the task body): its type and the first line
    of its message that is not Ray's ``ray::task() (pid=...)`` header."""
    cause = getattr(e, "cause", None)
    if isinstance(cause, BaseException) and not type(cause).__name__.startswith("Ray"):
        return {"type": type(cause).__name__, "message": _first_line(cause) or type(cause).__name__,
                "node_ip": getattr(e, "ip", None), "node_id": None}
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip() and not ln.strip().startswith("ray::")]
    return {"type": type(e).__name__, "message": (lines[0][:300] if lines else type(e).__name__),
            "node_ip": getattr(e, "ip", None), "node_id": None}


def record_failure(store, variant, res: dict) -> None:
    """Write the failure into the store's record of the run: ``failure`` (type, message,
    node) and ``error`` (one line); a run the task never created gets a ``failed``
    record of its own (layout and config, no snapshot), which the next sweep redoes."""
    rid = res["run_id"]
    failure = res.get("failure") or {"type": "Error", "message": res.get("error") or "unknown error"}
    line = failure_line(failure) if "failure" in res else _first_line(res.get("error") or "unknown error")
    try:
        status = store.status(rid)
        if status is None and rid == variant.run_id:
            from .training.runner import variant_layout

            writer = store.create_run(rid, variant_layout(variant), config=variant.model_dump(mode="json"),
                                      capacity=variant.snapshot_capacity(), dtype=variant.snapshot.dtype,
                                      extra={"sweep": variant.sweep, "failure": failure})
            writer.abort(line)
        elif status is not None:  # left running: its task died for good; failed: the task said why
            store.mark_failed(rid, f"task died: {line}" if status == "running" else line)
            if store.status(rid) == "failed":
                store.open_run(rid).group.update_attributes({"failure": failure})
    except Exception as e:  # noqa: BLE001 - the summary still names the cause
        log.warning("run %s: could not record its failure in the store (%s)", rid, e)


def run_pack_task(variants: list, store_url: str) -> dict:
    """Ray task body of a packed task: one variant unpacked, several packed (summaries of
    every member under ``"attempts"``, which the driver records one by one)."""
    from .config import Variant
    from .training.packing import run_pack
    from .training.runner import run_variant

    variants = [Variant.model_validate(v) if isinstance(v, dict) else v for v in variants]
    if len(variants) == 1:
        return run_variant(variants[0], store_url)
    return run_pack(variants, store_url)
