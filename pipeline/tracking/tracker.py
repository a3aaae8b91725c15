"""MLflow registry adapter. Only the driver process writes to MLflow.

Every stored run becomes exactly one MLflow run in its sweep's experiment, found again
by its store and id (tags ``kma.store``, the store's absolute location, and
``kma.run_id``), so the same variant trained into two stores gets two records. A
re-run registers nothing new; a run whose status changed (a failed variant that now
completed) replaces its old record; and a record left half-written by an interruption
(still ``RUNNING``: registration terminates a record last, after its tags, params,
metrics and artifact) is replaced by the next registration, which also removes
duplicates and re-attaches analyses to the surviving record. Analyses are child runs
(``mlflow.parentRunId``) of the training run they analysed, keyed by
``kma.analysis_id``. Everything here can be rebuilt from the store (``kma sync``).

A fresh SQLite database is created under a file lock, so that two commands starting at
once on the same new file do not race through MLflow's schema migration.

Where things go in the UI: each experiment is created with the tag
``mlflow.experimentKind = custom_model_development`` and with its artifact location next to the tracking database
(``sqlite:////x/mlflow.db`` → ``/x/mlartifacts/<experiment>``), or under
``$KMA_ARTIFACT_ROOT``; for a tracking server the server's artifact store decides. Never
MLflow's default ``./mlruns`` of the current directory.

Which view the UI opens is not the tag's to decide in MLflow 3.17/3.18: the sidebar's
global "GenAI | Model training" switch is (``WorkflowTypeContext``: the URL's
``workflowType`` query parameter, else the browser's local storage, else GenAI), and the
experiment kind is derived from it (``useExperimentKind`` ignores the tag while
``shouldEnableWorkflowBasedNavigation()`` is on, which it always is). So every link kma
prints (:func:`experiment_url`) carries ``?workflowType=machine_learning``: it opens on
the runs table in any browser.
"""

from __future__ import annotations

import logging
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..errors import KMAError
from ..storage.location import StoreLocation
from .uri import TrackingURI, absolute_tracking_uri

log = logging.getLogger(__name__)

TAG_RUN = "kma.run_id"
TAG_ANALYSIS = "kma.analysis_id"
TAG_KIND = "kma.kind"
TAG_STORE = "kma.store"
TAG_URI = "kma.trajectory_uri"
TAG_EXPERIMENT_KIND = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"  # MLflow 3's model-training experiment view
WORKFLOW_QUERY = "workflowType=machine_learning"   # MLflow UI: the model-training view (see above)
LOCAL_UI = "http://127.0.0.1:5000"   # where `mlflow ui` serves by default
DONE = ("FINISHED", "FAILED", "KILLED")  # MLflow states of a completely written record
_MAX_PARAM = 6000


RAY_JOB_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"   # set by Ray in the driver of a `ray job submit`


def default_tracking_uri() -> str:
    """``$MLFLOW_TRACKING_URI``, else a SQLite file in the working directory, except in
    the driver of a Ray job, whose working directory is Ray's temporary copy of
    ``--working-dir`` (shared by jobs with the same files, gone with the cluster): there a
    tracking URI must be given."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    if os.environ.get(RAY_JOB_ENV):
        raise KMAError(f"no MLflow tracking URI: this Ray job's working directory {Path.cwd()} is Ray's "
                       "temporary copy of --working-dir; pass --tracking-uri http://SERVER:5000 (or an "
                       "absolute sqlite:////shared/path/mlflow.db), or set MLFLOW_TRACKING_URI")
    return f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def tracking_uri_for(explicit: str | None, store=None) -> str:
    """The tracking URI a command on ``store`` uses: ``explicit`` (``--tracking-uri``),
    else ``$MLFLOW_TRACKING_URI``, else the one the store's sweep recorded
    (:attr:`TrajectoryStore.tracking_uri`), else ``./mlflow.db``."""
    if explicit:
        return explicit
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    recorded = getattr(store, "tracking_uri", None) if store is not None else None
    return recorded or default_tracking_uri()


def artifact_root(tracking_uri: str) -> str | None:
    """Where new experiments keep their artifacts: ``$KMA_ARTIFACT_ROOT`` if set, else the
    folder ``mlartifacts`` beside a SQLite database file, else None (a tracking server's
    own artifact store)."""
    if os.environ.get("KMA_ARTIFACT_ROOT"):
        root = os.environ["KMA_ARTIFACT_ROOT"]
        return str(Path(root).resolve()) if "://" not in root else root.rstrip("/")
    db = TrackingURI(tracking_uri).sqlite_path
    if db is not None:
        return str(db.resolve().parent / "mlartifacts")
    return None


def experiment_url(tracking_uri: str, experiment_id: str, ui: str | None = None) -> str:
    """The MLflow UI's page of an experiment's runs: on the tracking server itself for an
    HTTP URI, else on ``ui`` (default: ``mlflow ui``'s http://127.0.0.1:5000), in the
    model-training view (``?workflowType=machine_learning``: MLflow 3.17 would open a
    GenAI overview otherwise)."""
    base = ui or (tracking_uri if tracking_uri.startswith(("http://", "https://")) else LOCAL_UI)
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}?{WORKFLOW_QUERY}"


def ui_command(tracking_uri: str) -> str | None:
    """The command that serves the UI for a database URI (None for a tracking server):
    ``kma ui`` (MLflow's own UI server, opening experiments on the runs table)."""
    if tracking_uri.startswith(("http://", "https://")):
        return None
    return f"kma ui --tracking-uri {tracking_uri}"


def _slug(name: str) -> str:
    """An experiment name as one safe path segment."""
    import re

    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "experiment"


class TrackingUnavailable(KMAError):
    """The tracking server stopped answering after the command had started: what was
    trained or analysed is in the store, and ``kma sync`` registers it once it is back."""

    exit_code = 1


class Tracker:
    """Registers runs and analyses in one MLflow tracking server or database.

    A server that stops answering midway (connection refused or timed out, a 5xx reply
    after MLflow's retries) turns every later call into :class:`TrackingUnavailable` at
    once, without waiting on retries again: ``down`` holds the first failure's line."""

    def __init__(self, tracking_uri: str | None = None):
        self.uri = absolute_tracking_uri(tracking_uri or default_tracking_uri())
        self.artifact_root = artifact_root(self.uri)
        self.down: str | None = None
        check_reachable(self.uri)
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        from mlflow.tracking import MlflowClient

        try:
            with _sqlite_lock(self.uri):  # first use of a new SQLite file migrates its schema
                self.client = MlflowClient(tracking_uri=self.uri)
                self.client.search_experiments(max_results=1)
        except Exception as e:  # noqa: BLE001 - any backend failure is the user's URI
            from ..secrets import mask_url

            raise KMAError(mask_url(f"MLflow at {self.uri}: cannot use it ({_first_line(e)})")) from None
        if self.uri.startswith(("http://", "https://", "sqlite:")):
            self.client = _Guarded(self.client, self)
        self._experiments: dict[str, str] = {}

    # -- experiments and lookup ----------------------------------------------------
    def experiment_id(self, name: str) -> str:
        if name not in self._experiments:
            exp = self.client.get_experiment_by_name(name)
            if exp is not None and exp.lifecycle_stage == "deleted":
                self.client.restore_experiment(exp.experiment_id)
            if exp is None:
                location = f"{self.artifact_root}/{_slug(name)}" if self.artifact_root else None
                try:
                    exp_id = self.client.create_experiment(
                        name, artifact_location=location, tags={TAG_EXPERIMENT_KIND: EXPERIMENT_KIND})
                except Exception:  # noqa: BLE001 - created meanwhile by a concurrent sweep?
                    exp = self.client.get_experiment_by_name(name)
                    if exp is None:
                        raise
                    exp_id = exp.experiment_id
            else:
                exp_id = exp.experiment_id
                if TAG_EXPERIMENT_KIND not in exp.tags:  # made by an older version
                    self.client.set_experiment_tag(exp_id, TAG_EXPERIMENT_KIND, EXPERIMENT_KIND)
                if self.artifact_root and not exp.artifact_location.removeprefix("file://").startswith(
                        self.artifact_root):
                    log.warning("MLflow experiment %s keeps its artifacts where it was created: %s",
                                name, exp.artifact_location)
            self._experiments[name] = exp_id
        return self._experiments[name]

    def find(self, experiment: str, run_id: str, analysis_id: str | None = None, *,
             store: str | None = None, kind: str | None = None) -> list:
        """Records of ``run_id`` (its training record, one analysis, or with
        ``kind="analysis"`` all its analyses), oldest first; with ``store``, only those of
        that store (records from before the ``kma.store`` tag match by trajectory URI)."""
        flt = f"tags.`{TAG_RUN}` = '{quote_filter_value(run_id)}'"
        if analysis_id:
            flt += f" and tags.`{TAG_ANALYSIS}` = '{quote_filter_value(analysis_id)}'"
        else:
            flt += f" and tags.`{TAG_KIND}` = '{kind or 'training'}'"
        found = self.client.search_runs([self.experiment_id(experiment)], filter_string=flt,
                                        max_results=1000, order_by=["attributes.start_time ASC"])
        if store is not None:
            found = [r for r in found if _same_store(r.data.tags, store, run_id)]
        return found

    # -- training runs ---------------------------------------------------------------
    def register_training(
        self,
        *,
        experiment: str,
        run_id: str,
        status: str,
        params: dict[str, Any],
        metrics: dict[str, list],
        trajectory_uri: str,
        config_yaml: str,
        extra_tags: dict[str, str] | None = None,
        store: str | None = None,
        run_name: str | None = None,
        start_ms: int | None = None,
        end_ms: int | None = None,
    ) -> tuple[str, bool]:
        """Log one finished training run; returns (mlflow run id, newly created?).

        ``store`` is the store's absolute location (default: ``trajectory_uri`` without
        its ``/runs/<run_id>`` tail). ``run_name`` is what the UI shows (default: the run
        id); ``start_ms``/``end_ms`` (Unix milliseconds) the training's start and end, so
        the UI's duration is the training time, not the registration time. An existing complete record with the same status is
        kept; half-written records (never terminated), records of another status and
        duplicates are deleted, and analyses are re-attached to the record that stays.
        """
        store = store or _store_of(trajectory_uri, run_id)
        existing = self.find(experiment, run_id, store=store)
        keep = next((r for r in existing if r.info.status in DONE
                     and r.data.tags.get("kma.status") == status), None)
        for old in existing:
            if old is not keep:
                why = "half-written" if old.info.status not in DONE else "superseded"
                log.info("run %s: deleting a %s MLflow record %s", run_id, why, old.info.run_id)
                self.client.delete_run(old.info.run_id)
        if keep is not None:
            if len(existing) > 1:
                self._reattach(experiment, run_id, store, keep.info.run_id)
            return keep.info.run_id, False
        tags = {
            TAG_RUN: run_id,
            TAG_KIND: "training",
            TAG_STORE: store,
            "kma.status": status,
            TAG_URI: trajectory_uri,
            "kma.sweep": experiment,
            **(extra_tags or {}),
        }
        run = self.client.create_run(self.experiment_id(experiment), run_name=run_name or run_id,
                                     tags=tags, start_time=start_ms)
        rid = run.info.run_id
        self.log_series(rid, metrics, params=params)
        self.client.log_text(rid, config_yaml, "config.yaml")
        # terminated last: a record still RUNNING is one an interruption left half-written
        # bad_init: ended on purpose by the bad-initialization policy (KILLED, not FAILED)
        state = {"complete": "FINISHED", "bad_init": "KILLED"}.get(status, "FAILED")
        self.client.set_terminated(rid, state, end_time=end_ms)
        if existing:
            self._reattach(experiment, run_id, store, rid)
        return rid, True

    def _reattach(self, experiment: str, run_id: str, store: str, parent: str) -> None:
        """Point every analysis record of the run at ``parent``."""
        for child in self.find(experiment, run_id, store=store, kind="analysis"):
            if child.data.tags.get("mlflow.parentRunId") != parent:
                self.client.set_tag(child.info.run_id, "mlflow.parentRunId", parent)

    # -- analyses --------------------------------------------------------------------
    def register_analysis(
        self,
        *,
        experiment: str,
        run_id: str,
        analysis_id: str,
        params: dict[str, Any],
        metrics: dict[str, list[tuple[int, float]]],
        artifacts: list[Path],
        tags: dict[str, str] | None = None,
        store: str | None = None,
        replace: bool = True,
        run_name: str | None = None,
        start_ms: int | None = None,
        end_ms: int | None = None,
    ) -> str:
        """Log an analysis as a child of the run's training record. A previous record of
        the same analysis id (same store) is replaced, or with ``replace=False`` kept if
        it was completely written (half-written ones are always replaced). ``metrics``
        are ``{name: [(step, value), ...]}``; ``run_name`` defaults to
        ``<run id>/<analysis id>``; ``start_ms``/``end_ms`` (Unix ms) the analysis' own
        start and end (default: the registration's)."""
        tags = dict(tags or {})
        store = store or tags.get(TAG_STORE) or _store_of(tags.get(TAG_URI, ""), run_id)
        olds = self.find(experiment, run_id, analysis_id, store=store)
        keep = None if replace else next((r for r in olds if r.info.status in DONE), None)
        for old in olds:
            if old is not keep:
                self.client.delete_run(old.info.run_id)
        if keep is not None:
            return keep.info.run_id
        parent = [r for r in self.find(experiment, run_id, store=store) if r.info.status in DONE]
        all_tags = {TAG_RUN: run_id, TAG_ANALYSIS: analysis_id, TAG_KIND: "analysis",
                    TAG_STORE: store, **tags}
        if parent:
            all_tags["mlflow.parentRunId"] = parent[-1].info.run_id
        run = self.client.create_run(
            self.experiment_id(experiment), run_name=run_name or f"{run_id}/{analysis_id}", tags=all_tags,
            start_time=start_ms,
        )
        rid = run.info.run_id
        self.log_params(rid, params)
        self.log_metrics(rid, ((k, v, step) for k, series in metrics.items() for step, v in series))
        for path in artifacts:
            self.client.log_artifact(rid, str(path))
        self.client.set_terminated(rid, "FINISHED", end_time=end_ms)
        return rid

    def summarize_on_training(self, experiment: str, run_id: str, store: str, *, tags: dict[str, str],
                              metrics: dict[str, tuple[int, float]]) -> str | None:
        """Copy an analysis' summary onto the run's training record, so that one row per
        variant holds config → loss → verdict (the table and parallel coordinates read
        each metric's latest value: a later analysis' values supersede). ``metrics``:
        ``{name: (step, value)}``. Returns the training record's id (None if it has none)."""
        from mlflow.entities import Metric, RunTag

        found = [r for r in self.find(experiment, run_id, store=store) if r.info.status in DONE]
        if not found:
            return None
        rid = found[-1].info.run_id
        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, int(step)) for k, (step, v) in sorted(metrics.items())]
        items = [RunTag(k, _param_value(v)) for k, v in sorted(tags.items())]
        for i in range(0, max(len(batch), len(items), 1), 100):
            self.client.log_batch(rid, metrics=batch[i : i + 100], tags=items[i : i + 100])
        return rid

    # -- helpers -----------------------------------------------------------------------
    def log_params(self, rid: str, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, _param_value(v)) for k, v in sorted(params.items())]
        for i in range(0, len(items), 100):
            self.client.log_batch(rid, params=items[i : i + 100])

    def log_series(self, rid: str, series: dict[str, list], params: dict[str, Any] | None = None) -> None:
        """Per-epoch metrics with ``step`` = epoch index (1-based), and ``params``. On a
        database backend every point but each key's last goes in with one insert
        (:mod:`.bulk`); the last points go through ``log_batch`` (which keeps MLflow's
        latest values), in one call with up to 100 params when they fit."""
        from mlflow.entities import Metric, Param

        from .bulk import insert_history

        now = int(time.time() * 1000)
        points = [(name, v, step) for name, values in series.items()
                  for step, v in enumerate(values, start=1) if v is not None]
        last = set({name: i for i, (name, _, _) in enumerate(points)}.values())   # each key's last point
        head = [p for i, p in enumerate(points) if i not in last] if len(points) > 2 * len(last) else []
        if head and guarded_call(self, insert_history, self.client, rid, head, now):
            points = [p for i, p in enumerate(points) if i in last]
        items = [Param(k, _param_value(v)) for k, v in sorted((params or {}).items())]
        if len(items) <= 100 and len(points) + len(items) <= 1000:   # MLflow's log_batch limits
            self.client.log_batch(rid, params=items, metrics=[Metric(k, float(v), now, int(s)) for k, v, s in points])
            return
        self.log_params(rid, params or {})
        self.log_metrics(rid, points)

    def log_metrics(self, rid: str, points) -> None:
        """``(key, value, step)`` points, in batches; None values are skipped."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, int(step)) for k, v, step in points if v is not None]
        for i in range(0, len(batch), 1000):
            self.client.log_batch(rid, metrics=batch[i : i + 1000])


def quote_filter_value(value: str) -> str:
    """``value`` escaped for a single-quoted string in an MLflow search filter."""
    return value.replace("\\", "\\\\").replace("'", "\\'")


def _store_of(trajectory_uri: str, run_id: str) -> str:
    """The store location a run's trajectory URI lies in (absolute for local paths)."""
    tail = f"/runs/{run_id}"
    base = trajectory_uri[: -len(tail)] if trajectory_uri.endswith(tail) else trajectory_uri
    return StoreLocation(base).canonical() if base else ""


def _same_store(tags: dict, store: str, run_id: str) -> bool:
    if TAG_STORE in tags:
        return tags[TAG_STORE] == store
    # a record from before the kma.store tag: its (possibly relative) trajectory URI
    uri = tags.get(TAG_URI)
    return uri is None or _store_of(uri, run_id) == store


@contextmanager
def _sqlite_lock(uri: str):
    """Hold a lock (in the temp dir, keyed by the database path) while a SQLite tracking
    database may be created; other backends need none."""
    if not uri.startswith("sqlite:"):
        yield
        return
    import hashlib
    import tempfile

    from filelock import FileLock

    key = hashlib.sha256(uri.encode()).hexdigest()[:16]
    with FileLock(str(Path(tempfile.gettempdir()) / f"kma-mlflow-{key}.lock"), timeout=600):
        yield


def _param_value(v) -> str:
    s = str(v)
    return s if len(s) <= _MAX_PARAM else s[: _MAX_PARAM - 3] + "..."


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:300] if text else type(e).__name__


def check_reachable(uri: str) -> None:
    """Fail fast, in one line, when an HTTP tracking server does not answer, or a SQLite
    path cannot be a tracking database (a folder; a file of another application)."""
    from ..secrets import mask_url

    if "://" not in uri and not uri.startswith("databricks"):   # MLflow: a folder of its retired file store
        raise KMAError(f"tracking URI {uri}: not a tracking URI; give sqlite:///{uri} (a SQLite file) "
                       "or http://HOST:5000 (a tracking server)")
    if not uri.startswith(("http://", "https://")):
        if uri.startswith("sqlite:///") and ":memory:" not in uri:
            _check_sqlite_file(uri, Path(uri.removeprefix("sqlite:///").partition("?")[0]))
        return
    import base64
    import urllib.error
    import urllib.parse
    import urllib.request

    parts = urllib.parse.urlsplit(uri)
    headers = {}
    try:
        if parts.username is not None or parts.password is not None:   # user:password@host: basic auth
            token = f"{urllib.parse.unquote(parts.username or '')}:{urllib.parse.unquote(parts.password or '')}"
            headers["Authorization"] = "Basic " + base64.b64encode(token.encode()).decode()
            parts = parts._replace(netloc=parts.netloc.rpartition("@")[2])
        plain = urllib.parse.urlunsplit(parts)
        request = urllib.request.Request(plain.rstrip("/") + "/health", headers=headers)
        with urllib.request.urlopen(request, timeout=5) as resp:
            resp.read(16)
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        raise KMAError(mask_url(f"MLflow server {uri} is unreachable ({reason})")) from None


_MLFLOW_TABLES = {"experiments", "runs", "alembic_version"}


def _check_sqlite_file(uri: str, path: Path) -> None:
    """A SQLite tracking path names a file that is absent, empty or an MLflow database:
    never a folder (MLflow would retry for minutes), never another application's
    database (MLflow would add its ~70 tables to it)."""
    import sqlite3

    from ..outputs import check_path_length

    check_path_length(path, "MLflow SQLite file")
    parent = path.parent
    if not parent.is_dir():
        raise KMAError(f"MLflow at {uri}: directory {parent} does not exist")
    if path.is_dir():
        raise KMAError(f"MLflow at {uri}: {path} is a folder, not a database file; name a file in it, "
                       f"e.g. sqlite:///{path / 'mlflow.db'}")
    try:
        if not path.is_file() or path.stat().st_size == 0:
            return
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError as e:
        raise KMAError(f"MLflow at {uri}: cannot read {path} ({e.strerror or e})") from None
    if head != b"SQLite format 3\x00":
        raise KMAError(f"MLflow at {uri}: {path} is not a SQLite database")
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
        try:
            tables = {r[0] for r in con.execute("select name from sqlite_master where type='table'")}
        finally:
            con.close()
    except sqlite3.Error as e:
        raise KMAError(f"MLflow at {uri}: cannot read {path} ({e})") from None
    if tables and not _MLFLOW_TABLES <= tables:
        shown = ", ".join(sorted(tables)[:5]) + (", ..." if len(tables) > 5 else "")
        raise KMAError(f"MLflow at {uri}: {path} is another application's database (tables {shown}), "
                       "not an MLflow one; name a new file")


class _Guarded:
    """An MlflowClient whose calls raise :class:`TrackingUnavailable` (one line) when the
    server stops answering, and at once for every call after the first such failure."""

    def __init__(self, client, tracker: Tracker):
        self._client, self._tracker = client, tracker

    def __getattr__(self, name):
        attr = getattr(self._client, name)
        if not callable(attr):
            return attr

        def call(*args, **kwargs):
            return guarded_call(self._tracker, attr, *args, **kwargs)

        return call


def guarded_call(t: "Tracker", fn, *args, **kwargs):
    """``fn(*args, **kwargs)``, but a server that stopped answering (a SQLite database
    locked by another process) sets ``t.down`` and raises :class:`TrackingUnavailable`,
    at once for every call after the first such failure."""
    if t.down is None:
        try:
            return fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - only an unreachable server is caught
            if not (_db_locked(e) if t.uri.startswith("sqlite:") else _server_gone(e)):
                raise
            t.down = _first_line(_root_cause(e))
            log.warning("%s stopped answering: %s", mlflow_name(t.uri), t.down)
    raise TrackingUnavailable(f"{mlflow_name(t.uri)} is unreachable ({t.down[:200]}); what was "
                              "trained or analysed is kept in the store: `kma sync` registers it "
                              "once it is back") from None


def mlflow_name(uri: str) -> str:
    """``MLflow server URI`` or ``MLflow database URI``, secrets masked, for messages."""
    from ..secrets import mask_url

    return mask_url(f"MLflow {'database' if uri.startswith('sqlite:') else 'server'} {uri}")


def _db_locked(e: BaseException) -> bool:
    """SQLite's "database is locked" (another process holds a write lock) anywhere in the chain."""
    seen = e
    while seen is not None:
        if "database is locked" in str(seen) or "database table is locked" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _root_cause(e: BaseException) -> BaseException:
    while (nxt := e.__cause__ or e.__context__) is not None and nxt is not e:
        e = nxt
    return e


def _server_gone(e: BaseException) -> bool:
    """A refused or timed-out connection anywhere in the chain, or a 5xx reply."""
    import re

    import requests

    seen = e
    while seen is not None:
        if isinstance(seen, (requests.exceptions.ConnectionError, requests.exceptions.Timeout,
                             ConnectionError, TimeoutError)):
            return True
        seen = seen.__cause__ or seen.__context__
    return bool(re.search(r"failed with error code 5\d\d|Max retries exceeded|Connection refused", str(e)))
