"""The Recorder: a user's own training loop as a KMA run, in a real store, with a real
SQLite MLflow and the real ``kma runs`` / ``kma analyze``."""

from __future__ import annotations

import json
import numpy as np
import pytest
import torch

from pipeline.cli import main
from pipeline.errors import KMAError
from pipeline.record import Recorder
from pipeline.storage.health import shown_status
from pipeline.storage.store import TrajectoryStore



def _net(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(4, 12), torch.nn.Tanh(), torch.nn.Linear(12, 1))


def _loop(rec, epochs=8, lr=0.05, every_metrics=True):
    """A plain training loop; returns (the flat weights after each epoch, the losses)."""
    net = _net()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 4, generator=g)
    y = torch.sin(x.sum(1, keepdim=True))
    opt = torch.optim.SGD(net.parameters(), lr=lr)
    flats, losses = [torch.cat([p.detach().reshape(-1) for p in net.parameters()]).clone()], []
    rec.snapshot(net, epoch=0)
    for epoch in range(1, epochs + 1):
        loss = ((net(x) - y) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            val = float(((net(x[:16]) - y[:16]) ** 2).mean())
        losses.append((loss.item(), val))
        flats.append(torch.cat([p.detach().reshape(-1) for p in net.parameters()]).clone())
        rec.snapshot(net, epoch=epoch, step=epoch * 4,
                     metrics={"train_loss": loss, "val_loss": val} if every_metrics else None)
    return flats, losses


def test_a_recorded_run_is_listed_analysed_and_registered(tmp_path, capsys):
    store, db = tmp_path / "store", tmp_path / "mlflow.db"
    uri = f"sqlite:///{db}"
    with Recorder(str(store), "my-loop", tracking_uri=uri, config={"epochs": 12, "lr": 0.05}) as rec:
        flats, losses = _loop(rec, epochs=12)
        assert shown_status(rec.store, "my-loop") == "running"      # its lease is live
    assert rec.status == "complete"

    run = TrajectoryStore(str(store)).open_run("my-loop")
    assert run.status == "complete" and run.n_snapshots == 13
    assert run.attrs["snapshot_epochs"] == list(range(13))
    assert run.attrs["snapshot_steps"] == [0] + [4 * e for e in range(1, 13)]
    np.testing.assert_array_equal(run.weights().compute(), torch.stack(flats).numpy())
    # the losses stored as a sweep stores its history: one per epoch, epoch e at index e - 1
    np.testing.assert_allclose(run.metrics["train_loss"], [t for t, _ in losses], rtol=1e-6)
    np.testing.assert_allclose(run.metrics["val_loss"], [v for _, v in losses], rtol=1e-6)
    assert run.attrs["sweep"] == "recorded" and run.config["epochs"] == 12
    assert rec.store.tracking_uri == uri                             # later commands find this MLflow

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("recorded")
    (rec_run,) = client.search_runs([exp.experiment_id], "tags.`kma.run_id` = 'my-loop'")
    assert rec_run.info.status == "FINISHED" and rec_run.data.params["lr"] == "0.05"
    assert len(client.get_metric_history(rec_run.info.run_id, "train_loss")) == 12

    assert main(["runs", "--store", str(store), "--json"]) == 0     # the real command, in this process
    (row,) = json.loads(capsys.readouterr().out)
    assert row["run_id"] == "my-loop" and row["status"] == "complete" and row["n_snapshots"] == 13

    out = tmp_path / "a.json"
    assert main(["analyze", "--store", str(store), "--tracking-uri", uri, "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert {r["run_id"] for r in result["runs"]} == {"my-loop"}
    (stored,) = result["verdicts"]
    assert stored["evidence"]["losses"] is True                      # the verdict used the losses
    # the in-loop verdict is the one kma analyze stores, on the same snapshots
    mine = rec.verdict()
    assert (mine["class"], mine["converged_at"]) == (stored["class"], stored["converged_at"])
    assert len(client.search_runs([exp.experiment_id], "tags.`kma.run_id` = 'my-loop'")) == 2   # + its analysis
    assert mine["in_progress"] is False and mine["n_snapshots"] == 13


def test_a_second_recorder_of_the_same_run_is_refused(tmp_path):
    store = str(tmp_path / "s")
    first = Recorder(store, "r", tracking_uri=False)
    with pytest.raises(KMAError, match=r"^run r: already being recorded by .*pid \d+.*one writer per run"):
        Recorder(store, "r", tracking_uri=False)
    first.snapshot(_net(), epoch=0)
    first.snapshot(_net(1), epoch=1)
    first.finish()
    with pytest.raises(KMAError, match="run r: already complete in .*overwrite=True"):
        Recorder(store, "r", tracking_uri=False)
    with Recorder(store, "r", tracking_uri=False, overwrite=True) as again:
        again.snapshot(_net(), epoch=0)
    assert TrajectoryStore(store).open_run("r").n_snapshots == 1


def test_an_exception_fails_the_run_and_ctrl_c_leaves_it_interrupted(tmp_path):
    store = str(tmp_path / "s")
    with pytest.raises(ValueError):
        with Recorder(store, "boom", tracking_uri=False) as rec:
            _loop(rec, epochs=3)
            raise ValueError("bad batch")
    run = TrajectoryStore(store).open_run("boom")
    assert run.status == "failed" and run.attrs["error"] == "ValueError: bad batch" and run.n_snapshots == 4

    with pytest.raises(KeyboardInterrupt):
        with Recorder(store, "ctrl-c", tracking_uri=False) as rec:
            _loop(rec, epochs=3)
            raise KeyboardInterrupt
    s = TrajectoryStore(store)
    assert s.open_run("ctrl-c").status == "running" and s.open_run("ctrl-c").n_snapshots == 4
    assert shown_status(s, "ctrl-c") == "interrupted"               # no live lease: kma runs says so
    with Recorder(store, "ctrl-c", tracking_uri=False) as rec:     # a new recorder starts it over
        _loop(rec, epochs=2)
    assert TrajectoryStore(store).open_run("ctrl-c").n_snapshots == 3

    with pytest.raises(SystemExit):      # a process told to exit (a Tune scheduler's stop): not a failure
        with Recorder(store, "exit", tracking_uri=False) as rec:
            _loop(rec, epochs=2)
            raise SystemExit(0)
    assert shown_status(TrajectoryStore(store), "exit") == "interrupted"


def test_every_keeps_every_kth_snapshot_and_all_metrics(tmp_path):
    store = str(tmp_path / "s")
    with Recorder(store, "r", every=3, tracking_uri=False, layers=["2"]) as rec:
        flats, losses = _loop(rec, epochs=7)
    run = TrajectoryStore(store).open_run("r")
    assert run.attrs["snapshot_epochs"] == [0, 3, 6] and run.layout.layers == ["2"]
    assert len(run.metrics["train_loss"]) == 7
    np.testing.assert_array_equal(run.weights().compute()[-1], flats[6][-13:].numpy())


def test_non_finite_weights_or_loss_end_the_run_diverged(tmp_path):
    store = str(tmp_path / "s")
    net = _net()
    with Recorder(store, "nan-w", tracking_uri=False) as rec:
        assert rec.snapshot(net, epoch=0)
        with torch.no_grad():
            net[0].weight[0, 0] = float("nan")
        assert not rec.snapshot(net, epoch=1)
        assert not rec.snapshot(net, epoch=2)                      # later calls: ignored
    run = TrajectoryStore(store).open_run("nan-w")
    assert run.status == "diverged" and run.n_snapshots == 1 and "epoch 1" in run.attrs["message"]
    with Recorder(store, "no-budget", tracking_uri=False) as rec:
        _loop(rec, epochs=8)
        v = rec.verdict()
        assert v["budget_epochs"] is None and v["budget"].startswith("unknown") and v["class"] is not None
    with Recorder(store, "nan-l", tracking_uri=False) as rec:
        rec.snapshot(_net(), epoch=0)
        rec.snapshot(_net(), epoch=1, metrics={"train_loss": float("inf")})
    assert TrajectoryStore(store).open_run("nan-l").status == "diverged"
    assert rec.verdict()["class"] == "diverging"


def _state(net, flat):
    """``net``'s parameters as a state_dict holding the values of ``flat``."""
    out, i = {}, 0
    for name, p in net.named_parameters():
        out[name] = flat[i:i + p.numel()].reshape(p.shape)
        i += p.numel()
    return out


def test_verdict_while_training_is_the_verdict_of_the_stored_prefix(tmp_path):
    """The verdict while training (store rows + rows still buffered, nothing written) is
    the one a finished run of the same snapshots gets from the store, at points before,
    on and after the writer's 64-row chunk boundary."""
    store = str(tmp_path / "s")
    rec = Recorder(store, "r", tracking_uri=False, config={"epochs": 80})
    net = _net()
    assert rec.verdict()["class"] is None                          # nothing yet
    rec.snapshot(net, epoch=0)
    assert "a verdict needs at least" in rec.verdict()["reason"]
    flats = [torch.cat([p.detach().reshape(-1) for p in net.parameters()]).clone()]
    losses = []
    x = torch.randn(32, 4, generator=torch.Generator().manual_seed(2))
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    live = {}
    for epoch in range(1, 71):
        loss = (net(x) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        rec.snapshot(net, epoch=epoch, metrics={"train_loss": loss, "val_loss": loss})
        flats.append(torch.cat([p.detach().reshape(-1) for p in net.parameters()]).clone())
        if epoch in (9, 63, 64, 66):
            live[epoch] = v = rec.verdict()
            assert v["in_progress"] and v["n_snapshots"] == epoch + 1 and v["budget_epochs"] == 80
            assert v["budget"].startswith("80 epochs (config)")
            assert TrajectoryStore(store).open_run("r").status == "running"
    rec.finish()
    run = TrajectoryStore(store).open_run("r")
    assert run.n_snapshots == 71
    np.testing.assert_array_equal(run.weights().compute(), torch.stack(flats).numpy())

    for epoch, v in live.items():      # the same snapshots and losses, recorded and finished
        with Recorder(store, f"ref-{epoch}", tracking_uri=False, config={"epochs": 80}) as ref:
            for e in range(epoch + 1):
                ref.snapshot(_state(net, flats[e]), epoch=e,
                             metrics={"train_loss": losses[e - 1], "val_loss": losses[e - 1]} if e else None)
        want = ref.verdict()
        assert want["in_progress"] is False
        for key in ("class", "converged_at", "converged_epoch", "bad_init", "reason"):
            assert v[key] == want[key], (epoch, key)
        for key in ("predicted_motion", "motion_so_far", "loss_gain", "window_epochs", "holds"):
            a, b = v["evidence"][key], want["evidence"][key]
            assert [x is None for x in a] == [x is None for x in b], (epoch, key)
            assert [x for x in a if x is not None] == pytest.approx([x for x in b if x is not None], rel=1e-5)


@pytest.mark.parametrize("kwargs, message", [
    ({"run_id": "../x"}, r"run id '\.\./x': invalid"),
    ({"dtype": "int8"}, "dtype 'int8': expected one of float32, float16, bfloat16"),
    ({"every": 0}, "every must be an integer >= 1"),
    ({"layers": []}, "layers must be 'all' or a list of layer names"),
    ({"config": {"f": object()}}, "config must be JSON-serialisable"),
])
def test_bad_arguments_are_one_line(tmp_path, kwargs, message):
    args = {"store": str(tmp_path / "s"), "run_id": "r", "tracking_uri": False, **kwargs}
    with pytest.raises(KMAError, match=message) as e:
        Recorder(**args)
    assert "\n" not in str(e.value)


def test_snapshot_of_the_wrong_thing_or_an_unknown_layer(tmp_path):
    with Recorder(str(tmp_path / "s"), "r", tracking_uri=False) as rec:
        with pytest.raises(KMAError, match="expected a torch.nn.Module or a state_dict, got list"):
            rec.snapshot([1, 2, 3])
        rec.snapshot(_net().state_dict(), epoch=0)                 # a state_dict works as well
    with pytest.raises(KMAError, match="unknown layer nope"):
        with Recorder(str(tmp_path / "s"), "q", tracking_uri=False, layers=["nope"]) as rec:
            rec.snapshot(_net())


def test_importing_the_recorder_imports_no_framework():
    import subprocess
    import sys

    code = ("import sys, pipeline, pipeline.record, pipeline.integrations, pipeline.integrations.common; "
            "print(sorted(m for m in ('lightning', 'pytorch_lightning', 'transformers', 'mlflow', 'torch') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_the_rows_a_live_verdict_reads_are_the_rows_stored(tmp_path, dtype):
    """What ``RunWriter.pending`` hands the verdict while training (rows in the store +
    rows still buffered) is, row for row, what the finished run reads back."""
    from pipeline.record import _LiveRun

    store = str(tmp_path / "s")
    rec = Recorder(store, "r", tracking_uri=False, dtype=dtype)
    net = _net()
    rng = torch.Generator().manual_seed(3)
    for epoch in range(70):               # 70 rows: one full chunk row of 64 written, 6 buffered
        with torch.no_grad():
            for p in net.parameters():
                p.add_(0.01 * torch.randn(p.shape, generator=rng))
        rec.snapshot(net, epoch=epoch)
    live = _LiveRun(TrajectoryStore(store).open_run("r"), rec._writer, {})
    assert live._written == 64 and live.n_snapshots == 70
    during = live.trajectory().array.compute()
    rec.finish()
    after = TrajectoryStore(store).open_run("r").weights().compute()
    assert during.dtype == after.dtype == np.float32
    np.testing.assert_array_equal(during, after)


def test_a_run_recorded_without_mlflow_is_registered_by_kma_sync(tmp_path, capsys):
    """``tracking_uri=False`` (a worker process): the store only; ``kma sync`` from one
    place registers the run afterwards, with its losses."""
    store, uri = str(tmp_path / "s"), f"sqlite:///{tmp_path / 'mlflow.db'}"
    with Recorder(store, "worker-run", tracking_uri=False, experiment="trials") as rec:
        _loop(rec, epochs=4)
    assert not (tmp_path / "mlflow.db").exists() and TrajectoryStore(store).tracking_uri is None
    assert main(["sync", "--store", store, "--tracking-uri", uri]) == 0
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    (found,) = client.search_runs([client.get_experiment_by_name("trials").experiment_id],
                                  "tags.`kma.run_id` = 'worker-run'")
    assert len(client.get_metric_history(found.info.run_id, "val_loss")) == 4


def test_recorded_runs_are_compared_by_their_config(tmp_path, capsys):
    store = str(tmp_path / "s")
    for lr in (0.01, 0.05):
        with Recorder(store, f"lr{lr}", tracking_uri=False, config={"epochs": 12, "lr": lr}) as rec:
            _loop(rec, epochs=12, lr=lr)
    assert main(["analyze", "--store", store, "--no-mlflow"]) == 0
    out = tmp_path / "c.json"
    assert main(["compare", "--store", store, "--by", "lr", "--out", str(tmp_path / "cmp"), "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert {(r["group"], r["run_id"]) for r in rows if r.get("run_id")} == {("0.01", "lr0.01"), ("0.05", "lr0.05")}
