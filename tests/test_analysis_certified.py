"""Analysis side of issue 8 on a real Zarr store: engine version and outdated analyses,
diverged runs analysed on their finite prefix, --threshold, the storage dtype's cut."""

import io
from dataclasses import replace
import json

import numpy as np
import pytest

from pipeline.analysis import (AnalysisParams, analyze_runs, fit_run, list_analyses,
                               outdated_analyses)
from pipeline.cli import main
from pipeline.console import Console
from pipeline.koopman import ENGINE_VERSION
from pipeline.storage.layout import Layout
from pipeline.storage.store import TrajectoryStore


def layout(P):
    return Layout.from_named_shapes([("l0.weight", (P // 2,)), ("l1.weight", (P - P // 2,))])


def system(T=40, P=2000, seed=0, weak=0.0):
    """(T, P) float64: modes 1, 0.9 and (amplitude ``weak``) 0.7, orthonormal-ish lift."""
    rng = np.random.default_rng(seed)
    V = rng.standard_normal((3, P))
    t = np.arange(T)
    return V[0] + np.outer(0.9 ** t, V[1]) + weak * np.outer(0.7 ** t, V[2])


def write(store, rid, Y, status="complete", dtype="float32"):
    w = store.create_run(rid, layout(Y.shape[1]), config={"name": rid}, dtype=dtype)
    for t, y in enumerate(Y):
        w.append(np.asarray(y, np.float32), epoch=t, step=t)
    w.finish(status)


@pytest.fixture()
def store(tmp_path):
    return TrajectoryStore(str(tmp_path / "store"))


def test_engine_version_in_the_id_and_older_analyses_listed_as_outdated(store, tmp_path, capsys):
    write(store, "r", system())
    params = AnalysisParams(window=20, stride=10)
    assert f"-e{ENGINE_VERSION}-" in params.analysis_id
    assert params.key()["engine"] == ENGINE_VERSION
    run = store.open_run("r")
    # an analysis stored by the previous engine: params without "engine"
    old = run.group.require_group("analyses").create_group("qr-w20s10-deadbeef")
    old.attrs.update({"status": "complete", "params": {k: v for k, v in params.key().items()
                                                        if k != "engine"}, "layers": []})
    assert outdated_analyses(run) == ["qr-w20s10-deadbeef"]
    report = analyze_runs(store, ["r"], params, console=Console(stream=io.StringIO()))
    assert report == {"r": None}
    run = store.open_run("r")
    assert sorted(list_analyses(run)) == sorted(["qr-w20s10-deadbeef", params.analysis_id])
    assert list_analyses(run, outdated=False) == [params.analysis_id]    # the old one is kept
    assert main(["runs", "--store", str(tmp_path / "store")]) == 0
    out = capsys.readouterr().out
    assert "1 outdated: qr-w20s10-deadbeef" in out
    assert main(["runs", "--store", str(tmp_path / "store"), "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["outdated_analyses"] == ["qr-w20s10-deadbeef"]


def test_diverged_run_is_analysed_on_its_finite_prefix(store, tmp_path):
    Y = system(T=40).astype(np.float32)
    Y[25:, 7] = np.inf
    Y[30:] = np.nan
    write(store, "div", Y, status="diverged")
    out = io.StringIO()
    path = tmp_path / "out.json"
    report = analyze_runs(store, ["div"], AnalysisParams(window=10, stride=5, per_layer=False),
                          console=Console(stream=out), json_path=str(path))
    assert report == {"div": None}
    assert "diverged; analysed its finite prefix, snapshots 0..24 (non-finite from snapshot 25)" in out.getvalue()
    rows = json.loads(path.read_text())["runs"]
    assert [r["window"] for r in rows] == [[0, 10], [5, 15], [10, 20], [15, 25]]
    assert all(r["finite_prefix"] == 25 for r in rows)
    for r in rows:     # the prefix is the real system: 1 and 0.9 come back reliable
        lam = np.array([complex(*z) for z in r["eigenvalues"]])[np.array(r["reliable"], bool)]
        assert np.abs(lam - 1).min() < 1e-4 and np.abs(lam - 0.9).min() < 1e-4
    # a complete run with NaN is still an error naming the layer
    write(store, "nan", Y)
    report = analyze_runs(store, ["nan"], AnalysisParams(window=10, stride=5),
                          console=Console(stream=io.StringIO()))
    assert "NaN or inf" in report["nan"] and "snapshot 25" in report["nan"]


def test_threshold_flag_on_the_cli(store, tmp_path):
    rng = np.random.default_rng(1)
    write(store, "noisy", system() + 1e-3 * rng.standard_normal((40, 2000)))
    path = tmp_path / "gd.json"
    rc = main(["analyze", "--store", str(tmp_path / "store"), "--threshold", "gavish-donoho", "--window", "all",
               "--no-per-layer", "--no-mlflow", "--json", str(path)])
    assert rc == 0
    (row,) = json.loads(path.read_text())["runs"]
    assert row["analysis_id"] == AnalysisParams(threshold="gavish-donoho", window="all", per_layer=False).analysis_id
    assert row["rank"] == 2 and row["residuals_informative"] is True
    assert sum(row["reliable"]) == 2
    # the default cut estimates the noise from the data too (issue 20; before, it cut
    # at float32's resolution, kept rank 39 = W - 1 and certified nothing)
    rc = main(["analyze", "--store", str(tmp_path / "store"), "--window", "all", "--no-per-layer", "--no-mlflow", "--json", str(path)])
    (row,) = json.loads(path.read_text())["runs"]
    assert row["rank"] == 2 and row["residuals_informative"] is True and sum(row["reliable"]) == 2
    assert row["factor"] == "gram" and 0 < row["misfit"] < min(row["misfit_limit"], 1e-2)
    with pytest.raises(SystemExit) as e:
        main(["analyze", "--store", str(tmp_path / "store"), "--threshold", "nope"])
    assert e.value.code == 2


def test_default_cut_follows_the_storage_dtype(store):
    """A mode 3e-4 of the weights' size lies below float16's resolution (u = 4.9e-4):
    the float16 run drops it, the float32 run of the same data keeps it."""
    Y = system(T=30, weak=3e-4)
    write(store, "f32", Y)
    write(store, "f16", Y, dtype="float16")
    p = AnalysisParams(window="all", per_layer=False)
    (r32,) = fit_run(store.open_run("f32"), p).results_
    (r16,) = fit_run(store.open_run("f16"), p).results_
    assert r32.rank == 3 and np.abs(r32.eigenvalues - 0.7).min() < 1e-3
    assert r16.rank == 2
    assert np.abs(r16.eigenvalues[r16.reliable(1e-2)] - 0.7).min() > 0.1


def test_misfit_and_factor_are_stored_and_read_back(store):
    """Engine 4: misfit, its limit and the factor travel with the stored analysis, and a
    window that fits no linear model stays uncertified after a reload."""
    from pipeline.analysis import load_results, write_results

    rng = np.random.default_rng(2)
    write(store, "m", system() + 1e-4 * rng.standard_normal((40, 2000)))
    run = store.open_run("m")
    p = AnalysisParams(window=20, stride=10, per_layer=False)
    est = fit_run(run, p)
    write_results(run, p, est)
    back = load_results(store.open_run("m"), p.analysis_id)
    assert [r.window for r in back] == [r.window for r in est.results_]
    for a, b in zip(est.results_, back):
        assert b.factor == a.factor == "gram"
        assert b.misfit == pytest.approx(a.misfit) and b.misfit_limit == pytest.approx(a.misfit_limit)
        np.testing.assert_array_equal(b.reliable(1e-2), a.reliable(1e-2))
    bad = replace(back[0], misfit=2 * back[0].misfit_limit)
    assert not bad.fits and not bad.reliable(1e-2).any()


def test_pure_noise_keeps_nothing_and_writes_no_modes(store):
    """Engine 4's default cut keeps no direction of pure noise (engine 3 kept W - 1);
    --modes then has nothing to write for that layer instead of failing."""
    rng = np.random.default_rng(3)
    write(store, "noise", rng.standard_normal((12, 400)))
    p = AnalysisParams(window="all", per_layer=False, modes=True)
    assert analyze_runs(store, ["noise"], p, console=Console(stream=io.StringIO())) == {"noise": None}
    run = store.open_run("noise")
    (r,) = load_results_of(run, p)
    assert r.rank == 0
    assert run.analysis_info(p.analysis_id)["modes_layers"] == []


def load_results_of(run, p):
    from pipeline.analysis import load_results
    return load_results(run, p.analysis_id)
