"""The run-id rule: every generated id passes, hostile ids are refused by every command
and by the store itself, and ids from before the rule stay listable and readable."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest
import torch
import zarr

from pipeline import config
from pipeline.training import inits
from pipeline.training import models
from pipeline.training import optim
from pipeline.errors import KMAError
from pipeline.workflows.ingest import ingest
from pipeline.storage.layout import Layout
from pipeline.storage.runids import MAX_LENGTH, check_run_id, is_valid
from pipeline.storage.store import TrajectoryStore

from conftest import REPO, kma_cmd

HOSTILE = ["..", ".", "zarr.json", "ZARR.JSON", "a/b", "a\\b", "x" * 300, "x" * (MAX_LENGTH + 1),
           "two\nlines", "", "-leading-dash", ".hidden", "sp ace", "ünï"]


@pytest.mark.parametrize("path", ["configs/demo.yaml", "configs/sweeps/gpu_depth_init.yaml"])
def test_generated_ids_pass(path):
    variants = config.expand(config.load(REPO / path))
    assert len(variants) > 1
    for v in variants:
        assert is_valid(v.run_id), v.run_id
        assert is_valid(v.run_id + "-r1"), v.run_id  # a restart attempt's suffix still fits


def test_ids_from_every_registry_name_pass():
    """The parts of a variant id come from the registries and numbers: the longest names
    with large numbers and a negative seed still make a valid id, with room to spare."""
    longest = lambda reg: max(reg, key=len)  # noqa: E731
    rid = (f"{longest(models.MODELS)}-d1000-w1000000-{longest(models.ACTIVATIONS)}-{longest(inits.INITS)}"
           f"-{longest(optim.OPTIMIZERS)}-s-2147483648-0123456789-r99")
    assert is_valid(rid) and len(rid) < MAX_LENGTH - 16, rid


@pytest.mark.parametrize("bad", HOSTILE)
def test_hostile_ids_refused_in_one_line(bad):
    with pytest.raises(KMAError) as e:
        check_run_id(bad)
    line = str(e.value)
    assert "\n" not in line and len(line) < 400
    assert "run id" in line


LAYOUT = Layout.from_named_shapes([("w", (3,))])


def _legacy(root, rid):
    """A run written by an older version under an id outside the rule."""
    g = zarr.open_group(str(root), mode="a").require_group("runs").create_group(rid)
    g.attrs.update({"status": "complete", "layout": LAYOUT.to_records(), "n_snapshots": 0})


@pytest.mark.parametrize("bad", ["..", ".", "zarr.json", "a/b", "a\\b", "x" * 300, "l\nf", ""])
def test_store_refuses_to_write_or_delete_outside_one_run(tmp_path, bad):
    store = TrajectoryStore(str(tmp_path / "s"))
    w = store.create_run("keepme", LAYOUT, capacity=2)
    w.append(np.arange(3, dtype=np.float32))
    w.finish("complete")
    for op in (lambda: store.create_run(bad, LAYOUT), lambda: store.delete_run(bad),
               lambda: store._wipe(bad), lambda: store.mark_failed(bad, "x")):
        with pytest.raises(KMAError):
            op()
    with pytest.raises(KMAError):
        store.open_run(bad)
    assert store.status(bad) is None
    again = TrajectoryStore(str(tmp_path / "s"), read_only=True)
    assert [(i.run_id, i.status) for i in again.runs()] == [("keepme", "complete")]
    np.testing.assert_array_equal(again.open_run("keepme").weights().compute(), [[0, 1, 2]])


def test_legacy_ids_stay_listable_and_readable(tmp_path, kma_env):
    _legacy(tmp_path / "s", "old run")
    store = TrajectoryStore(str(tmp_path / "s"))
    [info] = store.runs()
    assert (info.run_id, info.status, info.id_ok) == ("old run", "complete", False)
    assert store.open_run("old run").status == "complete"
    with pytest.raises(KMAError, match="characters ' ' are not allowed"):
        store.delete_run("old run")  # readable, never deleted or replaced through its id
    r = subprocess.run(kma_cmd("runs", "--store", tmp_path / "s"), capture_output=True, text=True,
                       env=kma_env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "old run *" in r.stdout and "before the run-id rule" in r.stdout


def _ckpts(tmp_path, n=3):
    torch.manual_seed(0)
    files = []
    for i in range(n):
        f = tmp_path / f"c{i}.pt"
        torch.save({"w": torch.randn(4, 3), "b": torch.randn(4)}, f)
        files.append(f)
    return files


def test_cli_hostile_run_ids_leave_the_store_intact(tmp_path, kma_env):
    """`kma ingest --run-id ..` once deleted the whole store. Now every hostile id is one
    line and exit 2 from ingest, analyze and compare, and the stored run is untouched."""
    files = _ckpts(tmp_path)
    store = tmp_path / "store"
    ingest(files, str(store), "keepme")
    before = TrajectoryStore(str(store)).open_run("keepme").weights().compute()

    def kma(*args):
        return subprocess.run(kma_cmd(*args), capture_output=True, text=True, env=kma_env, timeout=120)

    for args in (["ingest", *files[:2], "--store", store, "--run-id", ".."],
                 ["ingest", *files[:2], "--store", store, "--run-id", "bad\nid"],
                 ["analyze", "--store", store, "--no-mlflow", "--run", ".."],
                 ["compare", "--store", store, "--run", "a/b"]):
        r = kma(*args)
        assert r.returncode == 2, (args, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("kma: error:") and "invalid" in lines[0], r.stderr
    for bad in ("..", ".", "zarr.json", "a/b", "a\\b", "x" * 300, "n\nl", ""):  # same check, in-process
        with pytest.raises(KMAError, match="--run-id"):
            ingest(files[:2], str(store), bad)
    r = kma("runs", "--store", store)
    assert r.returncode == 0 and r.stdout.splitlines()[1].split()[:3] == ["keepme", "complete", "3"], r.stdout
    after = TrajectoryStore(str(store), read_only=True)
    assert [i.run_id for i in after.runs()] == ["keepme"]
    np.testing.assert_array_equal(after.open_run("keepme").weights().compute(), before)
