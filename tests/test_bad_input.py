"""Bad input and faults: one line ``kma: error: ...``, the right exit code, nothing lost.

Each test here backs a row of the "Bad input and faults" table (docs/pages/faults.md). Refusals are
checked by calling the command line's ``main()`` in this process: they happen before
Ray starts, and the tests assert that nothing (store, MLflow database) was created.
Faults during analysis use a real Zarr store on disk; a write error is made by putting
a *file* where the store needs a folder (``runs/<id>/analyses``), which fails for root
too (``chmod`` does not restrict root, and the tests may run as root).
"""

from __future__ import annotations

import json
import os
import pty
import subprocess
import tracemalloc

import numpy as np
import pytest
import yaml

from pipeline import config
from pipeline.workflows.analyze import AnalysisParams, list_analyses, load_results
from pipeline.cli import main
from pipeline.storage.layout import Layout
from pipeline.outputs import write_text_atomic
from pipeline.storage.store import TrajectoryStore

from conftest import TINY, kma_cmd, png_rgb, refusing_port, saturated_mask

AID = AnalysisParams(window=10).analysis_id  # what `kma analyze --window 10` computes


def run_main(capsys, *args) -> tuple[int, list[str]]:
    """``kma ARGS`` in this process: (exit code, stderr lines)."""
    try:
        rc = main([str(a) for a in args])
    except SystemExit as e:  # argparse usage errors
        rc = e.code
    return rc, capsys.readouterr().err.strip().splitlines()


def refused(capsys, *args, words=()) -> str:
    """``kma ARGS`` is refused: exit code 2 and exactly one line naming the problem."""
    rc, lines = run_main(capsys, *args)
    assert rc == 2, (rc, lines)
    assert len(lines) == 1 and lines[0].startswith("kma: error: "), lines
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


@pytest.fixture
def sweep_refused(tmp_path, capsys):
    """``kma sweep`` on a config (dict, or raw text) is refused before any work."""

    def check(cfg, *overrides, words=()):
        path = tmp_path / "x.yaml"
        if isinstance(cfg, (str, bytes)):
            path.write_bytes(cfg if isinstance(cfg, bytes) else cfg.encode())
        else:
            path.write_text(yaml.safe_dump(cfg))
        store, db = tmp_path / "store", tmp_path / "mlflow.db"
        line = refused(capsys, "sweep", path, *overrides, "--store", store, "--tracking-uri", f"sqlite:///{db}",
                       words=(f"{path}: ", *words))
        assert not store.exists() and not db.exists(), "refused, yet something was created"
        return line

    return check


# --------------------------------------------------------------------------- configs
@pytest.mark.parametrize("overrides, words", [
    ({"optimizer": {"name": "adam", "lr": float("nan")}}, ["optimizer.lr: must be a finite number"]),
    ({"optimizer": {"name": "adam", "lr": [0.01, float("inf")]}}, ["optimizer.lr[1]: must be a finite number"]),
    ({"optimizer": {"name": "sgd", "lr": 0.1, "momentum": float("nan")}}, ["optimizer.momentum: must be a finite"]),
    ({"snapshot": {"layers": []}}, ["snapshot.layers: empty list"]),
    ({"model": {**TINY["model"], "depth": []}}, ["model.depth: empty list"]),
    ({"seeds": []}, ["seeds: empty list"]),
    ({"init": []}, ["init: empty list"]),
    ({"model": {**TINY["model"], "width": "32"}}, ["model.width: expected an integer", "string '32'"]),
    ({"optimizer": {"name": "adam", "lr": "0.01"}}, ["optimizer.lr: expected a number"]),
    ({"epochs": "12"}, ["epochs: Input should be a valid integer"]),
    ({"model": {**TINY["model"], "depth": [1, 1]}}, ["model.depth: 1 is listed twice"]),
    ({"name": "s" * 300}, ["name: 300 characters; at most 256", "MLflow"]),
    ({"seed": -1}, ["seed:"]),
    ({"model": {**TINY["model"], "width": 10**9}}, ["model.width/model.depth", "parameters; at most 1e+09"]),
    ({"resources": {"num_cpus": (os.cpu_count() or 1) + 1, "num_gpus": 0}},
     ["resources.num_cpus", "this machine has"]),
])
def test_config_refused_before_work(sweep_refused, overrides, words):
    sweep_refused({**TINY, **overrides}, words=words)


def test_memory_a_variant_needs_is_checked():
    """Under the parameter cap but larger than a machine's memory: refused with the
    estimate, instead of an out-of-memory death inside ``ray::run_variant()``."""
    from pipeline.training import capacity
    from pipeline.errors import KMAError
    from pipeline.training.runner import preflight

    variants = config.expand(config.validate({**TINY, "model": {**TINY["model"], "depth": 2, "width": 20_000}}))
    sizes = preflight(variants)  # 4e8 parameters: weights, gradients, Adam's moments, snapshot rows
    assert sizes[variants[0].run_id][0] > 4 * 10**8
    small = capacity.Machine("m", cpus=4, gpus=0, memory=4 * 2**30)
    with pytest.raises(KMAError, match=r"x.yaml: model.width/model.depth: .* needs at least .* GB of memory"):
        capacity.check_fits(variants, sizes, [small], "this machine", "x.yaml")
    large = capacity.Machine("m", cpus=4, gpus=0, memory=64 * 2**30)
    capacity.check_fits(variants, sizes, [large], "this machine", "x.yaml")


def test_duplicate_yaml_key(sweep_refused):
    text = yaml.safe_dump(TINY) + "epochs: 99\n"
    line = sweep_refused(text, words=["epochs: duplicate key at line"])
    assert "first given at line" in line


def test_duplicate_nested_key(sweep_refused):
    sweep_refused("name: x\nmodel:\n  depth: 2\n  width: 8\n  depth: 3\n",
                  words=["model.depth: duplicate key at line 5 (first given at line 3)"])


def test_binary_config(sweep_refused):
    sweep_refused(b"\x7fELF\x02\x01\x01\x00\xff\xfe" * 10, words=["not a YAML text file"])


def test_bad_yaml_in_override(sweep_refused):
    sweep_refused(TINY, "model.depth=[2,", words=["model.depth: override value '[2,' is not valid YAML"])


def test_exponent_floats_are_numbers(tiny_config):
    """``1e-3`` is a float (PyYAML alone reads it as a string, which strict types refuse)."""
    cfg = config.load(tiny_config(), ["optimizer.lr=1e-3", "optimizer.weight_decay=5E-4"])
    assert cfg.optimizer.lr == 1e-3 and cfg.optimizer.weight_decay == 5e-4


# --------------------------------------------------------------------------- grid size
def test_huge_grid_refused_without_expanding(sweep_refused):
    """10^6 variants, no terminal: refused before the grid is built (peak memory of the
    whole command well under what 10^6 variants take, ~1.5 GB)."""
    big = {**TINY, "seeds": 1000, "model": {**TINY["model"], "depth": list(range(1, 11)),
                                            "width": list(range(1, 101))}}
    tracemalloc.start()
    try:
        sweep_refused(big, words=["1,000,000 variants, more than 10,000", "--yes"])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 50 * 2**20, peak


def test_large_grid_asks_on_a_terminal(tmp_path, kma_env):
    """10,001 variants on a terminal: a question; "n" refuses, "y" goes on (here to the
    next refusal, CPUs, so no Ray starts)."""
    cfg = {**TINY, "seeds": 10_001, "model": {**TINY["model"], "depth": 1},
           "resources": {"num_cpus": (os.cpu_count() or 1) + 1, "num_gpus": 0}}
    path = tmp_path / "big.yaml"
    path.write_text(yaml.safe_dump(cfg))
    for answer, expect in (("n", "not confirmed, nothing done"), ("y", "resources.num_cpus")):
        controller, terminal = pty.openpty()
        p = subprocess.Popen(kma_cmd("sweep", path, "--store", tmp_path / "s"), stdin=terminal,
                             stdout=terminal, stderr=terminal, env=kma_env, cwd=tmp_path, close_fds=True)
        os.close(terminal)
        out = b""
        while b"[y/N]" not in out:
            chunk = os.read(controller, 1024)
            assert chunk, out
            out += chunk
        os.write(controller, answer.encode() + b"\n")
        assert p.wait(timeout=300) == 2
        while True:
            try:
                chunk = os.read(controller, 4096)
            except OSError:  # the terminal closed with the process
                break
            if not chunk:
                break
            out += chunk
        os.close(controller)
        text = out.decode(errors="replace")
        assert "10,001 variants" in text and expect in text, text
        assert "Traceback" not in text and not (tmp_path / "s").exists()


def test_grid_size_is_counted():
    cfg = config.validate({**TINY, "seeds": 3, "init": ["kaiming", "xavier"]})
    assert config.grid_size(cfg) == len(config.expand(cfg)) == 2 * 2 * 3


# --------------------------------------------------------------------------- stores
def _linear_run(store, run_id, T=30, P=200, seed=0, status="complete"):
    rng = np.random.default_rng(seed)
    V = np.linalg.qr(rng.standard_normal((P, 3)))[0]
    lam = np.array([0.95, 0.8, 0.5])
    layout = Layout.from_named_shapes([("a.weight", (P // 2,)), ("b.weight", (P - P // 2,))])
    w = store.create_run(run_id, layout, config={"depth": 2}, extra={"sweep": "bad"})
    for t in range(T):
        w.append((V @ lam**t).astype(np.float32), epoch=t)
    w.finish(status, metrics={"train_loss": [1.0, 0.5]})


@pytest.fixture
def three_runs(tmp_path):
    store = TrajectoryStore(str(tmp_path / "s"))
    for i, rid in enumerate(("r1", "r2", "r3")):
        _linear_run(store, rid, seed=i)
    return store


def test_write_error_on_one_run_keeps_going(three_runs, tmp_path, capsys):
    """A run whose analysis cannot be written (a file where its ``analyses`` folder goes):
    one line naming the run and the cause; the other runs analysed; --json written with
    an "errors" entry; exit code 1; nothing of the failed analysis kept."""
    (tmp_path / "s/runs/r2/analyses").write_text("in the way")
    out = tmp_path / "out.json"
    rc, lines = run_main(capsys, "analyze", "--store", tmp_path / "s", "--window", "10", "--no-mlflow",
                         "--json", out)
    assert rc == 1, lines
    errors = [x for x in lines if x.startswith("kma: error:")]
    assert len(errors) == 1 and "run r2: cannot write its analysis" in errors[0], lines
    assert "FileExistsError" in errors[0] or "NotADirectoryError" in errors[0], errors
    payload = json.loads(out.read_text())
    assert {r["run_id"] for r in payload["runs"]} == {"r1", "r3"}
    assert [e["run_id"] for e in payload["errors"]] == ["r2"]
    for rid in ("r1", "r3"):
        assert list_analyses(three_runs.open_run(rid)) == [AID]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out.json")] == []


def test_figure_write_error_on_one_run_keeps_going(three_runs, tmp_path, capsys):
    """``--plots DIR`` where one run's figure folder cannot be made (a file has its name):
    one line naming the run; the other runs' figures written; exit code 1."""
    plots = tmp_path / "plots"
    plots.mkdir()
    (plots / "r1").write_text("in the way")
    rc, lines = run_main(capsys, "analyze", "--store", tmp_path / "s", "--window", "10", "--no-mlflow",
                         "--plots", plots)
    assert rc == 1, lines
    errors = [x for x in lines if x.startswith("kma: error:")]
    assert len(errors) == 1 and "run r1: cannot write its figures" in errors[0], lines
    for rid in ("r2", "r3"):
        img = png_rgb(plots / rid / "spectrum.png")  # a whole PNG with the Ritz values drawn:
        assert saturated_mask(img).sum() > 500, rid  # coloured dots and colour bar (blank: none)


def test_half_written_analysis_is_redone(three_runs, tmp_path, capsys):
    """An analysis left ``writing`` (a killed process) is not current: ignored by
    list_analyses, and the next ``kma analyze`` writes it whole."""
    half = three_runs.open_run("r1").group.require_group("analyses").create_group(AID)
    half.attrs.update({"status": "writing"})
    assert list_analyses(three_runs.open_run("r1")) == []
    rc, lines = run_main(capsys, "analyze", "--store", tmp_path / "s", "--run", "r1", "--window", "10",
                         "--no-mlflow")
    assert rc == 0, lines
    run = three_runs.open_run("r1")
    rows = load_results(run, AID)   # 3 windows, for the network and each of its 2 layers
    assert list_analyses(run) == [AID] and sorted((r.layer, r.window) for r in rows) == sorted(
        (layer, w) for layer in ("all", "a", "b") for w in [(0, 10), (10, 20), (20, 30)])


def test_output_paths_checked_before_work(three_runs, tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    (tmp_path / "adir").mkdir()
    store = tmp_path / "s"
    refused(capsys, "analyze", "--store", store, "--json", tmp_path / "adir", "--no-mlflow",
            words=["--json", "is a folder"])
    refused(capsys, "analyze", "--store", store, "--json", tmp_path / "afile/x/out.json", "--no-mlflow",
            words=["--json", "is a file, not a folder"])
    refused(capsys, "analyze", "--store", store, "--plots", tmp_path / "afile", "--no-mlflow",
            words=["--plots", "is a file"])
    refused(capsys, "compare", "--store", store, "--out", tmp_path / "afile", words=["--out", "is a file"])
    for rid in ("r1", "r2", "r3"):  # nothing was analysed
        assert list_analyses(three_runs.open_run(rid)) == []


def test_json_write_failure_leaves_no_temporary_file(tmp_path):
    target = tmp_path / "taken"
    (target / "inside").mkdir(parents=True)  # a non-empty folder: the final rename fails
    with pytest.raises(Exception, match="cannot write"):
        write_text_atomic(target, "{}", "--json")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


def _damage(store_path):
    """r1: zarr.json deleted; r2: zarr.json not JSON; r3: attributes gone."""
    (store_path / "runs/r1/zarr.json").unlink()
    (store_path / "runs/r2/zarr.json").write_text("{garbled")
    meta = json.loads((store_path / "runs/r3/zarr.json").read_text())
    meta["attributes"] = {}
    (store_path / "runs/r3/zarr.json").write_text(json.dumps(meta))


def test_damaged_runs_are_listed_not_dropped(tmp_path, capsys):
    store = TrajectoryStore(str(tmp_path / "s"))
    for i, rid in enumerate(("r1", "r2", "r3", "ok")):
        _linear_run(store, rid, seed=i)
    _damage(tmp_path / "s")
    rc, _ = run_main(capsys, "runs", "--store", tmp_path / "s")
    assert rc == 0
    assert {i.run_id: i.status for i in store.runs()} == {"r1": "corrupt", "r2": "corrupt", "r3": "corrupt",
                                                         "ok": "complete"}
    out = tmp_path / "out.json"
    rc, lines = run_main(capsys, "analyze", "--store", tmp_path / "s", "--window", "10", "--no-mlflow",
                         "--json", out)
    assert rc == 1, lines
    errors = [x for x in lines if x.startswith("kma: error:")]
    assert len(errors) == 3, lines
    for rid, word in (("r1", "zarr.json is missing"), ("r2", "unreadable"), ("r3", "lacks status")):
        (mine,) = [x for x in errors if f"run {rid}:" in x]
        assert "damaged metadata" in mine and word in mine, mine
    payload = json.loads(out.read_text())
    assert {r["run_id"] for r in payload["runs"]} == {"ok"}
    assert {e["run_id"] for e in payload["errors"]} == {"r1", "r2", "r3"}

    # --run on a damaged run says what is wrong, not "still training"
    rc, lines = run_main(capsys, "analyze", "--store", tmp_path / "s", "--run", "r3", "--no-mlflow")
    assert rc == 1 and "damaged metadata" in lines[-1] and "training" not in lines[-1], lines

    # compare: the table of the whole runs, and one line per skipped run
    rc, lines = run_main(capsys, "compare", "--store", tmp_path / "s", "--out", tmp_path / "figs")
    assert rc == 1, lines
    skipped = [x for x in lines if x.startswith("kma: error:")]
    assert sorted(x.split(":")[2].strip() for x in skipped) == ["run r1", "run r2", "run r3"], skipped
    assert len(list((tmp_path / "figs").glob("depth-*/group_spectrum.png"))) == 1


def test_unknown_run_and_negative_seed_refused(three_runs, tmp_path, capsys):
    refused(capsys, "analyze", "--store", tmp_path / "s", "--run", "r1", "--run", "ghost", "--no-mlflow",
            words=["run ghost: not in store"])
    assert list_analyses(three_runs.open_run("r1")) == []  # refused before any work
    refused(capsys, "analyze", "--store", tmp_path / "s", "--method", "randomized", "--seed", "-1",
            "--no-mlflow", words=["--seed -1: must be >= 0"])
    refused(capsys, "compare", "--store", tmp_path / "s", "--run", "ghost", words=["run ghost: not in store"])
    refused(capsys, "analyze", "--store", tmp_path / "s", "--bogus", words=["unrecognized arguments: --bogus"])


def test_kma_ui_refuses_what_it_cannot_serve(tmp_path, capsys):
    """One line and exit 2 before MLflow starts: a server URI, a missing folder, a path
    that is not a URI, a folder given as the database."""
    refused(capsys, "ui", "--tracking-uri", "http://127.0.0.1:5000", words=["a server already"])
    refused(capsys, "ui", "--tracking-uri", f"sqlite:///{tmp_path}/nope/mlflow.db", words=["does not exist"])
    refused(capsys, "ui", "--tracking-uri", "mlflow.db", words=["not a tracking URI"])
    refused(capsys, "ui", "--tracking-uri", f"sqlite:///{tmp_path}", words=["is a folder"])


@pytest.mark.parametrize("env, word", [
    ({"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s"}, "EndpointConnectionError"),
    ({}, "NoCredentialsError"),
])
def test_s3_unreachable_or_no_credentials(tmp_path, kma_env, env, word):
    """s3:// against a closed local port, with and without credentials: one line, exit 2."""
    with refusing_port() as held:  # bound, not listening: refused while we hold it
        port = held.getsockname()[1]
        e = {k: v for k, v in kma_env.items() if not k.startswith("AWS_")}
        e.update({"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_DEFAULT_REGION": "us-east-1",
                  "AWS_CONFIG_FILE": "/dev/null", "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
                  "AWS_EC2_METADATA_DISABLED": "true", **env})
        r = subprocess.run(kma_cmd("runs", "--store", "s3://kma/store"), capture_output=True, text=True,
                           env=e, cwd=tmp_path, timeout=300)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert lines[0].startswith("kma: error: store s3://kma/store: cannot reach it") and word in lines[0]


# --------------------------------------------------------------------------- a cluster
def test_cluster_resources_checked_after_connecting():
    """Against a real (local, 1-CPU) Ray: a variant asking for 2 CPUs fits no node."""
    ray = pytest.importorskip("ray")
    from pipeline.training import capacity
    from pipeline.errors import KMAError
    from pipeline.training.runner import preflight

    variants = config.expand(config.validate({**TINY, "resources": {"num_cpus": 2, "num_gpus": 0}}))
    sizes = preflight(variants)
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        machines = capacity.ray_machines(ray)
        assert [m.cpus for m in machines] == [1.0]
        with pytest.raises(KMAError, match="resources.num_cpus: 2 CPUs per variant, but the Ray cluster at X"):
            capacity.check_fits(variants, sizes, machines, "the Ray cluster at X", "x.yaml")
        capacity.check_fits(variants[:0], sizes, machines, "the Ray cluster at X", "x.yaml")
    finally:
        ray.shutdown()


# --------------------------------------------------------------------------- kma sweep
def test_sweep_exit_code_after_analysis_errors(tmp_path, capsys, tiny_config):
    """``kma sweep`` exits 1 when a run's analysis failed (0 before this fix), and 0 when
    the only thing wrong is a run that diverged too early to analyse: a result. Both
    variants are finished in the store beforehand (one trained for real, in this
    process; one stored as diverged after one snapshot), so no Ray starts."""
    import torch

    from pipeline.training.runner import build_parts, run_variant

    path = tiny_config(analysis={"enabled": True, "window": 5})
    trained, diverged = config.expand(config.load(path))
    store_path, uri = tmp_path / "store", f"sqlite:///{tmp_path / 'mlflow.db'}"
    threads = torch.get_num_threads()
    try:
        assert run_variant(trained, str(store_path))["status"] == "complete"
    finally:
        torch.set_num_threads(threads)
    store = TrajectoryStore(str(store_path))
    _, _, layout = build_parts(diverged)
    w = store.create_run(diverged.run_id, layout, config=diverged.model_dump(mode="json"),
                         extra={"sweep": diverged.sweep})
    w.append(np.zeros(layout.size, np.float32))
    w.finish("diverged")

    blocker = store_path / "runs" / trained.run_id / "analyses"
    blocker.write_text("in the way")
    rc, lines = run_main(capsys, "sweep", path, "--store", store_path, "--tracking-uri", uri)
    assert rc == 1, lines
    errors = [x for x in lines if x.startswith("kma: error:")]
    assert len(errors) == 1 and f"run {trained.run_id}: cannot write its analysis" in errors[0], lines
    assert any(f"run {diverged.run_id}: diverged after 1 snapshot," in x for x in lines), lines

    blocker.unlink()
    rc, lines = run_main(capsys, "sweep", path, "--store", store_path, "--tracking-uri", uri)
    assert rc == 0, lines
    assert not [x for x in lines if x.startswith("kma: error:")], lines
    assert list_analyses(store.open_run(trained.run_id)) == [AnalysisParams(window=5, per_layer=True).analysis_id]


# --------------------------------------------------------------------------- second pass (issue 21)
def _bomb(levels: int = 9) -> str:
    """A YAML alias bomb: ``levels`` levels of 9 aliases of the level below (9**levels values)."""
    lines = ["l0: &l0 [1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    for i in range(1, levels):
        lines.append(f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]")
    return "\n".join(lines) + "\n"


def test_yaml_alias_bomb_refused_at_once(sweep_refused):
    """9 levels of 9 aliases kept ``kma sweep`` busy for minutes before an "unknown key"
    line; the expansion is counted before any walk: one line, at once."""
    import time

    t0 = time.perf_counter()
    sweep_refused(_bomb(), words=["alias bomb"])
    assert time.perf_counter() - t0 < 10
    sweep_refused("a: &a [*a]\n", words=["recursive alias"])


def test_yaml_aliases_of_ordinary_size_still_work(tmp_path):
    text = yaml.safe_dump(TINY) + "extra: &e [1, 2]\n"
    from pipeline.yamlload import load_text

    assert load_text("a: &a {x: 1}\nb: *a\nc: [*a, *a]\n", "x")["c"] == [{"x": 1}, {"x": 1}]
    assert load_text(text, "x")["extra"] == [1, 2]


@pytest.mark.parametrize("what", ["name", "path"])
def test_long_paths_are_one_line(three_runs, tmp_path, capsys, what):
    """A 256-character name, or a path over 4,096 characters, as ``--store``, ``--json``,
    ``--plots``, ``compare --out``, ``depth --signal``, the SQLite path: one line, exit 2."""
    long = tmp_path / ("n" * 256) if what == "name" else tmp_path / "/".join(["d" * 200] * 21)
    store = tmp_path / "s"
    for args in (["runs", "--store", long],
                 ["analyze", "--store", store, "--no-mlflow", "--json", long / "x.json"],
                 ["analyze", "--store", store, "--no-mlflow", "--plots", long],
                 ["compare", "--store", store, "--out", long],
                 ["depth", "--signal", str(long) + ".npy"],
                 ["sync", "--store", store, "--tracking-uri", f"sqlite:///{long}.db"]):
        line = refused(capsys, *args)
        assert "too long" in line or "no such" in line, (args[0], line)
        assert len(line) < 400, line
    for rid in ("r1", "r2", "r3"):
        assert list_analyses(three_runs.open_run(rid)) == []


def test_depth_signal_of_huge_values_is_refused(tmp_path, capsys):
    """A sine × 1e308 made the SVD raise; × 1e160 reported "noise std inf" and exit 0."""
    x = np.linspace(0, 1, 256, endpoint=False)
    for scale in (1e308, 1e160):
        path = tmp_path / f"s{scale:.0e}.npy"
        np.save(path, np.sin(2 * np.pi * 4 * x) * scale)
        refused(capsys, "depth", "--signal", path, words=["too large to analyse", "rescale"])
    path = tmp_path / "ok.npy"
    np.save(path, np.sin(2 * np.pi * 4 * x) * 1e100)   # big but finite in every norm: analysed
    rc, _ = run_main(capsys, "depth", "--signal", path, "-q")
    assert rc == 0


def test_depth_signal_with_a_lying_header_is_refused(tmp_path, capsys):
    """A tiny .npy whose header claims 2**40 float64 values: one line, no allocation."""
    from numpy.lib import format as npformat

    path = tmp_path / "liar.npy"
    with open(path, "wb") as f:
        npformat.write_array_header_1_0(f, {"descr": "<f8", "fortran_order": False, "shape": (2**40,)})
        f.write(np.zeros(64).tobytes())
    refused(capsys, "depth", "--signal", path, words=["header claims 1,099,511,627,776 values", "512 bytes"])


@pytest.mark.parametrize("policy, key", [
    ({"stop": {"when": "converged", "window": 20}}, "stop.window: 20 snapshots, but a run takes only 13"),
    ({"prune": {"method": "magnitude", "sparsity": 0.5, "after": 30}}, "prune.after: 30 snapshots"),
    ({"freeze": {"after": 40}}, "freeze.after: 40 snapshots"),
])
def test_policy_options_that_cannot_fire_are_refused(sweep_refused, policy, key):
    line = sweep_refused({**TINY, **policy}, words=[key, "never fires"])
    assert "epochs 12, snapshot.every 1" in line


def test_stop_rule_v2_with_per_step_snapshots_or_an_unknown_rule_is_refused(sweep_refused):
    sweep_refused({**TINY, "stop": {"window": 6}, "snapshot": {"unit": "step"}},
                  words=["stop: rule v3 needs snapshot.unit: epoch", "stop.rule: v1"])
    sweep_refused({**TINY, "stop": {"rule": "v4"}}, words=["stop.rule", "'v3', 'v2' or 'v1'"])


def test_compare_says_what_is_missing(three_runs, tmp_path, capsys):
    """Finished runs without any analysis are not "no finished runs"; ``--by optim.lr``
    (the README's old example) points at ``lr``... here at the runs' own ``depth``."""
    refused(capsys, "compare", "--store", tmp_path / "s", "--out", tmp_path / "o",
            words=["3 finished runs", "none has an analysis", "kma analyze"])
    refused(capsys, "compare", "--store", tmp_path / "s", "--out", tmp_path / "o", "--by", "model.depth",
            words=["--by model.depth: not a config key", "did you mean depth?"])


def test_secrets_in_urls_are_never_printed(three_runs, tmp_path, capsys, kma_env):
    """A password in a tracking URI, an access key in a store URL: masked in the error
    line; and a user:password URL is checked as one (basic auth), not broken by it."""
    with refusing_port() as held:
        port = held.getsockname()[1]
        line = refused(capsys, "sync", "--store", tmp_path / "s",
                       "--tracking-uri", f"http://alice:PASSWORD@127.0.0.1:{port}")
    assert "PASSWORD" not in line and f"http://alice:***@127.0.0.1:{port} is unreachable" in line, line
    assert "Connection refused" in line, line   # the check reached the port (a URL with a password
    # used to fail in urllib before any connection: "nonnumeric port")
    r = subprocess.run(kma_cmd("runs", "--store", "s3://AKIAKEY:SECRETKEY@bucket/x"), capture_output=True,
                       text=True, env={**kma_env, "AWS_ENDPOINT_URL": "http://127.0.0.1:9"}, cwd=tmp_path,
                       timeout=300)
    assert "AKIAKEY" not in r.stderr + r.stdout and "SECRETKEY" not in r.stderr + r.stdout, r.stderr
    assert r.returncode == 2 and r.stderr.startswith("kma: error:"), r.stderr
