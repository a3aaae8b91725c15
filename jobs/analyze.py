"""Re-run Koopman analysis on stored trajectories: the job behind ``kma analyze``.

    ray job submit --address http://HEAD:8265 --working-dir . -- \
        python jobs/analyze.py --store s3://kma/store --window 50 --stride 25 --per-layer \
        --tracking-uri http://mlflow:5000 --scheduler tcp://dask-scheduler:8786

The analysis itself runs on Dask (threads by default, or the given Dask cluster); this
script only needs to run somewhere that reaches the store and MLflow. It accepts exactly
the flags of ``kma analyze``.
"""

import sys

from pipeline.cli import main

if __name__ == "__main__":
    sys.exit(main(["analyze", *sys.argv[1:]]))
