"""Nothing outside the store is touched, nothing inside it is lost (issue 21): links out
of the store, outputs aimed into it, an analysis rewrite that fails midway, metadata of
the wrong shape. Real Zarr stores on disk, the real command line in this process."""

from __future__ import annotations

import json
import os

import dask.array as da
import numpy as np
import pytest

from pipeline.cli import main
from pipeline.errors import StoreError
from pipeline.storage.layout import Layout
from pipeline.storage.store import TrajectoryStore

LAYERS = {"all": {"windows": np.array([[0, 3]], dtype=np.int64), "residuals": np.array([[1e-3]])}}


def _run(store, rid="r", T=6, P=8, status="complete"):
    layout = Layout.from_named_shapes([("a.weight", (P,))])
    w = store.create_run(rid, layout, config={"depth": 1}, extra={"sweep": "s"})
    for t in range(T):
        w.append(np.full(P, t, np.float32), epoch=t)
    w.finish(status, metrics={"train_loss": [1.0]})


def _kma(capsys, *args):
    try:
        rc = main([str(a) for a in args])
    except SystemExit as e:
        rc = e.code
    return rc, capsys.readouterr().err.strip().splitlines()


def _outside(tmp_path, store_path, rid="r"):
    """``runs/<rid>`` made a link to a folder elsewhere holding a copy of the run, set
    ``running``, and a file of the user's; returns the folder."""
    import shutil

    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(store_path / "runs" / rid, elsewhere)
    meta = json.loads((elsewhere / "zarr.json").read_text())
    meta["attributes"]["status"] = "running"
    (elsewhere / "zarr.json").write_text(json.dumps(meta))
    (elsewhere / "thesis.tex").write_text("years of work")
    shutil.rmtree(store_path / "runs" / rid)
    os.symlink(elsewhere, store_path / "runs" / rid)
    return elsewhere


def _files(folder):
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def test_a_linked_run_folder_is_never_deleted_through(tmp_path, capsys):
    """``runs/<id>`` a link out of the store: a sweep's re-creation of the run, ``kma
    ingest --overwrite`` and ``delete_run`` refuse in one line, and every file of the
    link's target is still there; ``kma runs`` lists it ``corrupt``, naming the link."""
    import torch

    store_path = tmp_path / "s"
    store = TrajectoryStore(str(store_path))
    _run(store)
    elsewhere = _outside(tmp_path, store_path)
    before = _files(elsewhere)
    assert "thesis.tex" in before and "weights/c/0/0" in before

    layout = Layout.from_named_shapes([("a.weight", (8,))])
    with pytest.raises(StoreError, match=r"run r: runs/r is a symbolic link .*refusing"):
        store.create_run("r", layout, config={})   # what a sweep's task does for a `running` run
    with pytest.raises(StoreError, match="symbolic link"):
        store.delete_run("r")
    assert not store.mark_failed("r", "task died")   # the driver's bookkeeping writes nothing there
    assert _files(elsewhere) == before and json.loads((elsewhere / "zarr.json").read_text())[
        "attributes"]["status"] == "running"

    ckpt = tmp_path / "c0.pt"
    torch.save({"a.weight": torch.zeros(8)}, ckpt)
    rc, lines = _kma(capsys, "ingest", ckpt, ckpt, "--store", store_path, "--run-id", "r", "--overwrite")
    assert rc == 2 and len(lines) == 1 and "symbolic link" in lines[0], lines
    assert _files(elsewhere) == before

    (info,) = store.runs()
    assert info.status == "corrupt" and "symbolic link" in info.error


def test_a_link_inside_a_run_is_refused_too(tmp_path):
    """A link deeper in the run (``weights`` pointing elsewhere) is found before a wipe."""
    import shutil

    store_path = tmp_path / "s"
    store = TrajectoryStore(str(store_path))
    _run(store, status="failed")   # unfinished: a re-run wipes it
    target = tmp_path / "w"
    shutil.copytree(store_path / "runs/r/weights", target)
    shutil.rmtree(store_path / "runs/r/weights")
    os.symlink(target, store_path / "runs/r/weights")
    before = _files(target)
    with pytest.raises(StoreError, match="runs/r/weights is a symbolic link"):
        store.create_run("r", Layout.from_named_shapes([("a.weight", (8,))]), config={})
    assert _files(target) == before


@pytest.mark.parametrize("flag, where", [
    ("--json", "runs/r/zarr.json"), ("--json", "zarr.json"), ("--json", "runs/r/report.json"),
    ("--plots", "."), ("--plots", "runs/figs"),
])
def test_outputs_inside_a_store_are_refused(tmp_path, capsys, flag, where):
    """``kma analyze --json S/runs/R/zarr.json`` (and the store's own ``zarr.json``, a
    plots folder in the store) is refused before any work: the metadata stays."""
    store_path = tmp_path / "s"
    _run(TrajectoryStore(str(store_path)))
    meta = (store_path / "runs/r/zarr.json").read_bytes(), (store_path / "zarr.json").read_bytes()
    rc, lines = _kma(capsys, "analyze", "--store", store_path, "--window", "3", "--no-mlflow",
                     flag, store_path / where)
    assert rc == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f"kma: error: {flag} ") and f"inside the Zarr store {store_path}" in lines[0]
    assert ((store_path / "runs/r/zarr.json").read_bytes(), (store_path / "zarr.json").read_bytes()) == meta
    assert TrajectoryStore(str(store_path)).open_run("r").list_analyses() == {}


def test_compare_out_and_a_link_into_the_store_are_refused(tmp_path, capsys):
    store_path = tmp_path / "s"
    _run(TrajectoryStore(str(store_path)))
    os.symlink(store_path / "runs", tmp_path / "innocent")
    rc, lines = _kma(capsys, "analyze", "--store", store_path, "--no-mlflow", "--json",
                     tmp_path / "innocent/r/zarr.json")
    assert rc == 2 and "inside the Zarr store" in lines[0], lines
    rc, lines = _kma(capsys, "compare", "--store", store_path, "--out", store_path / "cmp")
    assert rc == 2 and lines[0].startswith("kma: error: --out ") and "inside the Zarr store" in lines[0], lines


def _failing_modes(shape=(2, 8)):
    """A dask array whose second block fails like a full disk when it is computed."""
    def block(i):
        if i == 1:
            raise OSError(28, "No space left on device")
        return np.ones((shape[0], shape[1] // 2), np.complex128)

    blocks = [da.from_delayed(__import__("dask").delayed(block)(i), (shape[0], shape[1] // 2), np.complex128)
              for i in range(2)]
    return da.concatenate(blocks, axis=1).rechunk((shape[0], shape[1] // 2))


def test_a_failed_rewrite_keeps_the_old_analysis(tmp_path):
    """Re-writing an analysis whose write fails midway (ENOSPC while its modes are written)
    keeps the old one complete and current; a successful rewrite then replaces it, and
    leaves one copy."""
    store = TrajectoryStore(str(tmp_path / "s"))
    _run(store)
    run = store.open_run("r")
    run.write_analysis("x", {"k": 1}, LAYERS, attrs={"tag": "old"})
    with pytest.raises(OSError, match="No space left"):
        run.write_analysis("x", {"k": 1}, LAYERS, modes={"all": _failing_modes()}, attrs={"tag": "new"})
    run = store.open_run("r")
    assert run.list_analyses() == {"x": {"k": 1}} and run.analysis_info("x")["tag"] == "old"
    np.testing.assert_array_equal(run.read_analysis("x")[1]["all"]["residuals"], LAYERS["all"]["residuals"])
    for tag in ("new", "newer"):   # the slots alternate; each rewrite leaves one copy
        run.write_analysis("x", {"k": 1}, LAYERS, attrs={"tag": tag})
        run = store.open_run("r")
        assert run.list_analyses() == {"x": {"k": 1}} and run.analysis_info("x")["tag"] == tag
        assert len(list(run.group["analyses"].group_keys())) == 1
    run.delete_analysis("x")
    assert store.open_run("r").list_analyses() == {}


def _set_attrs(path, **attrs):
    meta = json.loads(path.read_text())
    meta["attributes"].update(attrs)
    path.write_text(json.dumps(meta))


@pytest.mark.parametrize("damage, word", [
    ({"n_snapshots": -5}, "n_snapshots is '-5', not a count"),
    ({"n_snapshots": 1000}, "n_snapshots is 1000 but the weights array holds"),
    ({"layout": [{"name": "a.weight", "layer": "a", "shape": [3], "offset": 0, "size": 3}]},
     "the layout has 3 parameters but the weights array 8 columns"),
])
def test_metadata_of_the_wrong_shape_is_never_complete(tmp_path, capsys, damage, word):
    """Valid JSON of the wrong shape: ``kma runs`` lists the run ``corrupt`` with the
    reason, ``kma sync`` does not register it (exit 1), ``kma analyze`` names it."""
    store_path = tmp_path / "s"
    store = TrajectoryStore(str(store_path))
    _run(store)
    _run(store, "ok")
    if "layout" in damage:
        damage["layout"] = [{**store.open_run("r").attrs["layout"][0], "shape": [3], "size": 3}]
    _set_attrs(store_path / "runs/r/zarr.json", **damage)
    infos = {i.run_id: i for i in TrajectoryStore(str(store_path)).runs()}
    assert infos["r"].status == "corrupt" and word in infos["r"].error and infos["ok"].status == "complete"
    db = tmp_path / "mlflow.db"
    rc, lines = _kma(capsys, "sync", "--store", store_path, "--tracking-uri", f"sqlite:///{db}")
    assert rc == 1 and any("not registered: r:" in x and word in x for x in lines), lines
    rc, lines = _kma(capsys, "analyze", "--store", store_path, "--run", "r", "--no-mlflow", "--window", "3")
    assert rc == 1 and "damaged metadata" in lines[-1] and word in lines[-1], lines


def test_a_run_whose_metadata_says_array_is_named_so(tmp_path, capsys):
    store_path = tmp_path / "s"
    store = TrajectoryStore(str(store_path))
    _run(store)
    meta = json.loads((store_path / "runs/r/zarr.json").read_text())
    meta.update(node_type="array")
    (store_path / "runs/r/zarr.json").write_text(json.dumps(meta))
    rc, lines = _kma(capsys, "analyze", "--store", store_path, "--run", "r", "--no-mlflow", "--window", "3")
    assert rc == 1 and "missing" not in lines[-1] and ("array" in lines[-1] or "unreadable" in lines[-1]), lines


@pytest.mark.parametrize("mapped", [True, False])
def test_a_flipped_bit_in_a_chunk_is_named(tmp_path, capsys, mapped, monkeypatch):
    """New runs' chunks carry a CRC32C: one flipped bit fails the analysis of that run in
    one line naming the chunk (mapped reads verify it too), the others are analysed."""
    store_path = tmp_path / "s"
    store = TrajectoryStore(str(store_path))
    rng = np.random.default_rng(0)
    for rid in ("r", "ok"):
        layout = Layout.from_named_shapes([("a.weight", (40,))])
        w = store.create_run(rid, layout, config={"depth": 1}, extra={"sweep": "s"})
        for t in range(12):
            w.append(rng.standard_normal(40).astype(np.float32), epoch=t)
        w.finish("complete")
    if not mapped:   # the zarr path (object stores, compression) verifies it as well
        import pipeline.storage.chunkmap as chunkmap

        monkeypatch.setattr(chunkmap, "mappable", lambda arr: False)
    chunk = store_path / "runs/r/weights/c/0/0"
    data = bytearray(chunk.read_bytes())
    data[37] ^= 0x08                       # one bit of one float
    chunk.write_bytes(bytes(data))
    rc, lines = _kma(capsys, "analyze", "--store", store_path, "--window", "6", "--no-mlflow")
    errors = [x for x in lines if x.startswith("kma: error:")]
    assert rc == 1 and len(errors) == 1 and "run r:" in errors[0], lines
    assert "checksum" in errors[0].lower(), errors
    assert TrajectoryStore(str(store_path)).open_run("ok").list_analyses()


# ------------------------------------------------------------------ the fault round's own finds
def test_a_new_store_inside_another_is_refused(tmp_path, capsys):
    """A tired ``--store S/runs/r`` made a store inside a run (wiped with it later)."""
    import torch

    store_path = tmp_path / "s"
    _run(TrajectoryStore(str(store_path)))
    ckpt = tmp_path / "c.pt"
    torch.save({"a.weight": torch.zeros(3)}, ckpt)
    before = _files(store_path)
    rc, lines = _kma(capsys, "ingest", ckpt, ckpt, "--store", store_path / "runs/r/sub", "--run-id", "x")
    assert rc == 2 and len(lines) == 1 and f"inside the Zarr store {store_path}" in lines[0], lines
    assert _files(store_path) == before


@pytest.mark.parametrize("root", ["array", "garbled"])
def test_a_forged_store_root_is_one_line(tmp_path, capsys, root):
    store_path = tmp_path / "s"
    _run(TrajectoryStore(str(store_path)))
    if root == "array":
        (store_path / "zarr.json").write_bytes((store_path / "runs/r/weights/zarr.json").read_bytes())
    else:
        (store_path / "zarr.json").write_text("{garbled")
    for args in (["runs"], ["analyze", "--no-mlflow"]):
        rc, lines = _kma(capsys, *args, "--store", store_path)
        assert rc == 2 and len(lines) == 1 and "root zarr.json is not a KMA store" in lines[0], lines


def test_lease_keys_are_never_written_through_a_link(tmp_path):
    """``leases/`` a link to a folder elsewhere: a claim is refused, nothing written there."""
    from pipeline.storage.lease import LeaseKeeper

    store = TrajectoryStore(str(tmp_path / "s"))
    _run(store)
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    os.symlink(out, tmp_path / "s/leases")
    with pytest.raises(StoreError, match="leases is a symbolic link"):
        with LeaseKeeper(store, "sw") as keeper:
            keeper.claim("r9")
    assert _files(out) == ["keep.txt"]


def test_a_forged_recorded_tracking_uri_is_not_followed(tmp_path, monkeypatch):
    """kma never records a URI with a password: one in the store's root was put there by
    someone else (registrations would go to their server); it is ignored."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    store = TrajectoryStore(str(tmp_path / "s"))
    store.root.attrs["tracking_uri"] = "http://attacker:x@127.0.0.1:9"
    assert TrajectoryStore(str(tmp_path / "s")).tracking_uri is None
    store.root.attrs["tracking_uri"] = "http://mlflow.internal:5000"
    assert TrajectoryStore(str(tmp_path / "s")).tracking_uri == "http://mlflow.internal:5000"


def test_tired_user_outputs(tmp_path, capsys):
    """``--tracking-uri mlflow.db`` (no scheme) and ``depth --json`` naming its own
    ``--signal``: one line each, nothing created or overwritten."""
    store_path = tmp_path / "s"
    _run(TrajectoryStore(str(store_path)))
    rc, lines = _kma(capsys, "sync", "--store", store_path, "--tracking-uri", "mlflow.db")
    assert rc == 2 and "not a tracking URI; give sqlite:///mlflow.db" in lines[0], lines
    x = np.linspace(0, 1, 256, endpoint=False)
    sig = tmp_path / "sig.npy"
    np.save(sig, np.sin(2 * np.pi * 4 * x))
    before = sig.read_bytes()
    rc, lines = _kma(capsys, "depth", "--signal", sig, "--json", tmp_path / "." / "sig.npy")
    assert rc == 2 and "is the --signal file itself" in lines[0], lines
    assert sig.read_bytes() == before
