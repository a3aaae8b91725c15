"""Equivalent training dynamics: one-factor sweeps, compared by their certified spectra.

For every config of ``configs/dynamics/`` (optimizer, width, depth, init, sanity) and
every root seed given, runs ``kma sweep CONFIG seed=S`` into ``<out>/<name>-s<S>`` (kept:
a re-run trains nothing) and ``kma compare --by KEY --json``, then prints the table of
docs/pages/dynamics.md: per config and seed, the within-group and between-group mean
distances (whole network and per layer role), the permutation p-value and whether the
groups come out equivalent.

    nice -n 10 python jobs/experiments/dynamics.py --out /tmp/dyn [--seeds 0 1] [--only optimizer sanity]
        [--replicas 8]   # runs per group (the configs' 4): stores <name><replicas>-s<seed>
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CONFIGS = {  # config → the --by key its groups differ by
    "optimizer": "optimizer",
    "width": "width",
    "depth": "depth",
    "init": "init",
    "sanity": "init",
}


def kma(*args, cwd) -> None:
    r = subprocess.run([sys.executable, "-m", "pipeline", *map(str, args)], cwd=cwd, capture_output=True, text=True)
    if r.returncode not in (0, 1):
        raise SystemExit(f"kma {' '.join(map(str, args))}: exit {r.returncode}\n{r.stderr[-2000:]}")


def _fmt(x) -> str:
    return "-" if x is None else f"{x:.3g}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--only", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    ap.add_argument("--replicas", type=int, default=None, help="runs per group (default: the config's seeds)")
    args = ap.parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{out / 'mlflow.db'}"
    rows = []
    for name in args.only:
        for seed in args.seeds:
            tag = f"{name}{args.replicas or ''}-s{seed}"
            store = out / tag
            if not (store / "runs").exists():
                more = [f"seeds={args.replicas}"] if args.replicas else []
                kma("sweep", REPO / "configs" / "dynamics" / f"{name}.yaml", f"seed={seed}", *more, "--store", store,
                    "--tracking-uri", uri, cwd=out)
            path = out / f"{tag}.json"
            kma("compare", "--store", store, "--by", CONFIGS[name], "--json", path, "--out", out / "compare",
                cwd=out)
            dyn = json.loads(path.read_text())["dynamics"]
            [pair] = dyn["pairs"]
            roles = {role: sec["pairs"][0] for role, sec in dyn["by_role"].items()}
            rows.append((name, seed, pair, roles))
    print("| sweep (--by) | root seed | groups | within a / within b | between | p (all) | equivalent (all) |"
          " p first / hidden / last |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, seed, p, roles in rows:
        per_role = " / ".join(_fmt(roles[r]["p_value"]) if r in roles else "-" for r in ("first", "hidden", "last"))
        print(f"| {name} ({CONFIGS[name]}) | {seed} | {p['a']} vs {p['b']} ({p['n_a']}+{p['n_b']}) "
              f"| {_fmt(p['within_a'])} / {_fmt(p['within_b'])} | {_fmt(p['between'])} | {_fmt(p['p_value'])} "
              f"| {'yes' if p['equivalent'] else 'no'} | {per_role} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
