import subprocess

import numpy as np
import pytest
import torch

from pipeline.errors import KMAError
from pipeline.workflows.ingest import ingest
from pipeline.storage.store import TrajectoryStore

from conftest import kma_cmd


def _series(tmp_path, n=4, wrap=False):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.BatchNorm1d(5), torch.nn.Linear(5, 2))
    files = []
    for i in range(n):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(0.1 * torch.randn_like(p))
        state = {k: v.clone() for k, v in net.state_dict().items()}
        f = tmp_path / f"ckpt_{i:03d}.pt"
        torch.save({"model_state_dict": state, "epoch": i} if wrap else state, f)
        files.append(f)
    return files


@pytest.mark.parametrize("wrap", [False, True])
def test_ingest_round_trip(tmp_path, wrap):
    files = _series(tmp_path, wrap=wrap)
    out = ingest(files, str(tmp_path / "store"), "ext-run")
    run = TrajectoryStore(str(tmp_path / "store")).open_run("ext-run")
    assert run.status == "complete" and run.n_snapshots == len(files) == out["n_snapshots"]
    W = run.weights().compute()
    for i, f in enumerate(files):
        state = torch.load(f, weights_only=True)
        state = state.get("model_state_dict", state)
        back = run.layout.unflatten(W[i])
        for name, arr in back.items():
            np.testing.assert_array_equal(arr, state[name].numpy())
    # float buffers (BatchNorm running stats) are included; the int counter is not
    assert "1.running_mean" in run.layout.names
    assert "1.num_batches_tracked" not in run.layout.names


def test_ingest_selected_layers(tmp_path):
    files = _series(tmp_path, n=2)
    ingest(files, str(tmp_path / "s"), "r", layers=["2"])
    assert TrajectoryStore(str(tmp_path / "s")).open_run("r").layout.layers == ["2"]
    with pytest.raises(KMAError, match="unknown layer"):
        ingest(files, str(tmp_path / "s"), "r2", layers=["nope"])


def test_mismatched_series_writes_nothing(tmp_path):
    files = _series(tmp_path, n=3)
    state = torch.load(files[1], weights_only=True)
    state["0.weight"] = torch.zeros(7, 3)
    torch.save(state, files[1])
    with pytest.raises(KMAError, match=r"ckpt_001.pt: key '0.weight' has shape \(7, 3\)"):
        ingest(files, str(tmp_path / "store"), "bad")
    del state["0.weight"]
    torch.save(state, files[1])
    with pytest.raises(KMAError, match="missing key '0.weight'"):
        ingest(files, str(tmp_path / "store"), "bad")
    assert not (tmp_path / "store").exists()  # nothing written, not even an empty store


def test_ingest_refuses_to_clobber_and_bad_files(tmp_path):
    files = _series(tmp_path, n=2)
    store = str(tmp_path / "store")
    ingest(files, store, "r")
    with pytest.raises(KMAError, match="already in"):
        ingest(files, store, "r")
    ingest(files[:1], store, "r", overwrite=True)
    assert TrajectoryStore(store).open_run("r").n_snapshots == 1
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(KMAError, match="junk.pt: not a readable PyTorch checkpoint"):
        ingest([junk], store, "j")
    with pytest.raises(KMAError, match="no such checkpoint"):
        ingest([tmp_path / "nope.pt"], store, "j")


def test_cli_ingest_then_runs_lists_it(tmp_path, kma_env):
    files = _series(tmp_path, n=3)
    store = tmp_path / "store"
    r = subprocess.run(kma_cmd("ingest", *files, "--store", store, "--run-id", "imported"),
                       capture_output=True, text=True, env=kma_env, timeout=120)
    assert r.returncode == 0, r.stderr
    r = subprocess.run(kma_cmd("runs", "--store", store), capture_output=True, text=True, env=kma_env, timeout=120)
    assert r.returncode == 0
    row = [line for line in r.stdout.splitlines() if line.startswith("imported")][0].split()
    assert row[1:3] == ["complete", "3"]
    # a bad series: one line, exit code 2
    r = subprocess.run(kma_cmd("ingest", tmp_path / "missing.pt", "--store", store, "--run-id", "x"),
                       capture_output=True, text=True, env=kma_env, timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [f"kma: error: {tmp_path / 'missing.pt'}: no such checkpoint file"]


@pytest.mark.parametrize("bad, dtype, message", [
    (float("nan"), "float32", r"ckpt_002.pt: snapshot 2: key '2.weight' has 1 NaN or infinite value"),
    (float("inf"), "float32", r"ckpt_002.pt: snapshot 2: key '2.weight' has 1 NaN or infinite value"),
    (1.0e5, "float16", r"ckpt_002.pt: snapshot 2: key '2.weight' has \|value\| up to 100000, beyond float16's 65504"),
    (1.0e300, "float32", r"ckpt_002.pt: snapshot 2: key '2.weight' overflows float32"),
])
def test_bad_values_are_refused_before_the_store_is_touched(tmp_path, bad, dtype, message):
    """A NaN/inf, or a value the storage dtype cannot hold (float16 stops at 65504; a
    float64 1e300 is inf in float32), names the file and snapshot; the run already in
    the store of that id is untouched, and no run of the new id appears."""
    files = _series(tmp_path, n=4)
    store = str(tmp_path / "store")
    ingest(files[:2], store, "keep", dtype=dtype)
    before = TrajectoryStore(store).open_run("keep").weights().compute()
    state = torch.load(files[2], weights_only=True)
    if bad == 1.0e300:
        state = {k: v.double() for k, v in state.items()}
    state["2.weight"][1, 2] = bad
    torch.save(state, files[2])
    for rid, kw in (("new", {}), ("keep", {"overwrite": True})):
        with pytest.raises(KMAError, match=message):
            ingest(files, store, rid, dtype=dtype, **kw)
    after = TrajectoryStore(store, read_only=True)
    assert [(i.run_id, i.status) for i in after.runs()] == [("keep", "complete")]
    np.testing.assert_array_equal(after.open_run("keep").weights().compute(), before)
    assert not list((tmp_path / "store").glob("leases/*"))  # the ingest's claim is released


def test_float16_keeps_values_up_to_its_max(tmp_path):
    files = _series(tmp_path, n=2)
    state = torch.load(files[1], weights_only=True)
    state["2.weight"][0, 0] = 65504.0
    torch.save(state, files[1])
    ingest(files, str(tmp_path / "s"), "r", dtype="float16")
    W = TrajectoryStore(str(tmp_path / "s")).open_run("r").weights().compute()
    assert np.isfinite(W).all() and W.max() == 65504.0


def test_cli_nan_checkpoint_is_one_line(tmp_path, kma_env):
    files = _series(tmp_path, n=2)
    state = torch.load(files[1], weights_only=True)
    state["0.bias"][0] = float("nan")
    torch.save(state, files[1])
    r = subprocess.run(kma_cmd("ingest", *files, "--store", tmp_path / "s", "--run-id", "x"),
                       capture_output=True, text=True, env=kma_env, timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        f"kma: error: {files[1]}: snapshot 1: key '0.bias' has 1 NaN or infinite value"]
    assert not (tmp_path / "s").exists()


def test_ingest_into_a_run_another_process_is_writing(tmp_path):
    """A live claim on the run id (another ingest or a sweep writing it) refuses the ingest
    in one line and leaves that claim and the store alone."""
    from pipeline.storage import lease

    files = _series(tmp_path, n=2)
    store = TrajectoryStore(str(tmp_path / "s"))
    other = lease.LeaseKeeper(store, "other", timeout=60)
    assert other.claim("busy") is None
    with pytest.raises(KMAError, match=r"run busy: being written by sweep 'other'"):
        ingest(files, store.url, "busy")
    assert store.runs() == [] and lease.read(store, "busy").owner == other.owner
