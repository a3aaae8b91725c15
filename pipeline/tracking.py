"""MLflow registry adapter. Only the driver process writes to MLflow.

Every stored run becomes exactly one MLflow run in its sweep's experiment, found again
by the tag ``kma.run_id``: a re-run registers nothing new, and a run whose status
changed (a failed variant that now completed) replaces its old record. Analyses are
child runs (``mlflow.parentRunId``) of the training run they analysed, keyed by
``kma.analysis_id``. Everything here can be rebuilt from the store.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

from .errors import KMAError

log = logging.getLogger(__name__)

TAG_RUN = "kma.run_id"
TAG_ANALYSIS = "kma.analysis_id"
TAG_KIND = "kma.kind"
_MAX_PARAM = 6000


def default_tracking_uri() -> str:
    """``$MLFLOW_TRACKING_URI``, else a SQLite file in the working directory."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


class Tracker:
    """Registers runs and analyses in one MLflow tracking server or database."""

    def __init__(self, tracking_uri: str | None = None):
        self.uri = tracking_uri or default_tracking_uri()
        _check_reachable(self.uri)
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        from mlflow.tracking import MlflowClient

        try:
            self.client = MlflowClient(tracking_uri=self.uri)
            self.client.search_experiments(max_results=1)
        except Exception as e:  # noqa: BLE001 - any backend failure is the user's URI
            raise KMAError(f"MLflow at {self.uri}: cannot use it ({_first_line(e)})") from None
        self._experiments: dict[str, str] = {}

    # -- experiments and lookup ----------------------------------------------------
    def experiment_id(self, name: str) -> str:
        if name not in self._experiments:
            exp = self.client.get_experiment_by_name(name)
            if exp is not None and exp.lifecycle_stage == "deleted":
                self.client.restore_experiment(exp.experiment_id)
            self._experiments[name] = (
                exp.experiment_id if exp is not None else self.client.create_experiment(name)
            )
        return self._experiments[name]

    def find(self, experiment: str, run_id: str, analysis_id: str | None = None) -> list:
        flt = f"tags.`{TAG_RUN}` = '{run_id}'"
        flt += (
            f" and tags.`{TAG_ANALYSIS}` = '{analysis_id}'"
            if analysis_id
            else f" and tags.`{TAG_KIND}` = 'training'"
        )
        return self.client.search_runs([self.experiment_id(experiment)], filter_string=flt)

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
    ) -> tuple[str, bool]:
        """Log one finished training run; returns (mlflow run id, newly created?)."""
        existing = self.find(experiment, run_id)
        for old in existing:
            if old.data.tags.get("kma.status") == status:
                return old.info.run_id, False
        for old in existing:  # status changed: the store is the truth, replace
            self.client.delete_run(old.info.run_id)
        tags = {
            TAG_RUN: run_id,
            TAG_KIND: "training",
            "kma.status": status,
            "kma.trajectory_uri": trajectory_uri,
            "kma.sweep": experiment,
            **(extra_tags or {}),
        }
        run = self.client.create_run(self.experiment_id(experiment), run_name=run_id, tags=tags)
        rid = run.info.run_id
        self.log_params(rid, params)
        self.log_series(rid, metrics)
        self.client.log_text(rid, config_yaml, "config.yaml")
        self.client.set_terminated(rid, "FINISHED" if status == "complete" else "FAILED")
        return rid, True

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
    ) -> str:
        """Log an analysis as a child of the run's training record (replacing a previous
        record of the same analysis id)."""
        for old in self.find(experiment, run_id, analysis_id):
            self.client.delete_run(old.info.run_id)
        parent = self.find(experiment, run_id)
        all_tags = {TAG_RUN: run_id, TAG_ANALYSIS: analysis_id, TAG_KIND: "analysis", **(tags or {})}
        if parent:
            all_tags["mlflow.parentRunId"] = parent[0].info.run_id
        run = self.client.create_run(
            self.experiment_id(experiment), run_name=f"{run_id}/analysis-{analysis_id}", tags=all_tags
        )
        rid = run.info.run_id
        self.log_params(rid, params)
        self.log_metrics(rid, ((k, v, step) for k, series in metrics.items() for step, v in series))
        for path in artifacts:
            self.client.log_artifact(rid, str(path))
        self.client.set_terminated(rid, "FINISHED")
        return rid

    # -- helpers -----------------------------------------------------------------------
    def log_params(self, rid: str, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, _param_value(v)) for k, v in sorted(params.items())]
        for i in range(0, len(items), 100):
            self.client.log_batch(rid, params=items[i : i + 100])

    def log_series(self, rid: str, series: dict[str, list]) -> None:
        """Per-epoch metrics with ``step`` = epoch index (1-based)."""
        self.log_metrics(rid, ((name, v, step) for name, values in series.items()
                               for step, v in enumerate(values, start=1)))

    def log_metrics(self, rid: str, points) -> None:
        """``(key, value, step)`` points, in batches; None values are skipped."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, int(step)) for k, v, step in points if v is not None]
        for i in range(0, len(batch), 1000):
            self.client.log_batch(rid, metrics=batch[i : i + 1000])


def _param_value(v) -> str:
    s = str(v)
    return s if len(s) <= _MAX_PARAM else s[: _MAX_PARAM - 3] + "..."


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:300] if text else type(e).__name__


def _check_reachable(uri: str) -> None:
    """Fail fast, in one line, when an HTTP tracking server does not answer."""
    if not uri.startswith(("http://", "https://")):
        if uri.startswith("sqlite:///"):
            parent = Path(uri.removeprefix("sqlite:///")).parent
            if not parent.is_dir():
                raise KMAError(f"MLflow at {uri}: directory {parent} does not exist")
        return
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=5) as resp:
            resp.read(16)
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        raise KMAError(f"MLflow server {uri} is unreachable ({reason})") from None
