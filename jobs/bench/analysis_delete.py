"""What deleting a stored analysis costs on a local store: zarr's ``del group[slot]``
(what ``write_analysis`` does to the previous analysis of the same id once the new one
is whole) against ``shutil.rmtree`` of the same folder, on copies of one analysis.

    python jobs/bench/analysis_delete.py --store DIR/real --reps 5   # a store analysed once
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import time
from pathlib import Path


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--store", required=True, help="a local store holding run 'real' with an analysis")
    p.add_argument("--run", default="real")
    p.add_argument("--reps", type=int, default=5)
    args = p.parse_args(argv)
    import zarr

    from pipeline.storage.local import LocalBackend

    base = Path(args.store).resolve() / "runs" / args.run / "analyses"
    src = next(q for q in sorted(base.iterdir()) if q.is_dir() and not q.name.endswith(".next"))
    copy = base / (src.name + ".bench-copy")
    files = sum(1 for f in src.rglob("*") if f.is_file())
    timing = {"zarr del": [], "rmtree": []}
    for _ in range(args.reps):
        for how in timing:
            shutil.copytree(src, copy)
            analyses = zarr.open_group(LocalBackend(Path(args.store).resolve()), mode="r+")[
                f"runs/{args.run}/analyses"]
            t, c = time.perf_counter(), time.process_time()
            if how == "zarr del":
                del analyses[copy.name]
            else:
                shutil.rmtree(copy)
            timing[how].append((time.perf_counter() - t, time.process_time() - c))
    print(f"zarr {zarr.__version__}; analysis {src.name}: {files} files")
    for how, ts in timing.items():
        print(f"{how:8s} wall median {statistics.median(w for w, _ in ts) * 1e3:.1f} ms, "
              f"cpu median {statistics.median(c for _, c in ts) * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
