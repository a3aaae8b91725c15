"""The bad-initialization detector: synthetic trajectories with known spectra (against a
dense float64 DMD computed here), and real tiny trainings with good and bad inits."""

import numpy as np
import pytest
import torch

from pipeline import config
from pipeline.apps.badinit import detect, detect_run, first_snapshots
from pipeline.storage.store import TrajectoryStore
from pipeline.training.loop import train
from pipeline.training.losses import build_loss
from pipeline.training.optim import build_optimizer
from pipeline.training.runner import build_parts, run_variant


def _dense_dominant_modulus(Y, rank):
    """Exact DMD of Y (float64, snapshots as columns) at ``rank``: |λ| of the pair with the
    largest amplitude × norm over the window (the detector's "dominant" pair)."""
    X = np.asarray(Y, np.float64).T
    X1, X2 = X[:, :-1], X[:, 1:]
    U, s, Vt = np.linalg.svd(X1, full_matrices=False)
    U, s, Vt = U[:, :rank], s[:rank], Vt[:rank]
    lam, W = np.linalg.eig(U.T @ X2 @ Vt.T / s)
    Phi = U @ W
    b = np.linalg.lstsq(Phi, X[:, 0].astype(complex), rcond=None)[0]
    energy = np.abs(b) * np.sqrt((np.abs(lam)[None, :] ** (2 * np.arange(X.shape[1])[:, None])).sum(0))
    return np.abs(lam[np.argmax(energy)])


def _linear_trajectory(eigs, P, K, seed, scale=1.0):
    """x_t = Σ c_i λ_i^t v_i (real λ), stored as float32: (K, P)."""
    rng = np.random.default_rng(seed)
    V = np.linalg.qr(rng.standard_normal((P, len(eigs))))[0]
    c = scale * np.linspace(1.0, 0.5, len(eigs))
    t = np.arange(K)[:, None]
    return ((np.asarray(eigs)[None, :] ** t) * c) @ V.T


def test_growth_is_the_dominant_eigenvalue_of_a_float32_trajectory():
    # weights growing away from the origin at 1.3 per snapshot, with a decaying mode
    Y = _linear_trajectory([1.3, 0.6], P=50, K=6, seed=0).astype(np.float32)
    d = detect(Y)
    ref = _dense_dominant_modulus(Y, d["init_rank"])
    assert d["init_rank"] == 2
    assert d["init_growth"] == pytest.approx(ref - 1.0, abs=1e-5)
    assert d["init_growth"] == pytest.approx(0.3, abs=1e-4)
    # (two exact directions: the one layer is collapsed too)
    assert d["bad_init"] and d["bad_init_reasons"] == ["growth", "collapsed"] and d["bad_init_snapshots"] == 6
    # a good start: the initial weights dominate (λ = 1) and a small decaying correction
    Y = (_linear_trajectory([1.0, 0.7, 0.4], P=50, K=6, seed=1) * [1.0]).astype(np.float32)
    d = detect(Y)
    assert abs(d["init_growth"] - (_dense_dominant_modulus(Y, d["init_rank"]) - 1.0)) < 1e-5
    assert abs(d["init_growth"]) < 1e-4 and not d["bad_init"]


def test_frozen_and_collapsed_layers_are_named():
    rng = np.random.default_rng(3)
    K = 6
    moving = 10 * rng.standard_normal(40) + 0.1 * rng.standard_normal((K, 40)).cumsum(axis=0)  # rank K-1
    frozen = np.tile(rng.standard_normal(20), (K, 1))          # never moves
    collapsed = _linear_trajectory([1.0, 0.8], P=30, K=K, seed=4)  # two exact directions
    Y = np.hstack([moving, frozen, collapsed]).astype(np.float32)
    groups = [("a", 0, 40), ("b", 40, 60), ("c", 60, 90)]
    d = detect(Y, groups)
    assert d["init_frozen_layers"] == ["b"] and d["init_collapsed_layers"] == ["c"]
    assert d["init_layers"]["a"]["rank"] == K - 1 and d["init_layers"]["b"]["rank"] == 1
    assert d["init_layers"]["c"]["rank"] == 2 and d["init_layers"]["c"]["n_certified"] == 2
    assert d["bad_init"] and set(d["bad_init_reasons"]) == {"frozen", "collapsed"}
    # the same layers without the frozen and collapsed ones: a good verdict
    assert not detect(Y[:, :40], [("a", 0, 40)])["bad_init"]


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="at least 4 snapshots"):
        detect(np.ones((3, 5), np.float32))
    with pytest.raises(ValueError, match="fewer than the 8"):
        detect(np.ones((6, 5), np.float32), snapshots=8)
    with pytest.raises(ValueError, match="non-finite"):
        detect(np.full((6, 5), np.nan, np.float32))


TINY_TRAIN = {"name": "t", "seeds": [0], "epochs": 5, "batch_size": 16,
              "task": {"name": "multiscale", "n_points": 64, "frequencies": [1.0, 4.0], "amplitudes": [1.0, 0.3]},
              "model": {"family": "mlp", "depth": 2, "width": 16, "activation": "tanh"},
              "optimizer": {"name": "adam", "lr": 0.01}}


def _snapshots(init: str) -> tuple[np.ndarray, list]:
    v = config.expand(config.validate({**TINY_TRAIN, "init": init}))[0]
    task, model, layout = build_parts(v)
    rows = []
    train(model, task, build_loss("mse"), build_optimizer("adam", model.parameters(), v.lr), epochs=v.epochs,
          batch_size=v.batch_size, snapshot_every=1, snapshot_unit="epoch", layout=layout,
          sink=lambda flat, epoch, step: rows.append(flat.numpy().copy()),
          generator=torch.Generator().manual_seed(0))
    return np.stack(rows), layout.layer_ranges()


@pytest.mark.parametrize("init, reason", [("zeros", "frozen"), ("constant", "collapsed"),
                                          ("small_variance", "growth")])
def test_bad_inits_of_a_real_training_are_flagged(init, reason):
    Y, groups = _snapshots(init)
    d = detect(Y, groups)
    assert d["bad_init"] and reason in d["bad_init_reasons"], d


@pytest.mark.parametrize("init", ["kaiming", "xavier", "orthogonal"])
def test_good_inits_of_a_real_training_are_not(init):
    Y, groups = _snapshots(init)
    d = detect(Y, groups)
    assert not d["bad_init"], d
    assert abs(d["init_growth"]) < 0.02 and not d["init_frozen_layers"] and not d["init_collapsed_layers"]


def test_stored_run_reads_only_its_first_snapshots(tmp_path):
    v = config.expand(config.validate({**TINY_TRAIN, "init": "zeros", "epochs": 8}))[0]
    run_variant(v, str(tmp_path / "s"))
    run = TrajectoryStore(str(tmp_path / "s")).open_run(v.run_id)
    Y, groups = first_snapshots(run, 5)
    assert Y.shape == (5, run.layout.size) and Y.dtype == np.float32
    np.testing.assert_array_equal(Y, run.weights().compute()[:5])
    assert [g[0] for g in groups] == ["layers.0", "layers.1", "out"]
    d = detect_run(run)
    assert d["bad_init"] and d["bad_init_snapshots"] == 6
    # the hidden layers never move; the readout only along one line (its bias)
    assert d["init_frozen_layers"] == ["layers.0", "layers.1", "out"]
    # too short for a verdict: not flagged, and said so
    short = detect_run(run, snapshots=3)
    assert short["bad_init"] is False and short["bad_init_snapshots"] == 3 and "fewer than the 4" in short[
        "bad_init_undecided"]


def test_v2_weight_gain_and_motion_against_a_dense_reference():
    """detect_v2's features on a float32 trajectory built here: gain std(W0)·√fan_in per
    weight tensor, motion = RMS change per snapshot ÷ lr per layer; a near-zero start that
    does not move is flagged, a kaiming-like start that moves is not."""
    from pipeline.apps.badinit import detect_v2, weight_features
    from pipeline.storage.layout import Layout

    layout = Layout.from_named_shapes([("l0.weight", (8, 5)), ("l0.bias", (8,)), ("out.weight", (2, 8)),
                                       ("out.bias", (2,))])
    rng = np.random.default_rng(0)
    K, lr = 6, 0.01
    W0 = np.concatenate([rng.standard_normal(40) * np.sqrt(2 / 5), np.zeros(8),
                         rng.standard_normal(16) * np.sqrt(2 / 8), np.zeros(2)])
    steps = rng.standard_normal((K, W0.size)) * lr
    Y = (W0 + np.cumsum(steps, axis=0)).astype(np.float32)
    f = weight_features(Y, layout, lr)
    Y64 = Y.astype(np.float64)
    assert f["gain"]["l0.weight"] == pytest.approx(Y64[0, :40].std() * np.sqrt(5), rel=1e-6)
    assert f["gain"]["out.weight"] == pytest.approx(Y64[0, 48:64].std() * np.sqrt(8), rel=1e-6)
    rms = np.sqrt(np.mean((Y64[-1, :48] - Y64[0, :48]) ** 2)) / (K - 1) / lr
    assert f["motion"]["l0"] == pytest.approx(rms, rel=1e-5)
    assert not detect_v2(Y, layout, lr)["bad_init"]
    tiny = (1e-4 * W0 + np.zeros((K, 1))).astype(np.float32)        # small start, not moving
    d = detect_v2(tiny, layout, lr)
    assert d["bad_init"] and "small gain, not escaping" in d["bad_init_reasons"]
    assert d["bad_init_version"] == 2 and "bad_init_v1" in d


# ---------------------------------------------------------------------------- third version
def _moving_kaiming(layout_scale=1.0, K=6, lr=0.01, seed=0):
    """A float32 trajectory of a kaiming-like start that moves (the second version passes it)."""
    from pipeline.storage.layout import Layout

    layout = Layout.from_named_shapes([("l0.weight", (8, 5)), ("l0.bias", (8,)), ("out.weight", (3, 8)),
                                       ("out.bias", (3,))])
    rng = np.random.default_rng(seed)
    W0 = np.concatenate([rng.standard_normal(40) * np.sqrt(2 / 5), np.zeros(8),
                         rng.standard_normal(24) * np.sqrt(2 / 8), np.zeros(3)]) * layout_scale
    Y = (W0 + np.cumsum(rng.standard_normal((K, W0.size)) * lr, axis=0)).astype(np.float32)
    return Y, layout, lr


def test_chance_level_and_loss_features_against_numpy():
    from pipeline.apps.badinit_loss import chance_level, loss_features

    assert chance_level("cross_entropy", n_classes=10) == pytest.approx(np.log(10), rel=1e-12)
    y = np.random.default_rng(1).standard_normal((50, 2)).astype(np.float32) * [1.0, 3.0] + 5.0
    y64 = y.astype(np.float64)
    assert chance_level("mse", targets=y) == pytest.approx(((y64 - y64.mean(0)) ** 2).mean(0).mean(), rel=1e-12)
    assert chance_level("huber", targets=y) is None and chance_level("cross_entropy") is None
    f = loss_features([2.0, 1.5, 1.2, 1.0], chance=4.0)
    assert f["drop"] == pytest.approx(0.5) and f["rate"] == pytest.approx(0.2 / 1.2)
    assert f["ratio"] == pytest.approx(0.25) and f["rise"] == pytest.approx(0.0) and f["n"] == 4
    assert loss_features([1.0, 1.0, 2.0])["rise"] == pytest.approx(1.0)
    assert loss_features([1.0, float("nan")])["finite"] is False
    assert loss_features([1.0])["last"] is None
    # the loss window's one mode: L_t = c + a λ^t is fitted exactly, its limit is c
    t = np.arange(5)
    m = loss_features(0.7 + 1.5 * 0.6 ** t)
    assert m["mode"] == pytest.approx(0.6, rel=1e-12) and m["mode_residual"] == pytest.approx(0, abs=1e-12)
    assert m["limit"] == pytest.approx(0.7, rel=1e-12) and m["progress"] == pytest.approx(1 - 0.7 / 2.2)
    assert loss_features(2.0 - 0.01 * 1.5 ** t)["limit"] is None     # a growing mode: no limit


def test_v3_flags_a_moving_start_whose_loss_stays_at_chance_which_v2_passes():
    """A start with a healthy gain that moves (v2: good) but whose loss sits at log C and
    does not leave it (the outcome of a constant or symmetric start on digits) is bad; the
    same weights with a loss that leaves chance are good."""
    from pipeline.apps.badinit import detect_v2
    from pipeline.apps.badinit_loss import detect_v3

    Y, layout, lr = _moving_kaiming()
    assert not detect_v2(Y, layout, lr)["bad_init"]
    stuck = [2.3035, 2.3030, 2.3027, 2.3026, 2.3026]
    d = detect_v3(Y, layout, lr, train_loss=stuck, chance=np.log(10))
    assert d["bad_init"] and d["bad_init_reasons"] == ["at chance"] and d["bad_init_basis"] == "loss"
    assert d["bad_init_v2"] is False and d["bad_init_version"] == 3
    assert d["loss_features"]["ratio"] == pytest.approx(2.3026 / np.log(10))
    leaving = [2.0, 1.2, 0.8, 0.5, 0.35]
    assert not detect_v3(Y, layout, lr, train_loss=leaving, chance=np.log(10))["bad_init"]


def test_v3_passes_a_large_start_whose_loss_falls_which_v2_flags():
    """A large start (gain far above 30: v2 flags it) whose loss is far above chance and
    falls is still training (on digits such runs end still improving): v3 reads the loss."""
    from pipeline.apps.badinit import detect_v2
    from pipeline.apps.badinit_loss import detect_v3

    Y, layout, lr = _moving_kaiming(layout_scale=40.0)
    assert detect_v2(Y, layout, lr)["bad_init_reasons"] == ["large gain"]
    d = detect_v3(Y, layout, lr, train_loss=[26.9, 26.7, 26.5, 26.3, 26.1], chance=np.log(10))
    assert d["bad_init"] is False and d["bad_init_v2"] is True and d["bad_init_reasons"] == []
    # with the weights' marks switched on, the second version's mark flags again
    assert detect_v3(Y, layout, lr, train_loss=[26.9, 26.1], chance=np.log(10), weights=True)["bad_init"]


def test_v3_without_a_chance_level_reads_the_plateau_and_without_losses_the_weights():
    from pipeline.apps.badinit import detect_v2
    from pipeline.apps.badinit_loss import detect_v3

    Y, layout, lr = _moving_kaiming()
    flat = detect_v3(Y, layout, lr, train_loss=[0.6080, 0.6079, 0.6079, 0.6078, 0.6078])
    assert flat["bad_init"] and flat["bad_init_reasons"] == ["loss plateau"]
    assert not detect_v3(Y, layout, lr, train_loss=[0.60, 0.55, 0.50, 0.45, 0.41])["bad_init"]
    tiny = (1e-4 * Y[0] + np.zeros((6, 1))).astype(np.float32)
    d = detect_v3(tiny, layout, lr)
    assert d["bad_init_basis"] == "weights" and d["bad_init"] == detect_v2(tiny, layout, lr)["bad_init"] is True
    # a loss that blows up within the window (rise_high set) flags
    assert detect_v3(Y, layout, lr, train_loss=[1.0, 0.5, float("inf")])["bad_init_reasons"] == ["loss rising"]
    # three snapshots (two epochs): the weights' features alone, no DMD marks
    d3 = detect_v3(Y[:3], layout, lr, train_loss=[2.3030, 2.3026], chance=np.log(10), snapshots=3)
    assert d3["bad_init"] and d3["bad_init_v1"] is None and d3["bad_init_snapshots"] == 3
    with pytest.raises(ValueError, match="at least 3"):
        detect_v3(Y[:2], layout, lr, snapshots=2)


def _trained(init: str, epochs: int = 5):
    from pipeline.training.restart import task_chance

    v = config.expand(config.validate({**TINY_TRAIN, "init": init, "epochs": epochs}))[0]
    task, model, layout = build_parts(v)
    rows = []
    res = train(model, task, build_loss("mse"), build_optimizer("adam", model.parameters(), v.lr), epochs=v.epochs,
                batch_size=v.batch_size, snapshot_every=1, snapshot_unit="epoch", layout=layout,
                sink=lambda flat, epoch, step: rows.append(flat.numpy().copy()),
                generator=torch.Generator().manual_seed(0))
    return np.stack(rows), layout, v.lr, res.history["train_loss"], task_chance(task, "mse")


@pytest.mark.parametrize("init, bad", [("zeros", True), ("kaiming", False), ("xavier", False)])
def test_v3_on_a_real_training(init, bad):
    from pipeline.apps.badinit_loss import detect_v3

    Y, layout, lr, losses, chance = _trained(init)
    d = detect_v3(Y, layout, lr, train_loss=losses, chance=chance)
    assert d["bad_init"] is bad, (d["bad_init_reasons"], d["loss_features"])


def test_v3_on_a_stored_run_reads_its_first_six_snapshots_and_their_epochs_losses(tmp_path):
    """``detect_run_v3``: K = 6 by default (not every snapshot), the losses of epochs 1-5,
    the chance level the training recorded; rows handed in (the analysis' first rows) give
    the same verdict as rows read back."""
    from pipeline.apps.badinit_loss import detect_run_v3, run_chance

    v = config.expand(config.validate({**TINY_TRAIN, "init": "zeros", "epochs": 8}))[0]
    run_variant(v, str(tmp_path / "s"))
    run = TrajectoryStore(str(tmp_path / "s")).open_run(v.run_id)
    d = detect_run_v3(run)
    assert d["bad_init_snapshots"] == 6 and d["loss_features"]["n"] == 5
    assert d["loss_features"]["last"] == pytest.approx(run.metrics["train_loss"][4])
    assert run_chance(run) == pytest.approx(run.attrs["chance_loss"]) and run.attrs["chance_loss"] > 0
    assert d["bad_init"] and "at chance" in d["bad_init_reasons"]
    handed = detect_run_v3(run, rows=run.weights().compute())
    assert handed["bad_init_reasons"] == d["bad_init_reasons"] and handed["loss_features"] == d["loss_features"]
    assert detect_run_v3(run, snapshots=3)["bad_init_undecided"]      # below the detector's 4: undecided
