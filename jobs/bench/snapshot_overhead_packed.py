"""Snapshot overhead of a PACKED task, as a fraction of its training time.

Command::

    .venv/bin/python jobs/bench/snapshot_overhead_packed.py                 # 32 demo MLPs, 300 epochs
    .venv/bin/python jobs/bench/snapshot_overhead_packed.py --members 64 --width 256 --epochs 50

A pack of ``--members`` variants of the demo MLP (configs/demo.yaml: multiscale, depth 2,
width 32, Adam; 2 inits x 4 learning rates x seeds) is trained by
:func:`pipeline.training.packed.train_packed` in three modes, alternated A/B/C per round:

- ``none``  : only the initial snapshot (``snapshot_every`` > epochs)
- ``noop``  : a snapshot every epoch into block sinks that do nothing (the one copy of
              the packed parameters per snapshot + the finiteness sum)
- ``store`` : a snapshot every epoch into each member's real ``RunWriter`` on local
              disk (rows handed over in blocks, background zarr writes), ``finish()``
              of every writer included (reported apart too: it also writes each run's
              metrics, which is not snapshot cost)

Reported per mode: wall and CPU seconds (median over rounds), and the overhead of
``store`` against ``none``. One torch thread (a ``num_cpus: 1`` task).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from pipeline import config  # noqa: E402
from pipeline.storage.store import TrajectoryStore  # noqa: E402
from pipeline.training.packed import PackedOptimizer, build_packed, train_packed  # noqa: E402

MODES = ("none", "noop", "store")


class NoopBlocks:
    """A sink that takes blocks of rows and drops them."""

    t_chunk = 64

    def append_rows(self, rows, epochs, steps):
        pass


def one_run(vs, mode: str, root: str, round_no: int) -> dict:
    tasks, model, layout = build_packed(vs)
    v0 = vs[0]
    opt = PackedOptimizer(v0.optimizer, model.flat, model.grad, [v.lr for v in vs])
    writers = []
    if mode == "store":
        store = TrajectoryStore(root)
        writers = [store.create_run(f"b{round_no}-{i}", layout, capacity=v.snapshot_capacity())
                   for i, v in enumerate(vs)]
        sinks = writers
    else:
        sinks = [NoopBlocks() for _ in vs]
    every = v0.epochs + 1 if mode == "none" else 1
    c0, t0 = time.process_time(), time.perf_counter()
    res = train_packed(model, tasks, [v.loss for v in vs], opt, epochs=v0.epochs,
                       batch_size=v0.batch_size, snapshot_every=every, snapshot_unit="epoch",
                       layout=layout, sinks=sinks,
                       generators=[torch.Generator().manual_seed(v.torch_seed + 1) for v in vs])
    c1 = time.process_time()
    for w, r in zip(writers, res):
        w.finish(r.status, metrics=r.history)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    finish_cpu = time.process_time() - c1
    assert {r.status for r in res} == {"complete"}
    return {"mode": mode, "wall_s": wall, "cpu_s": cpu, "finish_cpu_s": finish_cpu,
            "snapshots": res[0].n_snapshots}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--members", type=int, default=32)
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--epochs", type=int, default=300)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--out", default="bench-out/snapshot_overhead_packed.json")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    cfg = config.load(ROOT / "configs" / "demo.yaml", [
        f"epochs={a.epochs}", "model.depth=2", f"model.width={a.width}", "init=[kaiming,xavier]",
        "optimizer.lr=[0.001,0.002,0.003,0.005]", f"seeds={max(1, -(-a.members // 8))}"])
    vs = config.expand(cfg)[: a.members]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(a.reps):
            for mode in MODES:
                rows.append(one_run(vs, mode, f"{tmp}/s{r}", r))
                print(json.dumps(rows[-1]), flush=True)
    med = {m: {k: statistics.median(x[k] for x in rows if x["mode"] == m)
               for k in ("wall_s", "cpu_s", "finish_cpu_s")} for m in MODES}
    P = build_packed(vs[:1])[2].size
    out = {"args": vars(a), "parameters_per_member": P, "median": med,
           "store_over_none_wall": med["store"]["wall_s"] / med["none"]["wall_s"] - 1,
           "store_over_none_cpu": med["store"]["cpu_s"] / med["none"]["cpu_s"] - 1,
           "noop_over_none_wall": med["noop"]["wall_s"] / med["none"]["wall_s"] - 1,
           "rows": rows}
    for m in MODES:
        print(f"{m:5s}: wall {med[m]['wall_s']:.2f} s  cpu {med[m]['cpu_s']:.2f} s "
              f"(of which finish() {med[m]['finish_cpu_s']:.2f} s)")
    print(f"{len(vs)} members x {P} parameters, {a.epochs} epochs: snapshot overhead (store vs none) "
          f"wall {out['store_over_none_wall']:+.1%}, cpu {out['store_over_none_cpu']:+.1%}; "
          f"the copy alone (noop vs none) {out['noop_over_none_wall']:+.1%}")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
