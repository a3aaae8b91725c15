"""The tracking URI's faults (issue 21): a folder as the SQLite path, another
application's database, a database locked by another process mid-sweep, a password in
a server URL. A real SQLite MLflow; the lock is a real ``BEGIN EXCLUSIVE`` of another
connection."""

from __future__ import annotations

import logging
import sqlite3
import time

import numpy as np
import pytest

from pipeline import config
from pipeline.workflows.sweep import SweepSummary, _record
from pipeline.errors import KMAError
from pipeline.storage.layout import Layout
from pipeline.storage.store import TrajectoryStore
from pipeline.tracking.tracker import Tracker

LAYOUT = Layout.from_named_shapes([("l0.weight", (3, 2))])


def test_a_folder_as_the_sqlite_path_is_one_line_at_once(tmp_path):
    """It took ~108 s of MLflow retries and nine warnings before the error."""
    t0 = time.perf_counter()
    with pytest.raises(KMAError, match=r"is a folder, not a database file; name a file in it"):
        Tracker(f"sqlite:///{tmp_path}")
    assert time.perf_counter() - t0 < 5
    assert list(tmp_path.iterdir()) == []


def test_another_applications_database_is_left_alone(tmp_path):
    """MLflow used to add its ~70 tables to it (or 5 before failing on a ``runs`` table)."""
    db = tmp_path / "other-app.db"
    con = sqlite3.connect(db)
    con.execute("create table invoices (id integer primary key, total real)")
    con.execute("insert into invoices values (1, 9.5)")
    con.commit()
    con.close()
    before = db.read_bytes()
    with pytest.raises(KMAError, match=r"another application's database \(tables invoices\)"):
        Tracker(f"sqlite:///{db}")
    assert db.read_bytes() == before
    (tmp_path / "junk.db").write_bytes(b"not sqlite at all, just text")
    with pytest.raises(KMAError, match="is not a SQLite database"):
        Tracker(f"sqlite:///{tmp_path / 'junk.db'}")
    Tracker(f"sqlite:///{tmp_path / 'fresh.db'}")     # a new file, and then an MLflow one, are fine
    Tracker(f"sqlite:///{tmp_path / 'fresh.db'}")


def test_a_database_locked_mid_sweep_leaves_runs_for_sync(tmp_path, tiny_config, caplog):
    """Another process holds the SQLite write lock after the sweep opened MLflow: the
    run's registration stops with one warning (no MLflow traceback), the sweep's
    bookkeeping goes on (the run counts as trained, unregistered), and every later call
    fails at once."""
    v = config.expand(config.load(tiny_config()))[0]
    db = tmp_path / "mlflow.db"
    tracker = Tracker(f"sqlite:///{db}")
    store = TrajectoryStore(str(tmp_path / "s"))
    w = store.create_run(v.run_id, LAYOUT, config=v.model_dump(mode="json"), extra={"sweep": v.sweep})
    for i in range(3):
        w.append(np.full(LAYOUT.size, i, np.float32), epoch=i)
    w.finish("complete", metrics={"train_loss": [1.0 / (k + 1) for k in range(12)]})   # a bulk insert

    holder = sqlite3.connect(db, timeout=0)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        summary = SweepSummary(v.sweep, str(tmp_path / "s"))
        with caplog.at_level(logging.WARNING):
            _record({"run_id": v.run_id, "status": "complete"}, store, tracker, summary)
        assert summary.trained == [v.run_id] and summary.unregistered == [v.run_id], summary
        assert tracker.down and "locked" in tracker.down
        t0 = time.perf_counter()
        _record({"run_id": v.run_id, "status": "complete"}, store, tracker, summary)   # at once now
        assert time.perf_counter() - t0 < 1
    finally:
        holder.rollback()
        holder.close()
    assert not [r for r in caplog.records if "Traceback" in r.getMessage()]
    assert store.status(v.run_id) == "complete"


def test_the_sweep_header_and_logs_mask_the_password(tmp_path, capsys):
    """The console and every log handler of ``kma`` mask URL secrets."""
    from pipeline.cli import main
    from pipeline.console import Console

    Console().info("sweep x: ...; MLflow https://bob:hunter2@mlflow.example/?token=abc")
    err = capsys.readouterr().err
    assert "hunter2" not in err and "abc" not in err and "https://bob:***@mlflow.example/?token=***" in err
    main(["runs", "--store", str(tmp_path / "none")])   # installs the filter on the root handlers
    capsys.readouterr()
    record = logging.LogRecord("x", logging.WARNING, __file__, 1, "server %s down", ("http://u:pw@h",), None)
    for h in logging.getLogger().handlers:
        for f in h.filters:
            f.filter(record)
    assert record.getMessage() == "server http://u:***@h down"
