"""User mistakes on the command line: one line ``kma: error: ...`` naming the problem,
exit code 2, no traceback, and nothing half-done left behind. Every case runs
``python -m pipeline`` as a subprocess; none of them starts Ray."""

from __future__ import annotations

import subprocess

import pytest

from pipeline.training.inits import INITS
from pipeline.storage.store import TrajectoryStore

from conftest import TINY, kma_cmd


def kma(cwd, env, *args, timeout=120):
    return subprocess.run(kma_cmd(*args), capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout)


def user_error(r, *words, only_line=True) -> str:
    """Assert ``r`` failed as a user mistake; return its error line."""
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert lines and lines[-1].startswith("kma: error:"), r.stderr
    if only_line:  # nothing else on stderr: no progress, no library log lines
        assert len(lines) == 1, r.stderr
    for word in words:
        assert word in lines[-1], (word, lines[-1])
    return lines[-1]


@pytest.fixture
def sweep(tmp_path, kma_env):
    """``kma sweep CONFIG --store tmp/store --tracking-uri sqlite:///tmp/mlflow.db ARGS``."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"

    def run(cfg, *args, store=None, tracking_uri=uri):
        return kma(tmp_path, kma_env, "sweep", cfg, "--store", store or tmp_path / "store",
                   "--tracking-uri", tracking_uri, *args)

    return run


# --------------------------------------------------------------------------- config
def test_broken_yaml(tmp_path, sweep):
    cfg = tmp_path / "broken.yaml"
    cfg.write_text("name: broken\nmodel: {family: mlp\n  depth: [1\n")
    user_error(sweep(cfg), "broken.yaml", "YAML")
    assert not (tmp_path / "store").exists() and not (tmp_path / "mlflow.db").exists()


def test_unknown_key_names_its_path(tiny_config, sweep):
    cfg = tiny_config(model={**TINY["model"], "widht": 8})
    user_error(sweep(cfg), "model.widht", "unknown key")


def test_unknown_init_lists_known_ones(tiny_config, sweep):
    cfg = tiny_config(init=["kaiming", "bogus_init"])
    line = user_error(sweep(cfg), "init", "bogus_init")
    known = line.split("known:", 1)[1]
    assert INITS and all(name in known for name in INITS), line


def test_max_parallel_zero(tiny_config, sweep):
    user_error(sweep(tiny_config(), "--max-parallel", "0"), "--max-parallel")


# --------------------------------------------------------------------------- environment
def test_unwritable_store(tiny_config, sweep, tmp_path):
    (tmp_path / "afile").write_text("a regular file")
    user_error(sweep(tiny_config(), store=tmp_path / "afile" / "store"), "afile/store")


def test_unreachable_mlflow_fails_fast(tiny_config, sweep, tmp_path):
    """Refused by KMA's own single probe of the server's /health (MLflow's client would
    retry for minutes), before the store is created or Ray started."""
    r = sweep(tiny_config(), tracking_uri="http://127.0.0.1:9")
    user_error(r, "MLflow server http://127.0.0.1:9 is unreachable")
    assert not (tmp_path / "store").exists()


def test_unreachable_ray_after_store_and_mlflow(tiny_config, sweep, tmp_path):
    r = sweep(tiny_config(), "--ray-address", "127.0.0.1:9")
    user_error(r, "Ray", "127.0.0.1:9", only_line=False)
    assert "INFO" not in r.stderr, r.stderr  # no MLflow/alembic log lines without -v
    # the store and MLflow were checked (and created) first; no run was left 'running'
    assert (tmp_path / "mlflow.db").exists()
    runs = TrajectoryStore(str(tmp_path / "store"), read_only=True).runs()
    assert [i for i in runs if i.status == "running"] == []


# --------------------------------------------------------------------------- other commands
def test_runs_on_missing_store(tmp_path, kma_env):
    missing = tmp_path / "nonexistent"
    user_error(kma(tmp_path, kma_env, "runs", "--store", missing), str(missing))
    assert not missing.exists()


def test_analyze_bad_scheduler_before_side_effects(tmp_path, kma_env):
    TrajectoryStore(str(tmp_path / "store"))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    r = kma(tmp_path, kma_env, "analyze", "--store", tmp_path / "store", "--scheduler", "bogus",
            "--tracking-uri", uri)
    user_error(r, "--scheduler", "bogus")
    assert not (tmp_path / "mlflow.db").exists()


def test_analyze_missing_store_is_not_created(tmp_path, kma_env):
    missing = tmp_path / "typo-store"
    r = kma(tmp_path, kma_env, "analyze", "--store", missing, "--no-mlflow")
    user_error(r, str(missing))
    assert not missing.exists()


@pytest.mark.parametrize("flags, message", [
    (["--window", "1"], "--window 1: window must be an integer >= 2, 'auto' or 'all', got 1"),
    (["--window", "x"], "--window x: window must be an integer >= 2, 'auto' or 'all', got 'x'"),
    (["--stride", "0"], "--stride 0: stride must be a positive integer, got 0"),
    (["--rank", "0"], "rank must be a positive integer"),
    (["--rank", "3", "--tol", "0.1"], "at most one of rank, tol"),
])
def test_bad_analysis_parameters_are_one_line(tmp_path, kma_env, flags, message):
    TrajectoryStore(str(tmp_path / "s"))
    r = subprocess.run(kma_cmd("analyze", "--store", tmp_path / "s", "--no-mlflow", *flags),
                       capture_output=True, text=True, env=kma_env, timeout=120)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kma: error:") and message in lines[0], r.stderr
