"""One small search, stopped four ways under Ray Tune and four ways under Optuna.

The search: a tanh MLP (4 → 16 → 1, full batch, SGD) fitting ``sin(x · a)``, learning rates
0.003 … 1.0 (geometric) × ``--seeds`` seeds, a budget of ``--epochs`` epochs, every trial
recorded with a :class:`~pipeline.record.Recorder`. Ray Tune (real local Ray, 2 trials at a
time): no stopping, :class:`SpectralStopper`, ASHA (grace 5, reduction 3), both. Optuna (the
same configs enqueued, one process): no pruner, ``MedianPruner(n_startup_trials=3,
n_warmup_steps=5)``, :class:`SpectralPruner`, ``SpectralPruner(MedianPruner(...))``. Per
method: trials stopped early, epochs spent (sum over trials), the best final validation
loss the search returns (a stopped trial's is its last report) and its regret against the
unstopped search's best. The baselines report with plain ``tune.report`` / ``trial.report``
(no verdict computed); their runs end ``failed`` / ``interrupted`` when Tune stops them (the
Recorder takes Tune's ``SystemExit`` for an error): :class:`TuneReporter` is what completes
stopped runs. The table reads Tune's and Optuna's results, not the store.

    nice -n 10 python jobs/experiments/search_stopping.py --out /tmp/search [--epochs 40] [--seeds 0 1]
        [--only tune optuna]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

LRS = [0.003, 0.01, 0.03, 0.1, 0.3, 1.0]
ARGS = argparse.Namespace()


def _data(seed):
    g = torch.Generator().manual_seed(1000 + seed)
    a = torch.randn(4, 1, generator=g)
    x, xv = torch.randn(256, 4, generator=g), torch.randn(128, 4, generator=g)
    return x, torch.sin(x @ a), xv, torch.sin(xv @ a)


def _train(config, each_epoch):
    """Train one config, calling ``each_epoch(rec, epoch, val_loss)``; True ends it."""
    from pipeline.record import Recorder

    x, y, xv, yv = _data(config["seed"])
    torch.manual_seed(config["seed"])
    net = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    opt = torch.optim.SGD(net.parameters(), lr=config["lr"])
    with Recorder(config["store"], config["run_id"], tracking_uri=False, overwrite=True,
                  config={"epochs": config["epochs"], "lr": config["lr"], "seed": config["seed"]}) as rec:
        rec.snapshot(net, epoch=0)
        val = float("nan")
        for epoch in range(1, config["epochs"] + 1):
            loss = ((net(x) - y) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            with torch.no_grad():
                val = ((net(xv) - yv) ** 2).mean().item()
            rec.snapshot(net, epoch=epoch, metrics={"train_loss": loss.item(), "val_loss": val})
            if each_epoch(rec, epoch, val):
                break
    return val


def tune_trainable(config):
    from ray import tune

    from pipeline.integrations.tune import TuneReporter, trial_run_id

    config = {**config, "run_id": trial_run_id(config["method"].replace("+", "-"))}
    reporter = {}

    def each(rec, epoch, val):
        if config["spectral"]:
            return reporter.setdefault("r", TuneReporter(rec))({"val_loss": val}, epoch=epoch)
        else:
            tune.report({"val_loss": val})
        return False

    _train(config, each)


def run_tune(method, store, configs):
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    from pipeline.integrations.tune import SpectralStopper

    spectral = method in ("spectral", "spectral+asha")
    asha = ASHAScheduler(time_attr="training_iteration", max_t=ARGS.epochs, grace_period=5, reduction_factor=3)
    space = {"cfg": tune.grid_search(configs), "method": method, "spectral": spectral,
             "store": str(store), "epochs": ARGS.epochs}

    def trainable(config):
        tune_trainable({**config["cfg"], **{k: v for k, v in config.items() if k != "cfg"}})

    t0 = time.perf_counter()
    grid = tune.Tuner(
        trainable, param_space=space,
        tune_config=tune.TuneConfig(max_concurrent_trials=2, scheduler=asha if "asha" in method else None,
                                    **({"metric": "val_loss", "mode": "min"} if "asha" in method else {})),
        run_config=tune.RunConfig(stop=SpectralStopper() if spectral else None, verbose=0,
                                  storage_path=str(store.parent / "tune" / method))).fit()
    wall = time.perf_counter() - t0
    if grid.errors:
        raise RuntimeError(f"{method}: {grid.errors}")
    rows = [{"lr": r.config["cfg"]["lr"], "seed": r.config["cfg"]["seed"], "epochs": r.metrics["training_iteration"],
             "val_loss": r.metrics["val_loss"], "class": r.metrics.get("kma_class")} for r in grid]
    return rows, wall


def run_optuna(method, store, configs):
    import optuna

    from pipeline.integrations.optuna import SpectralPruner, report

    median = optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=5)
    pruner = {"none": optuna.pruners.NopPruner(), "median": median, "spectral": SpectralPruner(),
              "spectral+median": SpectralPruner(median)}[method]
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="minimize", pruner=pruner, sampler=optuna.samplers.RandomSampler(seed=0))
    for c in configs:
        study.enqueue_trial({"i": configs.index(c)})

    def objective(trial):
        c = configs[trial.suggest_int("i", 0, len(configs) - 1)]
        cfg = {**c, "store": str(store), "epochs": ARGS.epochs,
               "run_id": f"optuna-{method.replace('+', '-')}-t{trial.number}"}
        spectral = method.startswith("spectral")

        def each(rec, epoch, val):
            if spectral:
                return report(trial, rec, val, epoch)
            trial.report(val, epoch)
            if trial.should_prune():
                rec.finish()
                raise optuna.TrialPruned()
            return False

        return _train(cfg, each)

    t0 = time.perf_counter()
    study.optimize(objective, n_trials=len(configs))
    wall = time.perf_counter() - t0
    rows = []
    for t in study.trials:
        c = configs[t.params["i"]]
        last = max(t.intermediate_values)
        rows.append({"lr": c["lr"], "seed": c["seed"], "epochs": last, "val_loss": t.intermediate_values[last],
                     "class": t.user_attrs.get("kma_class"), "state": t.state.name.lower()})
    return rows, wall


def summary(rows, wall, best_full):
    finite = [r["val_loss"] for r in rows if np.isfinite(r["val_loss"])]
    best = min(finite) if finite else float("nan")
    return {"trials": len(rows), "stopped": sum(r["epochs"] < ARGS.epochs for r in rows),
            "epochs": sum(r["epochs"] for r in rows), "best_val_loss": best,
            "regret": (best - best_full) / best_full if best_full else None, "wall_s": round(wall, 1)}


def main(argv=None) -> int:
    global ARGS
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="folder for the store, Tune's results and results.json")
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--only", nargs="+", choices=["tune", "optuna"], default=["tune", "optuna"])
    ARGS = p.parse_args(argv)
    out = Path(ARGS.out).absolute()
    out.mkdir(parents=True, exist_ok=True)
    configs = [{"lr": lr, "seed": s} for s in ARGS.seeds for lr in LRS]
    results = {}
    if "tune" in ARGS.only:
        import ray

        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
        for method in ("none", "spectral", "asha", "spectral+asha"):
            results[f"tune/{method}"] = run_tune(method, out / "store", configs)
        ray.shutdown()
    if "optuna" in ARGS.only:
        for method in ("none", "median", "spectral", "spectral+median"):
            results[f"optuna/{method}"] = run_optuna(method, out / "store", configs)
    table = {}
    for name, (rows, wall) in results.items():
        full = results.get(f"{name.split('/')[0]}/none")
        best_full = summary(full[0], full[1], None)["best_val_loss"] if full else None
        table[name] = {**summary(rows, wall, best_full), "rows": rows}
    (out / "results.json").write_text(json.dumps(table, indent=1))
    print(f"{'method':24} {'trials':>6} {'stopped':>7} {'epochs':>6} {'best val loss':>14} {'regret':>8} {'wall s':>7}")
    for name, t in table.items():
        regret = "-" if t["regret"] is None else f"{100 * t['regret']:+.2f}%"
        print(f"{name:24} {t['trials']:6d} {t['stopped']:7d} {t['epochs']:6d} {t['best_val_loss']:14.4g} "
              f"{regret:>8} {t['wall_s']:7.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
