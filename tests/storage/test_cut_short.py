"""A run whose creation was cut short by a kill is unfinished, never ``corrupt``.

A Ray task force-cancelled by an interrupted sweep (or a worker killed) can die anywhere
inside :meth:`TrajectoryStore.create_run`: while it wipes an earlier unfinished attempt,
between writing the run's group and its attributes, or in the middle of one file write.
Here a real process is killed (SIGKILL, by itself, so the point is exact) at every
store write, every file rename inside a write, and every file deletion of the wipe that
``create_run`` makes; after each kill the run must list as ``interrupted`` (or not at all),
``kma analyze`` must say so in one line, the next attempt must train it cleanly, and the
finished run beside it must be untouched, byte for byte.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline.cli import main
from pipeline.storage.health import split_runs
from pipeline.storage.layout import Layout
from pipeline.storage.store import FINISHED, TrajectoryStore

LAYOUT = Layout.from_named_shapes([("l0.weight", (4, 3)), ("l0.bias", (4,))])
REPO = Path(__file__).resolve().parents[2]

# The child: for every kill point, a forked process creates run "r" in a copy of the
# template store with a hook that SIGKILLs it at the K-th event of one kind: "set" after a
# store write completed, "replace" inside a file write (its temporary file written, not yet
# renamed into place: zarr writes atomically), "unlink" at a file deletion. A first fork
# without a kill counts the events, so every point of the current code is covered. (Forking
# is safe: this process only imports; zarr's I/O threads start in the forked ones.)
CHILD = r"""
import json, os, pathlib, shutil, signal, sys
import zarr.storage
from pipeline.storage.layout import Layout
from pipeline.storage.store import TrajectoryStore

template, work, kinds, overwrite = sys.argv[1], pathlib.Path(sys.argv[2]), sys.argv[3].split(","), sys.argv[4]

def create(path, kind, kill_at):
    store = TrajectoryStore(str(path))   # (opening writes nothing: counting starts after)
    counts = {"set": 0, "replace": 0, "unlink": 0}

    def event(name):
        counts[name] += 1
        if name == kind and counts[name] == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    orig_set, orig_replace, orig_unlink = zarr.storage.LocalStore.set, pathlib.Path.replace, os.unlink

    async def set_(self, key, value):
        await orig_set(self, key, value)
        event("set")

    def replace_(self, target):
        event("replace")
        return orig_replace(self, target)

    def unlink_(*a, **kw):
        event("unlink")
        return orig_unlink(*a, **kw)

    zarr.storage.LocalStore.set, pathlib.Path.replace, os.unlink = set_, replace_, unlink_
    layout = Layout.from_named_shapes([("l0.weight", (4, 3)), ("l0.bias", (4,))])
    if overwrite == "1":  # kma ingest --overwrite: a finished run deleted, then created
        store.delete_run("r")
    store.create_run("r", layout, config={"k": 1}, capacity=4)
    (work / "counts.json").write_text(json.dumps(counts))

def forked(path, kind="", kill_at=0):
    shutil.copytree(template, path)
    pid = os.fork()
    if pid == 0:
        try:
            create(path, kind, kill_at)
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    return os.WTERMSIG(status) if os.WIFSIGNALED(status) else -os.WEXITSTATUS(status)

assert forked(work / "probe") == 0
counts = json.loads((work / "counts.json").read_text())
points = [(kind, k) for kind in kinds for k in range(1, counts[kind] + 1)]
killed = [(kind, k, str(work / f"s{n}"), forked(work / f"s{n}", kind, k)) for n, (kind, k) in enumerate(points)]
print(json.dumps({"counts": counts, "killed": killed}))
"""


def _kill_everywhere(tmp_path, template, kinds, overwrite=False):
    """``(counts of events, [(kind, K, store path, signal that ended it)])``."""
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    work = tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, str(script), str(template), str(work), ",".join(kinds), str(int(overwrite))],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    return out["counts"], out["killed"]


def _write(store, run_id, X, status="complete"):
    w = store.create_run(run_id, LAYOUT, config={"k": 1}, capacity=4)
    for i, x in enumerate(X):
        w.append(x, epoch=i)
    w.finish(status, metrics={"train_loss": [1.0, 0.5]})


def _setup(path, earlier):
    """A store with a finished run "done" and, as ``earlier`` says, nothing else
    ("fresh"), an unfinished attempt of "r" whose task died after writing two snapshots
    (chunks on disk, status running: "retry"), or a finished "r" ("overwrite")."""
    store = TrajectoryStore(str(path))
    _write(store, "done", np.arange(3 * LAYOUT.size, dtype=np.float32).reshape(3, -1))
    if earlier == "overwrite":
        _write(store, "r", np.ones((2, LAYOUT.size), np.float32))
    if earlier == "retry":
        w = store.create_run("r", LAYOUT, config={"k": 1}, capacity=4)
        for i in range(2):
            w.append(np.full(LAYOUT.size, i, np.float32), epoch=i)
        w._join()  # the writes land; the task dies before finish()
    return store


def _files(path: Path) -> dict[str, bytes]:
    """The run's trajectory and metadata files (its analyses are kma analyze's to add)."""
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*"))
            if p.is_file() and not p.relative_to(path).parts[0] == "analyses"}


# fresh: kills while the run is created (its unlinks: zarr clearing keys it overwrites);
# retry: while an earlier unfinished attempt is wiped first (what follows is as fresh);
# overwrite: while a finished run is deleted for kma ingest --overwrite (its status is
# set running first: one more write)
KILLS = {"fresh": ["set", "replace", "unlink"], "retry": ["unlink"], "overwrite": ["set", "unlink"]}


@pytest.mark.parametrize("earlier", list(KILLS))
def test_killed_creation_is_interrupted_not_corrupt(tmp_path, capsys, earlier):
    template = tmp_path / "template"
    _setup(template, earlier)
    done_before = _files(template / "runs" / "done")
    counts, killed = _kill_everywhere(tmp_path, template, KILLS[earlier], overwrite=earlier == "overwrite")
    assert counts["set"] >= 2 and counts["replace"] >= 2  # the run's group and its weights array at least
    if earlier != "fresh":
        assert counts["unlink"] >= 3  # the earlier run's metadata and chunks
    assert len(killed) == sum(counts[kind] for kind in KILLS[earlier])
    X = np.random.default_rng(0).standard_normal((3, LAYOUT.size)).astype(np.float32)
    for kind, k, path, sig in killed:
        where = f"killed at {kind} #{k}"
        assert sig == 9, (where, sig)
        path = Path(path)
        store = TrajectoryStore(str(path), read_only=True)
        listed = {i.run_id: i.status for i in store.runs()}
        assert listed.get("done") == "complete", (where, listed)
        assert listed.get("r", "interrupted") == "interrupted", (where, listed)
        # what kma analyze and kma compare work on by default: nothing damaged
        assert split_runs(store, FINISHED) == (["done"], {}), where
        if "r" in listed:  # kma analyze --run r: one line, saying it was interrupted
            rc = main(["analyze", "--store", str(path), "--no-mlflow", "--run", "r"])
            lines = [x for x in capsys.readouterr().err.splitlines() if x.startswith("kma: error:")]
            assert rc == 1 and len(lines) == 1, (where, lines)
            assert "run r:" in lines[0] and "interrupted" in lines[0] and "damaged" not in lines[0], (where, lines)

        # the next attempt (the re-run's task) trains it cleanly; "done" is untouched
        _write(TrajectoryStore(str(path)), "r", X)
        run = TrajectoryStore(str(path), read_only=True).open_run("r")
        assert run.status == "complete" and run.n_snapshots == 3, where
        np.testing.assert_array_equal(run.weights().compute(), X)
        assert not [p for p in (path / "runs" / "r").rglob("*.partial")], where
        assert _files(path / "runs" / "done") == done_before, where


def test_layouts_left_by_older_versions(tmp_path, capsys):
    """What a kill left before creation wrote the group's attributes in one write: a
    group without attributes (with or without its weights array), a folder with only
    zarr's temporary file, an empty folder. Each is an interrupted run, in one line each
    of kma runs, analyze and compare; a run with data but no attributes stays damaged."""
    import shutil

    store = TrajectoryStore(str(tmp_path / "s"))
    _write(store, "done", np.ones((3, LAYOUT.size), np.float32))
    for rid in ("bare", "noarray", "damaged"):
        _write(store, rid, np.ones((3, LAYOUT.size), np.float32), status="diverged")
    runs = tmp_path / "s" / "runs"
    empty_attrs = json.loads((runs / "done" / "zarr.json").read_text()) | {"attributes": {}}
    for rid in ("bare", "noarray", "damaged"):
        (runs / rid / "zarr.json").write_text(json.dumps(empty_attrs))
    for rid in ("bare", "noarray"):  # no data: no chunk was ever written
        shutil.rmtree(runs / rid / "weights" / "c")
    shutil.rmtree(runs / "noarray" / "weights")
    (runs / "partial").mkdir()
    (runs / "partial" / "zarr.0123abcd.partial").write_text('{"attri')
    (runs / "empty").mkdir()
    cut = ["bare", "empty", "noarray", "partial"]

    store = TrajectoryStore(str(tmp_path / "s"), read_only=True)
    infos = {i.run_id: i for i in store.runs()}
    assert {r: i.status for r, i in infos.items()} == {**{r: "interrupted" for r in cut},
                                                       "done": "complete", "damaged": "corrupt"}
    assert all("interrupted while being created" in infos[r].error for r in cut)
    assert main(["runs", "--store", str(tmp_path / "s")]) == 0
    out = capsys.readouterr().out
    assert sum("interrupted" in line for line in out.splitlines()) == 4, out

    # kma analyze: the finished run analysed; only the damaged one is an error
    rc = main(["analyze", "--store", str(tmp_path / "s"), "--no-mlflow", "--window", "all"])
    errors = [x for x in capsys.readouterr().err.splitlines() if x.startswith("kma: error:")]
    assert rc == 1 and len(errors) == 1 and "run damaged:" in errors[0], errors
    # named: one line each, saying what happened and what to do
    rc = main(["analyze", "--store", str(tmp_path / "s"), "--no-mlflow", "--window", "all", *sum((["--run", r] for r in cut), [])])
    errors = [x for x in capsys.readouterr().err.splitlines() if x.startswith("kma: error:")]
    assert rc == 1 and len(errors) == 4, errors
    for r in cut:
        (line,) = [x for x in errors if f"run {r}:" in x]
        assert "interrupted while being created" in line and "run its sweep again" in line, line
    from pipeline.workflows import compare  # (what kma compare prints for each skipped run)

    skipped = {}
    compare.collect(store, ["done", "bare"], None, by="k", skipped=skipped)
    assert skipped == {"bare": "run bare: skipped: not finished (status interrupted)"}

    # a new attempt replaces each (the re-run's task); the finished run is untouched
    store = TrajectoryStore(str(tmp_path / "s"))
    for r in cut:
        _write(store, r, np.zeros((2, LAYOUT.size), np.float32))
        assert store.open_run(r).status == "complete"
        assert not list((runs / r).glob("*.partial"))
    np.testing.assert_array_equal(store.open_run("done").weights().compute(), np.ones((3, LAYOUT.size)))
