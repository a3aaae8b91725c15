"""jobs/experiments/koopman_accel.py on a tiny setting: every arm runs into a real store,
one table row per arm, and the per-layer arms record their attempts with fit seconds."""

import json
import subprocess
import sys

from conftest import REPO


def test_experiment_script_runs_every_arm(tmp_path, kma_env):
    out = tmp_path / "ka.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "jobs" / "experiments" / "koopman_accel.py"), "--seeds", "1",
         "--tasks", "multiscale", "--epochs-scale", "0.15", "--out", str(out)],
        capture_output=True, text=True, env=kma_env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [ln for ln in proc.stdout.splitlines() if ln.startswith("| ") and not ln.startswith(("| arm", "| ---"))]
    arms = [r.split("|")[1].strip() for r in rows]
    assert arms[:2] == ["Adam", "SGD"] and len(arms) == 9
    assert all(a.startswith(("Adam + Koopman", "SGD + Koopman")) for a in arms[2:])
    runs = json.loads(out.read_text())["runs"]
    assert len(runs) == 9 and all(r["status"] == "complete" for r in runs)
    koop = [r for r in runs if "Koopman" in r["arm"]]
    assert all(r["attempts"] > 0 for r in koop)          # 12 epochs x 4 steps: windows of 10-40 fill
    assert all(r["fit_s"] > 0 for r in koop if r["attempts"])
    assert all(len(r["horizons"]) == r["jumps"] for r in runs)
