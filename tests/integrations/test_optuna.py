"""A real Optuna study pruning and finishing trials on their spectral verdict; each
trial records with a real Recorder into a real store (and, for one study, a real SQLite
MLflow); tiny full-batch regressions."""

from __future__ import annotations

import optuna
import pytest
import torch

from pipeline.errors import KMAError
from pipeline.integrations.optuna import SpectralPruner, report
from pipeline.record import Recorder
from pipeline.storage.store import TrajectoryStore

import doc_examples

EPOCHS = 40
optuna.logging.set_verbosity(optuna.logging.WARNING)


def _objective(store, tracking_uri=False, check_every=1):
    def objective(trial):
        lr = trial.suggest_categorical("lr", [0.3, 0.05, 1.5])
        g = torch.Generator().manual_seed(0)
        w = torch.tensor([[1.0], [-2.0], [0.5], [0.0]])
        x, xv = torch.randn(128, 4, generator=g), torch.randn(64, 4, generator=g)
        torch.manual_seed(0)
        net = torch.nn.Linear(4, 1)
        opt = torch.optim.SGD(net.parameters(), lr=lr)
        with Recorder(store, f"opt-t{trial.number}", tracking_uri=tracking_uri,
                      config={"epochs": EPOCHS, "lr": lr}) as rec:
            rec.snapshot(net, epoch=0)
            for epoch in range(1, EPOCHS + 1):
                loss = ((net(x) - x @ w) ** 2).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
                with torch.no_grad():
                    val = float(((net(xv) - xv @ w) ** 2).mean())
                rec.snapshot(net, epoch=epoch, metrics={"train_loss": loss.item(), "val_loss": val})
                if report(trial, rec, val, epoch, check_every=check_every):
                    break
        return val
    return objective


def _study(pruner, lrs):
    study = optuna.create_study(direction="minimize", pruner=pruner,
                                sampler=optuna.samplers.RandomSampler(seed=0))
    for lr in lrs:
        study.enqueue_trial({"lr": lr})
    return study


def test_the_docs_example_completes_converged_and_prunes_diverging_trials(tmp_path, capsys):
    """The example on docs/pages/optuna.md, run as the page shows it."""
    ns = doc_examples.run("optuna.md", tmp_path)
    study, epochs = ns["study"], ns["EPOCHS"]
    t = {tr.params["lr"]: tr for tr in study.trials}
    s = TrajectoryStore(str(tmp_path / "kma-store"))

    conv = t[0.3]   # converged: complete, ended early, its value stands (it is the best)
    assert conv.state == optuna.trial.TrialState.COMPLETE and conv.user_attrs["kma_class"] == "converged"
    assert max(conv.intermediate_values) < epochs and study.best_trial.number == conv.number
    run = s.open_run(f"study-t{conv.number}")
    assert run.status == "complete" and run.n_snapshots == max(conv.intermediate_values) + 1
    assert run.attrs["stop"]["by"] == "optuna on the spectral verdict (class converged)"
    assert run.attrs["stop"]["converged_epoch"] == conv.user_attrs["kma_converged_epoch"]

    slow = t[0.05]  # no pruner behind the spectral one: trains its whole budget
    assert slow.state == optuna.trial.TrialState.COMPLETE and max(slow.intermediate_values) == epochs
    assert s.open_run(f"study-t{slow.number}").n_snapshots == epochs + 1

    bad = t[1.5]
    assert bad.state == optuna.trial.TrialState.PRUNED and bad.user_attrs["kma_class"] == "diverging"
    assert max(bad.intermediate_values) < epochs
    run = s.open_run(f"study-t{bad.number}")
    assert run.status in ("complete", "diverged") and run.n_snapshots == max(bad.intermediate_values) + 1
    if run.status == "complete":
        assert run.attrs["stop"]["by"] == "optuna pruner on the spectral verdict (class diverging)"
    assert not list((tmp_path / "kma-store").glob("leases/*"))
    assert f"lr 1.5: pruned at epoch {max(bad.intermediate_values)}, spectral class diverging" in \
        capsys.readouterr().out


def test_the_wrapped_pruner_prunes_and_the_run_is_still_complete(tmp_path):
    """With a MedianPruner behind it (no warm-up), the slow trial's curve falls above the
    median of the completed ones and is pruned; its run is complete, with the stop
    saying so; the runs registered in a real SQLite MLflow as the Recorder does."""
    import mlflow

    store, uri = str(tmp_path / "s"), f"sqlite:///{tmp_path / 'mlflow.db'}"
    pruner = SpectralPruner(optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=3))
    study = _study(pruner, [0.3, 0.05])
    study.optimize(_objective(store, tracking_uri=uri, check_every=2), n_trials=2)
    t = {tr.params["lr"]: tr for tr in study.trials}
    assert t[0.3].state == optuna.trial.TrialState.COMPLETE
    assert t[0.05].state == optuna.trial.TrialState.PRUNED and t[0.05].user_attrs["kma_class"] == "none"
    run = TrajectoryStore(store).open_run(f"opt-t{t[0.05].number}")
    last = max(t[0.05].intermediate_values)
    assert run.status == "complete" and run.n_snapshots == last + 1
    assert run.attrs["stop"] == {"when": "search", "reason": "stopped by the search", "by": "optuna pruner",
                                 "snapshot": last, "epoch": last, "class": None}   # not yet 4 snapshots
    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name("recorded")
    for tr in study.trials:
        (reg,) = client.search_runs([exp.experiment_id], f"tags.`kma.run_id` = 'opt-t{tr.number}'")
        assert reg.info.status == "FINISHED"


def test_bad_arguments_are_one_line(tmp_path):
    with pytest.raises(KMAError, match=r"prune_on: .*a converged trial completes, it is not pruned"):
        SpectralPruner(prune_on=["converged"])
    with pytest.raises(KMAError, match="wrapped must be an Optuna pruner"):
        SpectralPruner(wrapped="median")
    study = optuna.create_study()
    trial = study.ask()
    with pytest.raises(KMAError, match="report needs a pipeline.record.Recorder"):
        report(trial, object(), 1.0, 1)
    rec = Recorder(str(tmp_path / "s"), "r", tracking_uri=False)
    with pytest.raises(KMAError, match="check_every must be an integer >= 1"):
        report(trial, rec, 1.0, 1, check_every=0)
    rec.fail("test over")
