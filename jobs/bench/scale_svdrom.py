"""Scale: a trajectory the size of SVD-ROM's published case, analysed from disk.

SVD-ROM's case is a 1,038,240 × 8,766 float32 matrix (36 GB), which its Zarr + Dask SVD
takes ~10 minutes for on a 32 GB laptop (singular values and vectors, no residuals).
This script writes a trajectory of the same size through KMA's store (default 1,000
snapshots × 9,000,000 parameters = 36 GB, 10 layers: five known modes 1, 0.93,
0.8 e^{±0.35i}, 0.55 on top of ``w0`` plus noise 1e-6 of the entries' size), then runs
``kma analyze --no-mlflow --json`` with default flags in a child process and reports
its wall time, its peak memory (the child's own ``ru_maxrss``), its ratio to a read-pass
process of the same array (``dask.array.from_zarr(...).sum()``, timed before and after
it, with the load average: on a shared machine only the ratio means much), the plan line (windows,
passes), the factors used, and how many of the five modes the first window certifies
(the decaying ones are gone later), against the targets ≤ 3 minutes and ≤ 1 GiB.

Commands::

    python jobs/bench/scale_svdrom.py                       # 36 GB: needs ~40 GB of disk
    python jobs/bench/scale_svdrom.py --T 1000 --P 250000   # reduced, 1 GB
    python jobs/bench/scale_svdrom.py --T 8766 --P 1038240  # SVD-ROM's own shape

``--keep`` keeps the store (``--dir``) for a second run from disk; ``--drop-cache``
drops the page cache first (root only) so the analysis reads from disk. A bench, not a
test: nothing here runs in the suite.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

FIVE = np.array([1.0, 0.93, 0.8 * np.exp(0.35j), 0.8 * np.exp(-0.35j), 0.55])


def rows(T, P, noise, seed=0, block=1_000_000):
    """Snapshots w0 + five modes + noise, float32. The modes (5 × P float32, made block by
    block from fixed seeds) are made once and kept: generating them again for every
    snapshot made writing the 36 GB case CPU-bound (an hour on 2 cores)."""
    V = np.empty((5, P), np.float32)
    for j0 in range(0, P, block):
        j1 = min(P, j0 + block)
        V[:, j0:j1] = np.random.default_rng([seed, j0]).standard_normal((5, j1 - j0), dtype=np.float32)
    V[1:] *= np.float32(0.3)
    row = np.empty(P, np.float32)
    for t in range(T):
        z = FIVE[2] ** t
        coef = np.array([1.0, FIVE[1].real ** t, 2 * z.real, -2 * z.imag, FIVE[4].real ** t], np.float32)
        np.dot(coef, V, out=row)
        for j0 in range(0, P, block):
            j1 = min(P, j0 + block)
            row[j0:j1] += np.float32(noise * 0.8) * np.random.default_rng([seed, t, j0, 1]).standard_normal(
                j1 - j0, dtype=np.float32)
        yield row


def write(url, T, P, layers, noise):
    from pipeline.storage.layout import Layout
    from pipeline.storage.store import TrajectoryStore

    edges = np.linspace(0, P, layers + 1).astype(int)
    layout = Layout.from_named_shapes((f"l{i}.weight", (int(b - a),))
                                      for i, (a, b) in enumerate(zip(edges[:-1], edges[1:])))
    store = TrajectoryStore(url)
    t0 = time.perf_counter()
    w = store.create_run("big", layout, capacity=T)
    for t, row in enumerate(rows(T, P, noise)):
        w.append(row, epoch=t)
        if t % max(1, T // 10) == 0:
            print(f"  wrote {t + 1}/{T} snapshots ({time.perf_counter() - t0:.0f}s)", flush=True)
    w.finish("complete")
    return time.perf_counter() - t0


def timed_child(cmd) -> tuple[float, int, subprocess.CompletedProcess]:
    """Run ``cmd``; its wall seconds, its own peak RSS (bytes: ``wait4``'s ``ru_maxrss``,
    this child only) and the finished process (stdout/stderr captured; ``cpu_s``: its
    user + system CPU seconds, set on it)."""
    import threading

    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out: dict = {}
    readers = [threading.Thread(target=lambda k=k, f=f: out.__setitem__(k, f.read()))
               for k, f in (("stdout", proc.stdout), ("stderr", proc.stderr))]
    for r in readers:
        r.start()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    for r in readers:
        r.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    done = subprocess.CompletedProcess(cmd, proc.returncode, out["stdout"], out["stderr"])
    done.cpu_s = usage.ru_utime + usage.ru_stime
    return wall, usage.ru_maxrss * 1024, done


def drop_cache() -> bool:
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--T", type=int, default=1000)
    p.add_argument("--P", type=int, default=9_000_000)
    p.add_argument("--layers", type=int, default=10)
    p.add_argument("--noise", type=float, default=1e-6)
    p.add_argument("--dir", default=None, help="scratch directory (local disk)")
    p.add_argument("--keep", action="store_true")
    p.add_argument("--drop-cache", action="store_true")
    p.add_argument("--out", default="bench-out/scale_svdrom.json")
    a = p.parse_args(argv)
    tmp = Path(a.dir) if a.dir else Path(tempfile.mkdtemp(prefix="kma-scale-"))
    url = str(tmp / "store")
    res = {"T": a.T, "P": a.P, "bytes": a.T * a.P * 4, "noise": a.noise}
    try:
        if not (Path(url) / "runs" / "big").exists():
            print(f"writing {a.T} x {a.P:,} float32 = {res['bytes'] / 1e9:.1f} GB to {url}", flush=True)
            res["write_s"] = write(url, a.T, a.P, a.layers, a.noise)
            save(res, a.out)
        res["page_cache_dropped"] = drop_cache() if a.drop_cache else False
        res["load_before"] = os.getloadavg()
        arr = str(Path(url) / "runs" / "big" / "weights")
        read = [sys.executable, "-c", f"import dask.array as da; da.from_zarr({arr!r}).sum().compute()"]
        out_json = tmp / "analysis.json"
        cmd = [sys.executable, "-m", "pipeline.cli", "analyze", "--store", url, "--no-mlflow",
               "--json", str(out_json)]
        # read pass, analysis, read pass: the ratio is taken against the mean of the two
        # read passes around it (the machine's load and the page cache change meanwhile)
        res["read_s"], res["read_peak_rss_bytes"], done = timed_child(read)
        res["read_cpu_s"] = done.cpu_s
        print(f"  read pass {res['read_s']:.1f}s ({done.cpu_s:.1f} CPU s)", flush=True)
        save(res, a.out)
        res["analyze_s"], res["peak_rss_bytes"], proc = timed_child(cmd)
        if proc.returncode != 0:
            raise SystemExit(f"kma analyze failed ({proc.returncode}): {proc.stderr[-2000:]}")
        res["analyze_cpu_s"] = proc.cpu_s
        print(f"  kma analyze {res['analyze_s']:.1f}s ({proc.cpu_s:.1f} CPU s, peak RSS "
              f"{res['peak_rss_bytes'] / 2**30:.2f} GiB)", flush=True)
        save(res, a.out)
        res["read_after_s"], _, done = timed_child(read)
        res["read_after_cpu_s"] = done.cpu_s
        res["load_after"] = os.getloadavg()
        res["analyze_over_read"] = res["analyze_s"] / (0.5 * (res["read_s"] + res["read_after_s"]))
        res["plan_line"] = next((ln for ln in proc.stderr.splitlines() if "window" in ln and "snapshots" in ln), "")
        records = [r for r in json.loads(out_json.read_text())["runs"] if r["layer"] == "all"]
        res["factors"] = sorted({r["factor"] for r in records})
        res["windows"] = len(records)
        first = records[0]
        lam = np.array([complex(*z) for z in first["eigenvalues"]])[np.array(first["reliable"], bool)]
        res["first_window_certified"] = int(sum(lam.size > 0 and np.abs(lam - z).min() < 1e-2 for z in FIVE))
        res["first_window_wrong"] = int(sum(np.abs(FIVE - z).min() >= 1e-2 for z in lam))
    finally:
        if not a.keep and not a.dir:
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"{a.T} x {a.P:,} float32 ({res['bytes'] / 1e9:.1f} GB): kma analyze {res['analyze_s']:.1f}s "
          f"(target 180 s) = {res['analyze_over_read']:.2f}x the read pass ({res['read_s']:.1f}s before, "
          f"{res['read_after_s']:.1f}s after; load {res['load_before'][0]:.1f} -> {res['load_after'][0]:.1f}), "
          f"peak RSS {res['peak_rss_bytes'] / 2**30:.2f} GiB (target 1 GiB); "
          f"{res['plan_line'].strip()}; factors {res['factors']}; first window certifies "
          f"{res['first_window_certified']}/5 modes, {res['first_window_wrong']} wrong")
    save(res, a.out)


def save(res: dict, path) -> None:
    """Write what is measured so far (a long run leaves its first numbers if stopped)."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
