"""One analysis model (issue 9): the sweep YAML's ``analysis:`` and ``kma analyze``'s
flags build the same :class:`AnalysisParams`, with the same defaults, validated once
where the user gives them; analysis ids stay those of earlier versions."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline import config
from pipeline.workflows.analyze import list_analyses, load_results
from pipeline.cli import analysis_params, build_parser, main
from pipeline.config import AnalysisParams
from pipeline.errors import ConfigError
from pipeline.storage.layout import Layout
from pipeline.storage.store import TrajectoryStore

from conftest import TINY


def flags(*argv) -> AnalysisParams:
    return analysis_params(build_parser().parse_args(["analyze", "--store", "s", *argv]))


def yaml_analysis(**section) -> AnalysisParams:
    return config.validate({**TINY, "analysis": section}, names=False).analysis


# Pinned at engine version 4 (issue 20: misfit, noise-estimating default cut, one pass):
# an id changes only with the parameters or the engine version.
PINNED = [
    (dict(window="all", per_layer=False), "qr-wall-e4-803811c6"),
    (dict(window=10, per_layer=False), "qr-w10s10-e4-9d808799"),
    (dict(window=20, stride=10, per_layer=True), "qr-w20s10-layers-e4-a2e02703"),
    (dict(method="randomized", rank=5, window=20, stride=10, per_layer=True, seed=7),
     "randomized-w20s10-layers-e4-8c2700bb"),
    (dict(tol=1e-3, per_layer=False), "qr-wauto-e4-83141c53"),
    (dict(threshold="gavish-donoho", per_layer=False, modes=True), "qr-wauto-e4-cc9d3ae3"),
    (dict(), "qr-wauto-layers-e4-50f1eea9"),
]


@pytest.mark.parametrize("params, aid", PINNED)
def test_analysis_ids_are_unchanged(params, aid):
    assert AnalysisParams(**params).analysis_id == aid


def test_yaml_and_flags_share_defaults():
    cli, sweep = flags(), yaml_analysis()
    assert cli == sweep and cli.per_layer is True                 # per_layer true everywhere
    assert cli.analysis_id == sweep.analysis_id
    assert flags("--no-per-layer").per_layer is False
    assert flags("--no-per-layer").analysis_id == AnalysisParams(per_layer=False).analysis_id


def test_every_flag_has_its_yaml_key():
    argv = ["--method", "randomized", "--rank", "4", "--window", "12", "--stride", "3",
            "--no-per-layer", "--modes", "--seed", "5"]
    assert flags(*argv) == yaml_analysis(method="randomized", rank=4, window=12, stride=3,
                                          per_layer=False, modes=True, seed=5)
    assert flags("--tol", "0.001") == yaml_analysis(tol=0.001)          # settable from YAML now
    assert flags("--threshold", "gavish-donoho") == yaml_analysis(threshold="gavish-donoho")


@pytest.mark.parametrize("section, flag_argv, yaml_words, flag_words", [
    ({"window": 1}, ["--window", "1"], "analysis.window: window must be an integer >= 2, 'auto' or 'all', got 1",
     "--window 1: window must be an integer >= 2, 'auto' or 'all', got 1"),
    ({"window": "some"}, ["--window", "some"], "analysis.window: window must be an integer >= 2",
     "--window some: window must be an integer >= 2, 'auto' or 'all', got 'some'"),
    ({"stride": 3}, ["--stride", "3"], "analysis.stride: stride needs an explicit window width (window is 'auto'",
     "--stride 3: stride needs an explicit window width"),
    ({"tol": 1.5}, ["--tol", "1.5"], "analysis.tol: must be in [0, 1)", "--tol 1.5: must be in [0, 1)"),
    ({"rank": 3, "tol": 0.1}, ["--rank", "3", "--tol", "0.1"],
     "analysis: give at most one of rank, tol, threshold", "analysis parameters: give at most one of rank, tol"),
    ({"seed": -1}, ["--seed", "-1"], "analysis.seed: must be >= 0", "--seed -1: must be >= 0"),
])
def test_bad_values_name_where_they_came_from(section, flag_argv, yaml_words, flag_words):
    with pytest.raises(ConfigError) as yaml_err:
        yaml_analysis(**section)
    assert yaml_words in str(yaml_err.value)
    with pytest.raises(ConfigError) as flag_err:
        flags(*flag_argv)
    assert flag_words in str(flag_err.value)


def _run(store, rid="r", T=24, P=60):
    rng = np.random.default_rng(0)
    V = np.linalg.qr(rng.standard_normal((P, 3)))[0]
    lam = np.array([0.95, 0.8, 0.5])
    w = store.create_run(rid, Layout.from_named_shapes([("a.weight", (P // 2,)), ("b.weight", (P - P // 2,))]),
                         config={})
    for t in range(T):
        w.append((V @ lam**t).astype(np.float32), epoch=t)
    w.finish("complete")


def test_cli_default_is_per_layer_and_no_per_layer_is_whole_only(tmp_path):
    store = TrajectoryStore(str(tmp_path / "s"))
    _run(store)
    base = ["analyze", "--store", str(tmp_path / "s"), "--window", "12", "--no-mlflow", "--quiet"]
    assert main(base) == 0
    assert main([*base, "--no-per-layer"]) == 0
    run = store.open_run("r")
    layered, whole = flags("--window", "12"), flags("--window", "12", "--no-per-layer")
    assert sorted(list_analyses(run)) == sorted([layered.analysis_id, whole.analysis_id])
    assert {r.layer for r in load_results(run, layered.analysis_id)} == {"all", "a", "b"}
    assert {r.layer for r in load_results(run, whole.analysis_id)} == {"all"}
