"""Distances between training dynamics (pipeline/apps/dynamics.py): the metric against
an independent reference, its invariances on trajectories of real small networks
stored in a real Zarr store and analysed by the engine, and the permutation null."""

import itertools
import math

import numpy as np
import pytest
import torch

from pipeline.workflows.analyze import AnalysisParams, analyze_runs, list_analyses, load_results
from pipeline.apps import dynamics as dyn
from pipeline.console import Console
from pipeline.spectra import RunSpectra
from pipeline.storage.layout import Layout
from pipeline.storage.store import TrajectoryStore


# --------------------------------------------------------------------------- the metric
def test_quantile_embedding_matches_scipy_wasserstein():
    from scipy.stats import wasserstein_distance

    rng = np.random.default_rng(3)
    Q = dyn.N_QUANTILES
    for _ in range(40):
        ra, rb = rng.integers(1, 7, size=2)
        la = rng.uniform(0.2, 1.2, ra) * np.exp(1j * rng.uniform(-np.pi, np.pi, ra))
        lb = rng.uniform(0.2, 1.2, rb) * np.exp(1j * rng.uniform(-np.pi, np.pi, rb))
        aa, ab = rng.uniform(0.1, 2, ra) * np.exp(1j * rng.uniform(0, 6, ra)), rng.uniform(0.1, 2, rb)
        got = dyn.window_distance(dyn.quantiles(la, aa), dyn.quantiles(lb, ab))
        wa, wb = np.abs(aa) * np.abs(la - 1), np.abs(ab) * np.abs(lb - 1)   # shares of the motion
        ref = (wasserstein_distance(np.abs(la), np.abs(lb), wa, wb)
               + wasserstein_distance(np.abs(np.angle(la)) / np.pi, np.abs(np.angle(lb)) / np.pi, wa, wb))
        bound = (dyn.RHO_MAX + 1.0) * (ra + rb) / Q   # the midpoint rule's error
        assert abs(got - ref) <= bound, (got, ref, bound)
    # weights on the 1/Q grid: the midpoint rule is exact; the fixed point λ = 1 carries
    # no motion, so no weight
    la, lb = np.array([0.5, 0.9 + 0.1j, 0.9 - 0.1j, 1.0]), np.array([0.6, 0.95, 1.0])
    wa, wb = np.array([Q / 2, Q / 4, Q / 4, 0.0]), np.array([3.0, 1.0, 0.0])
    aa = np.where(wa > 0, wa / np.maximum(np.abs(la - 1), 1e-300), 7.0)
    ab = np.where(wb > 0, wb / np.maximum(np.abs(lb - 1), 1e-300), 5.0)
    ref = (wasserstein_distance(np.abs(la), np.abs(lb), wa, wb)
           + wasserstein_distance(np.abs(np.angle(la)) / np.pi, np.abs(np.angle(lb)) / np.pi, wa, wb))
    assert dyn.window_distance(dyn.quantiles(la, aa), dyn.quantiles(lb, ab)) == pytest.approx(ref, abs=1e-12)
    # only the fixed point certified: a point mass there (amplitude weights), not "unknown"
    assert dyn.quantiles([1.0], [3.0]) == pytest.approx(np.r_[np.full(Q, 1.0), np.zeros(Q)] / Q)


def test_unknown_windows_pairwise_and_metric_axioms():
    q = dyn.quantiles([0.9, 0.5], [1.0, 1.0])
    assert dyn.quantiles([], []) is None and dyn.quantiles([0.5], [0.0]) is None
    assert dyn.window_distance(None, None) is None and dyn.window_distance(q, None) is None
    assert dyn.window_distance(q, q) == 0
    rng = np.random.default_rng(0)
    N, B = 9, 3
    E = np.zeros((N, B, 2 * dyn.N_QUANTILES))
    P = rng.random((N, B)) > 0.3
    P[0] = [True, False, False]
    P[1] = [False, True, True]          # nothing in common with run 0
    qs = [[None] * B for _ in range(N)]
    for i, j in itertools.product(range(N), range(B)):
        if P[i, j]:
            r = rng.integers(1, 5)
            qs[i][j] = E[i, j] = dyn.quantiles(rng.uniform(0, 2, r) * np.exp(1j * rng.uniform(-3, 3, r)),
                                               rng.uniform(0.1, 1, r))
    D = dyn.pairwise(E, P, block=4)       # several blocks
    assert np.array_equal(D, D.T) and not np.diag(D).any()
    common = {}
    for i, k in itertools.product(range(N), repeat=2):
        ds = [d for d in (dyn.window_distance(qs[i][j], qs[k][j]) for j in range(B)) if d is not None]
        if i != k and ds:
            common[i, k] = np.mean(ds)                       # the mean over bins known to both
            assert D[i, k] == pytest.approx(common[i, k], abs=1e-12)
    assert (0, 1) not in common and D[0, 1] == pytest.approx(max(common.values()))
    # with every window known, D is a metric (a mean of L1 distances)
    Pf = np.ones((N, B), bool)
    Ef = rng.normal(size=E.shape)
    Df = dyn.pairwise(Ef, Pf)
    assert (Df[:, None, :] <= Df[:, :, None] + Df[None, :, :] + 1e-12).all()   # D[i,k] ≤ D[i,j] + D[j,k]


def test_align_by_fraction_of_training():
    # equal budgets: each window is its own bin; a run twice as long is compared phase by phase
    assert dyn.align([0.25, 0.5, 0.75, 1.0], 4).tolist() == [0, 1, 2, 3]
    assert dyn.align(np.arange(1, 9) / 8, 4).tolist() == [1, 3, 5, 7]
    assert dyn.align([0.5, 1.0], 4).tolist() == [0, 0, 1, 1]   # the later window on ties (0.5 vs 1.0 at 0.75)
    assert dyn.layer_roles(["all", "layers.0", "layers.1", "layers.2", "out"]) == {
        "first": ["layers.0"], "last": ["out"], "hidden": ["layers.1", "layers.2"]}
    assert dyn.layer_roles(["all", "layers.0", "out"]) == {"first": ["layers.0"], "last": ["out"]}
    assert dyn.layer_roles(["all"]) == {}


# --------------------------------------------------------------------------- the null
def _brute_p(D, a, b):
    idx = a + b
    stats = []
    for chosen in itertools.combinations(idx, len(a)):
        A, Bq = list(chosen), [i for i in idx if i not in chosen]
        wa = [D[i, j] for i, j in itertools.combinations(A, 2)] + [D[i, j] for i, j in itertools.combinations(Bq, 2)]
        stats.append(np.mean([D[i, j] for i in A for j in Bq]) - np.mean(wa))
    obs = stats[0] if list(itertools.combinations(idx, len(a)))[0] == tuple(a) else None
    t = np.mean([D[i, j] for i in a for j in b]) - np.mean(
        [D[i, j] for i, j in itertools.combinations(a, 2)] + [D[i, j] for i, j in itertools.combinations(b, 2)])
    assert obs is None or obs == pytest.approx(t)
    return np.mean(np.array(stats) >= t - 1e-12)


def test_permutation_test_exact_and_sampled():
    rng = np.random.default_rng(1)
    X = np.concatenate([rng.normal(0, 1, (4, 2)), rng.normal(5, 1, (4, 2))])   # two far clusters
    D = np.linalg.norm(X[:, None] - X[None], axis=-1)
    a, b = [0, 1, 2, 3], [4, 5, 6, 7]
    p = dyn.permutation_test(D, a, b)
    assert p == pytest.approx(_brute_p(D, a, b)) and p == pytest.approx(2 / math.comb(8, 4))
    # one cloud split in two: not distinguishable
    Y = rng.normal(0, 1, (8, 2))
    Dy = np.linalg.norm(Y[:, None] - Y[None], axis=-1)
    assert dyn.permutation_test(Dy, a, b) == pytest.approx(_brute_p(Dy, a, b))
    assert dyn.permutation_test(Dy, a, b) > 0.05
    # many runs: sampled labellings, seeded, p = (1 + k)/(1 + n_perm)
    Z = np.concatenate([rng.normal(0, 1, (15, 2)), rng.normal(3, 1, (15, 2))])
    Dz = np.linalg.norm(Z[:, None] - Z[None], axis=-1)
    pz = dyn.permutation_test(Dz, list(range(15)), list(range(15, 30)), n_perm=199, seed=4)
    assert pz == pytest.approx(1 / 200)
    assert pz == dyn.permutation_test(Dz, list(range(15)), list(range(15, 30)), n_perm=199, seed=4)
    assert dyn.permutation_test(D, [0], [4]) is None       # no within-group pair: no null
    recs = dyn.group_pairs(D, ["x"] * 4 + ["y"] * 4)
    assert [(r["a"], r["b"], r["equivalent"]) for r in recs] == [("x", "y", False)]
    assert recs[0]["between"] > max(recs[0]["within_a"], recs[0]["within_b"])
    assert dyn.holm([0.01, None, 0.04, 0.03]) == pytest.approx([0.03, None, 0.06, 0.06])


def test_classical_mds_recovers_planar_points():
    X = np.random.default_rng(2).normal(size=(12, 2))
    D = np.linalg.norm(X[:, None] - X[None], axis=-1)
    Y = dyn.classical_mds(D)
    np.testing.assert_allclose(np.linalg.norm(Y[:, None] - Y[None], axis=-1), D, atol=1e-9)


# --------------------------------------------------------------------------- invariances
def _train(seed: int, width: int = 6, epochs: int = 36, lr: float = 0.05, momentum: float = 0.0):
    """Full-batch gradient descent of a tanh MLP 1 → width → width → 1 on a sine: the
    per-epoch flattened parameters (T × P, float32) and their layout."""
    g = torch.Generator().manual_seed(seed)
    x = torch.linspace(-1, 1, 32).unsqueeze(1)
    y = torch.sin(3 * x)
    model = torch.nn.Sequential(torch.nn.Linear(1, width), torch.nn.Tanh(), torch.nn.Linear(width, width),
                                torch.nn.Tanh(), torch.nn.Linear(width, 1))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.7)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    snaps = []
    for _ in range(epochs + 1):
        snaps.append(torch.cat([p.detach().flatten() for p in model.parameters()]).numpy().copy())
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()
    named = [(f"{k}", tuple(v.shape)) for k, v in model.state_dict().items()]
    return np.stack(snaps).astype(np.float32), named


def _permute_hidden(X, named, perm):
    """The same trajectory with the first hidden layer's units permuted (rows of W0, b0,
    columns of W1): the network computes the same function at every epoch."""
    out, off = [], 0
    parts = {}
    for name, shape in named:
        size = int(np.prod(shape))
        parts[name] = X[:, off:off + size].reshape(X.shape[0], *shape)
        off += size
    parts["0.weight"] = parts["0.weight"][:, perm]
    parts["0.bias"] = parts["0.bias"][:, perm]
    parts["2.weight"] = parts["2.weight"][:, :, perm]
    for name, _ in named:
        out.append(parts[name].reshape(X.shape[0], -1))
    return np.concatenate(out, axis=1)


def _store_run(store, run_id, X, named, group):
    w = store.create_run(run_id, Layout.from_named_shapes(named), config={"variant": group})
    for t, x in enumerate(X):
        w.append(x, epoch=t)
    w.finish("complete")


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    """Real trajectories of tiny MLPs and their transforms, stored and analysed."""
    store = TrajectoryStore(str(tmp_path_factory.mktemp("dyn") / "s"))
    X, named = _train(0)
    perm = np.random.default_rng(0).permutation(6)
    runs = {
        "base": (X, named),
        "scaled": (X * np.float32(4.0), named),            # exact in float32
        "permuted": (_permute_hidden(X, named, perm), named),
        # every parameter duplicated (a network of twice the parameters whose copies move
        # together): the same dynamics seen through 2P coordinates
        "doubled": (np.concatenate([X, X], axis=1), [(f"{n}", s) for n, s in named] +
                    [(f"{n.split('.')[0]}{n.split('.')[0]}.{n.split('.')[1]}", s) for n, s in named]),
        "faster": _train(0, lr=0.2),                        # another step size: other dynamics
    }
    for rid, (Xr, nm) in runs.items():
        _store_run(store, rid, Xr, nm, rid)
    report = analyze_runs(store, None, AnalysisParams(window=12, stride=12, per_layer=True),
                          console=Console(quiet=True))
    assert set(report.values()) == {None}, report
    spectra = {}
    for rid in runs:
        run = store.open_run(rid)
        [aid] = list_analyses(run)
        spectra[rid] = RunSpectra.of_run(run, load_results(run, aid), residual_tol=1e-2)
    return spectra


def test_distance_invariant_to_scale_permutation_and_parameter_count(stored):
    ids = ["base", "scaled", "permuted", "doubled", "faster"]
    D = dyn.distances([stored[r] for r in ids], n_bins=3)
    assert set(D) == {"all", "first", "hidden", "last"}
    certified = {r.layer for r, m in zip(stored["base"].results, stored["base"].reliable) if m.any()}
    assert {"all", "0", "2"} <= certified, certified   # something certified to compare
    other = D["all"][0, 4]                  # another step size, same task and init
    assert other > 1e-3, D["all"]
    for k in (1, 2):                        # weight scale, hidden-unit permutation: per role too
        for role in ("all", "first", "hidden"):
            assert D[role][0, k] <= 1e-6 * other, (role, k, D[role][0, k])
    assert D["all"][0, 3] <= 1e-6 * other, D["all"][0, 3]   # twice the parameters
    # the weighted distance rests partly on uncertified pairs here (weights strictly
    # between 0 and 1), and the certified-only one is invariant as well
    s = stored["base"]
    rel = np.concatenate([dyn.reliability(r, m) for r, m in zip(s.results, s.reliable)])
    assert ((rel > 0) & (rel < 1)).any(), rel
    C = dyn.distances([stored[r] for r in ids], n_bins=3, ritz_pairs="certified")
    assert C["all"][0, 4] > 1e-3
    for k in (1, 2, 3):
        assert C["all"][0, k] <= 1e-6 * C["all"][0, 4], (k, C["all"][0, k])


def _window(lams, kres, amps=None, informative=True, misfit=1e-6, limit=1e-4, window=(0, 10), layer="all"):
    from pipeline.koopman import WindowResult

    lam = np.asarray(lams, complex)
    return WindowResult(layer, window, lam, np.asarray(amps if amps is not None else np.ones(lam.size), complex),
                        np.asarray(kres, float), np.ones(lam.size), lam.size, conditions=np.ones(lam.size),
                        informative=informative, misfit=misfit, misfit_limit=limit)


def test_reliability_weights_and_certified_share():
    r = _window([1.0, 0.9, 0.5, 0.2], [1e-3, 0.1, 0.02, 2.0])
    cert = r.reliable(1e-2)
    assert cert.tolist() == [True, False, False, False]
    # certified 1; else tol / (κ·residual): ten times the tolerance counts a tenth
    np.testing.assert_allclose(dyn.reliability(r, cert, 1e-2), [1.0, 0.1, 0.5, 0.005])
    # a window the engine does not trust at all counts nothing
    assert not dyn.reliability(_window([0.9], [1e-3], informative=False), [False]).any()
    assert not dyn.reliability(_window([0.9], [1e-3], misfit=1e-2, limit=1e-4), [False]).any()
    # the share of the measure (weights × |λ − 1|) on certified pairs
    assert dyn.certified_share([1.0, 0.9], [5.0, 1.0], [True, False]) == 0.0     # λ = 1 carries no motion
    assert dyn.certified_share([0.5, 0.9], [1.0, 1.0], [True, False]) == pytest.approx(0.5 / 0.6)
    assert dyn.certified_share([1.0], [2.0], [True]) == 1.0                      # only the fixed point
    assert dyn.certified_share([0.5], [0.0], [False]) is None


def _synthetic_run(label, rate, kres, rng, n_windows=3):
    """Windows that certify only the fixed point λ = 1 and hold one more (uncertified,
    κ·residual = ``kres``) real mode near ``rate``: what the engine reports for Adam."""
    results = [_window([1.0, rate + rng.normal(0, 0.005)], [1e-3, kres], amps=[5.0, 1.0], window=(5 * k, 5 * k + 10))
               for k in range(n_windows)]
    return RunSpectra.build(results, label=label, residual_tol=1e-2)


def test_weighted_pairs_tell_apart_what_certified_pairs_cannot():
    rng = np.random.default_rng(5)
    runs = [_synthetic_run(f"a{k}", 0.9, 0.05, rng) for k in range(4)] + \
           [_synthetic_run(f"b{k}", 0.6, 0.05, rng) for k in range(4)]
    labels = ["a"] * 4 + ["b"] * 4
    ids = [s.label for s in runs]
    sec = dyn.section(ids, labels, runs)
    # certified pairs alone: every run is a point mass at 1, nothing to tell apart
    assert not np.array(dyn.distances(runs, ritz_pairs="certified")["all"]).any()
    assert sec["certified_only"]["pairs"][0]["p_value"] == 1.0
    # weighted: the groups' rates differ by 0.3, seeds by about 0.005
    [pair] = sec["pairs"]
    assert pair["p_value"] == pytest.approx(2 / math.comb(8, 4)) and pair["equivalent"] is False
    assert pair["between"] == pytest.approx(0.3, abs=0.03) and max(pair["within_a"], pair["within_b"]) < 0.03
    assert sec["metric"] == dyn.METRIC and sec["ritz_pairs"] == "weighted"
    assert sec["reliability"]["residual_tol"] == 1e-2
    assert sec["certified_mass"] == {rid: 0.0 for rid in ids}   # it all rests on uncertified pairs
    only = dyn.section(ids, labels, runs, ritz_pairs="certified")
    assert only["metric"] == dyn.METRIC_CERTIFIED and "certified_only" not in only
    assert only["pairs"][0]["p_value"] == 1.0
    with pytest.raises(ValueError, match="ritz_pairs"):
        dyn.section(ids, labels, runs, ritz_pairs="all")


def _train_opt(seed: int, opt: str, lr: float, width: int = 8, epochs: int = 40):
    """Full-batch SGD or Adam on a tanh MLP 1 → width → 1 fitting a sine (T × P float32)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.linspace(-1, 1, 32).unsqueeze(1)
    y = torch.sin(3 * x)
    model = torch.nn.Sequential(torch.nn.Linear(1, width), torch.nn.Tanh(), torch.nn.Linear(width, 1))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.7)
    optim = (torch.optim.SGD if opt == "sgd" else torch.optim.Adam)(model.parameters(), lr=lr)
    snaps, losses = [], []
    for _ in range(epochs + 1):
        snaps.append(torch.cat([p.detach().flatten() for p in model.parameters()]).numpy().copy())
        optim.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        optim.step()
        losses.append(float(loss.detach()))
    named = [(f"{k}", tuple(v.shape)) for k, v in model.state_dict().items()]
    return np.stack(snaps).astype(np.float32), named, np.array(losses)


def test_sgd_and_adam_runs_told_apart_by_weighted_pairs_only(tmp_path):
    """Real runs: 4 seeds of full-batch SGD (lr 0.05) and of Adam (lr 0.02). That they
    differ is shown from what they did (Adam's loss rises in some epochs, SGD's never);
    the engine certifies little beyond λ ≈ 1 in Adam's windows, so certified pairs
    alone cannot tell the groups apart, the weighted ones can."""
    store = TrajectoryStore(str(tmp_path / "s"))
    ids, labels, rises = [], [], {}
    for opt, lr in (("sgd", 0.05), ("adam", 0.02)):
        for seed in range(4):
            X, named, loss = _train_opt(seed, opt, lr)
            _store_run(store, f"{opt}{seed}", X, named, opt)
            ids.append(f"{opt}{seed}")
            labels.append(opt)
            rises[f"{opt}{seed}"] = float(np.mean(np.diff(loss) > 0))
    assert all(rises[f"adam{k}"] > 0 for k in range(4)) and not any(rises[f"sgd{k}"] for k in range(4)), rises
    report = analyze_runs(store, None, AnalysisParams(window=20, stride=10, per_layer=True), console=Console(quiet=True))
    assert set(report.values()) == {None}, report
    spectra = []
    for rid in ids:
        run = store.open_run(rid)
        [aid] = list_analyses(run)
        spectra.append(RunSpectra.of_run(run, load_results(run, aid), residual_tol=1e-2))
    sec = dyn.section(ids, labels, spectra)
    mass = sec["certified_mass"]
    assert max(mass[f"adam{k}"] for k in range(4)) < min(mass[f"sgd{k}"] for k in range(4)), mass
    p_weighted, p_certified = sec["pairs"][0]["p_value"], sec["certified_only"]["pairs"][0]["p_value"]
    assert p_weighted == pytest.approx(2 / math.comb(8, 4)) and p_certified > 0.05, (p_weighted, p_certified)


def test_section_contract(stored):
    ids = ["base", "scaled", "permuted", "faster"]
    sec = dyn.section(ids, ["a", "a", "a", "b"], [stored[r] for r in ids], n_bins=3)
    assert sec["metric"] == dyn.METRIC and sec["runs"] == ids
    assert sec["group_of"] == {"base": "a", "scaled": "a", "permuted": "a", "faster": "b"}
    D = np.array(sec["distance"])
    assert D.shape == (4, 4) and np.array_equal(D, D.T) and not np.diag(D).any()
    [pair] = sec["pairs"]
    assert set(pair) >= {"a", "b", "within_a", "within_b", "between", "p_value", "equivalent"}
    assert pair["within_b"] is None and pair["between"] > pair["within_a"]
    assert pair["p_value"] == pytest.approx(1 / 4) and pair["equivalent"] is True  # 4 labellings: no power
    assert set(sec["by_role"]) == {"first", "hidden", "last"}
    assert sec["classes"] == [["a", "b"]]


def test_classes_are_components_of_equivalent_pairs():
    pairs = [{"a": "x", "b": "y", "equivalent": True}, {"a": "y", "b": "z", "equivalent": False},
             {"a": "z", "b": "w", "equivalent": None}, {"a": "x", "b": "z", "equivalent": False}]
    assert dyn.classes(["x", "y", "z", "w"], pairs) == [["x", "y"], ["z"], ["w"]]


def test_figures_read_at_few_and_many_runs(tmp_path):
    from pipeline.apps import dynamics_plots as dp
    from pipeline import plots

    for n in (8, 120):
        rng = np.random.default_rng(n)
        X = rng.normal(size=(n, 2)) + np.repeat(np.arange(4), n // 4)[:, None] * 3
        labels = [f"g{k}" for k in np.repeat(np.arange(4), n // 4)]
        sec = {"metric": dyn.METRIC, "role": "all", "n_bins": 3, "runs": [f"run{k:03d}" for k in range(n)],
               "group_of": {f"run{k:03d}": g for k, g in enumerate(labels)}, "groups": ["g0", "g1", "g2", "g3"],
               "distance": np.linalg.norm(X[:, None] - X[None], axis=-1).tolist()}
        fig = dp.matrix_figure(sec, by="init", analysis_id="qr-x")
        ticks = [t.get_text() for t in fig.axes[0].get_xticklabels()]
        # few runs: every run named; many: the groups, with their sizes
        assert ticks == ([f"run{k:03d} ({g})" for k, g in enumerate(labels)] if n == 8 else
                         [f"init={g} ({n // 4})" for g in ("g0", "g1", "g2", "g3")])
        title = fig.get_suptitle()     # across the figure: long metric and analysis names fit
        assert "qr-x" in title and f"{n} runs by init" in title and dyn.METRIC in title
        plots._plt().close(fig)
        fig = dp.embedding_figure(sec, by="init")
        assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == [
            f"init={g} ({n // 4})" for g in ("g0", "g1", "g2", "g3")]
        plots._plt().close(fig)
        files = dp.save_figures(sec, tmp_path / str(n), by="init")
        assert [f.name for f in files] == ["dynamics_matrix.png", "dynamics_mds.png"]
        assert all(f.stat().st_size > 10_000 for f in files)
