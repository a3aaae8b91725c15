"""`kma compare`: runs grouped by a config key, through one shared analysis."""

import subprocess

import numpy as np
import pytest

from pipeline import plots
from pipeline.workflows import compare
from pipeline.workflows.analyze import AnalysisParams, analyze_runs, list_analyses
from pipeline.cli import main
from pipeline.console import Console
from pipeline.storage.layout import Layout
from pipeline.storage.store import TrajectoryStore

from conftest import kma_cmd


def _linear_run(store, run_id, lam, depth, T=30, P=400, seed=0, init="kaiming", **config):
    """x_t = Re(Σ λ_j^t v_j) for the given eigenvalues: reliable spectrum known."""
    rng = np.random.default_rng(seed)
    V = np.linalg.qr(rng.standard_normal((P, len(lam))))[0]
    X = np.stack([V @ (np.asarray(lam) ** t) for t in range(T)]).astype(np.float32)
    layout = Layout.from_named_shapes([("a.weight", (P // 2,)), ("b.weight", (P - P // 2,))])
    w = store.create_run(run_id, layout, config={"depth": depth, "init": init, "optim": {"lr": 0.1}, **config},
                         extra={"sweep": "cmp"})
    for t, x in enumerate(X):  # one snapshot per epoch
        w.append(x, epoch=t)
    w.finish("complete", metrics={"train_loss": [1.0, 0.5]})


def _kma(capsys, *args):
    """``kma ARGS`` in this process: (exit code, stdout lines, stderr lines)."""
    try:
        rc = main([str(a) for a in args])
    except SystemExit as e:
        rc = e.code
    cap = capsys.readouterr()
    return rc, cap.out.strip().splitlines(), cap.err.strip().splitlines()


@pytest.fixture
def two_runs(tmp_path):
    """Depth 2 (|λ| ≤ 0.7) and depth 4 (|λ| up to 0.95), both analysed with window 10."""
    store = TrajectoryStore(str(tmp_path / "s"))
    _linear_run(store, "fast", [0.5, 0.6, 0.7], depth=2)
    _linear_run(store, "slow", [0.95, 0.9, 0.85], depth=4, init="orthogonal")
    report = analyze_runs(store, None, AnalysisParams(window=10, stride=10), console=Console(quiet=True))
    assert report == {"fast": None, "slow": None}
    return store


def test_compare_groups_and_figures(two_runs, tmp_path, kma_env):
    store = two_runs
    [aid] = list_analyses(store.open_run("fast"))
    rows = {r["run_id"]: r for r in compare.collect(store, by="depth")}
    assert rows["fast"]["group"] == "2" and rows["slow"]["group"] == "4"
    assert {r["analysis_id"] for r in rows.values()} == {aid}
    np.testing.assert_allclose(rows["slow"]["max_abs_reliable"], 0.95, atol=1e-4)
    # engine 4 is one pass: late windows drop the decayed 0.5 mode the Gram cannot resolve,
    # which moves the 0.7 Ritz value by ~2e-4 (within its certified bound)
    np.testing.assert_allclose(rows["fast"]["max_abs_reliable"], 0.7, atol=1e-3)
    assert rows["slow"]["min_dist_to_1"] < rows["fast"]["min_dist_to_1"]
    text = compare.table(list(rows.values()), by="depth")
    assert text.splitlines()[0] == f"analysis {aid} · 2 runs by depth"
    assert "(mean of 1)" in text and "fast" in text
    # the group figures name the analysis in their titles
    groups = compare.groups(list(rows.values()))
    assert list(groups) == ["2", "4"] and [s.label for s in groups["4"]] == ["slow"]
    for make in (plots.group_spectrum_figure, plots.group_moduli_figure):
        fig = make(groups, by="depth")
        assert any(aid in t.get_text() for t in fig.texts), [t.get_text() for t in fig.texts]
        plots._plt().close(fig)
    r = subprocess.run(kma_cmd("compare", "--store", tmp_path / "s", "--out", tmp_path / "figs"),
                       capture_output=True, text=True, env=kma_env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0] == f"analysis {aid} · 2 runs by depth"
    [folder] = (tmp_path / "figs").iterdir()
    assert folder.name.startswith(f"depth-{aid}-") and folder == compare.folder(tmp_path / "figs", list(rows.values()), "depth")
    assert sorted(p.name for p in folder.iterdir()) == [
        "dynamics.json", "dynamics_matrix.png", "dynamics_mds.png", "group_convergence.png", "group_moduli.png",
        "group_spectrum.png", "table.txt"]
    assert (folder / "table.txt").read_text().splitlines()[0] == f"analysis {aid} · 2 runs by depth"


def test_compare_never_mixes_analyses(two_runs, tmp_path, capsys):
    store = two_runs
    [w10] = list_analyses(store.open_run("slow"))
    analyze_runs(store, ["fast"], AnalysisParams(window=15, stride=15), console=Console(quiet=True))
    [w15] = [a for a in list_analyses(store.open_run("fast")) if a != w10]
    out = tmp_path / "cmp"
    # default: the analysis both runs share, though fast's latest is another one
    rc, lines, err = _kma(capsys, "compare", "--store", tmp_path / "s", "--out", out)
    assert rc == 0, err
    assert lines[0] == f"analysis {w10} · 2 runs by depth" and w15 not in "\n".join(lines)
    # named: fast only; slow is named as skipped, in one line, not compared through w10
    rc, lines, err = _kma(capsys, "compare", "--store", tmp_path / "s", "--out", out, "--analysis", w15)
    assert rc == 0, err
    assert lines[0] == f"analysis {w15} · 1 run by depth"
    assert [x.split()[0] for x in lines[2:]] == ["2", "2"]  # fast's row and its group's mean
    [skip] = [x for x in err if "slow" in x]
    assert skip.startswith("kma: run slow: skipped: no analysis " + w15) and w10 in skip
    # by another key: a third folder; no comparison overwrote another
    rc, lines, err = _kma(capsys, "compare", "--store", tmp_path / "s", "--out", out, "--by", "optim.lr")
    assert rc == 0, err
    names = sorted(p.name for p in out.iterdir())
    assert len(names) == 3, names
    assert sorted(n.rsplit("-", 1)[0] for n in names) == sorted(
        [f"depth-{w10}", f"depth-{w15}", f"optim.lr-{w10}"]), names


def test_compare_refuses_unknown_by_and_analysis(two_runs, tmp_path, capsys):
    rc, lines, err = _kma(capsys, "compare", "--store", tmp_path / "s", "--out", tmp_path / "o", "--by", "foo")
    assert rc == 2 and lines == [] and len(err) == 1, (rc, err)
    assert err[0] == "kma: error: --by foo: not a config key of these runs; known: depth, init, optim.lr"
    rc, lines, err = _kma(capsys, "compare", "--store", tmp_path / "s", "--out", tmp_path / "o",
                          "--analysis", "nosuch")
    assert rc == 2 and len(err) == 1 and "no finished runs with analysis nosuch" in err[0], err
    assert not (tmp_path / "o").exists()


def test_compare_empty_store_is_one_line(tmp_path, kma_env):
    TrajectoryStore(str(tmp_path / "s"))
    r = subprocess.run(kma_cmd("compare", "--store", tmp_path / "s"), capture_output=True, text=True,
                       env=kma_env, timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].startswith("kma: error: no finished runs")


def test_choose_analysis_prefers_the_shared_then_the_recent():
    assert compare.choose_analysis({}) is None
    assert compare.choose_analysis({"a": {"x": "2026-01-02", "y": "2026-01-01"},
                                    "b": {"y": "2026-01-01"}}) == "y"  # the one both share
    assert compare.choose_analysis({"a": {"x": "2026-01-02", "y": "2026-01-01"},
                                    "b": {"x": "2026-01-02", "y": "2026-01-01"}}) == "x"  # the recent one


def test_interrupted_analysis_is_not_listed(tmp_path):
    store = TrajectoryStore(str(tmp_path / "s"))
    _linear_run(store, "r", [0.9, 0.8], depth=2)
    analyze_runs(store, ["r"], AnalysisParams(window=10), console=Console(quiet=True))
    run = store.open_run("r")
    [aid] = list_analyses(run)
    half = run.group["analyses"].create_group("qr-half-written")
    half.attrs.update({"status": "writing"})
    assert list_analyses(store.open_run("r")) == [aid]
    assert compare.collect(store)[0]["analysis_id"] == aid


def test_compare_registers_a_comparison_run(two_runs, tmp_path, capsys):
    from mlflow.tracking import MlflowClient

    [aid] = list_analyses(two_runs.open_run("fast"))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = ("compare", "--store", tmp_path / "s", "--out", tmp_path / "o", "--tracking-uri", uri)
    for _ in range(2):  # a second identical comparison replaces the first record
        rc, _lines, err = _kma(capsys, *args)
        assert rc == 0, err
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("cmp-comparisons")  # the runs' sweep's, apart from its training runs
    assert client.get_experiment_by_name("cmp") is None
    [run] = client.search_runs([exp.experiment_id], filter_string="tags.`kma.kind` = 'comparison'")
    assert run.info.run_name == f"compare depth {aid}" and run.info.status == "FINISHED"
    assert run.data.params["analysis_id"] == aid and run.data.params["n_runs"] == "2"
    assert run.data.tags["kma.runs"] == "fast,slow"
    assert sorted(a.path for a in client.list_artifacts(run.info.run_id)) == [
        "dynamics.json", "dynamics_matrix.png", "dynamics_mds.png", "group_convergence.png", "group_moduli.png",
        "group_spectrum.png", "table.txt"]
    assert str(tmp_path) in run.info.artifact_uri  # beside the database, not in ./mlruns


def test_compare_refuses_to_mix_budgets_and_tasks_unless_asked(tmp_path, capsys):
    """Re-running a config with other epochs (or on another task) puts both in one store:
    their group means are refused, naming what differs, unless --allow-mixed; grouping by
    the differing key itself is a comparison, not a mix."""
    store = TrajectoryStore(str(tmp_path / "s"))
    _linear_run(store, "short", [0.5, 0.6, 0.7], depth=2, epochs=60, task={"name": "multiscale", "n_points": 64})
    _linear_run(store, "long", [0.95, 0.9, 0.85], depth=2, epochs=200, task={"name": "multiscale", "n_points": 128})
    assert analyze_runs(store, None, AnalysisParams(window=10, stride=10), console=Console(quiet=True)) == {
        "short": None, "long": None}
    assert compare.mixed_keys(store, compare.collect(store, by="depth"), "depth") == {
        "epochs": ["60", "200"], "task.n_points": ["64", "128"]}
    rc, out, err = _kma(capsys, "compare", "--store", tmp_path / "s", "--out", tmp_path / "o")
    assert rc == 2 and out == [] and len(err) == 1
    assert err[0].startswith("kma: error: these runs differ in budget or task (epochs: 60, 200; task.n_points: 64, 128)")
    assert "--allow-mixed" in err[0] and not (tmp_path / "o").exists()
    rc, out, err = _kma(capsys, "compare", "--store", tmp_path / "s", "--out", tmp_path / "o", "--allow-mixed")
    assert rc == 0 and "2 runs by depth" in out[0]
    assert any(e.startswith("kma: warning: group means mix runs that differ in budget or task (epochs: 60, 200")
               for e in err)
    rc, out, err = _kma(capsys, "compare", "--store", tmp_path / "s", "--out", tmp_path / "o2", "--by", "epochs")
    assert rc == 2 and "task.n_points: 64, 128" in err[0] and "epochs" not in err[0].split("(")[1].split(")")[0]
def test_compare_json_dynamics_section(tmp_path, capsys):
    """Three configurations × 4 seeds of linear dynamics: seeds (random embeddings of the
    same eigenvalues) come out equivalent, other eigenvalues do not; the JSON contract."""
    import json

    store = TrajectoryStore(str(tmp_path / "s"))
    slow, fast = [0.95, 0.9, 0.85], [0.5, 0.6, 0.7]
    for seed in range(4):   # init only labels: kaiming and orthogonal runs share their dynamics
        _linear_run(store, f"k{seed}", slow, depth=2, seed=seed, init="kaiming")
        _linear_run(store, f"o{seed}", slow, depth=2, seed=10 + seed, init="orthogonal")
        _linear_run(store, f"z{seed}", fast, depth=2, seed=20 + seed, init="zeros")
    analyze_runs(store, None, AnalysisParams(window=10, stride=10), console=Console(quiet=True))
    path = tmp_path / "out" / "cmp.json"
    rc, lines, err = _kma(capsys, "compare", "--store", tmp_path / "s", "--out", tmp_path / "o",
                          "--by", "init", "--json", path)
    assert rc == 0, err
    report = json.loads(path.read_text())
    dyn = report["dynamics"]
    assert dyn["metric"] == "spectral-w1-weighted" and dyn["ritz_pairs"] == "weighted" and report["by"] == "init"
    assert dyn["reliability"]["residual_tol"] == 1e-2   # the analysis' own tolerance
    assert set(dyn["certified_mass"]) == set(dyn["runs"])
    assert all(m is None or 0 <= m <= 1 for m in dyn["certified_mass"].values())
    assert {(p["a"], p["b"]) for p in dyn["certified_only"]["pairs"]} == {
        ("kaiming", "orthogonal"), ("kaiming", "zeros"), ("orthogonal", "zeros")}
    assert dyn["runs"] == [f"k{i}" for i in range(4)] + [f"o{i}" for i in range(4)] + [f"z{i}" for i in range(4)]
    assert dyn["group_of"] == {r: {"k": "kaiming", "o": "orthogonal", "z": "zeros"}[r[0]] for r in dyn["runs"]}
    D = np.array(dyn["distance"])
    assert D.shape == (12, 12) and np.array_equal(D, D.T) and not np.diag(D).any()
    pairs = {(p["a"], p["b"]): p for p in dyn["pairs"]}
    assert set(pairs) == {("kaiming", "orthogonal"), ("kaiming", "zeros"), ("orthogonal", "zeros")}
    for p in pairs.values():
        assert set(p) >= {"a", "b", "within_a", "within_b", "between", "p_value", "equivalent"}
    assert pairs["kaiming", "orthogonal"]["equivalent"] is True and pairs["kaiming", "orthogonal"]["p_value"] > 0.05
    for key in (("kaiming", "zeros"), ("orthogonal", "zeros")):
        p = pairs[key]
        assert p["equivalent"] is False and p["p_value"] == pytest.approx(2 / 70)   # the smallest at 4 + 4 runs
        assert p["between"] > 10 * max(p["within_a"], p["within_b"])
    # the same section rides along in the comparison folder
    [folder] = (tmp_path / "o").iterdir()
    assert json.loads((folder / "dynamics.json").read_text())["dynamics"] == dyn


def test_compare_json_bad_path_is_one_line(two_runs, tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    rc, lines, err = _kma(capsys, "compare", "--store", tmp_path / "s", "--out", tmp_path / "o",
                          "--json", tmp_path / "afile" / "x.json")
    assert rc == 2 and lines == [] and len(err) == 1 and err[0].startswith("kma: error: --json "), err
    assert not (tmp_path / "o").exists()
