"""The console (pipeline/console.py): plain lines without a terminal (no escape sequence,
the last progress line once), rich bars and tables on one; the one plural helper; the
progress of a Dask computation and of the per-window problems of a real fit."""

from __future__ import annotations

import io
import re

import numpy as np
import pytest

from pipeline.console import Console, DaskProgress, table_text
from pipeline.errors import plural

ESC_RE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")

ESC = "\x1b"


class FakeTerminal(io.StringIO):
    """A stream that says it is a terminal (what rich then draws on)."""

    def isatty(self):
        return True


def test_plural():
    assert plural(1, "run") == "1 run" and plural(0, "run") == "0 runs" and plural(2, "run") == "2 runs"
    assert plural(1, "spectrum", "spectra") == "1 spectrum" and plural(3, "spectrum", "spectra") == "3 spectra"
    assert plural(1.0, "CPU", fmt="g") == "1 CPU" and plural(0.5, "GPU", fmt="g") == "0.5 GPUs"
    assert plural(10_000, "variant", fmt=",") == "10,000 variants"
    assert plural(1, "layer", count=False) == "layer" and plural(2, "layer", count=False) == "layers"


def test_progress_without_a_terminal_is_plain_and_says_the_end_once():
    err = io.StringIO()
    c = Console(stream=err)
    p = c.progress("demo", 4)
    p.update(running=2, queued=2)
    p.update(running=2, queued=2)          # nothing finished: no new line
    p.update(done=1, running=2, queued=1)
    p.update(done=3, failed=1, running=0, queued=0)
    p.close()
    c.info("sweep demo: trained 3, failed 1")
    lines = err.getvalue().splitlines()
    assert ESC not in err.getvalue() and "\r" not in err.getvalue()
    assert [re.sub(r" \(\d+s\)$", "", x) for x in lines] == [
        "[demo] 0/4 finished: 0 done, 2 running, 2 queued, 0 failed",
        "[demo] 1/4 finished: 1 done, 2 running, 1 queued, 0 failed",
        "[demo] 4/4 finished: 3 done, 0 running, 0 queued, 1 failed",
        "sweep demo: trained 3, failed 1",
    ]


def test_progress_close_prints_the_final_state_if_not_yet_said():
    err = io.StringIO()
    c = Console(stream=err)
    p = c.progress("demo", 2)
    p.close()  # interrupted before any update
    assert err.getvalue().splitlines()[0].startswith("[demo] 0/2 finished: 0 done, 0 running, 0 queued")
    assert len(err.getvalue().splitlines()) == 1


def test_quiet_prints_no_progress_but_errors():
    err = io.StringIO()
    c = Console(stream=err, quiet=True)
    with c.progress("demo", 2) as p:
        p.update(done=2)
    c.info("summary")
    c.error("kma: error: bad")
    assert err.getvalue() == "kma: error: bad\n"


def test_on_a_terminal_a_rich_bar_then_clean_lines():
    term = FakeTerminal()
    c = Console(stream=term)
    with c.progress("demo", 2) as p:
        p.update(done=1, running=1)
        c.info("a message above the bar")
        p.update(done=2, running=0)
    c.info("sweep demo: trained 2")
    out = term.getvalue()
    assert ESC in out and "━" in out                  # drawn by rich
    assert "2/2" in out and "a message above the bar" in out
    # nothing after the summary: no stray escape sequence once the bar is gone
    assert out.endswith("sweep demo: trained 2\n"), repr(out[-80:])


def test_tables_plain_and_on_a_terminal():
    rows = [["run-a", "complete", 61, 1234], ["b", "running", 3, 5]]
    text = table_text(["RUN", "STATUS", "SNAPSHOTS", "PARAMETERS"], rows,
                      justify={"SNAPSHOTS": "right", "PARAMETERS": "right"})
    assert text.splitlines() == [
        "RUN    STATUS    SNAPSHOTS  PARAMETERS",
        "run-a  complete         61        1234",
        "b      running           3           5",
    ]
    out = io.StringIO()
    Console().table("title line", ["RUN", "STATUS"], [["a", "ok"]], file=out)
    assert out.getvalue() == "title line\nRUN  STATUS\na    ok\n"
    term = FakeTerminal()
    Console().table("title line", ["RUN", "STATUS"], [["a", "ok"]], file=term)
    assert ESC in term.getvalue() and "title line" in term.getvalue() and "─" in term.getvalue()


def test_a_terminal_table_fits_80_columns_without_cutting_values():
    """`kma runs` on an 80-column terminal: the id and the timestamp wrap onto further
    lines, every other value keeps its width (no "…"), long headers are shortened and a
    column empty in every row is left out."""
    from rich.console import Console as RichConsole

    from pipeline.console import _table

    ids = ["mlp-d2-w32-tanh-small_variance-adam-s0-e33b718d7a", "mlp-d12-w512-relu-kaiming-sgd-s1-fc3a95ef41"]
    rows = [[i, "complete", 201, 1234567, "2026-12-06T04:10:33.123456+00:00", "12 (ep 120)", "no", "", "2"]
            for i in ids]
    cols = ["RUN", "STATUS", "SNAPSHOTS", "PARAMETERS", "UPDATED", "CONVERGED", "BAD_INIT", "VAL_ACCURACY",
            "ANALYSES"]
    buf = io.StringIO()
    RichConsole(file=buf, width=80, color_system=None, force_terminal=True).print(
        _table(cols, rows, styled=True, fold=("UPDATED",), width=80))
    lines = ESC_RE.sub("", buf.getvalue()).splitlines()
    assert max(len(ln) for ln in lines) <= 80
    text = "\n".join(lines)
    assert "…" not in text and "VAL_ACC" not in text
    for v in ("complete", "1234567", "12 (ep 120)", "SNAPS", "PARAMS", "CONV", "BAD", "ANALYSES"):
        assert v in text, v
    joined = "".join(ln.split()[0] if ln.split() else "" for ln in lines)   # the folded first column
    assert all(i in joined for i in ids), joined


def test_dask_progress_counts_the_tasks_of_a_real_computation():
    import dask.array as da

    err = io.StringIO()
    c = Console(stream=err, interval=0.0)  # every step printed
    x = da.ones((40, 10), chunks=(10, 10))
    with c.steps("[1/1] r", 0, "task") as steps, DaskProgress(steps, "[1/1] r: reading"):
        assert float((x * 2).sum().compute(scheduler="threads")) == 800.0
    lines = [ln for ln in err.getvalue().splitlines() if ": reading: " in ln]
    counts = [tuple(map(int, re.search(r"reading: (\d+)/(\d+) tasks", ln).groups())) for ln in lines]
    total = counts[-1][1]
    assert total >= 4 and counts[-1][0] == total           # every task of the graph counted
    assert [d for d, _ in counts] == sorted(d for d, _ in counts)


def test_a_long_fit_reports_its_windows(tmp_path):
    """The per-window problems of a real fit on stored float32 data are reported."""
    from pipeline.workflows.analyze import analyze_runs
    from pipeline.config import AnalysisParams
    from pipeline.storage.layout import Layout
    from pipeline.storage.store import TrajectoryStore

    store = TrajectoryStore(str(tmp_path / "s"))
    rng = np.random.default_rng(0)
    T = 40
    A = np.linalg.qr(rng.standard_normal((12, 12)))[0] * 0.97
    X = np.empty((T, 12))
    X[0] = rng.standard_normal(12)
    for t in range(1, T):
        X[t] = A @ X[t - 1]
    w = store.create_run("r", Layout.from_named_shapes([("a.weight", (6,)), ("b.weight", (6,))]),
                         config={}, capacity=T)
    for row in X.astype(np.float32):
        w.append(row)
    w.finish("complete", metrics={})
    err = io.StringIO()
    console = Console(stream=err, interval=0.0)
    report = analyze_runs(store, ["r"], AnalysisParams(window=10, stride=5), console=console)
    assert report == {"r": None}
    text = err.getvalue()
    assert ESC not in text
    # the plan first: 40 snapshots, windows [0,10) ... [30,40): 7, × (all, a, b)
    assert "[1/1] r: 40 snapshots, 7 windows × 3 layers" in text
    counts = [int(m) for m in re.findall(r"\[1/1\] r: windows: (\d+)/21 windows", text)]
    assert counts and counts[-1] == 21 and counts == sorted(counts)
    assert text.rstrip().splitlines()[-1].startswith("[1/1] r: 21 spectra (7 windows × 3 layers) in ")


@pytest.mark.parametrize("n, word", [(1, "1 spectrum (1 window × 1 layer)")])
def test_one_window_one_layer_is_said_in_the_singular(tmp_path, n, word):
    from pipeline.workflows.analyze import analyze_runs
    from pipeline.config import AnalysisParams
    from pipeline.storage.layout import Layout
    from pipeline.storage.store import TrajectoryStore

    store = TrajectoryStore(str(tmp_path / "s"))
    w = store.create_run("one", Layout.from_named_shapes([("w", (5,))]), config={}, capacity=8)
    rng = np.random.default_rng(1)
    for _ in range(8):
        w.append(rng.standard_normal(5).astype(np.float32))
    w.finish("complete", metrics={})
    err = io.StringIO()
    assert analyze_runs(store, ["one"], AnalysisParams(window="all"), console=Console(stream=err)) == {"one": None}
    assert "analysis " in err.getvalue() and ": 1 run, method qr" in err.getvalue()
    assert f"[1/1] one: {word} in " in err.getvalue(), err.getvalue()
    assert "[1/1] one: 8 snapshots, 1 window × 1 layer" in err.getvalue()


def test_a_long_silent_step_still_gets_progress_lines_without_a_terminal():
    """A step that makes no calls for a while (an MLflow upload): the ticker writes the
    phase once the console has been silent for ``interval`` s (polled, generous deadline)."""
    import time

    err = io.StringIO()
    c = Console(stream=err, interval=0.2)
    with c.steps("[1/1] r", 0, "task") as steps:
        steps.relabel("[1/1] r: registering in MLflow", 0)
        deadline = time.monotonic() + 60
        while "registering in MLflow (" not in err.getvalue() and time.monotonic() < deadline:
            time.sleep(0.05)
    assert re.search(r"^\[1/1\] r: registering in MLflow \(\d+s\)$", err.getvalue(), re.M), err.getvalue()
    n = len(err.getvalue())
    time.sleep(0.5)
    assert len(err.getvalue()) == n  # closed: the ticker stopped
    assert ESC not in err.getvalue()


def test_packed_tasks_move_the_sweep_line_once_per_task():
    err = io.StringIO()
    c = Console(stream=err)
    p = c.progress("demo", 6, tasks=2)   # two packed tasks of three runs each
    p.update(running=6, queued=0)
    p.update(done=3, running=3, tasks_done=1)
    p.update(done=6, running=0, tasks_done=2)
    p.close()
    lines = [re.sub(r" \(\d+s\)$", "", x) for x in err.getvalue().splitlines()]
    assert lines == ["[demo] 0/6 finished: 0 done, 6 running, 0 queued, 0 failed; tasks 0/2",
                     "[demo] 3/6 finished: 3 done, 3 running, 0 queued, 0 failed; tasks 1/2",
                     "[demo] 6/6 finished: 6 done, 0 running, 0 queued, 0 failed; tasks 2/2"]
    err = io.StringIO()
    p = Console(stream=err).progress("demo", 2, tasks=2)   # a task per run: nothing about tasks
    p.update(done=2, tasks_done=2)
    p.close()
    assert "tasks" not in err.getvalue()


def test_analysis_on_an_80_column_terminal_never_shows_0_of_0_and_stays_on_one_line(tmp_path, monkeypatch):
    """A real analysis of a stored run with a long id, drawn by rich on an 80-column
    terminal: phases without a count pulse instead of "0/0", the windows phase counts
    them, and every bar line fits the width (the run id is cut in the middle)."""
    from pipeline.config import AnalysisParams
    from pipeline.storage.layout import Layout
    from pipeline.storage.store import TrajectoryStore
    from pipeline.workflows.analyze import analyze_runs

    monkeypatch.setenv("COLUMNS", "80")
    store = TrajectoryStore(str(tmp_path / "s"))
    rid = "mlp-d3-w32-tanh-small_variance-adam-lr0.003-s0-e60-e33b718d7a"
    rng = np.random.default_rng(0)
    A = np.linalg.qr(rng.standard_normal((12, 12)))[0] * 0.97
    X = np.empty((40, 12))
    X[0] = rng.standard_normal(12)
    for t in range(1, 40):
        X[t] = A @ X[t - 1]
    w = store.create_run(rid, Layout.from_named_shapes([("a.weight", (6,)), ("b.weight", (6,))]),
                         config={}, capacity=40)
    for row in X.astype(np.float32):
        w.append(row)
    w.finish("complete", metrics={})
    term = FakeTerminal()
    console = Console(stream=term)
    assert console.rich.width == 80
    assert analyze_runs(store, [rid], AnalysisParams(window=10, stride=5), console=console) == {rid: None}
    text = ESC_RE.sub("", term.getvalue().replace("\x1b[?25l", "").replace("\x1b[?25h", ""))
    bars = [ln for ln in text.splitlines() if "━" in ln]
    assert bars, text
    assert not re.search(r"\b0/0\b", text), text
    assert all(len(ln) <= 80 for ln in bars), [ln for ln in bars if len(ln) > 80]
    for ln in bars:   # a count only where the phase has one (a fast phase may never be drawn)
        m = re.search(r"━ *(\d+)/(\d+) windows", ln)
        assert m is None or int(m.group(2)) == 21, ln
    assert any("…" in ln and ln.startswith("[1/1] mlp-d3-w32") for ln in bars), bars
    assert f"[1/1] {rid}: 21 spectra" in text   # messages keep the whole id
