"""Shared fixtures: tiny sweep configs written to tmp dirs, a scratch working dir."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]

TINY = {
    "name": "tiny",
    "seed": 0,
    "seeds": [0],
    "task": {"name": "multiscale", "n_points": 64, "frequencies": [1.0, 4.0], "amplitudes": [1.0, 0.3]},
    "model": {"family": "mlp", "depth": [1, 2], "width": 8, "activation": "tanh"},
    "init": ["kaiming"],
    "optimizer": {"name": "adam", "lr": 0.01},
    "loss": "mse",
    "epochs": 12,
    "batch_size": 16,
    "snapshot": {"every": 1, "unit": "epoch"},
    "resources": {"num_cpus": 1, "num_gpus": 0},
    "analysis": {"enabled": False},
}


@pytest.fixture
def tiny_config(tmp_path):
    """Write a tiny sweep YAML (optionally updated) and return its path."""

    def make(**updates) -> Path:
        data = {**TINY, **updates}
        path = tmp_path / f"{data['name']}.yaml"
        path.write_text(yaml.safe_dump(data))
        return path

    return make


def kma_cmd(*args) -> list[str]:
    """``python -m pipeline ARGS`` with this interpreter (works without the console script)."""
    return [sys.executable, "-m", "pipeline", *map(str, args)]


@pytest.fixture
def kma_env():
    env = dict(os.environ)
    env.pop("MLFLOW_TRACKING_URI", None)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


@pytest.fixture(scope="session", autouse=True)
def _nothing_written_to_cwd_mlruns():
    """MLflow artifacts go beside the tracking database (``mlartifacts``), never into
    ``./mlruns`` of the directory the tests run from: the suite fails if it adds any."""
    places = {Path.cwd() / "mlruns", REPO / "mlruns"}

    def listing():
        return {p: set(os.listdir(p)) if p.is_dir() else None for p in places}

    before = listing()
    yield
    after = listing()
    added = {str(p): sorted((after[p] or set()) - (before[p] or set())) for p in places
             if after[p] is not None and (before[p] is None or after[p] - before[p])}
    assert not added, f"the tests wrote MLflow artifacts outside their temporary directories: {added}"
