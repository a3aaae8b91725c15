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


def refusing_port():
    """A socket bound to a port the OS picks but not listening: connections to that port
    are refused for as long as it is held (no other process can take the port meanwhile).
    Use as ``with refusing_port() as s: port = s.getsockname()[1]; ...``."""
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    return s


# --------------------------------------------------------------------------- figures
def png_rgb(path) -> "np.ndarray":
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
