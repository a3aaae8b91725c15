"""A tracking server that stops answering: the real MLflow client's failure against a
port nobody listens on is recognised, turned into one line (``TrackingUnavailable``), and
after the first failure no further call goes out (each would wait on MLflow's retries).
The end-to-end fault is ``test_mlflow_server.py::test_mlflow_server_down_during_a_sweep``."""

from __future__ import annotations

import types

import pytest
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from pipeline.tracking.tracker import TrackingUnavailable, _Guarded, _server_gone

from conftest import refusing_port


class _Counting:
    """A real MlflowClient whose method calls are counted."""

    def __init__(self, client):
        self.client, self.calls = client, 0

    def __getattr__(self, name):
        attr = getattr(self.client, name)

        def call(*a, **kw):
            self.calls += 1
            return attr(*a, **kw)

        return call


def test_refused_connection_is_one_line_and_not_retried(monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with refusing_port() as s:
        uri = f"http://127.0.0.1:{s.getsockname()[1]}"
        client = _Counting(MlflowClient(uri))
        tracker = types.SimpleNamespace(uri=uri, down=None)
        guarded = _Guarded(client, tracker)
        with pytest.raises(TrackingUnavailable) as e:
            guarded.search_experiments(max_results=1)
        assert client.calls == 1 and tracker.down
        msg = str(e.value)
        assert "\n" not in msg and msg.startswith(f"MLflow server {uri} is unreachable (")
        assert "kma sync" in msg and e.value.exit_code == 1
        with pytest.raises(TrackingUnavailable):
            guarded.get_experiment_by_name("x")
        assert client.calls == 1   # the second call never reached the network


def test_other_mlflow_errors_are_not_a_server_gone():
    assert not _server_gone(MlflowException("Run 'abc' not found", error_code="RESOURCE_DOES_NOT_EXIST"))
    assert not _server_gone(ValueError("bad value"))
    assert _server_gone(MlflowException("API request to http://h/api failed with error code 503 != 200"))
