import os

import numpy as np
import pytest

from pipeline.errors import RunNotFound, StoreError
from pipeline.storage.layout import Layout
from pipeline.storage.store import TrajectoryStore

LAYOUT = Layout.from_named_shapes(
    [("l0.weight", (4, 3)), ("l0.bias", (4,)), ("l1.weight", (2, 4)), ("l1.bias", (2,))]
)


def _write(store, run_id, X, status="complete", **kw):
    w = store.create_run(run_id, LAYOUT, config={"k": 1}, **kw)
    for i, x in enumerate(X):
        w.append(x, epoch=i, step=10 * i)
    w.finish(status, metrics={"train_loss": list(np.linspace(1, 0, len(X)))})
    return w


@pytest.mark.parametrize("where", ["local", "memory", "file"])
def test_round_trip(tmp_path, where):
    url = {"local": str(tmp_path / "s"), "memory": f"memory://kma-{os.getpid()}-{id(tmp_path)}",
           "file": f"file://{tmp_path / 's2'}"}[where]
    X = np.random.default_rng(0).standard_normal((7, LAYOUT.size)).astype(np.float32)
    _write(TrajectoryStore(url), "r1", X, capacity=5)  # grows past the capacity
    store = TrajectoryStore(url, read_only=True)
    run = store.open_run("r1")
    assert run.status == "complete" and run.n_snapshots == 7
    d = run.weights()
    assert d.shape == (7, LAYOUT.size) and hasattr(d, "dask")  # lazy
    np.testing.assert_array_equal(d.compute(), X)
    assert run.layout == LAYOUT
    assert run.attrs["snapshot_steps"] == [0, 10, 20, 30, 40, 50, 60]
    assert run.metrics["train_loss"][0] == 1.0
    assert "code_version" in run.attrs and run.config == {"k": 1}
    [info] = store.runs()
    assert (info.run_id, info.status, info.n_snapshots, info.n_parameters) == ("r1", "complete", 7, LAYOUT.size)


def test_layout_maps_indices_to_layers():
    assert LAYOUT.layers == ["l0", "l1"]
    assert LAYOUT.layer_ranges() == [("l0", 0, 16), ("l1", 16, 26)]
    e, idx = LAYOUT.locate(13)
    assert (e.name, idx) == ("l0.bias", (1,))
    e, idx = LAYOUT.locate(17)
    assert (e.name, idx) == ("l1.weight", (0, 1))
    assert LAYOUT.layer_of(25) == "l1"
    with pytest.raises(IndexError):
        LAYOUT.locate(26)
    tensors = {e.name: np.arange(e.size, dtype=np.float32).reshape(e.shape) + e.offset for e in LAYOUT.entries}
    flat = LAYOUT.flatten(tensors)
    np.testing.assert_array_equal(flat, np.arange(LAYOUT.size, dtype=np.float32))
    back = LAYOUT.unflatten(flat)
    np.testing.assert_array_equal(back["l1.weight"], tensors["l1.weight"])
    assert Layout.from_records(LAYOUT.to_records()) == LAYOUT
    assert LAYOUT.select(["l1"]).size == 10


@pytest.mark.parametrize("dtype, tol", [("float16", 1e-3), ("bfloat16", 1e-2)])
def test_reduced_precision(tmp_path, dtype, tol):
    X = np.random.default_rng(1).uniform(0.5, 1.0, (3, LAYOUT.size)).astype(np.float32)
    store = TrajectoryStore(str(tmp_path))
    _write(store, "r", X, dtype=dtype)
    traj = store.open_run("r").trajectory()
    Y = traj.array.compute()
    assert Y.dtype == np.float32
    np.testing.assert_allclose(Y, X, rtol=tol)
    # passes still load (and convert) each task's chunks inside the task
    loaded = traj.load_chunk(0, 0)
    assert loaded.dtype == np.float32
    np.testing.assert_array_equal(loaded, Y[:, :traj.chunks[1][0]])


def test_unfinished_run_is_redone_cleanly(tmp_path):
    store = TrajectoryStore(str(tmp_path))
    w = store.create_run("r", LAYOUT, capacity=4)
    w.append(np.ones(LAYOUT.size, np.float32))
    # the task dies here: status stays "running"
    assert store.status("r") == "running"
    X = np.zeros((2, LAYOUT.size), np.float32)
    _write(store, "r", X)
    run = store.open_run("r")
    assert run.n_snapshots == 2 and run.status == "complete"
    np.testing.assert_array_equal(run.weights().compute(), X)


def test_finished_run_is_not_overwritten(tmp_path):
    store = TrajectoryStore(str(tmp_path))
    _write(store, "r", np.zeros((2, LAYOUT.size), np.float32))
    with pytest.raises(StoreError, match="already complete"):
        store.create_run("r", LAYOUT)


def test_corrupt_metadata_is_reported_and_redone(tmp_path):
    store = TrajectoryStore(str(tmp_path))
    _write(store, "r", np.zeros((2, LAYOUT.size), np.float32), status="diverged")
    (tmp_path / "runs" / "r" / "zarr.json").write_text("{not json")
    store = TrajectoryStore(str(tmp_path))
    assert store.status("r") is None
    assert [i.status for i in store.runs()] == ["corrupt"]
    _write(store, "r", np.ones((2, LAYOUT.size), np.float32))
    assert store.open_run("r").status == "complete"


def test_missing_run_and_unwritable_store(tmp_path):
    store = TrajectoryStore(str(tmp_path))
    with pytest.raises(RunNotFound, match="run nope"):
        store.open_run("nope")
    with pytest.raises(StoreError, match="no such directory"):
        TrajectoryStore(str(tmp_path / "absent"), read_only=True)
    if os.geteuid() != 0:  # root ignores permissions
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        with pytest.raises(StoreError):
            TrajectoryStore(str(ro)).check_writable()
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StoreError):
        TrajectoryStore(str(blocker / "sub"))


def test_snapshot_shape_checked(tmp_path):
    w = TrajectoryStore(str(tmp_path)).create_run("r", LAYOUT)
    with pytest.raises(ValueError, match="expected"):
        w.append(np.zeros(3, np.float32))
    w.abort("test")


def test_local_chunks_are_mapped_and_equal_zarr_reads(tmp_path, monkeypatch):
    """Local uncompressed runs read through read-only maps of the chunk files; values,
    chunking (edge chunks included), missing chunks (fill NaN) and corrupt ones agree
    with what zarr itself does, and object stores / compressed arrays still use zarr."""
    from dataclasses import replace

    import dask.array as da
    import zarr

    from pipeline.storage.chunkmap import mappable, mapped_trajectory

    big = Layout.from_named_shapes([("w", (300_000,))])   # two chunk columns, the last partial
    X = np.random.default_rng(1).standard_normal((11, big.size)).astype(np.float32)
    store = TrajectoryStore(str(tmp_path / "s"))
    w = store.create_run("r", big, capacity=4)
    for i, x in enumerate(X):
        w.append(x, epoch=i)
    w.finish("complete")
    run = TrajectoryStore(str(tmp_path / "s"), read_only=True).open_run("r")
    arr = run.weights_array()
    assert mappable(arr)
    traj = run.trajectory()
    Y = traj.array
    assert Y.name.startswith("mapped-") and traj.cheap and traj.groups == (("w", 0, big.size),)
    head = run.trajectory(rows=5)                  # a diverged run's finite prefix
    assert head.shape == (5, big.size) and head.load_chunk is not None
    np.testing.assert_array_equal(head.array.compute(), X[:5])
    np.testing.assert_array_equal(head.load_chunk(0, 0), X[:min(5, head.chunks[0][0]), :262_144])
    ref = da.from_zarr(arr)[:11]
    assert Y.chunks == ref.chunks and len(Y.chunks[1]) == 2
    np.testing.assert_array_equal(Y.compute(), X)
    np.testing.assert_array_equal(Y[3:9, 262_000:263_000].compute(), X[3:9, 262_000:263_000])

    # a pass over the mapped array maps chunks inside its own tasks; same spectra as
    # the same pass over zarr's decode path
    from pipeline.koopman import KoopmanDMD, passes

    assert traj.load_chunk is not None
    fits = [KoopmanDMD(window=6, stride=2).fit(y).results_ for y in (traj, ref)]
    for a, b in zip(*fits):
        np.testing.assert_allclose(a.eigenvalues, b.eigenvalues, atol=1e-12)
        np.testing.assert_allclose(a.residuals, b.residuals, atol=1e-12)

    chunk_dir = tmp_path / "s" / "runs" / "r" / "weights" / "c"
    (chunk_dir / "0" / "1").unlink()                        # lost chunk: NaN, as through zarr
    got = mapped_trajectory(arr, 11).array.compute()
    np.testing.assert_array_equal(np.isnan(got), np.isnan(ref.compute()))
    assert np.isnan(got[:, 262_144:]).all() and not np.isnan(got[:, :262_144]).any()
    (chunk_dir / "0" / "0").write_bytes(b"junk")
    with pytest.raises(OSError, match="c/0/0 has 4 bytes"):
        mapped_trajectory(arr, 11).array.compute()

    zst = zarr.open_group(str(tmp_path / "z"), mode="w").create_array(
        "a", shape=(4, 10), chunks=(2, 5), dtype="f4", compressors=[zarr.codecs.ZstdCodec()])
    assert not mappable(zst)
    mem = TrajectoryStore(f"memory://kma-map-{os.getpid()}")
    _write(mem, "m", X[:, :LAYOUT.size])
    assert not mappable(mem.open_run("m").weights_array())
    tm = mem.open_run("m").trajectory()
    Ym = tm.array
    assert not Ym.name.startswith("mapped-")
    zl = tm.load_chunk
    assert zl is not None and not tm.cheap                  # tasks read through zarr
    reads = []

    def counting(i, j):
        reads.append((i, j))
        return zl(i, j)

    monkeypatch.setattr(passes, "TASK_BYTES", 4 * LAYOUT.size * 3)   # row spans: in-task reads
    fits = [KoopmanDMD(window=6, stride=2).fit(y).results_
            for y in (replace(tm, load_chunk=counting), da.from_zarr(mem.open_run("m").weights_array())[:11])]
    for a, b in zip(*fits):
        np.testing.assert_allclose(a.eigenvalues, b.eigenvalues, atol=1e-12)
    assert reads and set(reads) == {(i, 0) for i in range(len(Ym.chunks[0]))}


def _eight_at_once(create) -> list[str]:
    """``create(i)`` for i = 0..7 in 8 threads released together; the errors they raised."""
    import threading

    barrier, errors = threading.Barrier(8), []

    def one(i):
        barrier.wait()
        try:
            create(i)
        except Exception as e:  # noqa: BLE001 - collected and asserted by the caller
            errors.append(repr(e))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


def test_tasks_creating_their_first_runs_together_all_succeed(tmp_path):
    """Tasks starting together on a fresh store race to create its ``runs`` group: zarr's
    ``require_group`` looks, then creates without overwrite, so the loser got
    ``ContainsGroupError`` and its run ended ``failed`` (seen on S3 in a sweep). Before the
    fix 5 of 20 rounds of 8 threads lost a run here; every run must be created."""
    from pipeline.storage.layout import Layout

    layout = Layout.from_named_shapes([("w", (10,))])
    for rep in range(20):
        root = tmp_path / f"s{rep}"
        TrajectoryStore(str(root))                       # the store exists, runs/ does not yet
        stores = [TrajectoryStore(str(root)) for _ in range(8)]
        assert _eight_at_once(lambda i: stores[i].create_run(f"r{i}", layout)) == []
        assert sorted(r.run_id for r in TrajectoryStore(str(root)).runs()) == [f"r{i}" for i in range(8)]


def test_writers_creating_a_new_store_together_all_open_it(tmp_path):
    """The first trials of a Ray Tune search open the same new store at once: zarr's
    ``open_group(mode="a")`` looks, then creates without overwrite, so the loser got
    ``ContainsGroupError`` and its trial failed with "not a KMA store's group metadata"
    (seen in tests/integrations/test_tune.py). Every writer must open the store, and
    every run be created."""
    from pipeline.storage.layout import Layout

    layout = Layout.from_named_shapes([("w", (10,))])
    for rep in range(20):
        root = tmp_path / f"s{rep}"
        assert _eight_at_once(lambda i: TrajectoryStore(str(root)).create_run(f"r{i}", layout)) == []
        assert sorted(r.run_id for r in TrajectoryStore(str(root)).runs()) == [f"r{i}" for i in range(8)]
