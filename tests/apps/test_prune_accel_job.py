"""jobs/experiments/prune_accel.py on a tiny setting: it runs every arm into a real store
and prints one table row per arm, with the JSON beside."""

import json
import subprocess
import sys

from conftest import REPO


def test_experiment_script_prints_a_row_per_arm(tmp_path, kma_env):
    out = tmp_path / "pa.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "jobs" / "experiments" / "prune_accel.py"), "--seeds", "1",
         "--tasks", "regression", "--depths", "2", "--sparsities", "0.5", "--epochs-scale", "0.1",
         "--out", str(out)], capture_output=True, text=True, env=kma_env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [ln for ln in proc.stdout.splitlines() if ln.startswith("| ") and not ln.startswith("| arm")]
    arms = [r.split("|")[1].strip() for r in rows if not r.startswith("| ---")]
    assert arms == ["unpruned / plain", "magnitude 0.5", "koopman 0.5", "accelerated (tol 0.01)",
                    "accelerated (tol 0.05)", "accelerated (tol 0.05, reset)"]
    data = json.loads(out.read_text())
    runs = data["runs"]
    assert len(runs) == 6 and all(r["status"] == "complete" for r in runs)
    pruned = [r for r in runs if r["arm"].startswith(("magnitude", "koopman"))]
    assert all(r["events"][0]["kind"] == "prune" for r in pruned)
    assert all(r["history"]["sparsity"][-1] == r["events"][0]["sparsity"] for r in pruned)


def test_experiment_script_freeze_arms(tmp_path, kma_env):
    """``--freeze``: plain and the two freeze arms, each row with its frozen fraction, and
    the run's metric matching its last freeze event."""
    out = tmp_path / "fr.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "jobs" / "experiments" / "prune_accel.py"), "--freeze",
         "--seeds", "1", "--tasks", "digits", "--depths", "2", "--epochs-scale", "0.5",
         "--out", str(out)], capture_output=True, text=True, env=kma_env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [ln for ln in proc.stdout.splitlines() if ln.startswith("| ") and not ln.startswith("| arm")]
    arms = [r.split("|")[1].strip() for r in rows if not r.startswith("| ---")]
    assert arms == ["unpruned / plain", "freeze (tol 0.01)", "freeze (tol 0.05)"]
    runs = json.loads(out.read_text())["runs"]
    assert all(r["status"] == "complete" for r in runs)
    for r in runs[1:]:
        assert all(e["kind"] == "freeze" for e in r["events"])
        last = r["events"][-1]["frozen_fraction"] if r["events"] else 0.0
        assert r["frozen_fraction"] == r["history"]["frozen_fraction"][-1] == last
