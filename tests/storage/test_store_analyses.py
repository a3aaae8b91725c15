"""Analyses behind the run's store verbs (issue 9): write, read, list, delete; a failed
write leaves nothing current; ``kma analyze`` opens an existing store and never
creates one; ``memory://`` is refused where other processes must reach the store."""

from __future__ import annotations

import uuid

import numpy as np
import pytest

from pipeline.errors import StoreError
from pipeline.storage.layout import Layout
from pipeline.storage.store import TrajectoryStore, check_shareable

LAYERS = {
    "all": {"windows": np.array([[0, 10], [10, 20]], dtype=np.int64),
            "residuals": np.array([[1e-3, 2e-3], [3e-3, np.nan]])},
    "a": {"windows": np.array([[0, 20]], dtype=np.int64), "residuals": np.array([[4e-3, 5e-3]])},
}


@pytest.fixture(params=["local", "memory"])
def run(request, tmp_path):
    url = str(tmp_path / "s") if request.param == "local" else f"memory://kma-an-{uuid.uuid4().hex}"
    store = TrajectoryStore(url)
    w = store.create_run("r", Layout.from_named_shapes([("a.weight", (4,))]), config={})
    for t in range(3):
        w.append(np.full(4, t, np.float32), epoch=t)
    w.finish("complete")
    return store.open_run("r")


def test_write_read_list_delete(run):
    assert run.list_analyses() == {}
    run.write_analysis("x1", {"window": 10, "engine": 2}, LAYERS, attrs={"n_snapshots": 3})
    assert run.list_analyses() == {"x1": {"window": 10, "engine": 2}}
    attrs, layers = run.read_analysis("x1")
    assert attrs["status"] == "complete" and attrs["layers"] == ["all", "a"] and attrs["n_snapshots"] == 3
    for layer, arrays in LAYERS.items():
        for name, arr in arrays.items():
            np.testing.assert_array_equal(layers[layer][name], arr)
    assert run.analysis_info("x1")["params"] == {"window": 10, "engine": 2}
    run.write_analysis("x1", {"window": 10, "engine": 2}, {"all": LAYERS["all"]})   # replaced whole
    assert run.read_analysis("x1")[1].keys() == {"all"}
    run.delete_analysis("x1")
    assert run.list_analyses() == {}
    with pytest.raises(StoreError, match="run r: no analysis x1"):
        run.read_analysis("x1")


def test_an_analysis_is_a_few_arrays_not_one_per_layer_and_field(tmp_path):
    """Format 2: one array per field whatever the number of layers (11 layers × 11 fields
    were 121 small arrays, a sixth of a ``kma analyze`` process); every layer's arrays
    come back with their own shapes and dtypes."""
    store = TrajectoryStore(str(tmp_path / "s"))
    w = store.create_run("r", Layout.from_named_shapes([("a.weight", (4,))]), config={})
    w.append(np.zeros(4, np.float32))
    w.finish("complete")
    run = store.open_run("r")
    rng = np.random.default_rng(0)
    layers = {f"l{i}": {"windows": np.array([[0, 10], [5, 15]][: 1 + i % 2], dtype=np.int64),
                        "rank": np.arange(1 + i % 2, dtype=np.int64),
                        "eigenvalues": rng.standard_normal((1 + i % 2, i + 1, 2)),
                        "informative": np.array([True, False][: 1 + i % 2]),
                        "misfit": rng.standard_normal(1 + i % 2)} for i in range(11)}
    run.write_analysis("x", {"k": 1}, layers)
    nodes = sorted(p.parent.name for p in (tmp_path / "s/runs/r/analyses/x").rglob("zarr.json"))
    assert len(nodes) == 1 + 5                       # the group and one array per field
    attrs, back = run.read_analysis("x")
    assert attrs["format"] == 2 and list(back) == list(layers)
    for layer, arrays in layers.items():
        assert back[layer].keys() == arrays.keys()
        for name, arr in arrays.items():
            assert back[layer][name].dtype == arr.dtype and back[layer][name].shape == arr.shape
            np.testing.assert_array_equal(back[layer][name], arr)


def test_an_analysis_of_the_first_format_is_still_read(tmp_path):
    """One group per layer (how analyses were stored before format 2) is read, listed
    and loaded as engine results as before."""
    from pipeline.koopman import ENGINE_VERSION
    from pipeline.results import list_analyses, load_results

    store = TrajectoryStore(str(tmp_path / "s"))
    w = store.create_run("r", Layout.from_named_shapes([("a.weight", (4,))]), config={})
    w.append(np.zeros(4, np.float32))
    w.finish("complete")
    run = store.open_run("r")
    lam = np.array([[0.9, 0.1], [0.5, 0.0]])
    old = {"windows": np.array([[0, 10]], np.int64), "rank": np.array([2], np.int64),
           "eigenvalues": lam[None], "amplitudes": np.ones((1, 2, 2)),
           "residuals": np.array([[1e-4, 2e-3]]), "singular_values": np.array([[3.0, 1.0]]),
           "residual_floors": np.array([[1e-7, 1e-7]]), "conditions": np.ones((1, 2)),
           "informative": np.array([True]), "misfit": np.array([1e-5]),
           "misfit_limit": np.array([1e-3])}
    g = run.group.require_group("analyses").create_group(
        "old", attributes={"status": "writing", "params": {"engine": ENGINE_VERSION}})
    lg = g.create_group("all")
    for name, arr in old.items():
        lg.create_array(name, data=arr)
    g.update_attributes({"status": "complete", "layers": ["all"], "modes_layers": [],
                         "factors": {"all": ["gram"]}})
    assert list_analyses(run, outdated=False) == ["old"]
    attrs, layers = run.read_analysis("old")
    for name, arr in old.items():
        np.testing.assert_array_equal(layers["all"][name], arr)
    (r,) = load_results(run, "old")
    np.testing.assert_array_equal(r.eigenvalues, [0.9 + 0.1j, 0.5])
    assert r.window == (0, 10) and r.misfit == 1e-5 and r.factor == "gram"


def test_a_failed_write_leaves_nothing_and_keeps_the_others(run):
    run.write_analysis("keep", {"k": 1}, LAYERS)
    bad = {**LAYERS, "b": {"windows": np.array([object()], dtype=object)}}   # zarr cannot store it
    with pytest.raises(Exception) as err:
        run.write_analysis("new", {"k": 2}, bad)
    assert not isinstance(err.value, StoreError)           # the writer's own error, raised again
    assert run.list_analyses() == {"keep": {"k": 1}}
    assert "new" not in run.group["analyses"]              # removed, not left "writing"


def test_an_analysis_left_writing_is_never_current(run):
    run.group.require_group("analyses").create_group("half").attrs.update({"status": "writing"})
    assert run.list_analyses() == {}
    with pytest.raises(StoreError, match="incomplete"):
        run.read_analysis("half")


def test_opening_without_create_never_makes_a_store(tmp_path):
    missing = tmp_path / "typo"
    with pytest.raises(StoreError, match="no such directory"):
        TrajectoryStore(str(missing), create=False)
    assert not missing.exists()
    TrajectoryStore(str(tmp_path / "made"))
    assert TrajectoryStore(str(tmp_path / "made"), create=False).run_ids() == []


def test_memory_store_is_not_shareable(tmp_path):
    with pytest.raises(StoreError, match="memory:// store lives in one process"):
        check_shareable("memory://x")
    check_shareable(str(tmp_path / "s"))
    check_shareable("s3://bucket/store")


def test_kma_analyze_opens_the_store_once(tmp_path, monkeypatch):
    """``analyze_store`` opens the (real) store one time, writable, without creating it.
    The run has one layer: with the default ``per_layer`` its spectra (and modes) are the
    network's, stored once as ``all`` (this failed with a KeyError before issue 9)."""
    import pipeline.workflows.analyze as analysis

    opened = []

    class Counted(TrajectoryStore):
        def __init__(self, url, **kw):
            opened.append(kw)
            super().__init__(url, **kw)

    store = TrajectoryStore(str(tmp_path / "s"))
    w = store.create_run("r", Layout.from_named_shapes([("a.weight", (8,))]), config={})
    rng = np.random.default_rng(0)
    v, u = rng.standard_normal((2, 8))
    for t in range(6):      # two modes (engine 4's default cut keeps nothing of pure noise)
        w.append((u + 0.9 ** t * v).astype(np.float32))
    w.finish("complete")
    monkeypatch.setattr(analysis, "TrajectoryStore", Counted)
    params = analysis.AnalysisParams(modes=True)
    report = analysis.analyze_store(str(tmp_path / "s"), ["r"], params, console=analysis.Console(quiet=True))
    assert report == {"r": None}
    assert opened == [{"create": False}]
    run = store.open_run("r")
    assert list(run.list_analyses()) == [params.analysis_id]
    info = run.analysis_info(params.analysis_id)
    assert info["layers"] == ["all"] and info["modes_layers"] == ["all"]
