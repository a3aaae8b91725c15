"""Storage backends declare what they guarantee (pipeline.storage.protocol), and callers
ask the declaration, not the URL: local disk and an fsspec object store (``memory://``
here; S3 in tests/test_ray_cluster_paths.py)."""

from __future__ import annotations

import logging

from pipeline.storage.lease import LeaseKeeper
from pipeline.storage.protocol import Backend, Capabilities
from pipeline.storage.store import TrajectoryStore


def test_local_backend_creates_atomically_and_declares_it(tmp_path):
    store = TrajectoryStore(str(tmp_path / "s"))
    assert isinstance(store._zstore, Backend)
    assert store.capabilities == Capabilities(conditional_create=True, listing=True, atomic_replace=True)
    store.set_bytes("leases/x.json", b"first", exclusive=True)
    store.set_bytes("leases/x.json", b"second", exclusive=True)     # the key exists: nothing written
    assert store.get_bytes("leases/x.json") == b"first"
    store.set_bytes("leases/x.json", b"third")                      # a plain write replaces it
    assert store.get_bytes("leases/x.json") == b"third"


def test_object_store_without_conditional_create_is_named_by_the_lease(tmp_path, caplog):
    memory = TrajectoryStore("memory://kma-protocol-test")
    assert isinstance(memory._zstore, Backend)
    assert memory.capabilities == Capabilities(conditional_create=False, listing=True, atomic_replace=True)
    with caplog.at_level(logging.INFO, logger="pipeline.storage.lease"):
        LeaseKeeper(memory, "a")
        LeaseKeeper(TrajectoryStore(str(tmp_path / "s")), "b")
    said = [r.getMessage() for r in caplog.records if r.name == "pipeline.storage.lease"]
    assert len(said) == 1 and "memory://kma-protocol-test" in said[0] and "no atomic create" in said[0], said
