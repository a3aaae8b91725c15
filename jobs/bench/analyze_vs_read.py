"""Analysis speed and scale: KoopmanDMD against a plain read pass of the same array.

Command::

    .venv/bin/python jobs/bench/analyze_vs_read.py             # full, a few minutes, ~7 GB of /tmp
    .venv/bin/python jobs/bench/analyze_vs_read.py --quick     # smoke run, small sizes

Sections (each can be skipped with ``--skip read,cold,zstd,tsqr,ooc,pydmd``):

1. ``read``  : a synthetic trajectory ``T x P`` (default 100 x 2e6 float32, 10 layers:
   ``w0`` + slowly decaying modes + small noise) written through
   ``TrajectoryStore.create_run`` / ``RunWriter`` (the store's real chunking, no
   compression). Alternately, ``--reps`` times: a plain read pass
   ``da.from_zarr(arr)[:T].sum().compute()``; ``KoopmanDMD(method="qr", window=50,
   stride=25, per_layer=True).fit(run.trajectory(), layers)`` (the store's reader: chunk
   files mapped), its pass without the arithmetic (map, cast, subtract: the floor of
   any exact float64 scheme), the same fit through ``da.from_zarr`` (zarr's decode
   path); the same
   with ``method="randomized", rank=20``; and qr with other windows (the whole
   trajectory; W=20, S=10). Times, GB/s, fit/read ratios (target <= 1.5x).
1b. ``cold`` : the same read pass and qr fit from disk: the OS page cache is dropped
   before every pass (root only; skipped otherwise).
2. ``zstd``  : the same data copied into a zarr array with the same chunks and a zstd
   compressor; write time, compression ratio, read pass and qr fit, alternated.
3. ``tsqr``  : reference, ``dask.array.linalg.tsqr`` of ``X = Y.T`` (R only) + a small DMD.
4. ``ooc``   : out of core. Two trajectories of ``--ooc-gb`` GB each: wide
   (``--ooc-T`` snapshots, the windows above) and long (``--ooc-long-T`` snapshots,
   windows ``--ooc-long-window``, stride half of it). Each fit (qr; on the long one also
   randomized, ``--rank``) runs in a child process, through the mapped reader and
   through zarr's decode path; its peak RSS (``VmHWM``) is compared with ``--budget-gib``.
5. ``pydmd`` : ``pydmd.DMD(svd_rank=0).fit(X)`` (``X`` P x T numpy, loaded from the store)
   against ``KoopmanDMD(method="qr")`` on the same stored run (one window, all
   snapshots), each in its own child process: time and peak RSS.

6. ``realistic`` : issue 20's target, whole processes from the page cache. A trajectory
   of ``--real-T`` snapshots × ``--real-P`` parameters (default 80 × 3M float32, ~1 GB, 10
   layers): five known modes (1, 0.93, 0.8 e^{±0.35i}, 0.55) on top of ``w0`` plus noise
   ``--real-noise`` (default 1e-6) of the entries' size, written through the store.
   ``--reps`` times, alternated: a read-pass process (``python -c`` of
   ``dask.array.from_zarr(weights).sum()``), ``kma analyze --no-mlflow --json`` with
   default flags, and with ``--threshold gavish-donoho``; each timed as a whole process
   (wall). Reports the ratios (target default ≤ 1.5× read, GD ≤ default), which factor
   every window came from, whether a second pass ran, and how many of the five modes
   the last window and the whole run (``--window all``) certify; then PyDMD's exact
   DMD on the same stored array in a child (time and peak RSS) against our fit child.

Every child reports ``VmHWM`` from ``/proc/self/status`` (reset on exec, unlike
``ru_maxrss``, which keeps the parent's pre-exec peak).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

GB = 1e9


# --------------------------------------------------------------------------- parse
def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--T", type=int, default=100)
    p.add_argument("--P", type=int, default=2_000_000)
    p.add_argument("--layers", type=int, default=10)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--window", type=int, default=50)
    p.add_argument("--stride", type=int, default=25)
    p.add_argument("--rank", type=int, default=20, help="randomized method rank")
    p.add_argument("--ooc-gb", type=float, default=4.4, help="size of the out-of-core trajectory")
    p.add_argument("--ooc-T", type=int, default=200, help="snapshots of the wide out-of-core case")
    p.add_argument("--ooc-long-T", type=int, default=2000, help="snapshots of the long case")
    p.add_argument("--ooc-long-window", type=int, default=100, help="window of the long case (stride W/2)")
    p.add_argument("--budget-gib", type=float, default=1.0, help="memory the analysis may use")
    p.add_argument("--pydmd-P", type=int, default=1_000_000)
    p.add_argument("--pydmd-T", type=int, default=100)
    p.add_argument("--zstd-level", type=int, default=3)
    p.add_argument("--real-T", type=int, default=80)
    p.add_argument("--real-P", type=int, default=3_000_000)
    p.add_argument("--real-noise", type=float, default=1e-6)
    p.add_argument("--real-skip-pydmd", action="store_true", help="realistic: leave PyDMD out")
    p.add_argument("--skip", default="", help="comma list of read,cold,zstd,tsqr,ooc,pydmd,realistic")
    p.add_argument("--dir", default=None, help="scratch directory (local disk)")
    p.add_argument("--out", default="bench-out/analyze_vs_read.json")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.quick:
        a.T, a.P, a.reps, a.window, a.stride = 60, 200_000, 2, 30, 15
        a.ooc_gb, a.ooc_T, a.budget_gib = 0.4, 100, 0.5
        a.ooc_long_T, a.ooc_long_window = 400, 40
        a.pydmd_P, a.pydmd_T = 100_000, 60
        a.real_P = 200_000
    return a


# --------------------------------------------------------------------------- build
def synthetic_rows(T, P, seed=0, n_modes=6, noise=1e-4):
    """Yield snapshots w0 + sum_k a_k lam_k^t v_k + noise (float32), one at a time."""
    rng = np.random.default_rng(seed)
    w0 = rng.standard_normal(P, dtype=np.float32)
    lams = np.exp(-np.linspace(0.01, 0.2, n_modes))
    vs = rng.standard_normal((n_modes, P), dtype=np.float32) * np.float32(0.1)
    row = np.empty(P, np.float32)
    for t in range(T):
        row[:] = w0
        for lam, v in zip(lams, vs):
            row += np.float32(1 - lam ** t) * v
        row += noise * rng.standard_normal(P, dtype=np.float32)
        yield row


def layout_of(P, n_layers):
    from pipeline.storage.layout import Layout

    edges = np.linspace(0, P, n_layers + 1).astype(int)
    return Layout.from_named_shapes((f"l{i}.weight", (int(b - a),))
                                    for i, (a, b) in enumerate(zip(edges[:-1], edges[1:])))


def write_run(store_url, run_id, T, P, n_layers, seed=0):
    """Write the synthetic trajectory through the store's own writer; returns seconds."""
    from pipeline.storage.store import TrajectoryStore

    store = TrajectoryStore(store_url)
    if store.status(run_id) is not None:
        store.delete_run(run_id)
    t0 = time.perf_counter()
    w = store.create_run(run_id, layout_of(P, n_layers), capacity=T)
    for t, row in enumerate(synthetic_rows(T, P, seed)):
        w.append(row, epoch=t)
    w.finish("complete")
    return time.perf_counter() - t0


def zstd_copy(src, group, level):
    """Copy ``src`` into ``group['weights_zstd']``: same shape and chunks, zstd. Returns s."""
    import zarr.codecs

    dst = group.create_array("weights_zstd", shape=src.shape, chunks=src.chunks, dtype=src.dtype,
                             fill_value=0, compressors=[zarr.codecs.ZstdCodec(level=level)],
                             overwrite=True)
    tc = src.chunks[0]
    blocks = [src[a:a + tc] for a in range(0, src.shape[0], tc)]  # read first: time the write only
    t0 = time.perf_counter()
    for i, b in enumerate(blocks):
        dst[i * tc:i * tc + b.shape[0]] = b
    return dst, time.perf_counter() - t0


def array_bytes(arr):
    return int(np.prod(arr.shape)) * arr.dtype.itemsize


def stored_bytes(path):
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


# --------------------------------------------------------------------------- timed ops
def read_pass(arr, T):
    import dask.array as da

    # the same number of threads the analysis pass uses (cores + 1), so neither side
    # gets more I/O overlap than the other
    t0 = time.perf_counter()
    da.from_zarr(arr)[:T].sum().compute(num_workers=(os.cpu_count() or 1) + 1)
    return time.perf_counter() - t0


def fit(Y, groups, method, window, stride, rank=None, per_layer=True):
    from pipeline.koopman import KoopmanDMD

    t0 = time.perf_counter()
    est = KoopmanDMD(method=method, rank=rank, window=window, stride=stride,
                     per_layer=per_layer).fit(Y, groups)
    dt = time.perf_counter() - t0
    n_eigs = sum(len(r.eigenvalues) for r in est.results_)
    return dt, len(est.results_), n_eigs


def cast_pass(Y, groups):
    """The qr pass without its arithmetic: map, cast to float64, subtract x_0."""
    from pipeline.koopman import passes

    t0 = time.perf_counter()
    passes.run_pass(Y, lambda g, x: {}, passes.sum_merge, [g[1] for g in groups],
                     [g[2] for g in groups])
    return time.perf_counter() - t0


def zarr_y(run):
    """The run's trajectory read through zarr's decode path (as from object storage)."""
    from pipeline.storage.chunkmap import zarr_trajectory

    return zarr_trajectory(run.weights_array(), run.n_snapshots)


def stats(xs):
    return {"min": min(xs), "median": statistics.median(xs), "all": xs}


# --------------------------------------------------------------------------- child
def child_main(spec: dict) -> None:
    """Run one measured job in this fresh process; print one JSON line."""
    def hwm_bytes():
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        return None

    from pipeline.storage.store import TrajectoryStore

    run = TrajectoryStore(spec["store"], read_only=True).open_run(spec["run"])
    base = hwm_bytes()  # interpreter + imports, before any data
    out = {"baseline_hwm": base}
    if spec["job"] == "fit":
        Y = run.trajectory() if spec.get("reader", "map") == "map" else zarr_y(run)
        dt, n_win, n_eigs = fit(Y, run.layout.layer_ranges(), spec["method"],
                                spec.get("window"), spec.get("stride"), spec.get("rank"),
                                spec.get("per_layer", True))
        out.update(fit_s=dt, n_results=n_win, n_eigs=n_eigs)
    elif spec["job"] == "pydmd":
        import pydmd

        t0 = time.perf_counter()
        X = np.ascontiguousarray(run.weights().compute().T)  # P x T float32
        out["load_s"] = time.perf_counter() - t0
        out["X_bytes"] = X.nbytes
        t0 = time.perf_counter()
        d = pydmd.DMD(svd_rank=0).fit(X)
        out["fit_s"] = time.perf_counter() - t0
        out["n_eigs"] = len(d.eigs)
    out["peak_hwm"] = hwm_bytes()
    print("CHILD " + json.dumps(out))


def run_child(spec: dict) -> dict:
    cmd = [sys.executable, __file__, "--child", json.dumps(spec)]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("CHILD ")]
    if p.returncode != 0 or not lines:
        raise RuntimeError(f"child {spec} failed ({p.returncode}): {p.stderr[-2000:]}")
    res = json.loads(lines[-1][6:])
    res["child_wall_s"] = wall
    return res


# --------------------------------------------------------------------------- run
def bench_read(args, tmp, res):
    from pipeline.storage.store import TrajectoryStore

    url = str(tmp / "store")
    wt = write_run(url, "main", args.T, args.P, args.layers)
    run = TrajectoryStore(url).open_run("main")
    arr = run.weights_array()
    nbytes = args.T * args.P * 4
    groups = run.layout.layer_ranges()
    print(f"[read] wrote {nbytes / GB:.2f} GB through RunWriter in {wt:.1f} s; "
          f"chunks {arr.chunks}, compressors {arr.compressors}", flush=True)
    read_pass(arr, args.T)  # warm the page cache: every timing below reads from memory
    t_read, t_qr, t_rnd, t_qrz, t_cast = [], [], [], [], []
    sweep = [(args.T, args.T), (20, 10)]            # other windows: whole trajectory, short
    t_sweep = {f"{w}/{s}": [] for w, s in sweep}
    for rep in range(args.reps):
        t_read.append(read_pass(arr, args.T))
        t_qr.append(fit(run.trajectory(), groups, "qr", args.window, args.stride)[0])
        t_cast.append(cast_pass(run.trajectory(), groups))
        t_qrz.append(fit(zarr_y(run), groups, "qr", args.window, args.stride)[0])
        t_rnd.append(fit(run.trajectory(), groups, "randomized", args.window, args.stride, args.rank)[0])
        for w, st in sweep:
            t_sweep[f"{w}/{st}"].append(fit(run.trajectory(), groups, "qr", w, st)[0])
        print(f"[read] rep {rep}: read {t_read[-1]:.2f}s qr {t_qr[-1]:.2f}s (cast only {t_cast[-1]:.2f}s) "
              f"(through zarr decode {t_qrz[-1]:.2f}s) randomized {t_rnd[-1]:.2f}s; qr W/S "
              + " ".join(f"{k}: {v[-1]:.2f}s" for k, v in t_sweep.items()), flush=True)
    _, n_res, n_eigs = fit(run.trajectory(), groups, "qr", args.window, args.stride)
    res["read"] = {
        "T": args.T, "P": args.P, "bytes": nbytes, "write_s": wt, "chunks": list(arr.chunks),
        "n_window_layer_results": n_res, "n_eigenvalues": n_eigs,
        "read_s": stats(t_read), "qr_fit_s": stats(t_qr), "randomized_fit_s": stats(t_rnd),
        "qr_fit_zarr_decode_s": stats(t_qrz), "cast_only_pass_s": stats(t_cast),
        "qr_window_sweep": {k: {**stats(v), "over_read_median": statistics.median(v) / statistics.median(t_read)}
                            for k, v in t_sweep.items()},
        "qr_over_read": {"min-based": min(t_qr) / min(t_read),
                         "median-based": statistics.median(t_qr) / statistics.median(t_read)},
        "randomized_over_read": {"min-based": min(t_rnd) / min(t_read),
                                 "median-based": statistics.median(t_rnd) / statistics.median(t_read)},
    }
    return run, arr


def drop_page_cache() -> bool:
    """Empty the OS page cache (root only) so the next pass reads from disk."""
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def bench_cold(args, run, arr, res):
    """Read pass and qr fit from disk: the page cache is dropped before each pass."""
    if not drop_page_cache():
        print("[cold] skipped: cannot drop the page cache (needs root)", flush=True)
        return
    groups = run.layout.layer_ranges()
    t_read, t_qr = [], []
    for rep in range(args.reps):
        drop_page_cache()
        t_read.append(read_pass(arr, args.T))
        drop_page_cache()
        t_qr.append(fit(run.trajectory(), groups, "qr", args.window, args.stride)[0])
        print(f"[cold] rep {rep}: read {t_read[-1]:.2f}s qr {t_qr[-1]:.2f}s", flush=True)
    res["cold"] = {
        "read_s": stats(t_read), "qr_fit_s": stats(t_qr),
        "qr_over_read": {"min-based": min(t_qr) / min(t_read),
                         "median-based": statistics.median(t_qr) / statistics.median(t_read)},
    }


def bench_zstd(args, run, arr, tmp, res):
    from pipeline.storage.chunkmap import zarr_trajectory

    dst, wt = zstd_copy(arr, run.group, args.zstd_level)
    # write time of the store's uncompressed layout, same blocks, for comparison
    raw = run.group.create_array("weights_raw_copy", shape=arr.shape, chunks=arr.chunks,
                                 dtype=arr.dtype, fill_value=0, compressors=None, overwrite=True)
    tc = arr.chunks[0]
    blocks = [arr[a:a + tc] for a in range(0, arr.shape[0], tc)]
    t0 = time.perf_counter()
    for i, b in enumerate(blocks):
        raw[i * tc:i * tc + b.shape[0]] = b
    w_raw = time.perf_counter() - t0
    del blocks, raw
    del run.group["weights_raw_copy"]
    run_path = Path(str(run.store.url)) / "runs" / run.run_id
    z_bytes = stored_bytes(run_path / "weights_zstd")
    r_bytes = stored_bytes(run_path / "weights")
    groups = run.layout.layer_ranges()
    read_pass(dst, args.T)
    t_read_z, t_qr_z, t_read_r, t_qr_r = [], [], [], []
    for rep in range(args.reps):
        t_read_r.append(read_pass(arr, args.T))
        t_read_z.append(read_pass(dst, args.T))
        t_qr_r.append(fit(run.trajectory(), groups, "qr", args.window, args.stride)[0])
        t_qr_z.append(fit(zarr_trajectory(dst, args.T), groups, "qr", args.window, args.stride)[0])
        print(f"[zstd] rep {rep}: read raw {t_read_r[-1]:.2f}s zstd {t_read_z[-1]:.2f}s | "
              f"qr raw {t_qr_r[-1]:.2f}s zstd {t_qr_z[-1]:.2f}s", flush=True)
    res["zstd"] = {
        "level": args.zstd_level, "raw_bytes_on_disk": r_bytes, "zstd_bytes_on_disk": z_bytes,
        "compression_ratio": r_bytes / z_bytes, "write_s_raw": w_raw, "write_s_zstd": wt,
        "read_s_raw": stats(t_read_r), "read_s_zstd": stats(t_read_z),
        "qr_fit_s_raw": stats(t_qr_r), "qr_fit_s_zstd": stats(t_qr_z),
        "qr_over_read_raw": statistics.median(t_qr_r) / statistics.median(t_read_r),
        "qr_over_read_zstd": statistics.median(t_qr_z) / statistics.median(t_read_z),
        "qr_zstd_over_read_raw": statistics.median(t_qr_z) / statistics.median(t_read_r),
    }
    del run.group["weights_zstd"]


def bench_tsqr(args, run, res):
    import dask.array as da

    from pipeline.koopman import dmd

    Y = run.weights()
    X = Y.T.rechunk({0: Y.chunks[1][0], 1: -1}).astype(np.float64)
    t0 = time.perf_counter()
    _, R = da.linalg.tsqr(X)
    R = R.compute()
    t_r = time.perf_counter() - t0
    t1 = time.perf_counter()
    out = dmd(R, data_shape=(X.shape[0], X.shape[1] - 1))
    t_dmd = time.perf_counter() - t1
    res["tsqr"] = {"tsqr_R_s": t_r, "small_dmd_s": t_dmd, "n_eigs": len(out.eigenvalues),
                   "note": "whole trajectory, one window, no E transform, no per-layer"}
    print(f"[tsqr] dask tsqr R {t_r:.2f}s + small dmd {t_dmd:.3f}s", flush=True)


def bench_ooc(args, tmp, res):
    """Two shapes of the same size: wide (few snapshots) and long (many snapshots,
    windows), each fitted in a child through the store's mapped reader and through
    zarr's decode path (what object storage uses)."""
    budget = args.budget_gib * 2**30
    cases = [("wide", args.ooc_T, args.window, args.stride, ["qr"]),
             ("long", args.ooc_long_T, args.ooc_long_window, args.ooc_long_window // 2,
              ["qr", "randomized"])]
    res["ooc"] = {"budget_bytes": budget, "cases": []}
    for name, T, W, S, methods in cases:
        url = str(tmp / f"ooc-{name}")
        P = int(args.ooc_gb * GB / (4 * T))
        wt = write_run(url, "big", T, P, args.layers, seed=1)
        nbytes = T * P * 4
        print(f"[ooc] {name}: wrote {nbytes / GB:.2f} GB ({T} x {P}) in {wt:.1f} s", flush=True)
        for method in methods:
            for reader in ("map", "zarr"):
                r = run_child({"job": "fit", "store": url, "run": "big", "method": method,
                               "window": W, "stride": S, "reader": reader, "rank": args.rank})
                case = {"shape": name, "T": T, "P": P, "window": W, "stride": S, "method": method,
                        "reader": reader, "dataset_bytes": nbytes, "write_s": wt, **r,
                        "dataset_over_budget": nbytes / budget,
                        "dataset_over_peak_rss": nbytes / r["peak_hwm"],
                        "within_budget": r["peak_hwm"] <= budget, "GBps": nbytes / GB / r["fit_s"]}
                res["ooc"]["cases"].append(case)
                print(f"[ooc] {name} {method} via {reader}: fit {r['fit_s']:.1f}s, peak RSS "
                      f"{r['peak_hwm'] / 2**20:.0f} MiB (baseline {r['baseline_hwm'] / 2**20:.0f} MiB), "
                      f"budget {args.budget_gib} GiB", flush=True)
        shutil.rmtree(tmp / f"ooc-{name}", ignore_errors=True)


def bench_pydmd(args, tmp, res):
    url = str(tmp / "pyd")
    T, P = args.pydmd_T, args.pydmd_P
    write_run(url, "pyd", T, P, args.layers, seed=2)
    ours = run_child({"job": "fit", "store": url, "run": "pyd", "method": "qr",
                      "window": None, "stride": None, "per_layer": False})
    theirs = run_child({"job": "pydmd", "store": url, "run": "pyd"})
    ours2 = run_child({"job": "fit", "store": url, "run": "pyd", "method": "qr",
                       "window": None, "stride": None, "per_layer": False})
    best = min((ours, ours2), key=lambda r: r["fit_s"])
    res["pydmd"] = {"T": T, "P": P, "bytes": T * P * 4, "ours": [ours, ours2], "pydmd": theirs,
                    "time_ratio_pydmd_fit_over_ours": theirs["fit_s"] / best["fit_s"],
                    "time_ratio_pydmd_load+fit_over_ours": (theirs["fit_s"] + theirs["load_s"]) / best["fit_s"],
                    "peak_rss_ratio_pydmd_over_ours": theirs["peak_hwm"] / best["peak_hwm"]}
    print(f"[pydmd] ours {best['fit_s']:.2f}s peak {best['peak_hwm'] / 2**20:.0f} MiB | pydmd load "
          f"{theirs['load_s']:.2f}s fit {theirs['fit_s']:.2f}s peak {theirs['peak_hwm'] / 2**20:.0f} MiB",
          flush=True)
    shutil.rmtree(tmp / "pyd", ignore_errors=True)


# --------------------------------------------------------------------------- realistic
FIVE = np.array([1.0, 0.93, 0.8 * np.exp(0.35j), 0.8 * np.exp(-0.35j), 0.55])


def five_mode_rows(T, P, noise, seed=0):
    """Yield w0 + five modes + noise·|entry| (float32), one snapshot at a time."""
    rng = np.random.default_rng(seed)
    w0 = rng.standard_normal(P, dtype=np.float32)
    v = rng.standard_normal((4, P), dtype=np.float32) * np.float32(0.3)
    scale = np.float32(noise * 0.8)                       # ~ noise × mean |entry|
    for t in range(T):
        z = FIVE[2] ** t
        row = (w0 * np.float32(1.0) + v[0] * np.float32(FIVE[1].real ** t)
               + v[1] * np.float32(2 * z.real) + v[2] * np.float32(-2 * z.imag)
               + v[3] * np.float32(FIVE[4].real ** t))
        row += scale * rng.standard_normal(P, dtype=np.float32)
        yield row


def _timed(cmd):
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"{cmd} failed ({p.returncode}): {p.stderr[-2000:]}")
    return time.perf_counter() - t0, p.stderr


def _certified(rows):
    """How many of the five modes each row certifies (within 1e-2), per window."""
    out = []
    for r in rows:
        lam = np.array([complex(*z) for z in r["eigenvalues"]])[np.array(r["reliable"], bool)]
        out.append(int(sum(lam.size > 0 and np.abs(lam - z).min() < 1e-2 for z in FIVE)))
    return out


def bench_realistic(args, tmp, res):
    from pipeline.storage.store import TrajectoryStore

    url = str(tmp / "real")
    T, P = args.real_T, args.real_P
    store = TrajectoryStore(url)
    w = store.create_run("real", layout_of(P, args.layers), capacity=T)
    for t, row in enumerate(five_mode_rows(T, P, args.real_noise)):
        w.append(row, epoch=t)
    w.finish("complete")
    arr_path = str(Path(url) / "runs" / "real" / "weights")
    read_cmd = [sys.executable, "-c", "import dask.array as da, sys; "
                f"da.from_zarr({arr_path!r}).sum().compute()"]
    kma = [sys.executable, "-m", "pipeline.cli", "analyze", "--store", url, "--no-mlflow"]
    jd, jg, ja = (str(tmp / f"{n}.json") for n in ("default", "gd", "all"))
    cmds = {"read": read_cmd, "default": kma + ["--json", jd],
            "gavish-donoho": kma + ["--threshold", "gavish-donoho", "--json", jg]}
    _timed(read_cmd)                                   # warm the page cache
    times = {k: [] for k in cmds}
    plan = ""
    for rep in range(args.reps):
        for name, cmd in cmds.items():
            dt, err = _timed(cmd)
            times[name].append(dt)
            if name == "default":
                plan = next((ln for ln in err.splitlines() if "snapshots" in ln and "window" in ln), plan)
    _timed(kma + ["--window", "all", "--no-per-layer", "--json", ja])
    rows = {n: json.loads(Path(j).read_text())["runs"] for n, j in (("default", jd), ("gd", jg), ("all", ja))}
    med = {k: statistics.median(v) for k, v in times.items()}
    allw = [r for r in rows["default"] if r["layer"] == "all"]
    out = {"T": T, "P": P, "bytes": T * P * 4, "noise": args.real_noise, "times_s": times,
           "median_s": med, "default_over_read": med["default"] / med["read"],
           "gd_over_default": med["gavish-donoho"] / med["default"], "plan_line": plan,
           "factors": sorted({r["factor"] for rs in rows.values() for r in rs}),
           "certified_per_window_all_layer": _certified(allw),
           "certified_whole_run": _certified(rows["all"])}
    res["realistic"] = out
    if args.real_skip_pydmd:
        print(f"[realistic] {T} x {P:,}: default {out['default_over_read']:.2f}x read, GD "
              f"{out['gd_over_default']:.2f}x default", flush=True)
        shutil.rmtree(tmp / "real", ignore_errors=True)
        return
    ours = run_child({"job": "fit", "store": url, "run": "real", "method": "qr",
                      "window": None, "stride": None, "per_layer": False})
    theirs = run_child({"job": "pydmd", "store": url, "run": "real"})
    out.update(ours_fit_child=ours, pydmd_child=theirs,
               pydmd_time_over_ours=theirs["fit_s"] / ours["fit_s"],
               pydmd_load_fit_over_ours=(theirs["fit_s"] + theirs["load_s"]) / ours["fit_s"],
               pydmd_peak_over_ours=theirs["peak_hwm"] / ours["peak_hwm"])
    res["realistic"] = out
    print(f"[realistic] {T} x {P:,} noise {args.real_noise:g}: read {med['read']:.2f}s, default "
          f"{med['default']:.2f}s ({out['default_over_read']:.2f}x), GD {med['gavish-donoho']:.2f}s "
          f"({out['gd_over_default']:.2f}x default); factors {out['factors']}", flush=True)
    shutil.rmtree(tmp / "real", ignore_errors=True)


# --------------------------------------------------------------------------- report
def report(res):
    print()
    if "read" in res:
        r = res["read"]
        gb = r["bytes"] / GB
        print(f"1. {r['T']} x {r['P']:,} float32 = {gb:.2f} GB, chunks {r['chunks']}, "
              f"{r['n_window_layer_results']} (window, layer) results")
        print(f"   {'pass':28} {'min s':>7} {'med s':>7} {'GB/s(min)':>10} {'x read (min|med)':>18}")
        for name, key, ratio in (("plain read (dask sum)", "read_s", None),
                                 (f"KoopmanDMD qr W{res['args']['window']}/S{res['args']['stride']}",
                                  "qr_fit_s", "qr_over_read"),
                                 ("  same, through zarr decode", "qr_fit_zarr_decode_s", None),
                                 ("  its pass, no arithmetic", "cast_only_pass_s", None),
                                 (f"KoopmanDMD randomized r{res['args']['rank']}", "randomized_fit_s",
                                  "randomized_over_read")):
            s = r[key]
            rr = (f"{r[ratio]['min-based']:.2f} | {r[ratio]['median-based']:.2f}" if ratio
                  else f"{s['min'] / r['read_s']['min']:.2f} | {s['median'] / r['read_s']['median']:.2f}")
            print(f"   {name:28} {s['min']:>7.2f} {s['median']:>7.2f} {gb / s['min']:>10.2f} {rr:>18}")
        for k, s in r["qr_window_sweep"].items():
            rr = f"{s['min'] / r['read_s']['min']:.2f} | {s['over_read_median']:.2f}"
            print(f"   {'KoopmanDMD qr W' + k.replace('/', '/S'):28} {s['min']:>7.2f} {s['median']:>7.2f} "
                  f"{gb / s['min']:>10.2f} {rr:>18}")
    if "cold" in res:
        c = res["cold"]
        gb = res["read"]["bytes"] / GB
        print(f"1b. from disk (page cache dropped before every pass): read {c['read_s']['min']:.2f}s "
              f"({gb / c['read_s']['min']:.2f} GB/s), qr fit {c['qr_fit_s']['min']:.2f}s; qr/read "
              f"{c['qr_over_read']['min-based']:.2f} (min) | {c['qr_over_read']['median-based']:.2f} (median)")
    if "zstd" in res:
        z = res["zstd"]
        gb = res["read"]["bytes"] / GB
        print(f"2. zstd level {z['level']}: compression {z['compression_ratio']:.2f}x; write "
              f"{z['write_s_raw']:.2f}s raw vs {z['write_s_zstd']:.2f}s zstd")
        for name in ("read_s_raw", "read_s_zstd", "qr_fit_s_raw", "qr_fit_s_zstd"):
            s = z[name]
            print(f"   {name:28} {s['min']:>7.2f} {s['median']:>7.2f} {gb / s['min']:>10.2f}")
        print(f"   qr/read (median): raw {z['qr_over_read_raw']:.2f}x, zstd {z['qr_over_read_zstd']:.2f}x,"
              f" qr on zstd / raw read {z['qr_zstd_over_read_raw']:.2f}x")
    if "tsqr" in res:
        t = res["tsqr"]
        print(f"3. dask.array.linalg.tsqr (R only) {t['tsqr_R_s']:.2f}s + small DMD {t['small_dmd_s']:.3f}s")
    if "ooc" in res:
        print(f"4. out of core, budget {res['ooc']['budget_bytes'] / 2**30:.2f} GiB "
              "(data just written, so mostly read from the page cache):")
        for o in res["ooc"]["cases"]:
            print(f"   {o['shape']:4} {o['T']} x {o['P']:,} = {o['dataset_bytes'] / GB:.2f} GB, W{o['window']}/S"
                  f"{o['stride']}, {o['method']}, reader {o['reader']:4}: fit {o['fit_s']:.1f}s ({o['GBps']:.2f} GB/s); "
                  f"peak RSS {o['peak_hwm'] / 2**20:.0f} MiB (baseline {o['baseline_hwm'] / 2**20:.0f} MiB); "
                  f"dataset/budget {o['dataset_over_budget']:.1f}x, within budget: {o['within_budget']}")
    if "pydmd" in res:
        p = res["pydmd"]
        best = min(p["ours"], key=lambda r: r["fit_s"])
        print(f"5. PyDMD vs ours on {p['P']:,} x {p['T']} float32 ({p['bytes'] / GB:.2f} GB), one window:")
        print(f"   ours qr fit {best['fit_s']:.2f}s peak RSS {best['peak_hwm'] / 2**20:.0f} MiB | pydmd "
              f"fit {p['pydmd']['fit_s']:.2f}s (+ load {p['pydmd']['load_s']:.2f}s) peak RSS "
              f"{p['pydmd']['peak_hwm'] / 2**20:.0f} MiB")
        print(f"   time ratio pydmd/ours {p['time_ratio_pydmd_fit_over_ours']:.2f}x "
              f"(incl. load {p['time_ratio_pydmd_load+fit_over_ours']:.2f}x), peak-memory ratio "
              f"{p['peak_rss_ratio_pydmd_over_ours']:.2f}x")


def report_realistic(res):
    if "realistic" not in res:
        return
    r = res["realistic"]
    print(f"6. realistic: {r['T']} x {r['P']:,} float32 ({r['bytes'] / GB:.2f} GB), five modes + "
          f"noise {r['noise']:g}, whole processes from the page cache (median of {len(r['times_s']['read'])}):")
    print(f"   read-pass process {r['median_s']['read']:.2f}s | kma analyze default "
          f"{r['median_s']['default']:.2f}s = {r['default_over_read']:.2f}x read | --threshold gavish-donoho "
          f"{r['median_s']['gavish-donoho']:.2f}s = {r['gd_over_default']:.2f}x default")
    print(f"   plan line: {r['plan_line'].strip()}")
    print(f"   factors: {r['factors']}; modes certified per window (layer all): "
          f"{r['certified_per_window_all_layer']}; --window all: {r['certified_whole_run']}")
    mins = {k: min(v) for k, v in r["times_s"].items()}
    print(f"   min-based: default {mins['default'] / mins['read']:.2f}x read, GD "
          f"{mins['gavish-donoho'] / mins['default']:.2f}x default")
    if "pydmd_child" not in r:
        return
    print(f"   PyDMD exact DMD (child) fit {r['pydmd_child']['fit_s']:.2f}s (+ load {r['pydmd_child']['load_s']:.2f}s), "
          f"peak {r['pydmd_child']['peak_hwm'] / 2**20:.0f} MiB | ours (window all, child) "
          f"{r['ours_fit_child']['fit_s']:.2f}s, peak {r['ours_fit_child']['peak_hwm'] / 2**20:.0f} MiB: "
          f"time {r['pydmd_time_over_ours']:.1f}x (incl. load {r['pydmd_load_fit_over_ours']:.1f}x), "
          f"memory {r['pydmd_peak_over_ours']:.1f}x")


def main(argv=None):
    args = parse(argv)
    if args.child:
        return child_main(json.loads(args.child))
    skip = set(filter(None, args.skip.split(",")))
    res = {"args": vars(args), "cpus": os.cpu_count()}
    tmp = Path(tempfile.mkdtemp(prefix="kma-bench-analyze-", dir=args.dir))
    try:
        if not {"read", "zstd", "tsqr"} <= skip:
            run, arr = bench_read(args, tmp, res)
            if "cold" not in skip:
                bench_cold(args, run, arr, res)
            if "zstd" not in skip:
                bench_zstd(args, run, arr, tmp, res)
            if "tsqr" not in skip:
                bench_tsqr(args, run, res)
            del run, arr
            shutil.rmtree(tmp / "store", ignore_errors=True)
        if "ooc" not in skip:
            bench_ooc(args, tmp, res)
        if "pydmd" not in skip:
            bench_pydmd(args, tmp, res)
        if "realistic" not in skip:
            bench_realistic(args, tmp, res)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    report(res)
    report_realistic(res)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1, default=str))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
