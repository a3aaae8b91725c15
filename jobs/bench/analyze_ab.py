"""Whole-process A/B of ``kma analyze --no-mlflow`` (default flags) against a read pass.

Alternates, ``--reps`` times, three child processes on one stored run from the page
cache: the read pass (``dask.array.from_zarr(weights).sum()``), ``kma analyze`` of the
code in ``--before`` (a ``git archive`` of an earlier commit's ``pipeline/``, imported
first by running there) and of this checkout; reports wall seconds and each child's CPU
seconds (its ``wait4`` rusage), their median ratios, the load average, and whether the
two analyses' JSON rows are identical (the verdicts' differing leaves listed). Each
analysis replaces the run's previous one of the same id (deleting it once the new one
is whole); ``--first`` adds a fourth child, this checkout's analysis with the run's
analyses removed just before it (untimed), so that it is the run's first (nothing to
delete).

    python jobs/bench/analyze_ab.py --dir DIR --write          # 80 x 3M float32 store, once
    git archive <commit> pipeline | tar -x -C BEFORE
    python jobs/bench/analyze_ab.py --dir DIR --before BEFORE --reps 5
    python jobs/bench/analyze_ab.py --dir DIR --reps 7 --first   # replace vs first analysis
    python jobs/bench/analyze_ab.py --dir DIR --reps 7 --without xarray   # as without the test extra
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dir", required=True, help="folder holding the store (DIR/real)")
    p.add_argument("--write", action="store_true", help="write the realistic trajectory first")
    p.add_argument("--T", type=int, default=80)
    p.add_argument("--P", type=int, default=3_000_000)
    p.add_argument("--noise", type=float, default=1e-6)
    p.add_argument("--before", help="a folder holding an earlier commit's pipeline/ (git archive)")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--sync", action="store_true",
                   help="os.sync() before each child (untimed): no child waits on the last one's writeback")
    p.add_argument("--first", action="store_true",
                   help="also time this checkout's analysis as the run's first (analyses removed, untimed)")
    p.add_argument("--without", metavar="MODULE", action="append", default=[],
                   help="run every child with MODULE unimportable (e.g. xarray: dask.array imports it when "
                        "installed, as PyDMD, a test extra, installs it), as in an install without it")
    return p.parse_args(argv)


def write(url, T, P, noise):
    sys.path.insert(0, str(ROOT / "jobs" / "bench"))
    from analyze_vs_read import five_mode_rows, layout_of
    from pipeline.storage.store import TrajectoryStore

    w = TrajectoryStore(url).create_run("real", layout_of(P, 10), capacity=T)
    for t, row in enumerate(five_mode_rows(T, P, noise)):
        w.append(row, epoch=t)
    w.finish("complete")


def child(cmd, cwd, flush=False):
    if flush:   # the previous child's writes go to disk now, not inside this child's time
        os.sync()
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{cmd} failed: {p.stderr.read().decode()[-2000:]}")
    return wall, ru.ru_utime + ru.ru_stime


def clear_analyses(url):
    """Remove every analysis of the stored run ``real`` (both slots), then flush the
    deletions to disk, so that none of that work falls inside the next timed child."""
    from pipeline.storage.store import TrajectoryStore

    run = TrajectoryStore(url).open_run("real")
    for aid in run.list_analyses():
        run.delete_analysis(aid)
    os.sync()


def differing(x, y, path=""):
    if isinstance(x, dict) and isinstance(y, dict) and set(x) == set(y):
        return [d for k in x for d in differing(x[k], y[k], f"{path}.{k}")]
    if isinstance(x, list) and isinstance(y, list) and len(x) == len(y):
        return [d for i, (u, v) in enumerate(zip(x, y)) for d in differing(u, v, f"{path}[{i}]")]
    return [] if x == y else [(path, x, y)]


def main(argv=None):
    args = parse(argv)
    d = Path(args.dir).resolve()
    url = str(d / "real")
    if args.write:
        write(url, args.T, args.P, args.noise)
    arr = f"{url}/runs/real/weights"
    py = sys.executable
    block = "".join(f"import sys; sys.modules[{m!r}] = None; " for m in args.without)
    kma = [py, "-m", "pipeline.cli"] if not block else [
        py, "-c", block + "import runpy; sys.argv[0] = 'pipeline.cli'; "
        "runpy.run_module('pipeline.cli', run_name='__main__', alter_sys=True)"]
    kma += ["analyze", "--store", url, "--no-mlflow", "--json"]
    cmds = {"read": ([py, "-c", block + f"import dask.array as da; da.from_zarr({arr!r}).sum().compute()"], ROOT)}
    if args.before:
        cmds["before"] = (kma + [str(d / "before.json")], Path(args.before).resolve())
    cmds["now"] = (kma + [str(d / "now.json")], ROOT)
    if args.first:
        cmds["first"] = (kma + [str(d / "first.json")], ROOT)
    child(*cmds["read"])                                           # warm the page cache
    wall = {k: [] for k in cmds}
    cpu = {k: [] for k in cmds}
    load0 = os.getloadavg()[0]
    for _ in range(args.reps):
        for k, c in cmds.items():
            if k == "first":
                clear_analyses(url)
            w, u = child(*c, flush=args.sync)
            wall[k].append(round(w, 2))
            cpu[k].append(round(u, 2))
    med = lambda d, k: statistics.median(d[k])
    print(f"load average {load0:.1f} -> {os.getloadavg()[0]:.1f}" + ("; os.sync() before each child" if args.sync else "")
          + "".join(f"; without {m}" for m in args.without))
    for k in cmds:
        print(f"{k:7s} wall {wall[k]}  cpu {cpu[k]}")
    for k in cmds:
        if k != "read":
            print(f"{k} / read: wall {med(wall, k) / med(wall, 'read'):.2f}x (min-based "
                  f"{min(wall[k]) / min(wall['read']):.2f}x), cpu {med(cpu, k) / med(cpu, 'read'):.2f}x")
    if args.first:
        print(f"first / now: wall {med(wall, 'first') / med(wall, 'now'):.2f}x, "
              f"cpu {med(cpu, 'first') / med(cpu, 'now'):.2f}x (a first analysis / one replacing the last)")
        a, b = (json.loads((d / f"{n}.json").read_text()) for n in ("now", "first"))
        print(f"first vs now runs: {'identical' if not differing(a.get('runs'), b.get('runs')) else 'differ'}")
    if args.before:
        print(f"now / before: wall {med(wall, 'now') / med(wall, 'before'):.2f}x, "
              f"cpu {med(cpu, 'now') / med(cpu, 'before'):.2f}x")
        a, b = (json.loads((d / f"{n}.json").read_text()) for n in ("before", "now"))
        for key in ("runs", "verdicts"):
            diff = differing(a.get(key), b.get(key))
            print(f"{key}: {'identical' if not diff else f'{len(diff)} leaves differ'}")
            for p, x, y in diff[:12]:
                rel = abs(x - y) / abs(x) if isinstance(x, float) and isinstance(y, float) and x else None
                print(f"  {p}: {x} -> {y}" + (f" (relative {rel:.1e})" if rel is not None else ""))


if __name__ == "__main__":
    main()
