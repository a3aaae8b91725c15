"""jobs/experiments/dynamics.py --task: the held-out task's configs differ from the
tuned ones in the task and its loss only, and validate as sweep configs."""

import importlib.util

import yaml
from conftest import REPO

from pipeline import config


def _job():
    spec = importlib.util.spec_from_file_location("dynamics_job", REPO / "jobs" / "experiments" / "dynamics.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_task_digits_swaps_only_task_and_loss(tmp_path):
    job = _job()
    for name in ("optimizer", "sanity"):
        src = REPO / "configs" / "dynamics" / f"{name}.yaml"
        assert job.config_for(name, "multiscale", tmp_path) == src
        path = job.config_for(name, "digits", tmp_path)
        assert path == tmp_path / "configs" / f"{name}-digits.yaml"
        before, after = yaml.safe_load(src.read_text()), yaml.safe_load(path.read_text())
        changed = {k for k in before if before[k] != after.get(k)}
        assert changed == {"name", "task", "loss"} and set(after) == set(before)
        cfg = config.load(path)
        assert cfg.task.name == "digits" and cfg.loss == "cross_entropy"
        assert before["task"]["name"] == "multiscale"
