"""Compression ratio and single-core speed of candidate codecs on real trajectory chunks.

    python jobs/bench/codec_ratio.py --store STORE [--json bench-out/codec_ratio.json]

Reads every complete run of STORE (e.g. a sweep of configs/demo.yaml), cuts each weight
trajectory (snapshots × parameters, float32 as stored) into the store's chunks, casts
them to float16 and bfloat16 as ``snapshot.dtype`` would, and compresses every chunk
with zstd (level 3) and Blosc (zstd + byte shuffle, lz4 + bit shuffle), one thread. The
store itself writes chunks uncompressed (``compressors=None``); this says what a codec
would save. Prints one row per dtype × codec: raw MB, ratio (raw / compressed), and MB/s
of compression per core. The numbers of docs/pages/cluster.md#scale-on-paper come from this script.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def casts(x: np.ndarray) -> dict[str, np.ndarray]:
    """The stored float32 rows and what ``snapshot.dtype`` float16/bfloat16 would store."""
    import torch

    bf16 = torch.from_numpy(np.ascontiguousarray(x)).to(torch.bfloat16).view(torch.int16).numpy()
    return {"float32": x, "float16": x.astype(np.float16), "bfloat16": bf16}


def codecs() -> dict:
    from numcodecs import Blosc, Zstd, blosc

    blosc.set_nthreads(1)
    return {"zstd-3": Zstd(level=3),
            "blosc-zstd-3-shuffle": Blosc(cname="zstd", clevel=3, shuffle=Blosc.SHUFFLE),
            "blosc-lz4-5-bitshuffle": Blosc(cname="lz4", clevel=5, shuffle=Blosc.BITSHUFFLE)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", required=True)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    from pipeline.storage.store import TrajectoryStore

    store = TrajectoryStore(args.store, read_only=True)
    chunks = []
    for info in store.runs():
        if info.status != "complete":
            continue
        w = store.open_run(info.run_id).weights()        # dask, (n_snapshots, P), float32
        x = np.asarray(w.compute())
        t_chunk, p_chunk = w.chunksize
        chunks += [x[a:a + t_chunk, b:b + p_chunk] for a in range(0, x.shape[0], t_chunk)
                   for b in range(0, x.shape[1], p_chunk)]
    assert chunks, f"no complete run in {args.store}"
    rows = []
    for dtype in ("float32", "float16", "bfloat16"):
        data = [np.ascontiguousarray(casts(c)[dtype]) for c in chunks]
        raw = sum(d.nbytes for d in data)
        for name, codec in codecs().items():
            t0 = time.perf_counter()
            packed = sum(len(codec.encode(d)) for d in data)
            dt = time.perf_counter() - t0
            rows.append({"dtype": dtype, "codec": name, "raw_mb": raw / 1e6, "ratio": raw / packed,
                         "mb_per_s_per_core": raw / 1e6 / dt})
    print(f"{len(chunks)} chunks from {args.store}")
    print(f"{'dtype':9} {'codec':24} {'raw MB':>8} {'ratio':>6} {'MB/s/core':>10}")
    for r in rows:
        print(f"{r['dtype']:9} {r['codec']:24} {r['raw_mb']:8.1f} {r['ratio']:6.3f} {r['mb_per_s_per_core']:10.0f}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"store": args.store, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
