"""Train the verdict study's sweeps in this process, packed, without Ray.

``kma sweep`` is the way to train them (its Ray driver packs the same way); this script
exists because a local Ray could not start on the study's overloaded 2-core machine
(raylet start-up timed out). Same variants, same run ids, same store layout: packs go
through :func:`pipeline.training.packing.run_pack_task`, the body every sweep task runs.
No MLflow registration (``kma sync`` rebuilds it from the store).

    nice -n 10 python jobs/experiments/verdict_train.py --store /tmp/kma-verdicts configs/verdicts/*.yaml [KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import sys
import time


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", required=True)
    ap.add_argument("--shuffle", type=int, default=None, metavar="SEED",
                    help="train the tasks in a seeded random order (a prefix is then a random sample)")
    ap.add_argument("configs", nargs="+", help="sweep YAML files, then KEY=VALUE overrides")
    args = ap.parse_args(argv)
    from pipeline import config
    from pipeline.training.packing import plan_packs, run_pack_task

    files = [c for c in args.configs if "=" not in c]
    overrides = [c for c in args.configs if "=" in c]
    for f in files:
        cfg = config.load(f, overrides)
        variants = config.expand(cfg)
        tasks = plan_packs(variants, getattr(cfg, "pack", "auto"))
        if args.shuffle is not None:
            import random

            random.Random(args.shuffle).shuffle(tasks)
        t0 = time.perf_counter()
        print(f"{f}: {len(variants)} variants in {len(tasks)} tasks", flush=True)
        for i, t in enumerate(tasks):
            res = run_pack_task(t, args.store)
            st = [a["status"] for a in res.get("attempts", [res])]
            print(f"  task {i + 1}/{len(tasks)}: {len(t)} runs, {time.perf_counter() - t0:.0f} s, "
                  f"statuses {sorted(set(st))}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
