"""What a researcher finds in the MLflow UI, checked through the tracking API on a real
SQLite MLflow: a tiny real sweep (4 variants: depth 1/2 × init kaiming/small_variance,
trained into a real Zarr store, registered and analysed as the sweep driver does).
The searches are the ones docs/pages/mlflow.md tells people
to type; the test fails if that page stops quoting them."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time

import mlflow
import pytest
import yaml
from mlflow.tracking import MlflowClient

from pipeline import config
from pipeline.workflows.analyze import AnalysisParams, analyze_runs, load_results
from pipeline.console import Console
from pipeline.training.runner import run_variant
from pipeline.storage.store import TrajectoryStore
from pipeline.workflows.sync import register_run, short_name
from pipeline.tracking.tracker import (EXPERIMENT_KIND, TAG_EXPERIMENT_KIND, Tracker, artifact_root,
                                       experiment_url)

from conftest import REPO, TINY
from services import need

EPOCHS = 8
PARAMS = AnalysisParams(window=4, stride=2)
# the README's searches (each must appear verbatim in README.md)
TRAINING = "tags.`kma.kind` = 'training'"
DEPTH2 = "params.depth = '2'"
ANALYSES = "tags.`kma.kind` = 'analysis' and params.`analysis.window` = '4'"
SMALL_INIT = "params.init = 'small_variance'"


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("view")
    cwd = tmp / "cwd"
    cwd.mkdir()
    mp = pytest.MonkeyPatch()
    mp.chdir(cwd)  # whatever MLflow writes relative to the cwd would land here
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)
    mp.delenv("KMA_ARTIFACT_ROOT", raising=False)
    cfg_path = tmp / "tiny.yaml"
    cfg_path.write_text(yaml.safe_dump({**TINY, "epochs": EPOCHS, "init": ["kaiming", "small_variance"]}))
    variants = config.expand(config.load(cfg_path))
    store_url, uri = str(tmp / "store"), f"sqlite:///{tmp / 'db' / 'mlflow.db'}"
    (tmp / "db").mkdir()
    store = TrajectoryStore(store_url)
    tracker = Tracker(uri)
    for v in variants:
        assert run_variant(v, store_url)["status"] == "complete"
        assert register_run(tracker, store, v.run_id)
    report = analyze_runs(store, None, PARAMS, tracker=tracker, console=Console(quiet=True))
    assert set(report.values()) == {None}
    yield {"tmp": tmp, "cwd": cwd, "uri": uri, "store": store, "variants": variants}
    mp.undo()


def _search(uri, flt):
    mlflow.set_tracking_uri(uri)
    try:
        return mlflow.search_runs(experiment_names=["tiny"], filter_string=flt, output_format="list",
                                  max_results=1000)
    finally:
        mlflow.set_tracking_uri(None)


def test_readme_quotes_the_searches():
    readme = (REPO / "docs" / "pages" / "mlflow.md").read_text()
    for q in (TRAINING, DEPTH2, ANALYSES, SMALL_INIT):
        assert q in readme, q


def test_experiment_opens_on_runs_and_artifacts_sit_beside_the_database(sweep):
    client = MlflowClient(sweep["uri"])
    exp = client.get_experiment_by_name("tiny")
    assert exp.tags[TAG_EXPERIMENT_KIND] == EXPERIMENT_KIND == "custom_model_development"
    root = sweep["tmp"] / "db" / "mlartifacts"
    assert exp.artifact_location.removeprefix("file://") == str(root / "tiny")
    figures = sorted(p.name for p in root.rglob("*.png"))
    assert figures == sorted(["spectrum.png", "eigenvalues_over_training.png", "singular_values.png",
                              "convergence.png"] * 4)
    assert len(list(root.rglob("config.yaml"))) == 4
    assert not (sweep["cwd"] / "mlruns").exists() and list(sweep["cwd"].iterdir()) == []


def test_training_runs_carry_training_times_and_readable_names(sweep):
    runs = _search(sweep["uri"], TRAINING)
    assert len(runs) == 4
    store = sweep["store"]
    names = set()
    for r in runs:
        stored = store.open_run(r.data.tags["kma.run_id"])
        assert r.info.start_time == int(stored.attrs["t_start"] * 1000)
        assert r.info.end_time == int(stored.attrs["t_end"] * 1000)
        assert r.info.end_time > r.info.start_time
        assert r.info.run_name == short_name(stored) == r.data.tags["kma.variant"]
        c = stored.config
        assert r.info.run_name.startswith(f"d{c['depth']}-w{c['width']}-{c['init']}-s{c['seed']}-e{EPOCHS}-")
        assert len(r.info.run_name) < len(stored.run_id)
        names.add(r.info.run_name)
    assert len(names) == 4


def test_depth_and_init_filters_find_training_runs_and_their_analyses(sweep):
    by_id = {v.run_id: v for v in sweep["variants"]}
    depth2 = _search(sweep["uri"], DEPTH2)
    assert {r.data.tags["kma.kind"] for r in depth2} == {"training", "analysis"}
    assert sorted(r.data.tags["kma.run_id"] for r in depth2) == sorted(
        [v.run_id for v in sweep["variants"] if v.depth == 2] * 2)

    analyses = _search(sweep["uri"], ANALYSES)
    training = {r.info.run_id: r for r in _search(sweep["uri"], TRAINING)}
    assert len(analyses) == 4 and len({r.info.run_name for r in analyses}) == 4
    for a in analyses:
        parent = training[a.data.tags["mlflow.parentRunId"]]
        assert parent.data.tags["kma.run_id"] == a.data.tags["kma.run_id"]
        # grouped by the variant: same params, same names as on the training record
        for key in ("depth", "init", "width", "lr", "seed"):
            assert a.data.params[key] == parent.data.params[key], key
        assert a.data.tags["kma.variant"] == parent.info.run_name
        assert a.info.run_name == f"{parent.info.run_name}/{PARAMS.analysis_id}"

    # group by init: two groups of two analyses, each group one init
    groups = {}
    for a in analyses:
        groups.setdefault(a.data.params["init"], []).append(by_id[a.data.tags["kma.run_id"]])
    assert {g: len(vs) for g, vs in groups.items()} == {"kaiming": 2, "small_variance": 2}
    assert all(v.init == g for g, vs in groups.items() for v in vs)
    small = _search(sweep["uri"], f"{SMALL_INIT} and {ANALYSES}")
    assert sorted(r.info.run_id for r in small) == sorted(r.info.run_id for r in analyses
                                                           if r.data.params["init"] == "small_variance")


def test_one_row_per_variant_holds_config_loss_and_verdict(sweep):
    """Each training record carries its latest analysis' verdict (tags and metrics) and the
    last window's spectral summaries, equal to the analysis run's own latest values, so the
    training search alone is the table (and the parallel-coordinates input) of
    config → loss → verdict; the analysis id is named and explained."""
    client = MlflowClient(sweep["uri"])
    analyses = {a.data.tags["mlflow.parentRunId"]: a for a in _search(sweep["uri"], ANALYSES)}
    training = _search(sweep["uri"], TRAINING)
    assert len(training) == 4 and set(analyses) == {t.info.run_id for t in training}
    for t in training:
        a = analyses[t.info.run_id]
        tags, m = t.data.tags, t.data.metrics
        assert {"depth", "init", "width", "lr", "seed"} <= set(t.data.params)
        assert "None" not in t.data.params.values() and "stop" not in t.data.params   # absent options: no column
        assert "val_loss" in m and "train_loss" in m
        for key in ("kma.converged", "kma.bad_init", "kma.convergence_reason"):
            assert tags[key] == a.data.tags[key], key
        assert m["verdict/converged"] == a.data.metrics["verdict/converged"] == (tags["kma.converged"] == "yes")
        assert tags["kma.latest_analysis"] == a.data.tags["kma.analysis_id"] == PARAMS.analysis_id
        assert tags["kma.analysis_about"] == a.data.tags["kma.analysis_about"]
        assert tags["kma.analysis_about"].startswith("method qr, windows of 4 snapshots every 2, per layer")
        for key in ("all/n_reliable", "all/rank", "all/median_residual", "first/rank", "last/rank"):
            assert m[key] == pytest.approx(a.data.metrics[key]), key
            [point] = client.get_metric_history(t.info.run_id, key)   # one point: the last window's
            assert point.step == max(h.step for h in client.get_metric_history(a.info.run_id, key))
        for key in ("all/max_abs_reliable", "all/log10_gap_max_abs", "last/log10_min_dist_to_1"):
            # present where a λ was certified (8 epochs may certify none): then equal
            assert m.get(key) == pytest.approx(a.data.metrics.get(key)), key
        assert not any(k.startswith("layers.") for k in m)   # per-layer history stays on the analysis
        depth = int(t.data.params["depth"])
        assert ("hidden/rank" in m) == (depth >= 2)   # depth 1: layers.0 and out, no hidden layer


def test_spectral_metrics_per_window_on_the_epoch_axis(sweep):
    """One point per window, step = the epoch of the window's last snapshot: the same
    axis as the training metrics (step = epoch), so the UI overlays them."""
    client = MlflowClient(sweep["uri"])
    for a in _search(sweep["uri"], ANALYSES):
        run = sweep["store"].open_run(a.data.tags["kma.run_id"])
        epochs = run.attrs["snapshot_epochs"]  # epoch 0: the initial weights, then 1..EPOCHS
        assert epochs == list(range(EPOCHS + 1))
        windows = sorted({r.window for r in load_results(run, PARAMS.analysis_id)})
        assert len(windows) >= 3
        ends = [epochs[b - 1] for _, b in windows]
        hist = client.get_metric_history(a.info.run_id, "all/rank")
        assert sorted(h.step for h in hist) == ends
        train = client.get_metric_history(a.data.tags["mlflow.parentRunId"], "train_loss")
        assert sorted(h.step for h in train) == list(range(1, EPOCHS + 1))
        assert set(ends) <= {h.step for h in train}
        for key in ("all/n_reliable", "all/median_residual"):
            assert len(client.get_metric_history(a.info.run_id, key)) == len(ends), key


def test_artifact_root(tmp_path, monkeypatch):
    monkeypatch.delenv("KMA_ARTIFACT_ROOT", raising=False)
    monkeypatch.chdir(tmp_path)
    assert artifact_root(f"sqlite:///{tmp_path}/x/mlflow.db") == f"{tmp_path}/x/mlartifacts"
    assert artifact_root("sqlite:///rel/mlflow.db") == f"{tmp_path}/rel/mlartifacts"  # relative to the cwd, made absolute
    assert artifact_root("http://mlflow:5000") is None  # the server's artifact store decides
    monkeypatch.setenv("KMA_ARTIFACT_ROOT", "s3://bucket/artifacts/")
    assert artifact_root(f"sqlite:///{tmp_path}/mlflow.db") == "s3://bucket/artifacts"
    monkeypatch.setenv("KMA_ARTIFACT_ROOT", "arts")
    assert artifact_root("http://mlflow:5000") == f"{tmp_path}/arts"


# ------------------------------------------------------------------ the UI in a real browser
GENAI_MARKS = ("Detect Issues", "Token Usage", "Tokens per Trace", "Latency")   # the GenAI overview's panels


@pytest.fixture(scope="module")
def mlflow_ui(sweep):
    """``mlflow ui`` on the sweep's SQLite database, on a port the OS picks (``--port 0``
    with one worker: uvicorn binds it and logs the real port)."""
    log = sweep["tmp"] / "ui.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([f"{sys.prefix}/bin/mlflow", "ui", "--backend-store-uri", sweep["uri"],
                                 "--host", "127.0.0.1", "--port", "0", "--workers", "1"],
                                stdout=out, stderr=subprocess.STDOUT, cwd=sweep["cwd"], start_new_session=True)
    try:
        deadline = time.monotonic() + 240   # a start-up wait: ~10 s idle, ~50 s on a loaded 2-core box
        while not (m := re.search(r"Uvicorn running on (http://127\.0\.0\.1:\d+)", log.read_text())):
            assert proc.poll() is None, f"mlflow ui exited: {log.read_text()[-800:]}"
            assert time.monotonic() < deadline, f"mlflow ui did not start: {log.read_text()[-800:]}"
            time.sleep(0.2)
        yield m.group(1)
    finally:
        _stop(proc)


def _stop(proc) -> None:
    """End a UI server and everything in its session (uvicorn, MLflow's job runner): SIGTERM,
    then SIGKILL if it has not gone after 10 s (its graceful shutdown took ~30 s here; a
    test's server holds nothing worth the wait)."""
    import signal

    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    except ProcessLookupError:
        proc.wait(timeout=30)


def _chromium(url: str, tmp, *extra: str) -> str:
    """The DOM headless Chromium renders for ``url`` (a fresh profile: what a newcomer sees)."""
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        need("Debian's chromium is not installed (apt-get install chromium)")
    profile = tmp / f"profile-{time.monotonic_ns()}"
    out = subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                          "--disable-component-update", "--disable-sync", "--no-first-run",
                          f"--user-data-dir={profile}", "--virtual-time-budget=30000", "--window-size=1600,1000",
                          *extra, url], capture_output=True, text=True, timeout=240)
    shutil.rmtree(profile, ignore_errors=True)
    return out.stdout


def test_the_printed_url_opens_the_runs_table_in_a_browser(sweep, mlflow_ui):
    """The link kma prints, loaded in a fresh headless Chromium against a real ``mlflow ui``:
    the rendered page lists the four training runs by name (analyses folded under them)
    and none of the GenAI overview's panels. Without ``?workflowType=machine_learning``
    MLflow 3.17.2 renders the GenAI overview for this very experiment, tag or no tag."""
    exp = MlflowClient(sweep["uri"]).get_experiment_by_name("tiny")
    url = experiment_url(sweep["uri"], exp.experiment_id, ui=mlflow_ui)
    assert url == f"{mlflow_ui}/#/experiments/{exp.experiment_id}?workflowType=machine_learning"
    names = sorted(r.info.run_name for r in _search(sweep["uri"], TRAINING))
    dom = ""
    for _ in range(2):   # a second look if the page was still loading when the budget ran out
        dom = _chromium(url, sweep["tmp"], "--dump-dom")
        if all(n in dom for n in names):
            break
    missing = [n for n in names if n not in dom]
    assert not missing, f"run names not rendered: {missing}; page text: {re.sub(r'<[^>]+>', ' ', dom)[-1500:]}"
    assert "Runs" in dom
    assert not [m for m in GENAI_MARKS if m in dom]
    analyses = [r.info.run_name for r in _search(sweep["uri"], ANALYSES)]
    assert analyses and not [a for a in analyses if a in dom]   # children stay folded: one row per variant
    shot = sweep["tmp"] / "runs.png"
    _chromium(url, sweep["tmp"], f"--screenshot={shot}")
    assert shot.stat().st_size > 10_000
    if os.environ.get("KMA_UI_SHOT"):   # to look at it: KMA_UI_SHOT=/tmp/runs.png pytest ...
        shutil.copy(shot, os.environ["KMA_UI_SHOT"])


@pytest.fixture(scope="module")
def kma_ui(sweep):
    """``kma ui`` on the sweep's SQLite database, on a port the OS picks."""
    log = sweep["tmp"] / "kma-ui.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([f"{sys.prefix}/bin/kma", "ui", "--tracking-uri", sweep["uri"], "--port", "0"],
                                stdout=out, stderr=subprocess.STDOUT, cwd=sweep["cwd"], start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while not (m := re.search(r"Uvicorn running on (http://127\.0\.0\.1:\d+)", log.read_text())):
            assert proc.poll() is None, f"kma ui exited: {log.read_text()[-800:]}"
            assert time.monotonic() < deadline, f"kma ui did not start: {log.read_text()[-800:]}"
            time.sleep(0.2)
        yield m.group(1)
    finally:
        _stop(proc)


def test_a_click_in_mlflows_own_experiment_list_opens_the_runs_under_kma_ui(sweep, kma_ui, mlflow_ui):
    """MLflow's experiment list served by ``kma ui``, in a fresh headless Chromium: the
    sweep's entry links to ``#/experiments/<id>`` (no ``workflowType``); that page, loaded
    in another fresh profile as the click would, lists the training runs by name and no
    GenAI panel. The same link under plain ``mlflow ui`` renders the GenAI overview."""
    from pipeline.tracking.ui import WORKFLOW_KEY

    exp = MlflowClient(sweep["uri"]).get_experiment_by_name("tiny")
    listing = _chromium(f"{kma_ui}/#/experiments", sweep["tmp"], "--dump-dom")
    link = re.search(r'<a [^>]*title="tiny"[^>]*href="([^"]+)"', listing)
    assert link, re.sub(r"<[^>]+>", " ", listing)[-1500:]
    assert link.group(1) == f"#/experiments/{exp.experiment_id}"   # what a click follows
    names = sorted(r.info.run_name for r in _search(sweep["uri"], TRAINING))
    dom = ""
    for _ in range(2):
        dom = _chromium(f"{kma_ui}/{link.group(1)}", sweep["tmp"], "--dump-dom")
        if all(n in dom for n in names):
            break
    assert WORKFLOW_KEY in dom   # the injected script is in the page
    missing = [n for n in names if n not in dom]
    assert not missing, f"run names not rendered: {missing}; page text: {re.sub(r'<[^>]+>', ' ', dom)[-1500:]}"
    assert not [m for m in GENAI_MARKS if m in dom]
    plain = _chromium(f"{mlflow_ui}/{link.group(1)}", sweep["tmp"], "--dump-dom")
    assert [m for m in GENAI_MARKS if m in plain] and not all(n in plain for n in names)


def test_the_injected_script_goes_first_in_the_head_once():
    from pipeline.tracking.ui import SCRIPT, inject

    html = b'<!doctype html><html><head><meta charset="utf-8"/><script src="main.js"></script></head></html>'
    out = inject(html)
    assert out.startswith(b"<!doctype html><html><head>" + SCRIPT.encode() + b"<meta")
    assert inject(out) == out and inject(b"<p>no head</p>") == b"<p>no head</p>"
    assert 'getItem("mlflow.workflowType_v1")===null' in SCRIPT and '"machine_learning"' in SCRIPT
