"""Train a sweep on Ray: the job behind ``kma sweep``, as a script for ``ray job submit``.

    ray job submit --address http://HEAD:8265 --working-dir . -- \
        python jobs/sweep.py configs/sweeps/gpu_depth_init.yaml \
        --store s3://kma/store --tracking-uri http://mlflow:5000

It takes exactly the arguments of ``kma sweep`` (config, KEY=VALUE overrides, --store,
--tracking-uri, --ray-address, --max-parallel, --no-analyze, --yes, --shared-store). A job has no
terminal: a grid above 10,000 variants is refused in one line unless --yes is given. Locally it starts its own
Ray; inside a Ray job the cluster's address comes from ``RAY_ADDRESS``. The steps —
validate the config, preflight every variant, one Ray task per unfinished variant,
registration in MLflow by this driver only, the default analysis — are
:func:`pipeline.workflows.sweep.run_sweep`.
"""

import sys

from pipeline.cli import main

if __name__ == "__main__":
    sys.exit(main(["sweep", *sys.argv[1:]]))
