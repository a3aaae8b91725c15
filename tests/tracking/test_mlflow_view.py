"""What a researcher finds in the MLflow UI, checked through the tracking API on a real
SQLite MLflow: a tiny real sweep (4 variants: depth 1/2 × init kaiming/small_variance,
trained into a real Zarr store, registered and analysed as the sweep driver does).
The searches are the ones docs/pages/mlflow.md tells people
to type; the test fails if that page stops quoting them."""

from __future__ import annotations

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
from pipeline.tracking.tracker import EXPERIMENT_KIND, TAG_EXPERIMENT_KIND, Tracker, artifact_root

from conftest import REPO, TINY

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
        assert r.info.run_name.startswith(f"d{c['depth']}-w{c['width']}-{c['init']}-s{c['seed']}-")
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
