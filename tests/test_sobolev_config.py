"""Sobolev losses in sweep configs: mappings next to plain names, run ids of plain names
unchanged, the refusal of grid-less tasks (one line, exit 2, before Ray), the MLflow
params of a mapping and the ``kma compare --by loss`` label; one end-to-end sweep."""

from __future__ import annotations

import re
import subprocess

import numpy as np
import pytest
import yaml
from mlflow.tracking import MlflowClient

from pipeline import config
from pipeline.workflows import compare
from pipeline.workflows.analyze import AnalysisParams, analyze_runs
from pipeline.console import Console
from pipeline.errors import ConfigError
from pipeline.storage.layout import Layout
from pipeline.storage.store import TrajectoryStore

from conftest import TINY, kma_cmd

GRID = {**TINY, "task": {**TINY["task"], "val": "fresh_noise", "noise": 1.0}, "batch_size": 64,
        "model": {**TINY["model"], "depth": 1}}


def _ids(**updates) -> list[str]:
    return [v.run_id for v in config.expand(config.validate({**GRID, **updates}))]


def test_plain_names_keep_their_run_ids_next_to_mappings():
    [mse] = _ids(loss="mse")
    both = _ids(loss=["mse", {"name": "sobolev", "s": 1.0}, {"name": "sobolev", "s": 2.0, "mse_weight": 0.5}])
    assert both[0] == mse and len(set(both)) == 3
    assert _ids(loss={"name": "mse"}) == [mse]                                  # {name: x} is x
    [s1] = _ids(loss={"name": "sobolev", "s": 1})
    assert _ids(loss={"name": "sobolev", "s": 1.0, "mse_weight": 0.0}) == [s1]  # 1 ≡ 1.0; default out
    v = config.expand(config.validate({**GRID, "loss": {"name": "sobolev", "s": 1}}))[0]
    assert v.identity()["loss"] == {"name": "sobolev", "s": 1.0}
    # a plain name still hashes as the string it always was
    plain = config.expand(config.validate({**GRID, "loss": "mse"}))[0]
    assert plain.identity()["loss"] == "mse"
    # the task's new option stays out of ids at its default
    assert "val" not in config.expand(config.validate(TINY))[0].identity()["task"]


@pytest.mark.parametrize("loss, words", [
    ("sobolev", "s: Field required"),
    ({"name": "sobolev", "s": -1.0}, "greater than or equal to 0"),
    ({"name": "sobolev", "s": 1.0, "p": 2}, "p: unknown key"),
    ({"name": "huber", "delta": 2.0}, "takes no parameters"),
    (["mse", {"name": "sobolev", "s": 1}, {"name": "sobolev", "s": 1.0}], "'sobolev(s=1)' is listed twice"),
])
def test_bad_loss_entries(loss, words):
    with pytest.raises(ConfigError, match=r"^cfg: loss: .*" + words.replace("(", r"\(").replace(")", r"\)")):
        config.validate({**GRID, "loss": loss}, "cfg")


def test_a_grid_loss_needs_the_whole_grid():
    split = {**GRID, "task": TINY["task"], "batch_size": 16, "loss": {"name": "sobolev", "s": 1.0}}
    with pytest.raises(ConfigError, match="task.val: fresh_noise .* and batch_size >= 64"):
        config.validate(split, "cfg")


@pytest.mark.parametrize("task", [{"name": "digits"}, {"name": "blobs"}])
def test_a_gridless_task_is_refused_in_one_line_before_ray(tmp_path, kma_env, task):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(yaml.safe_dump({**GRID, "task": task, "loss": ["mse", {"name": "sobolev", "s": 1.0}]}))
    r = subprocess.run(kma_cmd("sweep", cfg, "--store", tmp_path / "store", "--tracking-uri",
                               f"sqlite:///{tmp_path / 'mlflow.db'}"),
                       capture_output=True, text=True, env=kma_env, cwd=tmp_path, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert lines == [f"kma: error: {cfg}: loss: sobolev(s=1) needs a task on a uniform grid "
                     f"(multiscale); task '{task['name']}' has none"]
    assert not (tmp_path / "store").exists() and not (tmp_path / "mlflow.db").exists()


def test_params_flatten_a_mapping_and_label_it():
    [mse, sob] = config.expand(config.validate({**GRID, "loss": ["mse", {"name": "sobolev", "s": 2.0,
                                                                          "mse_weight": 0.25}]}))
    p = config.variant_params(sob)
    assert (p["loss.name"], p["loss.s"], p["loss.mse_weight"]) == ("sobolev", 2.0, 0.25)
    assert p["loss"] == "sobolev(s=2,mse_weight=0.25)" and p["task.val"] == "fresh_noise"
    q = config.variant_params(mse)
    assert q["loss"] == "mse" and not any(k.startswith("loss.") for k in q)
    assert config.loss_label({"name": "sobolev", "s": 1.0, "mse_weight": 0.0}) == "sobolev(s=1)"
    assert config.loss_label({"name": "sobolev", "s": 0.5}) == "sobolev(s=0.5)"


def _linear_run(store, run_id, loss, lam, T=24, P=60):
    rng = np.random.default_rng(len(run_id))
    V = np.linalg.qr(rng.standard_normal((P, len(lam))))[0]
    X = np.stack([V @ (np.asarray(lam) ** t) for t in range(T)]).astype(np.float32)
    layout = Layout.from_named_shapes([("a.weight", (P,))])
    w = store.create_run(run_id, layout, config={"depth": 1, "loss": loss}, extra={"sweep": "cmp"})
    for t, x in enumerate(X):
        w.append(x, epoch=t)
    w.finish("complete", metrics={"train_loss": [1.0, 0.5]})


def test_compare_groups_by_the_canonical_label(tmp_path):
    store = TrajectoryStore(str(tmp_path / "s"))
    _linear_run(store, "a", "mse", [0.5, 0.6])
    _linear_run(store, "b", {"name": "sobolev", "s": 1.0, "mse_weight": 0.0}, [0.7, 0.8])
    _linear_run(store, "c", {"name": "sobolev", "s": 1.0, "mse_weight": 0.0}, [0.6, 0.9])
    _linear_run(store, "d", {"name": "sobolev", "s": 2.0, "mse_weight": 0.5}, [0.5, 0.9])
    analyze_runs(store, None, AnalysisParams(window=12, stride=12), console=Console(quiet=True))
    rows = compare.collect(store, by="loss")
    assert {r["run_id"]: r["group"] for r in rows} == {
        "a": "mse", "b": "sobolev(s=1)", "c": "sobolev(s=1)", "d": "sobolev(s=2,mse_weight=0.5)"}
    assert list(compare.groups(rows)) == ["mse", "sobolev(s=1)", "sobolev(s=2,mse_weight=0.5)"]
    assert re.search(r"^sobolev\(s=1\) +\(mean of 2\)", compare.table(rows, "loss"), re.M)
    assert {r["group"] for r in compare.collect(store, by="loss.s")} == {"-", "1.0", "2.0"}


@pytest.mark.slow
def test_sweep_with_a_sobolev_loss_logs_params_and_clean_error(tmp_path, kma_env):
    cfg = tmp_path / "sob.yaml"
    cfg.write_text(yaml.safe_dump({**GRID, "name": "sob", "loss": ["mse", {"name": "sobolev", "s": 1.0}]}))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    r = subprocess.run(kma_cmd("sweep", cfg, "--store", tmp_path / "store", "--tracking-uri", uri),
                       capture_output=True, text=True, env=kma_env, cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("sob")
    runs = client.search_runs([exp.experiment_id], "tags.`kma.kind` = 'training'")
    by_loss = {m.data.params["loss"]: m for m in runs}
    assert set(by_loss) == {"mse", "sobolev(s=1)"}
    sob = by_loss["sobolev(s=1)"].data.params
    assert (sob["loss.name"], sob["loss.s"], sob["loss.mse_weight"]) == ("sobolev", "1.0", "0.0")
    store = TrajectoryStore(str(tmp_path / "store"))
    for m in runs:
        run = store.open_run(m.data.tags["kma.run_id"])
        for key in ("clean_error", "clean_error_f1", "clean_error_f4"):
            hist = client.get_metric_history(m.info.run_id, key)
            assert [h.step for h in hist] == list(range(1, 13))
            assert [h.value for h in hist] == pytest.approx(run.metrics[key])
    sob_run = store.open_run(by_loss["sobolev(s=1)"].data.tags["kma.run_id"])
    assert sob_run.attrs["steps"] == 12                       # full batch: one step per epoch
