"""Training time per member-epoch in one process (no Ray, no MLflow): a pack of M demo
MLPs (``run_pack``) against the same variants one after another (``run_variant``),
both into a fresh Zarr store, one torch thread (a ``num_cpus: 1`` task).

Command::

    .venv/bin/python jobs/bench/packed_train.py [--width 32] [--depth 2] [--epochs 100] [--members 32] [--unpacked 4]

``--unpacked``: how many of the M variants are timed unpacked (their mean stands for all).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from pipeline import config  # noqa: E402
from pipeline.training.packing import run_pack  # noqa: E402
from pipeline.training.runner import run_variant  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--depth", type=int, default=2)
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--members", type=int, default=32)
    p.add_argument("--unpacked", type=int, default=4)
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    seeds = max(1, -(-a.members // 8))
    cfg = config.load(ROOT / "configs" / "demo.yaml", [
        f"epochs={a.epochs}", f"model.depth={a.depth}", f"model.width={a.width}", "init=[kaiming,xavier]",
        "optimizer.lr=[0.001,0.002,0.003,0.005]", f"seeds={seeds}"])
    vs = config.expand(cfg)[: a.members]
    with tempfile.TemporaryDirectory() as tmp:
        run_variant(config.expand(config.load(ROOT / "configs" / "demo.yaml", ["epochs=2"]))[0], tmp + "/w")
        t = time.perf_counter()
        res = run_pack(vs, tmp + "/p")
        packed = time.perf_counter() - t
        assert {s["status"] for s in res["attempts"]} == {"complete"}
        t = time.perf_counter()
        for v in vs[: a.unpacked]:
            assert run_variant(v, tmp + "/u")["status"] == "complete"
        unpacked = (time.perf_counter() - t) / a.unpacked * len(vs)
    per = lambda s: s / (len(vs) * a.epochs) * 1e3  # noqa: E731
    print(f"depth {a.depth}, width {a.width}, {len(vs)} members, {a.epochs} epochs: packed {packed:.1f} s "
          f"({per(packed):.3f} ms per member-epoch), unpacked {unpacked:.1f} s "
          f"({per(unpacked):.3f} ms, from {a.unpacked}), unpacked / packed {unpacked / packed:.2f}x")


if __name__ == "__main__":
    main()
