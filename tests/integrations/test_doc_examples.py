"""The runnable examples of the Recorder and integration pages (``docs/pages``) run here,
as a reader would run them (in a fresh working directory, MLflow by default), and leave
the runs their pages promise."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pipeline.storage.store import TrajectoryStore

PAGES = Path(__file__).resolve().parents[2] / "docs" / "pages"


def python_blocks(page: Path) -> str:
    """Every ```python block of ``page``, in order, as one program."""
    return "\n".join(re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S))


@pytest.fixture(scope="module")
def mlflow_db(tmp_path_factory):
    """One SQLite MLflow for the examples (its schema is created once)."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.mark.parametrize("page, run_id, epochs", [("recorder.md", "my-loop", list(range(31))),
                                                  ("lightning.md", "lightning-demo", list(range(6))),
                                                  ("huggingface.md", "hf-demo", list(range(4)))])
def test_the_page_example_runs_and_records_its_run(page, run_id, epochs, mlflow_db, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_db)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code = python_blocks(PAGES / page)
    assert code.strip()
    exec(compile(code, str(PAGES / page), "exec"), {"__name__": "__main__"})
    run = TrajectoryStore("kma-store").open_run(run_id)
    assert run.status == "complete" and run.attrs["snapshot_epochs"] == epochs
    assert len(run.metrics["train_loss"]) == len(run.metrics["val_loss"]) == epochs[-1]

    from mlflow.tracking import MlflowClient

    found = MlflowClient(tracking_uri=mlflow_db).search_runs(
        [MlflowClient(tracking_uri=mlflow_db).get_experiment_by_name("recorded").experiment_id],
        f"tags.`kma.run_id` = '{run_id}'")
    assert [r.info.status for r in found] == ["FINISHED"]
    if page == "recorder.md":   # the loop printed its verdicts
        assert len(re.findall(r"^(10|20|30) (converged|stalled|still_improving|diverging) ",
                              capsys.readouterr().out, flags=re.M)) == 3
