"""What recording a Lightning fit costs: the same fit without a callback, with
``KMACallback`` (a snapshot per epoch), and with ``stop_on_converged=True`` (also the
verdict so far after every snapshot), interleaved in one process, medians over reps.

    python jobs/bench/recorder_overhead.py --width 512 --epochs 10 --reps 3

Prints one line per variant (median seconds, ratio to the plain fit) and the parameter
count; the store is a temporary folder, MLflow is off (``tracking_uri=False``).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--width", type=int, default=512)
    ap.add_argument("--depth", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--samples", type=int, default=2048)
    args = ap.parse_args()

    import lightning.pytorch as pl
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from pipeline.integrations.lightning import KMACallback

    torch.set_num_threads(1)

    class MLP(pl.LightningModule):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            dims = [32] + [args.width] * args.depth + [1]
            layers = []
            for a, b in zip(dims[:-1], dims[1:]):
                layers += [torch.nn.Linear(a, b), torch.nn.Tanh()]
            self.net = torch.nn.Sequential(*layers[:-1])

        def training_step(self, batch, i):
            x, y = batch
            loss = ((self.net(x) - y) ** 2).mean()
            self.log("train_loss", loss, on_step=False, on_epoch=True)
            return loss

        def validation_step(self, batch, i):
            x, y = batch
            self.log("val_loss", ((self.net(x) - y) ** 2).mean())

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=1e-3)

    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.samples, 32, generator=g)
    y = torch.sin(x[:, :4].sum(1, keepdim=True))
    train = DataLoader(TensorDataset(x, y), batch_size=128, shuffle=False)
    val = DataLoader(TensorDataset(x[:256], y[:256]), batch_size=256)
    n_params = sum(p.numel() for p in MLP().parameters())

    def fit(callbacks):
        trainer = pl.Trainer(max_epochs=args.epochs, callbacks=callbacks, logger=False, enable_checkpointing=False,
                             enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                             accelerator="cpu")
        model = MLP()
        t0 = time.perf_counter()
        trainer.fit(model, train, val)
        return time.perf_counter() - t0

    times: dict[str, list[float]] = {"plain": [], "KMACallback": [], "KMACallback+stop_on_converged": []}
    with tempfile.TemporaryDirectory(prefix="kma-bench-") as tmp:
        fit([])                                   # warm-up: imports, first allocations
        for r in range(args.reps):
            times["plain"].append(fit([]))
            times["KMACallback"].append(fit([KMACallback(f"{tmp}/s", f"r{r}", tracking_uri=False)]))
            times["KMACallback+stop_on_converged"].append(
                fit([KMACallback(f"{tmp}/s", f"v{r}", tracking_uri=False, stop_on_converged=True,
                                 config={"epochs": 10 * args.epochs})]))   # a long budget: no stop here
    base = statistics.median(times["plain"])
    print(f"{n_params:,} parameters, {args.epochs} epochs ({args.samples // 128} steps each), "
          f"{args.reps} reps, medians:")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"  {name:32s} {med:7.2f} s  {med / base:5.2f}x  (runs: {', '.join(f'{t:.2f}' for t in ts)})")


if __name__ == "__main__":
    main()
