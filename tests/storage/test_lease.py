"""Leases on a real store: a live claim is respected, an expired or dead one is taken
over, `kma runs` tells interrupted runs from running ones, and a sweep skips (and
lists) the runs another live sweep holds, without starting Ray for them."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy as np

from pipeline import config
from pipeline.storage import lease
from pipeline.console import Console
from pipeline.workflows.sweep import run_sweep
from pipeline.storage.layout import Layout
from pipeline.storage.lease import LeaseKeeper
from pipeline.storage.store import TrajectoryStore

from conftest import kma_cmd

LAYOUT = Layout.from_named_shapes([("w", (4,))])


def _stale(store, run_id, *, age=1000.0, pid=1, host="elsewhere"):
    """The lease a sweep on another machine left when it died ``age`` seconds ago."""
    doc = {"owner": f"{host}:{pid}:dead", "host": host, "pid": pid, "sweep": "old",
           "heartbeat": time.time() - age, "timeout": 90.0}
    store.set_bytes(f"leases/{run_id}.json", json.dumps(doc).encode())


def test_live_claim_is_respected_and_expired_one_taken_over(tmp_path):
    store = TrajectoryStore(str(tmp_path / "s"))
    a = LeaseKeeper(store, "first", timeout=60)
    b = LeaseKeeper(store, "second", timeout=60)
    assert a.claim("r1") is None
    holder = b.claim("r1")
    assert holder is not None and holder.owner == a.owner and holder.sweep == "first"
    assert a.claim("r1") is None  # re-claiming one's own lease is fine (safe to repeat)
    a.renew()
    assert lease.read(store, "r1").owner == a.owner

    _stale(store, "r2")  # expired: heartbeat older than its timeout
    assert not lease.is_live(store, "r2")
    assert b.claim("r2") is None and lease.read(store, "r2").owner == b.owner

    # on this host, a claim whose process is gone is dead at once, however fresh
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    _stale(store, "r3", age=0.0, pid=int(gone), host=lease._host())
    assert not lease.is_live(store, "r3")
    assert b.claim("r3") is None

    b.release("r1")  # not b's: nothing happens
    assert lease.read(store, "r1").owner == a.owner
    a.release("r1")
    assert lease.read(store, "r1") is None and a.held == set()


def test_heartbeat_keeps_a_claim_live_past_its_timeout(tmp_path):
    """The keeper's thread rewrites the heartbeat every timeout/6: a claim held longer
    than its timeout stays live. (Polls with a generous deadline; no timing assertion.)"""
    store = TrajectoryStore(str(tmp_path / "s"))
    with LeaseKeeper(store, "sweep", timeout=3) as keeper:   # beats every 0.5 s
        assert keeper.claim("r") is None
        first = lease.read(store, "r").heartbeat
        deadline = time.time() + 60
        while lease.read(store, "r").heartbeat < first + 3.5 and time.time() < deadline:
            time.sleep(0.05)
        assert lease.read(store, "r").heartbeat >= first + 3.5   # older than the timeout...
        assert lease.is_live(store, "r")                          # ...yet renewed
    assert lease.read(store, "r") is None


def test_keeper_releases_on_exit_and_runs_shows_interrupted(tmp_path, kma_env):
    store = TrajectoryStore(str(tmp_path / "s"))
    for rid in ("alive", "orphan"):
        w = store.create_run(rid, LAYOUT, capacity=2)
        w.append(np.zeros(4, np.float32))
        w._join()  # the writer's data is written; the status stays `running`
    with LeaseKeeper(store, "sweep", timeout=60) as keeper:
        assert keeper.claim("alive") is None
        assert {i.run_id: i.status for i in store.runs()} == {"alive": "running", "orphan": "interrupted"}
        assert store.status("orphan") == "running"  # stored status unchanged; shown as interrupted
    # leaving the keeper released its claim: now nobody holds "alive"
    assert lease.read(store, "alive") is None
    r = subprocess.run(kma_cmd("runs", "--store", tmp_path / "s"), capture_output=True, text=True,
                       env=kma_env, timeout=120)
    rows = {line.split()[0]: line.split()[1] for line in r.stdout.splitlines()[1:]}
    assert rows == {"alive": "interrupted", "orphan": "interrupted"}, r.stdout


def test_second_sweep_skips_runs_a_live_sweep_holds(tiny_config, tmp_path):
    """Every variant held by a live sweep: nothing is trained, nothing is stored, Ray is
    not started, and the held runs are listed. One expired claim would be taken over
    (the end-to-end sweep test trains through one)."""
    import ray

    cfg = config.load(tiny_config())
    variants = config.expand(cfg)
    store_url = str(tmp_path / "s")
    store = TrajectoryStore(store_url)
    lines = []

    class Capture(Console):
        def info(self, msg):
            lines.append(msg)

    with LeaseKeeper(store, "first", timeout=60) as first:
        for v in variants:
            assert first.claim(v.run_id) is None
        summary = run_sweep(cfg, store_url=store_url, tracking_uri=f"sqlite:///{tmp_path / 'm.db'}",
                            analyze=False, console=Capture(quiet=True))
        assert sorted(summary.held) == sorted(v.run_id for v in variants)
        assert summary.trained == [] and summary.failed == {}
        assert not ray.is_initialized()
        assert store.runs() == []
        assert any(f"{len(variants)} held by another live sweep, 0 to train" in m for m in lines), lines
        assert sum(m.startswith("  held: ") and "sweep 'first'" in m for m in lines) == len(variants)
        # the live sweep's claims are untouched by the second sweep
        assert {lease.read(store, v.run_id).owner for v in variants} == {first.owner}
