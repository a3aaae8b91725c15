"""`kma compare`: runs grouped by a config key, from stored analyses."""

import subprocess

import numpy as np

from pipeline import compare
from pipeline.analysis import AnalysisParams, analyze_runs
from pipeline.console import Console
from pipeline.storage.layout import Layout
from pipeline.storage.store import TrajectoryStore

from conftest import color_mask, kma_cmd, png_rgb


def _linear_run(store, run_id, lam, depth, T=30, P=400, seed=0):
    """x_t = Re(Σ λ_j^t v_j) for the given eigenvalues: reliable spectrum known."""
    rng = np.random.default_rng(seed)
    V = np.linalg.qr(rng.standard_normal((P, len(lam))))[0]
    X = np.stack([V @ (np.asarray(lam) ** t) for t in range(T)]).astype(np.float32)
    layout = Layout.from_named_shapes([("a.weight", (P // 2,)), ("b.weight", (P - P // 2,))])
    w = store.create_run(run_id, layout, config={"depth": depth}, extra={"sweep": "cmp"})
    for x in X:
        w.append(x)
    w.finish("complete", metrics={"train_loss": [1.0, 0.5]})


def test_compare_groups_and_figures(tmp_path, kma_env):
    store = TrajectoryStore(str(tmp_path / "s"))
    _linear_run(store, "fast", [0.5, 0.6, 0.7], depth=2)
    _linear_run(store, "slow", [0.95, 0.9, 0.85], depth=4)
    report = analyze_runs(store, None, AnalysisParams(window=10, stride=10), console=Console(quiet=True))
    assert report == {"fast": None, "slow": None}
    rows = {r["run_id"]: r for r in compare.collect(store, by="depth")}
    assert rows["fast"]["group"] == "2" and rows["slow"]["group"] == "4"
    np.testing.assert_allclose(rows["slow"]["max_abs_reliable"], 0.95, atol=1e-4)
    np.testing.assert_allclose(rows["fast"]["max_abs_reliable"], 0.7, atol=1e-4)
    assert rows["slow"]["min_dist_to_1"] < rows["fast"]["min_dist_to_1"]
    text = compare.table(list(rows.values()))
    assert "(mean of 1)" in text and "fast" in text
    r = subprocess.run(kma_cmd("compare", "--store", tmp_path / "s", "--out", tmp_path / "figs"),
                       capture_output=True, text=True, env=kma_env, timeout=120)
    assert r.returncode == 0, r.stderr
    # the figures' content: size (inches × 110 dpi) and where each group's colour lies
    over = png_rgb(tmp_path / "figs" / "max_abs_eigenvalue_over_training.png")
    assert over.shape[:2] == (440, 770)  # 7 × 4 in
    rows = {g: np.flatnonzero(color_mask(over, c).sum(axis=1) > 100) for g, c in (("2", "C0"), ("4", "C1"))}
    assert rows["2"].size and rows["4"].size, rows  # each group's line crosses most of the plot
    assert rows["4"].mean() < rows["2"].mean()  # depth 4 (|λ| 0.95) is drawn above depth 2 (0.7)
    spectra = png_rgb(tmp_path / "figs" / "last_window_spectra.png")
    assert spectra.shape[:2] == (418, 792)  # one 3.6 × 3.8 in panel per group
    left, right = spectra[:, :396], spectra[:, 396:]
    for panel, mine, other in ((left, "C0", "C1"), (right, "C1", "C0")):  # depth=2 left, depth=4 right
        assert color_mask(panel, mine).sum() > 20 and color_mask(panel, other).sum() == 0


def test_compare_empty_store_is_one_line(tmp_path, kma_env):
    TrajectoryStore(str(tmp_path / "s"))
    r = subprocess.run(kma_cmd("compare", "--store", tmp_path / "s"), capture_output=True, text=True,
                       env=kma_env, timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].startswith("kma: error: no finished runs")


def test_interrupted_analysis_is_not_listed(tmp_path):
    from pipeline.analysis import list_analyses

    store = TrajectoryStore(str(tmp_path / "s"))
    _linear_run(store, "r", [0.9, 0.8], depth=2)
    analyze_runs(store, ["r"], AnalysisParams(window=10), console=Console(quiet=True))
    run = store.open_run("r")
    [aid] = list_analyses(run)
    half = run.group["analyses"].create_group("qr-half-written")
    half.attrs.update({"status": "writing"})
    assert list_analyses(store.open_run("r")) == [aid]
    assert compare.collect(store)[0]["analysis_id"] == aid
