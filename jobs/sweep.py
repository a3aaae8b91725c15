"""Train a sweep on Ray: the job behind ``kma sweep``, as a script for ``ray job submit``.

    ray job submit --address http://HEAD:8265 --working-dir . -- \
        python jobs/sweep.py configs/sweeps/gpu_depth_init.yaml \
        --store s3://kma/store --tracking-uri http://mlflow:5000

Locally, ``python jobs/sweep.py configs/demo.yaml`` starts its own Ray. Inside a Ray job
the cluster's address comes from ``RAY_ADDRESS``.
"""

import argparse
import logging
import sys

from pipeline import config
from pipeline.console import Console
from pipeline.driver import run_sweep
from pipeline.errors import KMAError


def main(argv=None) -> int:
    # 1. parse and validate
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("config")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    p.add_argument("--store", default=None)
    p.add_argument("--tracking-uri", default=None)
    p.add_argument("--ray-address", default=None)
    p.add_argument("--max-parallel", type=int, default=None)
    p.add_argument("--no-analyze", dest="analyze", action="store_false", default=None)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    console = Console()
    try:
        cfg = config.load(args.config, args.overrides)
        # 2. build and run: Ray tasks per variant, registration by this driver only
        summary = run_sweep(
            cfg,
            store_url=args.store,
            tracking_uri=args.tracking_uri,
            ray_address=args.ray_address,
            max_parallel=args.max_parallel,
            analyze=args.analyze,
            console=console,
        )
    except KMAError as e:
        console.error(f"sweep: error: {e}")
        return e.exit_code
    # 3. report
    return 1 if summary.failed else 0


if __name__ == "__main__":
    sys.exit(main())
