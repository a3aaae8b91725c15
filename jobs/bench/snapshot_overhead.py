"""Snapshot-writing overhead as a fraction of epoch time (benchmark, not a test).

Command::

    .venv/bin/python jobs/bench/snapshot_overhead.py            # full (a few minutes)
    .venv/bin/python jobs/bench/snapshot_overhead.py --quick    # smoke run

For each model ((a) the demo MLP of configs/demo.yaml: multiscale, depth 2, width 32;
(b) a >= 1e7-parameter MLP on digits) the same variant is trained, same seeds, in three
modes, alternated A/B/C/A/B/C... to cancel drift:

- ``none``  : only the initial snapshot (``snapshot_every`` > epochs), no-op sink
- ``noop``  : snapshot every epoch into a sink that does nothing (flatten + isfinite)
- ``store`` : snapshot every epoch into a real ``RunWriter`` on local disk (buffer copy
              + background zarr writes), ``finish()`` included in the timing

Overhead of ``store`` is reported against ``noop`` (the sink alone) and against ``none``
(everything snapshotting costs: flatten + isfinite + copy + write). Target: <= 5 %.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from pipeline import config  # noqa: E402
from pipeline.training.losses import build_loss  # noqa: E402
from pipeline.training.optim import build_optimizer  # noqa: E402
from pipeline.training.runner import build_parts  # noqa: E402
from pipeline.storage.store import TrajectoryStore  # noqa: E402
from pipeline.training.loop import train  # noqa: E402

MODES = ("none", "noop", "store")


# --------------------------------------------------------------------------- parse
def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="few epochs and reps, smaller big model")
    p.add_argument("--models", default="demo,big", help="comma list of demo,big")
    p.add_argument("--demo-epochs", type=int, default=200)
    p.add_argument("--big-epochs", type=int, default=8)
    p.add_argument("--big-width", type=int, default=2240, help="digits MLP depth 3; 2240 -> 1.02e7 params")
    p.add_argument("--reps", type=int, default=3, help="A/B/C rounds per model")
    p.add_argument("--threads", type=int, default=1, help="torch threads (num_cpus of a sweep task)")
    p.add_argument("--store-dir", default=None, help="where the temporary store goes (local disk)")
    p.add_argument("--out", default="bench-out/snapshot_overhead.json")
    p.add_argument("--checksums", action="store_true",
                   help="instead: the cost of the chunks' CRC32C (issue 21), 'store' with and without "
                        "it alternated, and a read pass (CPU seconds) of the stored run with and without it")
    a = p.parse_args(argv)
    if a.quick:
        a.demo_epochs, a.big_epochs, a.big_width, a.reps = 40, 3, 600, 1
    return a


# --------------------------------------------------------------------------- build
def variant_for(name: str, args):
    cfg = config.load(ROOT / "configs" / "demo.yaml")
    v = config.expand(cfg)[0]  # depth 2, width 32, kaiming, multiscale
    assert v.depth == 2 and v.width == 32
    if name == "demo":
        return v.model_copy(update={"epochs": args.demo_epochs})
    task = config.DigitsTask() if hasattr(config, "DigitsTask") else {"name": "digits"}
    return v.model_copy(update={"task": task, "depth": 3, "width": args.big_width,
                                "epochs": args.big_epochs, "loss": "cross_entropy",
                                "batch_size": 64})


class EpochClock:
    """Callback recording the wall time at the end of every epoch."""

    def __init__(self):
        self.t = [time.perf_counter()]

    def on_epoch_end(self, epoch, history):
        self.t.append(time.perf_counter())

    def per_epoch(self):
        return [b - a for a, b in zip(self.t[:-1], self.t[1:])]


def one_run(v, mode: str, store_root: str, run_no: int) -> dict:
    task, model, layout = build_parts(v, "cpu")
    opt = build_optimizer(v.optimizer, model.parameters(), v.lr, weight_decay=v.weight_decay)
    loss_fn = build_loss(v.loss)
    writer = None
    if mode == "store":
        store = TrajectoryStore(store_root)
        writer = store.create_run(f"bench-{run_no}", layout, capacity=v.snapshot_capacity())
        sink = writer
    else:
        sink = lambda flat, epoch=0, step=0: None  # noqa: E731
    every = v.epochs + 1 if mode == "none" else 1
    clock = EpochClock()
    c0 = time.process_time()  # CPU of all threads (trainer + writer): less sensitive to other load
    t0 = time.perf_counter()
    res = train(model, task, loss_fn, opt, epochs=v.epochs, batch_size=v.batch_size,
                snapshot_every=every, snapshot_unit="epoch", layout=layout, sink=sink,
                generator=torch.Generator().manual_seed(v.torch_seed + 1), callbacks=[clock])
    t1 = time.perf_counter()
    if writer is not None:
        writer.finish(res.status, metrics=res.history)
    total = time.perf_counter() - t0
    finish = time.perf_counter() - t1
    cpu = time.process_time() - c0
    direct = None
    if writer is not None:
        TrajectoryStore(store_root).delete_run(f"bench-{run_no}")
        # direct cost per snapshot, robust to other load: flatten + host copy and the
        # whole store write (all threads' CPU: zarr writes on its own I/O threads),
        # each timed alone on this model's parameters
        params = dict(model.named_parameters())
        row = torch.empty(layout.size, dtype=torch.float32)
        t = time.perf_counter()
        for _ in range(5):  # what train() does with a RunWriter sink: flatten into its buffer
            layout.flatten(params, out=row)
        flatten_s = (time.perf_counter() - t) / 5
        flat = row.numpy()
        n = 128 if layout.size < 1e6 else 8
        w = TrajectoryStore(store_root).create_run(f"bench-direct-{run_no}", layout, capacity=n)
        c = time.process_time()
        for _ in range(n):
            w.append(flat)
        w._join()  # all chunk rows written; the run's one-time finish() is reported apart
        write_cpu_s = (time.process_time() - c) / n
        w.finish("complete")
        TrajectoryStore(store_root).delete_run(f"bench-direct-{run_no}")
        direct = {"flatten_s": flatten_s, "write_cpu_s": write_cpu_s}
    return {"mode": mode, "total_s": total, "cpu_s": cpu, "finish_s": finish, "epoch_s": clock.per_epoch(),
            "n_params": layout.size, "status": res.status, "direct": direct}


# --------------------------------------------------------------------------- run
def bench_model(name, args, store_root):
    v = variant_for(name, args)
    one_run(v.model_copy(update={"epochs": 2}), "store", store_root, 0)  # warm-up
    runs = {m: [] for m in MODES}
    k = 1
    for rep in range(args.reps):
        order = MODES if rep % 2 == 0 else MODES[::-1]
        for m in order:
            runs[m].append(one_run(v, m, store_root, k))
            k += 1
    n_params = runs["none"][0]["n_params"]
    row = {"model": name, "n_params": n_params, "epochs": v.epochs,
           "snapshot_mb": n_params * 4 / 1e6}
    for m in MODES:
        totals = [r["total_s"] for r in runs[m]]
        med_epoch = [statistics.median(r["epoch_s"]) for r in runs[m]]
        row[m] = {"total_s": totals, "median_epoch_s": med_epoch,
                  "finish_s": [r["finish_s"] for r in runs[m]],
                  "cpu_s": [r["cpu_s"] for r in runs[m]],
                  "cpu_per_epoch_min": min(r["cpu_s"] for r in runs[m]) / v.epochs,
                  "cpu_per_epoch_median": statistics.median(r["cpu_s"] for r in runs[m]) / v.epochs,
                  "epoch_median_min": min(med_epoch),
                  "epoch_median_median": statistics.median(med_epoch),
                  "per_epoch_total_min": min(totals) / v.epochs,
                  "per_epoch_total_median": statistics.median(totals) / v.epochs}

    directs = [r["direct"] for r in runs["store"]]
    d_med = {k: statistics.median(d[k] for d in directs) for k in ("flatten_s", "write_cpu_s")}
    epoch_s = row["none"]["epoch_median_median"]
    row["direct"] = {**d_med, "epoch_s": epoch_s,
                     "percent_of_epoch": 100 * (d_med["flatten_s"] + d_med["write_cpu_s"])
                     / (epoch_s * max(v.snapshot.every, 1))}

    def ovh(a, b, key):
        return (row[a][key] - row[b][key]) / row[b][key] * 100

    for key in ("per_epoch_total_min", "per_epoch_total_median",
                "epoch_median_min", "epoch_median_median",
                "cpu_per_epoch_min", "cpu_per_epoch_median"):
        row[f"overhead_store_vs_noop_%[{key}]"] = ovh("store", "noop", key)
        row[f"overhead_store_vs_none_%[{key}]"] = ovh("store", "none", key)
    return row


def report(rows):
    print("\ns/epoch: 'steady' = median single-epoch time (min | median over reps); "
          "'amortized' = whole run incl. finish() / epochs (min | median over reps)")
    print(f"{'model':6} {'params':>11} {'MB/snap':>8} {'mode':6} {'steady min':>11} {'steady med':>11} "
          f"{'amort min':>10} {'amort med':>10} {'finish s':>9} {'cpu/ep min':>11} {'cpu/ep med':>11}")
    for r in rows:
        for m in MODES:
            d = r[m]
            print(f"{r['model']:6} {r['n_params']:>11,} {r['snapshot_mb']:>8.2f} {m:6} "
                  f"{d['epoch_median_min']:>11.5f} {d['epoch_median_median']:>11.5f} "
                  f"{d['per_epoch_total_min']:>10.5f} {d['per_epoch_total_median']:>10.5f} "
                  f"{min(d['finish_s']):>9.4f} {d['cpu_per_epoch_min']:>11.5f} {d['cpu_per_epoch_median']:>11.5f}")
    print("\noverhead of 'store' in % (min-based | median-based)")
    print(f"{'model':6} {'steady vs none':>20} {'steady vs noop':>20} {'amort vs none':>20} "
          f"{'amort vs noop':>20} {'CPU vs none':>20} {'CPU vs noop':>20}")
    for r in rows:
        cells = []
        for kind in ("epoch_median", "per_epoch_total", "cpu_per_epoch"):
            for base in ("none", "noop"):
                a = r[f"overhead_store_vs_{base}_%[{kind}_min]"]
                b = r[f"overhead_store_vs_{base}_%[{kind}_median]"]
                cells.append(f"{a:+7.2f} | {b:+7.2f}")
        print(f"{r['model']:6} " + " ".join(f"{c:>20}" for c in cells))
    print("\ndirect cost per snapshot, each part timed alone (robust to other load on the machine):")
    print(f"{'model':6} {'flatten+copy s':>15} {'store write CPU s':>18} {'epoch s':>9} {'% of epoch':>11}")
    for r in rows:
        d = r["direct"]
        print(f"{r['model']:6} {d['flatten_s']:>15.5f} {d['write_cpu_s']:>18.5f} {d['epoch_s']:>9.5f} "
              f"{d['percent_of_epoch']:>10.2f}%")


def checksum_ab(name, args, store_root) -> dict:
    """'store' runs with and without the CRC32C codec, alternated (same variant, seeds),
    and a mapped read pass of one stored run each way; ratios with/without."""
    import numpy as np

    from pipeline.storage import writer as W

    v = variant_for(name, args)
    one_run(v.model_copy(update={"epochs": 2}), "store", store_root, 0)  # warm-up
    runs = {True: [], False: []}
    reads = {True: [], False: []}
    k = 1
    for rep in range(args.reps):
        for crc in ((True, False) if rep % 2 == 0 else (False, True)):
            W.CHECKSUMS = crc
            try:
                runs[crc].append(one_run(v, "store", store_root, k))
                # a read pass of a stored run (n snapshots of this model), mapped chunks
                task, model, layout = build_parts(v, "cpu")
                n = 64 if layout.size < 1e6 else 8
                st = TrajectoryStore(store_root)
                w = st.create_run(f"bench-read-{k}", layout, capacity=n)
                row = np.random.default_rng(k).standard_normal(layout.size).astype(np.float32)
                for _ in range(n):
                    w.append(row)
                w.finish("complete")
                arr = st.open_run(f"bench-read-{k}").trajectory().array
                best = float("inf")
                for _ in range(3):   # CPU time of the pass (robust to other load), best of 3
                    c = time.process_time()
                    arr.sum().compute(scheduler="sync")
                    best = min(best, time.process_time() - c)
                reads[crc].append(best)
                st.delete_run(f"bench-read-{k}")
            finally:
                W.CHECKSUMS = True
            k += 1

    def med(xs):
        return statistics.median(xs)

    out = {"model": name, "n_params": runs[True][0]["n_params"], "epochs": v.epochs}
    for crc, label in ((True, "crc32c"), (False, "plain")):
        out[label] = {"total_s": [r["total_s"] for r in runs[crc]],
                      "cpu_s": [r["cpu_s"] for r in runs[crc]],
                      "write_cpu_s_per_snapshot": [r["direct"]["write_cpu_s"] for r in runs[crc]],
                      "read_pass_s": reads[crc]}
    for key in ("total_s", "cpu_s", "write_cpu_s_per_snapshot", "read_pass_s"):
        out[f"ratio_{key}_median"] = med(out["crc32c"][key]) / med(out["plain"][key])
        out[f"ratio_{key}_min"] = min(out["crc32c"][key]) / min(out["plain"][key])
    return out


def main(argv=None):
    args = parse(argv)
    torch.set_num_threads(args.threads)
    tmp = tempfile.mkdtemp(prefix="kma-bench-", dir=args.store_dir)
    if args.checksums:
        try:
            rows = [checksum_ab(name, args, os.path.join(tmp, "store")) for name in args.models.split(",")]
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        print("CRC32C on the weight chunks: ratio with / without (median | min over reps)")
        for r in rows:
            print(f"{r['model']:6} {r['n_params']:>11,} params: "
                  + ", ".join(f"{key} {r[f'ratio_{key}_median']:.3f} | {r[f'ratio_{key}_min']:.3f}"
                              for key in ("total_s", "cpu_s", "write_cpu_s_per_snapshot", "read_pass_s")))
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"args": vars(args), "results": rows}, indent=1))
        print(f"wrote {out}")
        return
    try:
        rows = [bench_model(name, args, os.path.join(tmp, "store"))
                for name in args.models.split(",")]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    report(rows)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "torch_threads": torch.get_num_threads(),
                               "results": rows}, indent=1))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
