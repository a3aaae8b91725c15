"""Early structured pruning: Koopman-predicted future unit norms vs magnitude vs random.

Command (about 2-4 minutes on 2 busy cores)::

    nice -n 10 python jobs/experiments/prune_units.py --out bench-out/prune_units.json

Per task and seed, one MLP (ReLU, two hidden layers of ``--width`` units, Adam lr 1e-3,
batch 32) is trained for ``P`` epochs (``--prune-epochs``, default 1 and 3), recording the
flat weights every ``--stride`` optimizer steps; the last ``--window`` of those snapshots
are the window. Then whole hidden units are removed (the same fraction of each hidden
layer, ``--sparsities``) by one of:

- ``magnitude``: the unit's norm ``‖(W_in[j,:], b[j], W_out[:,j])‖`` now;
- ``random``: uniform at random;
- ``koopman``: the same norm in the weights predicted at the end of the budget (horizon
  = remaining steps / stride snapshots) by one DMD operator of the whole network, over
  every non-growing mode (:func:`pipeline.apps.unit_prune.predict_weights`,
  ``residual_tol=None``; how many pairs were certified at 0.05 is recorded);
- ``koopman-layer``: the same with one operator per layer.

The pruned network is physically smaller (:func:`shrink_mlp`) and is trained on with a
fresh Adam to the same budget (``--epochs``); ``unpruned`` goes through the same path
keeping every unit (fresh Adam at the same epoch). All arms of a seed share the
pre-prune trajectory. Reported: final test accuracy (digits) or test MSE (regression),
final train loss, the Jaccard overlap of the kept units with magnitude's, and the
forward+backward time of the pruned model on the whole training set relative to the
unpruned one (fastest of 200 interleaved repeats, in this process; ``--timing-rounds N``:
the median of N such ratios; ``--clock cpu``: CPU time instead of wall time) beside the
ratio of
multiply-adds; and, paired by seed and
prune epoch, each arm's test metric minus magnitude's. ``--from JSON`` reprints the
tables of a saved run (the timing column measured afresh). Tasks: ``digits``
(sklearn, 64 -> 10, 1257 train / 540 test) and ``regression`` (1-D multiscale: sum of
sines at frequencies 1, 4, 16 on [0, 1], 1024 train / 1024 test points, no noise).
Everything is single-threaded (``torch.set_num_threads(1)``).

``--model cnn`` (digits only): the repository's ``cnn`` family
(:mod:`pipeline.training.models`: ``--depth`` 3×3 convolutions of ``--width`` channels,
padding 1, ReLU, a Linear readout on the 8×8 maps) and the unit is a convolution's
*output channel*: its group of weights is its filter and bias
(:func:`pipeline.apps.unit_prune.conv_channels`; ``--channel-group full`` adds the weights
that read it, the next convolution's input slice or the readout's columns, as an MLP
unit's score includes its outgoing column), the same fraction of each convolution's
channels is removed, and :func:`shrink_cnn` cuts the filters, the next convolution's
input slices and the readout's columns; ``koopman-layer`` fits one operator per layer
(:func:`module_ranges`). Command::

    nice -n 10 python jobs/experiments/prune_units.py --model cnn --width 32 --epochs 30 \
        --seeds 5 --prune-epochs 1 3 10 --out bench-out/pu_cnn5.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import numpy as np
import torch
from torch import nn

from pipeline.apps.unit_prune import (
    conv_channels,
    layer_ranges,
    mlp_units,
    module_ranges,
    select_units,
    shrink_cnn,
    shrink_mlp,
    unit_scores,
)
from pipeline.training.models import build_model

METHODS = ["magnitude", "random", "koopman", "koopman-layer"]


def task_data(name: str):
    """``(Xtr, ytr, Xte, yte, classification)`` as float32/int64 tensors."""
    if name == "digits":
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
        X, y = load_digits(return_X_y=True)
        Xtr, Xte, ytr, yte = train_test_split(X / 16.0, y, test_size=540, random_state=0,
                                              stratify=y)
        f = lambda a: torch.tensor(a, dtype=torch.float32)
        return f(Xtr), torch.tensor(ytr), f(Xte), torch.tensor(yte), True
    if name == "regression":
        rng = np.random.default_rng(0)
        target = lambda x: (np.sin(2 * np.pi * x) + 0.5 * np.sin(2 * np.pi * 4 * x)
                            + 0.25 * np.sin(2 * np.pi * 16 * x))
        xtr = rng.random((1024, 1))
        xte = (np.arange(1024)[:, None] + 0.5) / 1024
        f = lambda a: torch.tensor(a, dtype=torch.float32)
        return f(xtr), f(target(xtr)), f(xte), f(target(xte)), False
    raise SystemExit(f"kma: error: unknown task {name!r}; known: digits, regression")


def task_sizes(args, data):
    Xtr, ytr, _, _, cls = data
    return [Xtr.shape[1], args.width, args.width, int(ytr.max()) + 1 if cls else ytr.shape[1]]


def make_model(d, width, k, seed, args=None):
    torch.manual_seed(seed)
    if args is not None and args.model == "cnn":
        return build_model("cnn", d, k, args.depth, width, "relu")
    return nn.Sequential(nn.Linear(d, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                         nn.Linear(width, k))


def structure(model, args, sizes):
    """``(groups, per-layer ranges, n_layers, shrink)`` of the pruned unit: hidden units
    of the MLP or output channels of the CNN's convolutions."""
    if args.model == "cnn":
        return (conv_channels(model, outgoing=args.channel_group == "full"),
                module_ranges(model), args.depth, shrink_cnn)
    return mlp_units(sizes), layer_ranges(sizes), 2, shrink_mlp


def train(model, X, y, loss_fn, epochs, gen, snap=None, stride=1):
    """Adam lr 1e-3, batch 32, ``epochs`` epochs; ``snap`` (a list) gets the flat weights
    every ``stride`` steps (and at the start)."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    vec = lambda: torch.nn.utils.parameters_to_vector(model.parameters()).detach().numpy().copy()
    if snap is not None:
        snap.append(vec())
    step = 0
    for _ in range(epochs):
        perm = torch.randperm(X.shape[0], generator=gen)
        for i in range(0, X.shape[0], 32):
            b = perm[i:i + 32]
            opt.zero_grad()
            loss_fn(model(X[b]), y[b]).backward()
            opt.step()
            step += 1
            if snap is not None and step % stride == 0:
                snap.append(vec())
    return step


@torch.no_grad()
def evaluate(model, X, y, loss_fn, classification):
    out = model(X)
    return {"loss": float(loss_fn(out, y)),
            "acc": float((out.argmax(1) == y).float().mean()) if classification else None}


def fwd_bwd_ratio(full, small, X, y, loss_fn, reps=200, clock="wall"):
    """Fastest forward+backward of ``small`` over the fastest of ``full`` on ``(X, y)``,
    ``reps`` interleaved repeats (the minimum: least disturbed by other jobs' load).
    ``clock``: ``wall`` (``time.perf_counter``) or ``cpu`` (``time.process_time``: the
    process's CPU time, which time spent descheduled by other jobs does not inflate)."""
    now = time.process_time if clock == "cpu" else time.perf_counter

    def once(m):
        m.zero_grad()
        t = now()
        loss_fn(m(X), y).backward()
        return now() - t
    for m in (full, small):
        once(m)
    tf, ts = [], []
    for _ in range(reps):
        tf.append(once(full))
        ts.append(once(small))
    return min(ts) / min(tf)


def run_seed(task, seed, args, data):
    Xtr, ytr, Xte, yte, cls = data
    loss_fn = nn.CrossEntropyLoss() if cls else nn.MSELoss()
    d, k = Xtr.shape[1], (int(ytr.max()) + 1 if cls else ytr.shape[1])
    sizes = [d, args.width, args.width, k]
    units, groups, n_layers, shrink = structure(make_model(d, args.width, k, seed, args),
                                                args, sizes)
    steps_per_epoch = -(-Xtr.shape[0] // 32)
    rows = []
    for pe in args.prune_epochs:
        gen = torch.Generator().manual_seed(seed)
        model = make_model(d, args.width, k, seed, args)
        snaps = []
        train(model, Xtr, ytr, loss_fn, pe, gen, snaps, args.stride)
        Y = np.stack(snaps[-args.window:])
        horizon = (args.epochs - pe) * steps_per_epoch // args.stride
        state, gstate = model.state_dict(), gen.get_state()
        scores = {"magnitude": unit_scores("magnitude", units, Y)}
        scores["random"] = unit_scores("random", units, rng=seed)
        scores["koopman"] = unit_scores("koopman", units, Y, horizon=horizon)
        scores["koopman-layer"] = unit_scores("koopman", units, Y, horizon=horizon,
                                              groups=groups)
        if args.scores_only:
            scores["initial magnitude"] = unit_scores("magnitude", units, snaps[0][None])
            for sp in args.sparsities:
                mkeep = select_units(scores["magnitude"][0], sp)
                for method in ("initial magnitude", "koopman", "koopman-layer", "random"):
                    keep = select_units(scores[method][0], sp)
                    rows.append({"task": task, "model": args.model, "seed": seed,
                                 "prune_epoch": pe, "method": method, "sparsity": sp,
                                 "jaccard_vs_magnitude": statistics.mean(
                                     len(set(a) & set(b)) / len(set(a) | set(b))
                                     for a, b in zip(keep, mkeep))})
            continue
        arms = [("unpruned", 0.0)] + [(m, s) for s in args.sparsities for m in METHODS]
        for method, sp in arms:
            keep = ([np.arange(args.width)] * n_layers if method == "unpruned"
                    else select_units(scores[method][0], sp))
            model.load_state_dict(state)
            small = shrink(model, keep)
            g2 = torch.Generator()
            g2.set_state(gstate)
            t0 = time.perf_counter()
            train(small, Xtr, ytr, loss_fn, args.epochs - pe, g2)
            wall = time.perf_counter() - t0
            mkeep = select_units(scores["magnitude"][0], sp) if method != "unpruned" else keep
            jac = statistics.mean(len(set(a) & set(b)) / len(set(a) | set(b))
                                  for a, b in zip(keep, mkeep))
            ev, tr = evaluate(small, Xte, yte, loss_fn, cls), evaluate(small, Xtr, ytr, loss_fn, cls)
            info = scores[method][1] if method in scores else {}
            rows.append({"task": task, "model": args.model, "seed": seed, "prune_epoch": pe,
                         "method": method, "kept": [len(x) for x in keep],
                         "sparsity": sp, "test_loss": ev["loss"], "test_acc": ev["acc"],
                         "train_loss": tr["loss"], "jaccard_vs_magnitude": jac,
                         "finetune_wall_s": wall, "certified": info.get("certified"),
                         "used_modes": info.get("used"), "rank": info.get("rank"),
                         "horizon": horizon, "window": len(Y)})
            print(f"{task} seed {seed} epoch {pe} {method:13s} {sp:.2f}: test loss "
                  f"{ev['loss']:.4f} acc {ev['acc']} jaccard {jac:.2f}", flush=True)
    return rows


def timing(task, args, data):
    Xtr, ytr, _, _, cls = data
    loss_fn = nn.CrossEntropyLoss() if cls else nn.MSELoss()
    d, k = Xtr.shape[1], (int(ytr.max()) + 1 if cls else ytr.shape[1])
    full = make_model(d, args.width, k, 0, args)
    _, _, n_layers, shrink = structure(full, args, task_sizes(args, data))
    out, macs = {}, {}
    for sp in args.sparsities:
        keep = select_units([np.random.default_rng(0).random(args.width)] * n_layers, sp)
        small = shrink(full, keep)
        rounds = [fwd_bwd_ratio(full, small, Xtr, ytr, loss_fn,
                                clock=getattr(args, "clock", "wall"))
                  for _ in range(getattr(args, "timing_rounds", 1))]
        out[str(sp)] = statistics.median(rounds)
        out[f"{sp} rounds"] = rounds
        macs[str(sp)] = mac_count(small, Xtr[:1]) / mac_count(full, Xtr[:1])
    return out, macs


def mac_count(model, x):
    """Multiply-adds of one forward pass on the sample(s) ``x`` (Linear and Conv2d layers;
    a convolution's count is its weight size times its output's spatial size)."""
    total = []

    def hook(m, inp, out):
        if isinstance(m, nn.Linear):
            total.append(m.weight.numel() * (out.numel() // out.shape[-1]))
        elif isinstance(m, nn.Conv2d):
            total.append(m.weight.numel() * out[0, 0].numel() * out.shape[0])
    hs = [m.register_forward_hook(hook) for m in model.modules()
          if isinstance(m, (nn.Linear, nn.Conv2d))]
    with torch.no_grad():
        model(x)
    for h in hs:
        h.remove()
    return sum(total)


def fmt(xs, digits=4):
    xs = [x for x in xs if x is not None]
    if not xs:
        return "—"
    if len(xs) == 1:
        return f"{xs[0]:.{digits}f}"
    return f"{statistics.mean(xs):.{digits}f} ± {statistics.stdev(xs):.{digits}f}"


def table(rows, times, macs, unit="units"):
    cls = rows[0]["test_acc"] is not None
    head = ("| prune epoch | sparsity | arm | test accuracy | test loss | train loss "
            f"| kept {unit} vs magnitude (Jaccard) | fwd+bwd time vs unpruned | multiply-adds vs unpruned |")
    out = [head, "|" + " --- |" * 9]
    order = ["unpruned"] + METHODS
    keys = sorted({(r["prune_epoch"], r["sparsity"], r["method"]) for r in rows},
                  key=lambda t: (t[0], t[1], order.index(t[2])))
    for pe, sp, m in keys:
        rs = [r for r in rows if (r["prune_epoch"], r["sparsity"], r["method"]) == (pe, sp, m)]
        acc = fmt([r["test_acc"] for r in rs]) if cls else "—"
        jac = fmt([r["jaccard_vs_magnitude"] for r in rs], 2) if m in ("random", "koopman", "koopman-layer") else ""
        tr = "1" if m == "unpruned" else f"{times[str(sp)]:.2f}"
        out.append(f"| {pe} | {sp:g} | {m} | {acc} | {fmt([r['test_loss'] for r in rs])} "
                   f"| {fmt([r['train_loss'] for r in rs])} | {jac} | {tr} "
                   f"| {1.0 if m == 'unpruned' else macs[str(sp)]:.2f} |")
    return "\n".join(out)


def paired(rows, by_epoch=False):
    """Per sparsity, over seeds and prune epochs (``by_epoch``: per prune epoch, over
    seeds): koopman (and koopman-layer) minus magnitude on the same seed and prune epoch,
    for the test metric; and in how many of those pairs the Koopman arm was better."""
    cls = rows[0]["test_acc"] is not None
    key = "test_acc" if cls else "test_loss"
    by = {(r["seed"], r["prune_epoch"], r["method"], r["sparsity"]): r[key] for r in rows}
    out = ["| " + ("prune epoch | " if by_epoch else "") + "sparsity | arm | Δ test "
           + ("accuracy" if cls else "loss") + " vs magnitude "
           "(mean ± sd over pairs) | better / worse / pairs |",
           "|" + " --- |" * (5 if by_epoch else 4)]
    epochs = sorted({r["prune_epoch"] for r in rows}) if by_epoch else [None]
    for e in epochs:
        for sp in sorted({r["sparsity"] for r in rows if r["sparsity"] > 0}):
            for m in ("koopman", "koopman-layer", "random"):
                d = [by[(s, pe, m, sp)] - by[(s, pe, "magnitude", sp)]
                     for (s, pe, mm, ss) in by if mm == m and ss == sp and e in (None, pe)]
                better = sum((x > 0) if cls else (x < 0) for x in d)
                worse = sum((x < 0) if cls else (x > 0) for x in d)
                out.append("| " + (f"{e} | " if by_epoch else "")
                           + f"{sp:g} | {m} | {fmt(d)} | {better} / {worse} / {len(d)} |")
    return "\n".join(out)


def overlap_table(rows, unit="units"):
    """``--scores-only``: Jaccard of each scorer's kept set with magnitude's, mean ± sd
    over seeds, per prune epoch and sparsity (``initial magnitude``: the norms at
    initialization)."""
    arms = ["initial magnitude", "koopman", "koopman-layer", "random"]
    out = ["| prune epoch | sparsity | " + " | ".join(arms) + " |", "|" + " --- |" * 6]
    for pe in sorted({r["prune_epoch"] for r in rows}):
        for sp in sorted({r["sparsity"] for r in rows}):
            cells = [fmt([r["jaccard_vs_magnitude"] for r in rows if (r["prune_epoch"],
                          r["sparsity"], r["method"]) == (pe, sp, m)], 2) for m in arms]
            out.append(f"| {pe} | {sp:g} | " + " | ".join(cells) + " |")
    return f"Kept {unit} vs magnitude's (Jaccard)\n\n" + "\n".join(out)


def unit_name(args):
    return "channels" if args.model == "cnn" else "units"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", choices=["mlp", "cnn"], default="mlp",
                   help="mlp: prune hidden units; cnn: prune convolution output channels")
    p.add_argument("--depth", type=int, default=2, help="convolutions of the cnn")
    p.add_argument("--channel-group", choices=["filter", "full"], default="filter",
                   help="cnn: a channel's scored weights are its filter and bias (filter) "
                        "or also the weights that read it (full: next layer's input slice)")
    p.add_argument("--tasks", nargs="+", default=None,
                   help="default: digits and regression (mlp), digits (cnn)")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--prune-epochs", type=int, nargs="+", default=[1, 3])
    p.add_argument("--sparsities", type=float, nargs="+", default=[0.25, 0.5, 0.75])
    p.add_argument("--window", type=int, default=20)
    p.add_argument("--stride", type=int, default=2)
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                   help="time forward+backward by the wall clock or by the process's CPU "
                        "time (steadier on a loaded machine; one thread either way)")
    p.add_argument("--timing-rounds", type=int, default=1,
                   help="repeat the timing this many times and report the median ratio "
                        "(every round is saved)")
    p.add_argument("--scores-only", action="store_true",
                   help="train to each prune epoch and compare the scorers' kept sets "
                        "(also with the magnitudes at initialization); no fine-tuning")
    p.add_argument("--out", type=Path)
    p.add_argument("--from", dest="source", type=Path,
                   help="print the tables and the paired summary of a saved JSON; run nothing")
    args = p.parse_args(argv)
    if args.timing_rounds < 1:
        print("kma: error: --timing-rounds must be >= 1", file=sys.stderr)
        return 2
    if args.source:
        try:
            saved = json.loads(args.source.read_text())["tasks"]
        except (OSError, ValueError, KeyError) as e:
            print(f"kma: error: cannot read {args.source}: {e}", file=sys.stderr)
            return 2
        torch.set_num_threads(1)
        for task, t in saved.items():
            a = argparse.Namespace(**{**vars(args), "model": "mlp", "depth": 2,
                                      **{k: v for k, v in
                                         json.loads(args.source.read_text())["args"].items()
                                         if k in ("width", "sparsities", "model", "depth",
                                                  "channel_group")}})
            if "test_acc" not in t["rows"][0]:          # a --scores-only run
                print(f"\n## {task}\n\n{overlap_table(t['rows'], unit_name(a))}\n")
                continue
            data = task_data(task)
            times, macs = timing(task, a, data)
            print("fwd+bwd time ratios per round: " + "; ".join(
                f"{k.split()[0]}: " + ", ".join(f"{x:.2f}" for x in v)
                for k, v in times.items() if k.endswith("rounds")))
            print(f"\n## {task}\n\n{table(t['rows'], times, macs, unit_name(a))}\n\n"
                  f"{paired(t['rows'], a.model == 'cnn')}\n")
        return 0
    if args.tasks is None:
        args.tasks = ["digits"] if args.model == "cnn" else ["digits", "regression"]
    if args.model == "cnn" and (args.tasks != ["digits"] or args.depth < 1):
        print("kma: error: --model cnn runs on --tasks digits only (8x8 images), with "
              "--depth >= 1", file=sys.stderr)
        return 2
    if args.seeds < 1 or args.window < 3 or args.stride < 1 or any(
            not 0 < s < 1 for s in args.sparsities) or any(
            not 1 <= e < args.epochs for e in args.prune_epochs):
        print("kma: error: need seeds >= 1, window >= 3, stride >= 1, sparsities in (0, 1), "
              "1 <= prune epoch < epochs", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    result = {"args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
              "tasks": {}}
    for task in args.tasks:
        data = task_data(task)
        rows = [r for s in range(args.seeds) for r in run_seed(task, s, args, data)]
        if args.scores_only:
            result["tasks"][task] = {"rows": rows, "table": overlap_table(rows, unit_name(args))}
            print(f"\n## {task}\n\n{result['tasks'][task]['table']}\n", flush=True)
            continue
        times, macs = timing(task, args, data)
        result["tasks"][task] = {"rows": rows, "fwd_bwd_ratio": times, "mac_ratio": macs,
                                 "table": table(rows, times, macs, unit_name(args))}
        print(f"\n## {task}\n\n{result['tasks'][task]['table']}\n\n"
              f"{paired(rows, args.model == 'cnn')}\n", flush=True)
    result["wall_s"] = time.perf_counter() - t0
    print(f"total {result['wall_s']:.0f} s")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
