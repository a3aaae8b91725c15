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


# what KMA and MLflow write by default into the working directory: the store, the
# SQLite tracking database, and MLflow's artifact roots (./mlruns next to a SQLite URI)
CWD_OUTPUTS = ("kma-store", "mlflow.db", "mlruns", "mlartifacts")


def _outputs_in(dirs) -> dict[str, int]:
    """Every file and folder under ``CWD_OUTPUTS`` in ``dirs`` with its mtime (ns)."""
    found = {}
    for d in dirs:
        for name in CWD_OUTPUTS:
            top = d / name
            if top.exists():
                for p in (top, *top.rglob("*")) if top.is_dir() else (top,):
                    try:
                        found[str(p)] = p.stat().st_mtime_ns
                    except OSError:
                        pass
    return found


@pytest.fixture(scope="session")
def _cwd_outputs_baseline():
    """What already lies in the repository and the starting directory when the session
    starts (snapshot taken before any module- or session-scoped fixture runs)."""
    dirs = (REPO, Path.cwd().resolve())
    return {"dirs": dirs, "seen": _outputs_in(dirs)}


@pytest.fixture(autouse=True)
def _no_writes_to_cwd(_cwd_outputs_baseline, request, tmp_path_factory, monkeypatch):
    """Each test runs in a scratch working directory of its own, and fails if anything
    wrote a store, an MLflow database or MLflow artifacts into the repository or the
    directory pytest started in since the previous test (a module-scoped fixture's
    writes are charged to the first test that uses it): tests write under tmp dirs.
    What was newly created there is removed, so the next test is judged on its own."""
    import shutil

    base = _cwd_outputs_baseline
    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))
    yield
    after = _outputs_in(base["dirs"])
    changed = sorted(p for p, t in after.items() if base["seen"].get(p) != t)
    if changed:
        for d in base["dirs"]:
            for name in CWD_OUTPUTS:
                top = d / name
                if str(top) not in base["seen"] and top.exists():
                    shutil.rmtree(top) if top.is_dir() else top.unlink()
        base["seen"] = _outputs_in(base["dirs"])
        more = f" and {len(changed) - 5} more" if len(changed) > 5 else ""
        pytest.fail(f"{request.node.nodeid} wrote into the working directory: {changed[:5]}{more}; "
                    "tests must write under tmp dirs", pytrace=False)


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


def refusing_port():
    """A socket bound to a port the OS picks but not listening: connections to that port
    are refused for as long as it is held (no other process can take the port meanwhile).
    Use as ``with refusing_port() as s: port = s.getsockname()[1]; ...``."""
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    return s


# --------------------------------------------------------------------------- figures
def png_rgb(path) :
    """The pixels of a PNG file as an ``H × W × 3`` float array in [0, 1] (fails on a
    file that is not a complete PNG)."""
    import matplotlib.image

    img = matplotlib.image.imread(str(path))
    assert img.ndim == 3 and img.shape[2] in (3, 4), (path, img.shape)
    return img[..., :3]


def color_mask(img, color, min_cos: float = 0.99, min_ink: float = 0.15):
    """``H × W`` bool: pixels of a matplotlib colour drawn on white at any opacity or
    antialiasing (``pixel = white - a·(white - colour)``: the ink ``white - pixel`` points
    the colour's way, cosine >= ``min_cos``, and has length >= ``min_ink``)."""
    import matplotlib.colors
    import numpy as np

    ink = 1.0 - img
    want = 1.0 - np.asarray(matplotlib.colors.to_rgb(color))
    norm = np.linalg.norm(ink, axis=-1)
    cos = ink @ want / np.maximum(norm * np.linalg.norm(want), 1e-12)
    return (norm >= min_ink) & (cos >= min_cos)


def saturated_mask(img, min_chroma: float = 0.25):
    """``H × W`` bool: coloured pixels (not white, grey or black text and axes)."""
    return img.max(axis=-1) - img.min(axis=-1) >= min_chroma
