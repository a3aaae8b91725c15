"""End to end on real parts: a local Ray started by the command, a Zarr store on disk,
MLflow on a SQLite file. Re-runs train and register nothing; an interrupted sweep
completes exactly the missing variants on the next run."""

import os
import subprocess
import time

import pytest
from mlflow.tracking import MlflowClient

from pipeline.storage.store import TrajectoryStore

from conftest import kma_cmd

pytestmark = pytest.mark.slow


def _sweep(cfg, store, uri, env, *extra, timeout=300):
    return subprocess.run(
        kma_cmd("sweep", cfg, "--store", store, "--tracking-uri", uri, *extra),
        capture_output=True, text=True, env=env, timeout=timeout,
    )


def _training_runs(uri, experiment):
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id], "tags.`kma.kind` = 'training'") if exp else []


def _clean_log(r, total, per_task=1):
    """What a sweep writes without a terminal: plain lines only (no escape sequence, no
    Ray or library warning such as Ray's token-authentication notice); progress lines
    that never count more runs as running than Ray has CPUs (the rest are queued), and
    the final progress line once."""
    import re

    for text in (r.stdout, r.stderr):
        assert "\x1b" not in text and "\r" not in text, repr(text[-500:])
    assert "WARNING" not in r.stderr and "Token authentication" not in r.stderr, r.stderr
    progress = [ln for ln in r.stderr.splitlines() if ln.startswith("[tiny] ")]
    assert progress, r.stderr
    tasks_seen = []
    for line in progress:
        m = re.match(r"\[tiny\] (\d+)/(\d+) finished: (\d+) done, (\d+) running, (\d+) queued, "
                     r"(\d+) failed(?:; tasks (\d+)/(\d+))? \(\d+s\)$", line)
        assert m, line
        fin, tot, done, running, queued, failed = map(int, m.groups()[:6])
        assert tot == total and fin == done + failed and done + running + queued + failed == total, line
        assert running <= (os.cpu_count() or 1) * per_task, line  # one CPU per (packed) task
        if m.group(7) is not None:   # packed: several runs per task, the line counts tasks too
            tasks_seen.append((int(m.group(7)), int(m.group(8)), fin))
    assert progress[-1].startswith(f"[tiny] {total}/{total} finished")
    assert sum(ln.startswith(f"[tiny] {total}/{total}") for ln in progress) == 1, progress
    if per_task > 1 and tasks_seen:
        # the log moves with each finished task: one line per task, never a jump over one
        n_tasks = tasks_seen[0][1]
        assert 1 < n_tasks < total
        assert sorted({t for t, _, _ in tasks_seen}) == list(range(n_tasks + 1)), progress
        assert [fin for _, _, fin in tasks_seen] == sorted(fin for _, _, fin in tasks_seen)
    return tasks_seen


def test_sweep_stores_registers_and_is_idempotent(tiny_config, tmp_path, kma_env):
    cfg = tiny_config(seeds=[0, 1], analysis={"enabled": True, "window": 6, "stride": 3})
    store, uri = tmp_path / "store", f"sqlite:///{tmp_path / 'mlflow.db'}"
    # a sweep on another machine claimed one variant and died long ago: its claim has expired
    import json

    from pipeline import config

    stale = config.expand(config.load(cfg))[0].run_id
    TrajectoryStore(str(store)).set_bytes(f"leases/{stale}.json", json.dumps(
        {"owner": "gone:1:x", "host": "gone", "pid": 1, "sweep": "tiny", "heartbeat": time.time() - 1000,
         "timeout": 90}).encode())
    r = _sweep(cfg, store, uri, kma_env)
    assert r.returncode == 0, r.stderr
    assert "4 to train" in r.stderr and "finished: 4 done" in r.stderr
    assert "held" not in r.stderr
    assert _clean_log(r, total=4, per_task=2), r.stderr   # packed: 2 seeds per depth, 2 tasks
    assert not list((store / "leases").iterdir())  # every claim released after its run was recorded

    st = TrajectoryStore(str(store))
    runs = {i.run_id: i for i in st.runs()}
    assert st.tracking_uri == uri  # kma analyze/sync from anywhere find this MLflow
    assert len(runs) == 4 and {i.status for i in runs.values()} == {"complete"}
    assert {i.n_snapshots for i in runs.values()} == {13}
    finished = {rid: st.open_run(rid).attrs["finished"] for rid in runs}
    # pack: auto trained each depth's two seeds as one packed task, each its own run
    assert sorted(st.open_run(rid).attrs["packed"]["index"] for rid in runs) == [0, 0, 1, 1]
    listed = subprocess.run(kma_cmd("runs", "--store", store), capture_output=True, text=True,
                            env=kma_env, timeout=120)
    assert listed.returncode == 0 and all(rid in listed.stdout for rid in runs), listed.stdout

    mruns = _training_runs(uri, "tiny")
    assert sorted(m.data.tags["kma.run_id"] for m in mruns) == sorted(runs)
    client = MlflowClient(uri)
    for m in mruns:
        rid = m.data.tags["kma.run_id"]
        assert m.data.tags["kma.status"] == "complete" and m.data.tags["kma.sweep"] == "tiny"
        assert m.data.tags["kma.trajectory_uri"] == f"{store.resolve()}/runs/{rid}"  # absolute
        assert m.data.tags["kma.store"] == str(store.resolve())
        assert m.data.params["depth"] in ("1", "2") and m.data.params["optimizer"] == "adam"
        hist = client.get_metric_history(m.info.run_id, "train_loss")
        assert [h.step for h in hist] == list(range(1, 13))
        stored = st.open_run(rid).metrics["train_loss"]
        assert [h.value for h in hist] == pytest.approx(stored)
        assert "config.yaml" in [a.path for a in client.list_artifacts(m.info.run_id)]

    # the default analysis ran and is registered as child runs of the training runs
    exp = client.get_experiment_by_name("tiny")
    analyses = client.search_runs([exp.experiment_id], "tags.`kma.kind` = 'analysis'")
    assert len(analyses) == 4
    parents = {m.info.run_id for m in mruns}
    assert {a.data.tags["mlflow.parentRunId"] for a in analyses} == parents

    # the last lines: verdict counts (all four analysed), then where to look next
    import re

    tail = r.stderr.strip().splitlines()[-3:]
    m = re.fullmatch(r"verdicts: (\d+) converged(?:, (\d+) not converged)?(?:, \d+ bad init)?", tail[0])
    assert m and sum(int(g or 0) for g in m.groups()) == 4, tail
    assert tail[1] == (f"next: kma ui --tracking-uri {uri}, then open "
                       f"http://127.0.0.1:5000/#/experiments/{exp.experiment_id}?workflowType=machine_learning")
    assert tail[2].split() == ["kma", "compare", "--store", str(store.resolve()), "--sweep", "tiny", "--by", "depth"]

    # second run: nothing trained, nothing registered, nothing re-analysed
    r = _sweep(cfg, store, uri, kma_env)
    assert r.returncode == 0, r.stderr
    assert "4 already finished, 0 to train" in r.stderr
    assert len(_training_runs(uri, "tiny")) == 4
    again = client.search_runs([exp.experiment_id], "tags.`kma.kind` = 'analysis'")
    assert {a.info.run_id for a in again} == {a.info.run_id for a in analyses}
    assert {rid: st.open_run(rid).attrs["finished"] for rid in runs} == finished


def test_interrupted_sweep_completes_only_missing(tiny_config, tmp_path, kma_env):
    """A real SIGINT at a known point: the driver's test hook (KMA_TEST_INTERRUPT_AFTER=1)
    signals itself once the first result is recorded and the second task submitted, so
    exactly one run is complete when the sweep stops (no race with polling the store)."""
    from pipeline import config

    cfg = tiny_config(name="interrupt", model={"family": "mlp", "depth": [1, 2, 3, 4], "width": 8})
    variants = [v.run_id for v in config.expand(config.load(cfg))]
    store, uri = tmp_path / "store", f"sqlite:///{tmp_path / 'mlflow.db'}"
    r = subprocess.run(
        kma_cmd("sweep", cfg, "--store", store, "--tracking-uri", uri, "--max-parallel", "1"),
        capture_output=True, text=True, env={**kma_env, "KMA_TEST_INTERRUPT_AFTER": "1"}, timeout=300,
    )
    assert r.returncode == 130, r.stderr
    assert "interrupted: 1 run finished this time" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr

    st = TrajectoryStore(str(store))
    before = {i.run_id: i.status for i in st.runs()}
    # the first variant finished; the second was cut off (interrupted, or never created);
    # the last two were never started
    assert before.get(variants[0]) == "complete", before
    assert before.get(variants[1]) in (None, "interrupted"), before
    assert set(before) <= set(variants[:2]), before
    from pipeline.storage.health import split_runs  # (once: the cut-off run was "corrupt")

    assert split_runs(st, ("complete",)) == ([variants[0]], {})
    finished = st.open_run(variants[0]).attrs["finished"]
    assert [m.data.tags["kma.run_id"] for m in _training_runs(uri, "interrupt")] == [variants[0]]

    r = _sweep(cfg, store, uri, kma_env)
    assert r.returncode == 0, r.stderr
    assert "1 already finished, 3 to train" in r.stderr
    after = {i.run_id: i.status for i in st.runs()}
    assert sorted(after) == sorted(variants) and set(after.values()) == {"complete"}
    # the run finished before the interrupt was not retrained
    assert st.open_run(variants[0]).attrs["finished"] == finished
    mruns = _training_runs(uri, "interrupt")
    assert sorted(m.data.tags["kma.run_id"] for m in mruns) == sorted(variants)


def test_gpu_share_script_runs_on_cpu_without_a_gpu(tmp_path, kma_env):
    """jobs/gpu_share.py (fractional num_gpus) falls back to the CPU when Ray has no GPU."""
    import json
    import sys
    from pathlib import Path

    import torch

    if torch.cuda.is_available():
        pytest.skip("this checks the CPU fallback")
    repo = Path(__file__).resolve().parents[1]
    out = tmp_path / "gpu.json"
    r = subprocess.run([sys.executable, str(repo / "jobs" / "gpu_share.py"), str(repo / "configs" / "gpu_share.yaml"),
                        "epochs=2", "model.width=16", "analysis.enabled=false", "--store", str(tmp_path / "s"),
                        "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", "--out", str(out)],
                       capture_output=True, text=True, env=kma_env, timeout=300)
    assert r.returncode == 0, r.stderr
    report = json.loads(out.read_text())
    assert report["gpu"] is None and report["num_gpus_per_variant"] == 0.25
    assert len(report["variants"]) == 4
    assert {v["status"] for v in report["variants"]} == {"complete"}
    assert {v["device"] for v in report["variants"]} == {"cpu"}
    # the overlap is recomputed from what the store recorded for each run; Ray gives each
    # variant one CPU (its GPU share dropped), so no more than this machine's cores overlap
    store = TrajectoryStore(str(tmp_path / "s"), read_only=True)
    runs = [store.open_run(v["run_id"]) for v in report["variants"]]
    intervals = [(r.attrs["t_start"], r.attrs["t_end"]) for r in runs]
    assert all(t0 < t1 for t0, t1 in intervals), intervals
    assert report["max_concurrent"] == _gpu_share_module().max_overlap(intervals)
    assert 1 <= report["max_concurrent"] <= min(4, os.cpu_count() or 1), report


def _gpu_share_module():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "jobs" / "gpu_share.py"
    spec = importlib.util.spec_from_file_location("gpu_share", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("intervals, expected", [
    ([], 0),
    ([(0, 1), (1, 2), (2, 3)], 1),           # back to back: an end comes before a start at the same instant
    ([(0, 10), (1, 2), (3, 4), (5, 6)], 2),
    ([(0, 5), (1, 6), (2, 7), (8, 9)], 3),
    ([(0, 4), (0, 4), (0, 4), (0, 4)], 4),
])
def test_max_overlap_counts_simultaneous_runs(intervals, expected):
    assert _gpu_share_module().max_overlap(intervals) == expected
