"""The small-matrix core inside a training task: spectra of the last W snapshots."""

import numpy as np
import torch

from pipeline import config
from pipeline.koopman import KoopmanDMD
from pipeline.training.losses import build_loss
from pipeline.training.monitor import SpectrumMonitor
from pipeline.training.optim import build_optimizer
from pipeline.training.runner import build_parts
from pipeline.training.loop import train


def test_monitor_matches_offline_analysis_and_can_stop(tiny_config):
    v = config.expand(config.load(tiny_config(epochs=15)))[0]
    task, model, layout = build_parts(v)
    snaps = []
    mon = SpectrumMonitor(window=6, every=2, stop_when=lambda rec: len(mon.history) >= 3)
    res = train(model, task, build_loss("mse"), build_optimizer("adam", model.parameters(), 0.01),
                epochs=v.epochs, batch_size=16, snapshot_every=1, snapshot_unit="epoch", layout=layout,
                sink=lambda flat, epoch, step: snaps.append(flat.numpy().copy()),
                generator=torch.Generator().manual_seed(0), callbacks=[mon])
    assert mon.history, "no spectrum computed"
    # each in-task spectrum equals the offline analysis of the same window
    Y = np.stack(snaps)
    first = mon.history[0]
    off = KoopmanDMD().fit(Y[0:6]).results_[0]
    np.testing.assert_allclose(np.sort_complex(first.eigenvalues), np.sort_complex(off.eigenvalues), atol=1e-8)
    # spectra at snapshots 6, 8, 10 (epochs 5, 7, 9); the rule stops after the third
    assert [r.epoch for r in mon.history] == [5, 7, 9]
    assert res.stopped_early and res.epochs_run == 9 and len(snaps) == 10
