"""KMACallback on real PyTorch Lightning fits (tiny modules, a few epochs, CPU), into a real
store, with a real SQLite MLflow and the real ``kma runs`` / ``kma analyze``."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from pipeline.cli import main
from pipeline.integrations.lightning import KMACallback
from pipeline.storage.health import shown_status
from pipeline.storage.store import TrajectoryStore


class Tiny(pl.LightningModule):
    def __init__(self, lr=0.1, fail_at=None, interrupt_at=None, linear=False):
        super().__init__()
        torch.manual_seed(0)
        self.net = (torch.nn.Linear(4, 1) if linear else
                    torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1)))
        self.lr, self.fail_at, self.interrupt_at = lr, fail_at, interrupt_at

    def training_step(self, batch, i):
        if self.current_epoch == self.fail_at:
            raise RuntimeError("loader broke")
        if self.current_epoch == self.interrupt_at:
            raise KeyboardInterrupt
        x, y = batch
        loss = ((self.net(x) - y) ** 2).mean()
        self.log("train_loss", loss, on_step=True, on_epoch=True)
        return loss

    def validation_step(self, batch, i):
        x, y = batch
        self.log("val_loss", ((self.net(x) - y) ** 2).mean())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)


def _data(n=64, seed=0, linear=False):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5], [0.0]]) if linear else torch.sin(x.sum(1, keepdim=True))
    return DataLoader(TensorDataset(x, y), batch_size=n if linear else 16)


def _trainer(epochs, callbacks, logger=False):
    return pl.Trainer(max_epochs=epochs, callbacks=callbacks, logger=logger, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                      log_every_n_steps=1, accelerator="cpu")


def _flat(module):
    return torch.cat([p.detach().reshape(-1) for p in module.parameters()]).numpy()


def test_a_fit_leaves_a_complete_run_that_kma_lists_and_analyses(tmp_path, capsys):
    store, uri = tmp_path / "store", f"sqlite:///{tmp_path / 'mlflow.db'}"
    model = Tiny()
    cb = KMACallback(str(store), "lit-fit", tracking_uri=uri)
    _trainer(5, [cb]).fit(model, _data(), _data(seed=1))

    run = TrajectoryStore(str(store)).open_run("lit-fit")
    assert run.status == "complete" and run.n_snapshots == 6            # the initial one + one per epoch
    assert run.attrs["snapshot_epochs"] == [0, 1, 2, 3, 4, 5]
    assert run.attrs["snapshot_steps"] == [0, 4, 8, 12, 16, 20]         # 4 batches an epoch
    np.testing.assert_array_equal(run.weights().compute()[-1], _flat(model))
    assert len(run.metrics["train_loss"]) == len(run.metrics["val_loss"]) == 5
    assert run.metrics["train_loss"] == run.metrics["train_loss_epoch"]  # the epoch mean, not a step's
    assert run.config == {"framework": "lightning", "model": "Tiny", "epochs": 5}

    assert main(["runs", "--store", str(store), "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert (row["run_id"], row["status"], row["n_snapshots"]) == ("lit-fit", "complete", 6)
    out = tmp_path / "a.json"
    assert main(["analyze", "--store", str(store), "--no-mlflow", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert {r["run_id"] for r in result["runs"]} == {"lit-fit"} and not result["errors"]
    assert result["verdicts"][0]["evidence"]["losses"] is True

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("recorded")
    found = client.search_runs([exp.experiment_id], "tags.`kma.run_id` = 'lit-fit'")
    assert [r.info.status for r in found] == ["FINISHED"]                    # one record, from the callback
    assert len(client.get_metric_history(found[0].info.run_id, "val_loss")) == 5


def test_every_n_epochs(tmp_path):
    cb = KMACallback(str(tmp_path / "s"), "r", every_n_epochs=2, tracking_uri=False, layers=["net.2"])
    _trainer(5, [cb]).fit(Tiny(), _data(), _data(seed=1))
    run = TrajectoryStore(str(tmp_path / "s")).open_run("r")
    assert run.attrs["snapshot_epochs"] == [0, 2, 4] and run.layout.layers == ["net.2"]
    assert len(run.metrics["val_loss"]) == 5 and None not in run.metrics["val_loss"]


def test_an_exception_fails_the_run_and_ctrl_c_interrupts_it(tmp_path):
    store = str(tmp_path / "s")
    with pytest.raises(RuntimeError, match="loader broke"):
        _trainer(5, [KMACallback(store, "boom", tracking_uri=False)]).fit(Tiny(fail_at=2), _data(), _data(seed=1))
    run = TrajectoryStore(store).open_run("boom")
    assert run.status == "failed" and run.attrs["error"] == "RuntimeError: loader broke"
    assert run.attrs["snapshot_epochs"] == [0, 1, 2]

    import signal

    handler = signal.getsignal(signal.SIGINT)
    try:    # Lightning answers Ctrl-C by exiting (status 1) after telling the callbacks
        with pytest.raises(SystemExit):
            _trainer(5, [KMACallback(store, "ctrl-c", tracking_uri=False)]).fit(
                Tiny(interrupt_at=1), _data(), _data(seed=1))
    finally:
        signal.signal(signal.SIGINT, handler)   # Lightning ignores SIGINT from then on
    s = TrajectoryStore(store)
    assert s.open_run("ctrl-c").status == "running" and shown_status(s, "ctrl-c") == "interrupted"
    assert s.open_run("ctrl-c").n_snapshots == 2


def test_stop_on_converged_stops_the_fit_and_logs_the_verdict(tmp_path):
    """A convex full-batch fit converges geometrically: the verdict calls it converged
    well before the budget and the trainer stops there; the same fit without the option
    runs its whole budget."""
    store = str(tmp_path / "s")
    from lightning.pytorch.loggers import CSVLogger

    cb = KMACallback(store, "stop", tracking_uri=False, stop_on_converged=True)
    trainer = _trainer(40, [cb], logger=CSVLogger(str(tmp_path / "csv"), name="lit"))
    trainer.fit(Tiny(lr=0.3, linear=True), _data(128, linear=True), _data(128, seed=1, linear=True))
    run = TrajectoryStore(store).open_run("stop")
    stop = run.attrs["stop"]
    assert cb.last_verdict["class"] == "converged"
    assert run.status == "complete" and run.attrs["stopped_early"] is True
    assert stop["reason"] == "converged" and stop["epoch"] < 40
    assert run.n_snapshots == stop["epoch"] + 1 == trainer.current_epoch + 1
    assert stop["converged_epoch"] == cb.last_verdict["converged_epoch"] <= stop["epoch"]
    rows = list(csv.DictReader(open(tmp_path / "csv" / "lit" / "version_0" / "metrics.csv")))
    logged = [float(r["kma/converged"]) for r in rows if r.get("kma/converged")]
    assert logged[-1] == 1.0 and set(logged[:-1]) == {0.0}          # one verdict per epoch, the last converged

    cb2 = KMACallback(store, "full", tracking_uri=False)
    _trainer(40, [cb2]).fit(Tiny(lr=0.3, linear=True), _data(128, linear=True), _data(128, seed=1, linear=True))
    assert TrajectoryStore(store).open_run("full").n_snapshots == 41


def test_a_second_fit_of_a_recorded_run_is_refused(tmp_path):
    from pipeline.errors import KMAError

    store = str(tmp_path / "s")
    _trainer(2, [KMACallback(store, "r", tracking_uri=False)]).fit(Tiny(), _data(), _data(seed=1))
    with pytest.raises(KMAError, match="run r: already complete"):
        _trainer(2, [KMACallback(store, "r", tracking_uri=False)]).fit(Tiny(), _data(), _data(seed=1))
    with pytest.raises(KMAError, match="every_n_epochs must be an integer >= 1"):
        KMACallback(store, "q", every_n_epochs=0)
    with pytest.raises(KMAError, match="losses must map 'train_loss' / 'val_loss' to logged names"):
        KMACallback(store, "q", losses={"loss": "train_loss"})


def test_losses_logged_under_other_names(tmp_path):
    class Named(Tiny):
        def training_step(self, batch, i):
            x, y = batch
            loss = ((self.net(x) - y) ** 2).mean()
            self.log("mse", loss, on_step=False, on_epoch=True)
            return loss

        def validation_step(self, batch, i):
            x, y = batch
            self.log("holdout_mse", ((self.net(x) - y) ** 2).mean())

    cb = KMACallback(str(tmp_path / "s"), "r", tracking_uri=False,
                     losses={"train_loss": "mse", "val_loss": "holdout_mse"})
    _trainer(3, [cb]).fit(Named(), _data(), _data(seed=1))
    m = TrajectoryStore(str(tmp_path / "s")).open_run("r").metrics
    assert m["train_loss"] == m["mse"] and m["val_loss"] == m["holdout_mse"] and len(m["mse"]) == 3


def test_a_resumed_fit_records_from_the_epoch_it_resumes_at(tmp_path):
    store = str(tmp_path / "s")
    first = _trainer(2, [KMACallback(store, "part1", tracking_uri=False)])
    first.fit(Tiny(), _data(), _data(seed=1))
    first.save_checkpoint(tmp_path / "e2.ckpt")
    _trainer(4, [KMACallback(store, "part2", tracking_uri=False)]).fit(
        Tiny(), _data(), _data(seed=1), ckpt_path=str(tmp_path / "e2.ckpt"))
    s = TrajectoryStore(store)
    one, two = s.open_run("part1"), s.open_run("part2")
    assert two.attrs["snapshot_epochs"] == [2, 3, 4] and two.config["epochs"] == 4
    np.testing.assert_array_equal(two.weights().compute()[0], one.weights().compute()[-1])
    assert two.metrics["train_loss"][:2] == [None, None] and None not in two.metrics["train_loss"][2:]


def test_epochs_without_validation_store_no_stale_validation_loss(tmp_path):
    cb = KMACallback(str(tmp_path / "s"), "r", tracking_uri=False)
    trainer = pl.Trainer(max_epochs=4, callbacks=[cb], logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, check_val_every_n_epoch=2,
                         accelerator="cpu")
    trainer.fit(Tiny(), _data(), _data(seed=1))
    m = TrajectoryStore(str(tmp_path / "s")).open_run("r").metrics
    assert [x is None for x in m["val_loss"]] == [True, False, True, False]
    assert None not in m["train_loss"] and len(m["train_loss"]) == 4
