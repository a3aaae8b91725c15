"""A run whose stored chunks cannot be read is one line naming the run (a user's data
problem); an error raised by our own code while fitting is a bug and keeps its type and
traceback instead of being relabelled "cannot read its trajectory"."""

from __future__ import annotations

import io

import numpy as np
import pytest

from pipeline.workflows.analyze import AnalysisParams, analyze_runs, fit_run, list_analyses
from pipeline.storage.chunkmap import mappable
from pipeline.console import Console
from pipeline.errors import KMAError
from pipeline.koopman import KoopmanDMD
from pipeline.storage.layout import Layout
from pipeline.storage.store import TrajectoryStore

LAYOUT = Layout.from_named_shapes([("a.weight", (100,)), ("b.weight", (50,))])
PARAMS = AnalysisParams(window=10)


def _run(store: TrajectoryStore, rid: str = "r") -> None:
    w = store.create_run(rid, LAYOUT, extra={"sweep": "e"})
    for i in range(24):
        w.append(np.random.default_rng(i).standard_normal(LAYOUT.size).astype(np.float32))
    w.finish("complete")


def _one_error_line(store, rid) -> str:
    err = io.StringIO()
    report = analyze_runs(store, [rid], PARAMS, console=Console(stream=err))
    lines = [x for x in err.getvalue().splitlines() if x.strip()]
    errors = [x for x in lines if x.startswith("kma: error:")]
    assert len(errors) == 1 and "Traceback" not in err.getvalue(), err.getvalue()
    assert report[rid] is not None and f"run {rid}: cannot read its trajectory" in errors[0], errors
    assert list_analyses(store.open_run(rid)) == []  # nothing half-written
    return errors[0]


def test_corrupt_chunk_on_disk_is_one_line(tmp_path):
    """A local run is read through maps of its chunk files: a truncated chunk is an OSError."""
    store = TrajectoryStore(str(tmp_path / "s"))
    _run(store)
    assert mappable(store.open_run("r").weights_array())
    (chunk,) = [p for p in (tmp_path / "s/runs/r/weights/c").rglob("*") if p.is_file()]
    chunk.write_bytes(b"not a chunk")
    line = _one_error_line(store, "r")
    assert "OSError" in line and "corrupt" in line, line


def test_corrupt_chunk_decoded_by_zarr_is_one_line():
    """Through zarr's own decoding (a store that is not mapped) the same corrupt chunk
    raises a ValueError inside zarr: still a read error, still one line."""
    store = TrajectoryStore(f"memory://read-errors-{id(object())}")
    _run(store)
    assert not mappable(store.open_run("r").weights_array())
    store.set_bytes("runs/r/weights/c/0/0", b"not a chunk")
    line = _one_error_line(store, "r")
    assert "ValueError" in line, line


def test_a_bug_while_fitting_keeps_its_traceback(tmp_path, monkeypatch):
    """A ValueError/RuntimeError raised by the engine (not by the storage libraries) is a
    bug: fit_run lets it through unchanged, and so does analyze_runs."""
    store = TrajectoryStore(str(tmp_path / "s"))
    _run(store)

    for exc in (ValueError, RuntimeError, KeyError):
        def broken_fit(self, *args, _exc=exc, **kwargs):
            raise _exc("engine bug")

        monkeypatch.setattr(KoopmanDMD, "fit", broken_fit)
        with pytest.raises(exc, match="engine bug") as info:
            fit_run(store.open_run("r"), PARAMS)
        assert not isinstance(info.value, KMAError)
        assert info.traceback[-1].name == "broken_fit"  # the traceback points at the bug
        with pytest.raises(exc, match="engine bug"):
            analyze_runs(store, ["r"], PARAMS, console=Console(stream=io.StringIO()))
    assert list_analyses(store.open_run("r")) == []
