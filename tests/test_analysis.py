"""``kma analyze`` on real parts: a Zarr store on disk holding a synthetic trajectory
with known Koopman eigenvalues, MLflow on a SQLite file. The command runs as a
subprocess; its ``--json`` output, the results it writes into the store, its MLflow
records and its handling of bad runs are checked against the known system.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from pipeline.workflows.analyze import AnalysisParams, analyze_runs, list_analyses, load_results
from pipeline.console import Console
from pipeline.storage.layout import Layout
from pipeline.storage.store import TrajectoryStore
from pipeline.tracking.tracker import Tracker

from conftest import REPO, kma_cmd

T = 40
WINDOW_ARGS = ("--window", "20", "--stride", "10")
WINDOWS = [[0, 20], [10, 30], [20, 40]]
LAYERS = ["all", "l0", "l1", "l2"]
# x_t = w0 + Re(Σ_j b_j λ_j^t v_j): the constant w0 is itself a mode with λ = 1
KNOWN = np.array([1.0, 0.97, 0.9 + 0.2j, 0.9 - 0.2j, 0.8])
EIG_TOL = 1e-4  # data are stored as float32: eigenvalues carry its rounding (~1e-6)
# residuals are certified: never below what a window's Gram resolves (1e-5..1e-3 here, far
# above the ~1e-8 the old factor-only residuals showed); the true pairs stay well below
# the reliability threshold
RES_TOL = 5e-3


# --------------------------------------------------------------------------- data
def known_layout() -> Layout:
    return Layout.from_named_shapes([
        ("l0.weight", (40, 25)), ("l0.bias", (40,)),
        ("l1.weight", (30, 40)), ("l1.bias", (30,)),
        ("l2.weight", (10, 30)), ("l2.bias", (10,)),
    ])


def known_system(seed: int = 0):
    """Trajectory (T, P) float32 of a linear system with eigenvalues ``KNOWN``.

    Returns the layout, the trajectory, ``{λ: direction}`` (P-long, complex for the
    complex pair) and ``amplitude(λ, a)``: the modulus of the amplitude of the unit-norm
    mode of λ at snapshot ``a`` (over the whole network).
    """
    layout = known_layout()
    rng = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(rng.standard_normal((layout.size, 5)))
    w0, v97, vc, v8 = 3.0 * Q[:, 0], Q[:, 1], Q[:, 2] + 1j * Q[:, 3], Q[:, 4]
    terms = [(0.97, 2.0, v97), (0.9 + 0.2j, 1.5 - 0.5j, vc), (0.8, 1.0, v8)]
    t = np.arange(T)[:, None]
    Y = np.tile(w0, (T, 1))
    for lam, b, v in terms:
        Y = Y + np.real(b * lam**t * v[None, :])
    directions = {1.0: w0, 0.97: v97, 0.9 + 0.2j: vc, 0.9 - 0.2j: vc.conj(), 0.8: v8}

    def amplitude(lam, a):
        if lam == 1.0:
            return 3.0
        if lam.imag:  # Re(b λ^t v) holds (b λ^t / 2) v, ||v|| = √2
            return abs(1.5 - 0.5j) * abs(lam) ** a / np.sqrt(2)
        return {0.97: 2.0, 0.8: 1.0}[lam.real] * abs(lam) ** a

    return layout, Y.astype(np.float32), directions, amplitude


def write_run(store: TrajectoryStore, run_id: str, Y, layout, *, finish: bool = True, extra=None):
    w = store.create_run(run_id, layout, config={"name": run_id}, extra=extra)
    for t, y in enumerate(Y):
        w.append(y, epoch=t, step=t)
    if finish:
        w.finish("complete", metrics={"train_loss": [1.0, 0.5]})
    return w


def env() -> dict:
    e = dict(os.environ)
    e.pop("MLFLOW_TRACKING_URI", None)
    e["PYTHONPATH"] = str(REPO) + os.pathsep + e.get("PYTHONPATH", "")
    return e


def analyze(cwd, store, *args, timeout=180):
    return subprocess.run(kma_cmd("analyze", "--store", store, *args), capture_output=True, text=True,
                          env=env(), cwd=cwd, timeout=timeout)


def as_complex(pairs) -> np.ndarray:
    return np.array([complex(re, im) for re, im in pairs], dtype=np.complex128)


def nearest(values: np.ndarray, lam) -> int:
    return int(np.argmin(np.abs(values - lam)))


def rows_by_key(payload) -> dict:
    return {(r["run_id"], r["layer"], tuple(r["window"])): r for r in payload["runs"]}


@pytest.fixture(scope="module")
def known(tmp_path_factory):
    """One analysed run "syn" (with a training record in MLflow), analysed by
    ``kma analyze --window 20 --stride 10 --per-layer --modes --json``."""
    tmp = tmp_path_factory.mktemp("analysis")
    store_path, uri = tmp / "store", f"sqlite:///{tmp / 'mlflow.db'}"
    layout, Y, directions, amplitude = known_system()
    store = TrajectoryStore(str(store_path))
    write_run(store, "syn", Y, layout, extra={"sweep": "synthetic"})
    with pytest.MonkeyPatch.context() as mp:  # MLflow puts artifacts in ./mlruns (module scope:
        mp.chdir(tmp)                         # set up before conftest's per-test scratch cwd)
        parent, created = Tracker(uri).register_training(
            experiment="synthetic", run_id="syn", status="complete", params={"depth": 3},
            metrics={"train_loss": [1.0, 0.5]}, trajectory_uri=store.open_run("syn").uri,
            config_yaml="name: syn\n")
    assert created
    out = tmp / "out.json"
    args = ("--run", "syn", *WINDOW_ARGS, "--per-layer", "--modes", "--json", out, "--tracking-uri", uri)
    r = analyze(tmp, store_path, *args)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    payload = json.loads(out.read_text())
    aid = AnalysisParams(window=20, stride=10, per_layer=True).analysis_id
    return dict(tmp=tmp, store_path=store_path, store=store, uri=uri, args=args, payload=payload,
                aid=aid, parent=parent, layout=layout, Y=Y, directions=directions, amplitude=amplitude)


# --------------------------------------------------------------------------- JSON
def test_json_contract(known):
    payload = known["payload"]
    assert isinstance(payload, dict) and isinstance(payload["runs"], list)
    rows = payload["runs"]
    assert len(rows) == len(LAYERS) * len(WINDOWS)
    for row in rows:
        assert {"run_id", "layer", "window", "eigenvalues", "residuals", "amplitudes"} <= row.keys()
        assert row["run_id"] == "syn" and isinstance(row["layer"], str)
        assert isinstance(row["window"], list) and len(row["window"]) == 2
        assert all(isinstance(w, int) for w in row["window"])
        n = len(row["eigenvalues"])
        # the system has exactly len(KNOWN) modes, in the whole network and in each layer
        assert n == len(KNOWN) and len(row["residuals"]) == n and len(row["amplitudes"]) == n
        for pair in row["eigenvalues"] + row["amplitudes"]:
            assert isinstance(pair, list) and len(pair) == 2 and all(isinstance(x, float) for x in pair)
        # certified residuals: finite and never zero (at least what the window's Gram resolves)
        assert all(isinstance(x, float) and 0 < x < np.inf for x in row["residuals"])
    for layer in LAYERS:
        assert [r["window"] for r in rows if r["layer"] == layer] == WINDOWS
    assert [r["layer"] for r in rows][:: len(WINDOWS)] == LAYERS  # "all" first, layers in order


def test_known_eigenvalues_recovered(known):
    for row in known["payload"]["runs"]:
        lam, res = as_complex(row["eigenvalues"]), np.array(row["residuals"])
        where = f"{row['layer']} {row['window']}"
        for true in KNOWN:
            i = nearest(lam, true)
            assert abs(lam[i] - true) < EIG_TOL, (where, true, lam)
            assert res[i] < RES_TOL, (where, true, res)
        # anything beyond the five true eigenvalues must be flagged unreliable
        reliable = lam[np.array(row["reliable"], bool)]
        assert len(reliable) == len(KNOWN), (where, lam, res)
        # new per-pair fields (issue 8): floors under the residuals, unit-circle verdicts
        floors = np.array(row["residual_floor"])
        assert floors.shape == res.shape and np.all(res >= floors) and np.all(floors > 0)
        assert row["residuals_informative"] is True
        for z, verdict in zip(lam, row["unit_circle"]):
            assert verdict == ("uncertain" if abs(abs(z) - 1) < 1e-3 else "inside"), (where, z, verdict)
        assert max(abs(z) for z in lam) < 1 + 1e-3


def test_amplitudes_of_the_whole_network(known):
    amplitude = known["amplitude"]
    for row in known["payload"]["runs"]:
        if row["layer"] != "all":
            continue
        lam, amp = as_complex(row["eigenvalues"]), as_complex(row["amplitudes"])
        a = row["window"][0]
        for true in KNOWN:
            i = nearest(lam, true)
            assert abs(amp[i]) == pytest.approx(amplitude(true, a), rel=1e-3), (row["window"], true)


# --------------------------------------------------------------------------- store
def test_results_are_stored_and_equal_the_json(known):
    run = known["store"].open_run("syn")
    aid = known["aid"]
    assert aid in list_analyses(run)
    g = run.group[f"analyses/{aid}"]
    assert g.attrs["status"] == "complete"
    assert g.attrs["params"]["window"] == 20 and g.attrs["params"]["stride"] == 10
    stored = load_results(run, aid)
    rows = known["payload"]["runs"]
    assert len(stored) == len(rows)
    for s, row in zip(stored, rows):
        assert row["analysis_id"] == aid
        assert (s.layer, list(s.window)) == (row["layer"], row["window"])
        np.testing.assert_array_equal(s.eigenvalues, as_complex(row["eigenvalues"]))
        np.testing.assert_array_equal(s.amplitudes, as_complex(row["amplitudes"]))
        np.testing.assert_array_equal(s.residuals, np.array(row["residuals"]))


def test_modes_are_eigenvectors(known):
    run = known["store"].open_run("syn")
    modes = run.group[f"analyses/{known['aid']}/modes"]
    ranges = {"all": (0, known["layout"].size), **{n: (a, b) for n, a, b in known["layout"].layer_ranges()}}
    last = rows_by_key(known["payload"])
    for layer in LAYERS:
        a, b = ranges[layer]
        re, im = modes[f"{layer}.real"][...], modes[f"{layer}.imag"][...]
        row = last[("syn", layer, tuple(WINDOWS[-1]))]  # modes are those of the last window
        assert re.shape == im.shape == (row["rank"], b - a) == (len(KNOWN), b - a)
        M = re.astype(np.float64) + 1j * im
        np.testing.assert_allclose(np.linalg.norm(M, axis=1), 1.0, rtol=1e-5)
        lam = as_complex(row["eigenvalues"])
        for true in KNOWN:
            m, v = M[nearest(lam, true)], known["directions"][true][a:b]
            cos = abs(np.vdot(m, v)) / (np.linalg.norm(m) * np.linalg.norm(v))
            assert cos > 0.999, (layer, true, cos)


# --------------------------------------------------------------------------- MLflow
def test_registered_in_mlflow_as_child_of_training(known):
    client = MlflowClient(known["uri"])
    exp = client.get_experiment_by_name("synthetic")
    assert exp is not None
    found = client.search_runs([exp.experiment_id], f"tags.`kma.analysis_id` = '{known['aid']}'")
    assert len(found) == 1
    run = found[0]
    assert run.data.tags["kma.run_id"] == "syn"
    assert run.data.tags["mlflow.parentRunId"] == known["parent"]
    assert run.data.params["analysis.window"] == "20" and run.data.params["n_snapshots"] == str(T)
    artifacts = {a.path: a.file_size for a in client.list_artifacts(run.info.run_id)}
    for name in ("spectrum.png", "eigenvalues_over_training.png", "singular_values.png"):
        assert artifacts.get(name, 0) > 0, artifacts
    for layer in LAYERS:
        hist = sorted(client.get_metric_history(run.info.run_id, f"{layer}/n_reliable"), key=lambda m: m.step)
        assert [h.step for h in hist] == [w[1] - 1 for w in WINDOWS]  # epoch of the window's last snapshot
        assert [h.value for h in hist] == [len(KNOWN)] * len(WINDOWS)
    hist = client.get_metric_history(run.info.run_id, "all/max_abs_reliable")
    assert [h.value for h in hist] == pytest.approx([1.0] * len(WINDOWS), abs=EIG_TOL)


# --------------------------------------------------------------------------- re-runs
def test_second_analysis_is_kept_and_rerun_replaces(known):
    """A randomized analysis (other parameters) is stored beside the first; its reliable
    eigenvalues agree with the exact (qr) ones. Re-running the first replaces it."""
    tmp, store_path, aid = known["tmp"], known["store_path"], known["aid"]
    run = known["store"].open_run("syn")
    assert list_analyses(run) == [aid]

    out = tmp / "randomized.json"
    r = analyze(tmp, store_path, "--run", "syn", *WINDOW_ARGS, "--per-layer", "--method", "randomized",
                "--seed", "7", "--json", out, "--no-mlflow")
    assert r.returncode == 0, r.stderr
    rand = json.loads(out.read_text())
    rid = AnalysisParams(method="randomized", window=20, stride=10, per_layer=True, seed=7).analysis_id
    assert rid != aid
    assert sorted(list_analyses(run)) == sorted([aid, rid])

    exact = rows_by_key(known["payload"])
    assert set(rows_by_key(rand)) == set(exact)
    for key, row in rows_by_key(rand).items():
        lam, res = as_complex(row["eigenvalues"]), np.array(row["residuals"])
        ref = as_complex(exact[key]["eigenvalues"])
        reliable = lam[np.array(row["reliable"], bool)]
        assert len(reliable) == len(ref), (key, lam, res)
        for z in ref:  # randomized vs exact: same reliable spectrum within EIG_TOL
            assert np.abs(reliable - z).min() < EIG_TOL, (key, z, reliable)

    # the same analysis again: replaced, not duplicated (store and MLflow)
    client = MlflowClient(known["uri"])
    exp = client.get_experiment_by_name("synthetic")
    flt = f"tags.`kma.analysis_id` = '{aid}'"
    (before,) = client.search_runs([exp.experiment_id], flt)
    r = analyze(tmp, store_path, *known["args"])
    assert r.returncode == 0, r.stderr
    assert sorted(list_analyses(run)) == sorted([aid, rid])
    again = json.loads((tmp / "out.json").read_text())
    assert again["runs"] == known["payload"]["runs"]
    assert len(load_results(run, aid)) == len(again["runs"])
    assert "modes" in run.group[f"analyses/{aid}"]
    (after,) = client.search_runs([exp.experiment_id], flt)
    assert after.info.run_id != before.info.run_id
    assert after.data.tags["mlflow.parentRunId"] == known["parent"]


# --------------------------------------------------------------------------- bad input
def test_bad_runs_reported_one_line_each_good_run_analysed(tmp_path):
    layout, Y, _, _ = known_system(seed=1)
    store_path, uri = tmp_path / "store", f"sqlite:///{tmp_path / 'mlflow.db'}"
    store = TrajectoryStore(str(store_path))
    write_run(store, "good", Y, layout)
    write_run(store, "training", Y, layout, finish=False)  # still running: never finished
    bad = Y.copy()
    bad[7, 100] = np.nan
    write_run(store, "nan", bad, layout)
    write_run(store, "short", Y[:10], layout)  # shorter than the 20-snapshot window
    write_run(store, "corrupt", Y, layout)
    chunks = sorted(p for p in (store_path / "runs" / "corrupt" / "weights" / "c").rglob("*") if p.is_file())
    assert chunks
    chunks[0].write_bytes(b"not a chunk")
    expected = {  # run -> a word its error line must contain
        "training": "training", "nan": "NaN", "short": "window", "corrupt": "read",
    }

    out = tmp_path / "out.json"
    ids = ["good", "training", "nan", "short", "corrupt"]
    r = analyze(tmp_path, store_path, *[x for i in ids for x in ("--run", i)], *WINDOW_ARGS,
                "--json", out, "--tracking-uri", uri)
    assert r.returncode == 1, r.stderr  # some runs failed, the others were analysed
    assert "Traceback" not in r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("kma: error:")]
    assert len(errors) == len(expected), r.stderr
    for rid, word in expected.items():
        mine = [line for line in errors if f"run {rid}:" in line]
        assert len(mine) == 1, (rid, errors)
        assert word in mine[0], mine[0]

    payload = json.loads(out.read_text())
    assert {row["run_id"] for row in payload["runs"]} == {"good"}
    assert [row["window"] for row in payload["runs"] if row["layer"] == "all"] == WINDOWS
    assert {e["run_id"] for e in payload["errors"]} == set(expected)
    assert len(list_analyses(store.open_run("good"))) == 1
    for rid in ("training", "nan", "short", "corrupt"):  # nothing half-written for bad runs
        assert list_analyses(store.open_run(rid)) == []


def test_missing_chunk_is_an_error(tmp_path):
    layout, Y, _, _ = known_system(seed=2)
    store = TrajectoryStore(str(tmp_path / "store"))
    write_run(store, "deleted", Y, layout)
    chunks = sorted(p for p in (tmp_path / "store/runs/deleted/weights/c").rglob("*") if p.is_file())
    chunks[0].unlink()
    err = io.StringIO()
    report = analyze_runs(store, ["deleted"], AnalysisParams(window=20), console=Console(stream=err))
    assert report["deleted"] is not None and "run deleted" in report["deleted"], err.getvalue()
    assert "chunk of its weights is missing" in report["deleted"]  # one chunk deleted


# --------------------------------------------------------------------------- one pass, whole process
def test_the_pass_hands_its_first_snapshots_to_the_bad_init_detector(tmp_path, monkeypatch):
    """``kma analyze``'s pass keeps the first snapshots it reads (mapped chunks, threads);
    the bad-init detector takes them instead of reading them again, and its verdict is
    the one it makes from a fresh read of the store."""
    from pipeline.apps.badinit import DEFAULT_SNAPSHOTS, detect_run_v2, first_snapshots
    from pipeline.apps.badinit_loss import detect_run_v3
    from pipeline.storage import writer
    from pipeline.workflows.analyze import fit_run

    layout, Y, _, _ = known_system()
    # chunks of 4 snapshots x 1000 parameters: the first 6 snapshots lie in 2 x 3 chunks
    monkeypatch.setattr(writer, "_P_CHUNK", 1000)
    monkeypatch.setattr(writer, "BUFFER_BYTES", 4 * 2 * layout.size * 4)
    store = TrajectoryStore(str(tmp_path / "s"))
    write_run(store, "k", Y, layout)
    run = store.open_run("k")
    assert run.weights_array().chunks == (4, 1000)
    fit_run(run, AnalysisParams(), "threads")
    rows, groups = run.leading_rows
    np.testing.assert_array_equal(rows, Y[:DEFAULT_SNAPSHOTS])
    assert groups == layout.layer_ranges()
    held, _ = first_snapshots(run)
    assert np.shares_memory(held, rows)                       # not read again
    assert detect_run_v2(run) == detect_run_v2(store.open_run("k"))   # the same verdict, bit for bit
    assert detect_run_v3(run) == detect_run_v3(store.open_run("k"))   # (the verdicts' detector)
    # another scheduler (its tasks may run elsewhere): nothing kept, the detector reads
    other = store.open_run("k")
    fit_run(other, AnalysisParams(), "sync")
    assert other.leading_rows is None


def test_analyze_without_mlflow_imports_neither_distributed_nor_the_tracking(tmp_path):
    """Whole-process cost of the default ``kma analyze --no-mlflow``: the threaded
    scheduler is handed to dask as a function (its name makes dask import
    dask.distributed, ~0.1 s of CPU, to look for a Client) and MLflow is not loaded."""
    layout, Y, _, _ = known_system()
    write_run(TrajectoryStore(str(tmp_path / "s")), "k", Y, layout)
    code = ("import sys; from pipeline.cli import main\n"
            f"rc = main(['analyze', '--store', {str(tmp_path / 's')!r}, '--no-mlflow'])\n"
            "loaded = [m for m in ('distributed', 'mlflow', 'pipeline.tracking.tracker') if m in sys.modules]\n"
            "assert rc == 0 and not loaded, (rc, loaded)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env(),
                       cwd=tmp_path, timeout=180)
    assert r.returncode == 0, r.stderr[-2000:]
