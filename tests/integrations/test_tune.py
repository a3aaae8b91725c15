"""Ray Tune trials stopped on their spectral verdict: real local Ray (2 CPUs), real Tune
trials recording with real Recorders into a real store; tiny full-batch regressions."""

from __future__ import annotations

import sys

import pytest
import ray
import torch
from ray import tune

from pipeline.errors import KMAError
from pipeline.integrations.tune import SpectralStopper, TuneReporter, trial_run_id, verdict_fields
from pipeline.record import Recorder
from pipeline.storage.health import shown_status
from pipeline.storage.store import TrajectoryStore

import doc_examples

EPOCHS = 40


@pytest.fixture(scope="module")
def local_ray():
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])   # trials import nothing of tests/
    yield
    ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    if started:
        ray.shutdown()


def regression(config):
    """Full-batch least squares, SGD at ``config["lr"]``: lr 0.3 converges within the
    budget, 0.05 is still improving at its end, 1.5 diverges."""
    g = torch.Generator().manual_seed(0)
    w = torch.tensor([[1.0], [-2.0], [0.5], [0.0]])
    x, xv = torch.randn(128, 4, generator=g), torch.randn(64, 4, generator=g)
    torch.manual_seed(0)
    net = torch.nn.Linear(4, 1)
    opt = torch.optim.SGD(net.parameters(), lr=config["lr"])
    with Recorder(config["store"], trial_run_id(), tracking_uri=False,
                  config={"epochs": EPOCHS, "lr": config["lr"]}) as rec:
        rec.snapshot(net, epoch=0)
        report = TuneReporter(rec)
        for epoch in range(1, EPOCHS + 1):
            loss = ((net(x) - x @ w) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            with torch.no_grad():
                val = float(((net(xv) - xv @ w) ** 2).mean())
            rec.snapshot(net, epoch=epoch, metrics={"train_loss": loss.item(), "val_loss": val})
            if report({"val_loss": val}, epoch=epoch):
                break


def _fit(tmp_path, lrs, stopper=None, scheduler=None):
    space = {"lr": tune.grid_search(lrs), "store": str(tmp_path / "store")}
    tuner = tune.Tuner(regression, param_space=space,
                       tune_config=tune.TuneConfig(scheduler=scheduler, max_concurrent_trials=2,
                                                   **({"metric": "val_loss", "mode": "min"} if scheduler else {})),
                       run_config=tune.RunConfig(stop=stopper, storage_path=str(tmp_path / "tune"), verbose=0))
    grid = tuner.fit()
    assert not grid.errors, grid.errors
    return {r.config["lr"]: r for r in grid}


def test_the_docs_example_stops_converged_and_diverging_trials(tmp_path, local_ray, capsys):
    """The example on docs/pages/tune.md, run as the page shows it."""
    ns = doc_examples.run("tune.md", tmp_path)
    stopper, grid, epochs = ns["stopper"], ns["grid"], ns["EPOCHS"]
    assert not grid.errors, grid.errors
    results = {r.config["lr"]: r for r in grid}
    store = TrajectoryStore(str(tmp_path / "kma-store"))
    runs = {f"tune-{r.metrics['trial_id']}": lr for lr, r in results.items()}
    assert len(runs) == 3 and sorted(i.run_id for i in store.runs()) == sorted(runs)
    by_lr = {lr: store.open_run(rid) for rid, lr in runs.items()}

    conv = results[0.3].metrics   # stopped by the stopper on its own report of "converged"
    assert conv["kma_class"] == "converged" and conv["training_iteration"] < epochs
    run = by_lr[0.3]
    assert run.status == "complete" and run.n_snapshots == conv["training_iteration"] + 1
    assert run.attrs["stop"]["by"] == "ray tune on the spectral verdict (class converged)"
    assert run.attrs["stop"]["converged_epoch"] == conv["kma_converged_epoch"] <= conv["training_iteration"]

    slow = results[0.05].metrics  # never converged: trained its whole budget, no stop
    assert slow["training_iteration"] == epochs and slow["kma_class"] not in ("converged", "diverging")
    assert by_lr[0.05].status == "complete" and by_lr[0.05].n_snapshots == epochs + 1
    assert "stop" not in by_lr[0.05].attrs

    bad = results[1.5].metrics
    assert bad["kma_class"] == "diverging" and bad["training_iteration"] < epochs
    assert by_lr[1.5].status in ("complete", "diverged")
    if by_lr[1.5].status == "complete":
        assert by_lr[1.5].attrs["stop"]["by"] == "ray tune on the spectral verdict (class diverging)"
    assert sorted(c for c, _ in stopper.stopped.values()) == ["converged", "diverging"]
    for rid in runs:                       # nothing left interrupted, no claim left behind
        assert shown_status(store, rid) in ("complete", "diverged")
    assert not list((tmp_path / "kma-store").glob("leases/*"))
    out = capsys.readouterr().out
    assert f"lr 0.3: converged after {conv['training_iteration']} epochs" in out


def _settled(store, run_id, timeout=30.0):
    """The run once its writer has finished it: Tune's ``stop`` returns to the driver
    before the trial's training thread, released by ``SystemExit``, has completed the run,
    so ``Tuner.fit()`` can return while a run stopped by a scheduler is still being
    completed (seen on a loaded machine). Waits at most ``timeout`` seconds."""
    import time

    deadline = time.monotonic() + timeout
    run = store.open_run(run_id)
    while run.status == "running" and time.monotonic() < deadline:
        time.sleep(0.2)
        run = store.open_run(run_id)
    return run


def test_runs_stopped_by_asha_are_complete_too(tmp_path, local_ray):
    """ASHA (grace 4, halving) stops the slow trials; each one's run is still complete,
    its ``stop`` naming Ray Tune and the spectral class it had then."""
    from ray.tune.schedulers import ASHAScheduler

    asha = ASHAScheduler(time_attr="training_iteration", max_t=EPOCHS, grace_period=4, reduction_factor=2)
    results = _fit(tmp_path, [0.3, 0.02, 0.01, 0.005], scheduler=asha)
    store = TrajectoryStore(str(tmp_path / "store"))
    cut = [lr for lr, r in results.items() if r.metrics["training_iteration"] < EPOCHS]
    assert [lr for lr in cut if not results[lr].metrics["kma_stop"]], \
        {lr: (r.metrics["training_iteration"], r.metrics["kma_stop"]) for lr, r in results.items()}
    for lr, r in results.items():
        run = _settled(store, f"tune-{r.metrics['trial_id']}")
        assert run.status == "complete" and run.n_snapshots == r.metrics["training_iteration"] + 1
        if lr in cut and r.metrics["kma_stop"]:   # its own verdict ended it (no stopper: the loop broke)
            assert run.attrs["stop"]["by"] == f"ray tune on the spectral verdict (class {r.metrics['kma_class']})"
        elif lr in cut:                            # ASHA stopped it
            assert run.attrs["stop"]["by"] == "ray tune" and run.attrs["stop"]["class"] == r.metrics["kma_class"]
            assert run.attrs["stop"]["epoch"] == r.metrics["training_iteration"]


def test_bad_arguments_are_one_line(tmp_path):
    with pytest.raises(KMAError, match="TuneReporter needs a pipeline.record.Recorder"):
        TuneReporter("not a recorder")
    rec = Recorder(str(tmp_path / "s"), "r", tracking_uri=False)
    with pytest.raises(KMAError, match=r"stop_on: expected one or more of converged, stalled"):
        TuneReporter(rec, stop_on=["done"])
    with pytest.raises(KMAError, match="check_every must be an integer >= 1"):
        TuneReporter(rec, check_every=0)
    with pytest.raises(KMAError, match="kma_class are the verdict's own fields"):
        TuneReporter(rec)({"kma_class": 1})
    rec.fail("test over")
    with pytest.raises(KMAError, match="not inside a Ray Tune trial"), pytest.warns(UserWarning, match="get_trial_id"):
        trial_run_id()
    assert not SpectralStopper()("t", {"kma_class": "converged", "kma_stop": 0})
    assert SpectralStopper()("t", {"kma_class": "converged", "kma_stop": 1})
    assert verdict_fields({"class": None, "n_snapshots": 3}) == {"kma_class": "none", "kma_converged": 0,
                                                                  "kma_snapshots": 3}
