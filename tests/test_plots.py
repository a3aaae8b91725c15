"""Figures read by a researcher: the matplotlib Figure objects are inspected (panels, axis
labels, fixed limits and colour scale, certified vs uncertified markers, legends), on
spectra made in the test with known windows, residuals and outliers."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from matplotlib.colors import to_rgba

from pipeline import plots
from pipeline.koopman import WindowResult
from pipeline.spectra import RunSpectra, reliable_mask, window_end_epochs, window_metrics

TOL = 1e-2
EPOCHS = list(range(0, 101))  # snapshot i taken at epoch i; 101 snapshots


def _row(layer, window, lam, res):
    lam = np.asarray(lam, dtype=np.complex128)
    sv = np.geomspace(1.0, 1e-6, max(lam.size, 2))
    return WindowResult(layer, window, lam, np.ones_like(lam), np.asarray(res, float), sv, lam.size)


def _spectra(layers=("all", "l0", "l1", "l2", "l3"), windows=((0, 20), (10, 30), (20, 40)), label="run-a"):
    """Every window: λ = 1 (certified), 0.9i (certified), −0.5 (not), and 3.0 (certified,
    beyond the frame)."""
    rows = [_row(layer, w, [1.0, 0.9j, -0.5, 3.0], [1e-8, 1e-3, 0.5, 1e-6]) for layer in layers for w in windows]
    return RunSpectra.build(rows, label=label, residual_tol=TOL, snapshot_epochs=EPOCHS, analysis_id="qr-w20s10-x")


def _panels(fig):
    return [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]


def _colorbar(fig):
    [cb] = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    return cb


def test_reliable_mask_and_epochs():
    r = _row("all", (0, 20), [1.0, 0.5], [1e-3, 0.1])
    assert reliable_mask(r, TOL).tolist() == [True, False]
    # the result's own rule decides (certified spectra: κ·residual, informative window)
    scaled = SimpleNamespace(residuals=r.residuals, window=(0, 20), reliable=lambda tol: r.residuals * 20 <= tol)
    assert reliable_mask(scaled, TOL).tolist() == [False, False]
    assert RunSpectra.build([scaled], label="x", residual_tol=TOL).criterion.startswith("κ·residual")
    rows = [_row("all", (0, 20), [1.0], [0.0]), _row("all", (10, 30), [1.0], [0.0])]
    assert window_end_epochs(rows, [0, *range(5, 5 * 30, 5)]).tolist() == [95, 145]  # snapshots 19, 29
    assert window_end_epochs(rows).tolist() == [19, 29]


def test_window_metrics_one_point_per_window_at_the_end_epoch():
    sp = _spectra(layers=("all",))
    m = window_metrics(sp)
    assert [s for s, _ in m["all/n_reliable"]] == [19, 29, 39]
    assert [v for _, v in m["all/n_reliable"]] == [3.0] * 3
    assert [v for _, v in m["all/max_abs_reliable"]] == pytest.approx([3.0] * 3)
    assert [v for _, v in m["all/min_dist_to_1"]] == pytest.approx([0.0] * 3)


def test_window_metrics_log_distances_and_roles_line_up_across_depths():
    """log10 of ||λ|max − 1| and of min |λ − 1| per window, checked against numpy on the
    certified λ; roles first/hidden/last exist at depth 3 and at depth 2 (no hidden
    there), and ``hidden`` pools every hidden layer's certified λ."""
    tol = [1e-8, 1e-8]
    deep = [_row("all", (0, 20), [1.02, 0.5], tol), _row("layers.0", (0, 20), [1.5, 0.2], tol),
            _row("layers.1", (0, 20), [1.001, 0.3], tol), _row("layers.2", (0, 20), [0.9, 0.1], tol),
            _row("out", (0, 20), [0.999, 0.4], tol)]
    shallow = [_row("all", (0, 20), [1.02, 0.5], tol), _row("layers.0", (0, 20), [1.5, 0.2], tol),
               _row("out", (0, 20), [0.999, 0.4], tol)]
    m = window_metrics(RunSpectra.build(deep, label="d3", residual_tol=TOL, snapshot_epochs=EPOCHS))
    s = window_metrics(RunSpectra.build(shallow, label="d1", residual_tol=TOL, snapshot_epochs=EPOCHS))
    assert m["all/log10_gap_max_abs"] == [(19, pytest.approx(np.log10(0.02)))]
    assert m["first/max_abs_reliable"] == [(19, pytest.approx(1.5))]
    assert m["last/log10_gap_max_abs"] == [(19, pytest.approx(np.log10(0.001)))]
    assert m["hidden/max_abs_reliable"] == [(19, pytest.approx(1.001))]          # pooled layers.1, layers.2
    assert m["hidden/n_reliable"] == [(19, 4.0)]
    assert m["hidden/log10_min_dist_to_1"] == [(19, pytest.approx(np.log10(0.001)))]
    assert m["first/max_abs_reliable"] == s["first/max_abs_reliable"]            # same key at both depths
    assert m["last/max_abs_reliable"] == s["last/max_abs_reliable"]
    assert not any(k.startswith("hidden/") for k in s)
    on_circle = window_metrics(RunSpectra.build([_row("all", (0, 20), [1.0], [0.0])], label="x",
                                                residual_tol=TOL, snapshot_epochs=EPOCHS))
    assert on_circle["all/log10_gap_max_abs"] == [(19, -12.0)]                   # floored, not -inf


def test_spectrum_one_panel_per_layer_fixed_axes_time_colours():
    sp = _spectra()
    fig = plots.spectrum_figure(sp)
    axes = _panels(fig)
    assert [ax.get_title().split("\n")[0] for ax in axes] == ["all", "l0", "l1", "l2", "l3"]  # no empty slot
    for ax in axes:
        assert ax.get_xlabel() == "Re λ" and ax.get_ylabel() == "Im λ"
        assert ax.get_xlim() == (-plots.LIM, plots.LIM) and ax.get_ylim() == (-plots.LIM, plots.LIM)
        assert "9 of 12 certified, 3 beyond" in ax.get_title()
    # the short last row is centred: its two panels sit between the first row's outer ones
    x0 = [ax.get_position().x0 for ax in axes]
    assert x0[0] < x0[3] < x0[1] < x0[4] < x0[2]
    four = plots.spectrum_figure(_spectra(layers=("all", "l0", "l1", "l2")))
    assert len({round(ax.get_position().x0, 3) for ax in _panels(four)}) == 2  # 2 × 2, not 3 + 1
    plots._plt().close(four)
    cb = _colorbar(fig)
    assert cb.get_ylabel() == plots.TIME_LABEL
    assert cb.get_ylim() == (0.0, 1.0)  # the fixed scale, not the data range
    assert "Koopman spectrum of run-a" in fig._suptitle.get_text()
    assert "qr-w20s10-x" in fig._suptitle.get_text()
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend[0] == f"certified (κ·residual ≤ {TOL:g}, informative window)" and legend[1] == "not certified"

    # certified: filled, coloured by window end / training length; uncertified: hollow
    ax = axes[0]
    import matplotlib

    cmap = matplotlib.colormaps[plots.CMAP]
    filled = {}
    for coll in ax.collections:
        fc = coll.get_facecolor()
        offs = coll.get_offsets()
        if len(fc) == 0:  # hollow (uncertified): −0.5 only
            assert np.allclose(offs, [[-0.5, 0.0]])
            continue
        assert len(fc) == len(offs)  # one colour per point
        for xy, c in zip(offs, fc):
            filled.setdefault(tuple(np.round(xy, 6)), []).append(tuple(c))
    want = {tuple(to_rgba(cmap(end / 100))) for end in (19, 29, 39)}
    assert set(filled[(1.0, 0.0)]) == want and set(filled[(0.0, 0.9)]) == want
    # 3.0 lies beyond the frame: drawn on its border, along its ray
    border = [xy for xy in filled if abs(xy[0]) > 1.4]
    assert border == [(pytest.approx(plots.LIM * 0.98), 0.0)]
    plots._plt().close(fig)


def test_same_window_same_colour_across_runs():
    """The colour scale is the fraction of training, not the data: two runs with different
    lengths and residual ranges colour their last windows alike."""
    import matplotlib

    cmap = matplotlib.colormaps[plots.CMAP]
    a = RunSpectra.build([_row("all", (0, 101), [1.0], [1e-9])], label="a", residual_tol=TOL, snapshot_epochs=EPOCHS)
    b = RunSpectra.build([_row("all", (0, 11), [1.0], [1e-3])], label="b", residual_tol=TOL,
                         snapshot_epochs=list(range(11)))
    for sp in (a, b):
        fig = plots.spectrum_figure(sp)
        [coll] = [c for c in _panels(fig)[0].collections if len(c.get_facecolor())]
        assert tuple(coll.get_facecolor()[0]) == tuple(to_rgba(cmap(1.0)))
        plots._plt().close(fig)


@pytest.mark.parametrize("windows", [((0, 41),), tuple((i, i + 3) for i in range(0, 98))], ids=["one", "many"])
def test_moduli_over_training(windows):
    sp = _spectra(layers=("all", "l0"), windows=windows)
    fig = plots.moduli_figure(sp)
    a1, a2, a3 = fig.axes
    assert a1.get_ylabel() == "|λ|" and a2.get_yscale() == "log" and a3.get_xlabel() == "epoch (end of window)"
    assert a1.get_xlim()[0] <= 0 and a1.get_xlim()[1] >= 100  # the whole training
    labels = [t.get_text() for t in a1.get_legend().get_texts()]
    assert "all: largest certified |λ|" in labels and "l0: largest certified |λ|" in labels
    [line] = [ln for ln in a1.get_lines() if ln.get_label() == "all: largest certified |λ|"]
    assert line.get_ydata() == pytest.approx([3.0] * len(windows))
    if len(windows) == 1:  # a single window: points, the median with its 10–90 % bar, the window shaded
        assert line.get_marker() == "o"
        assert any("window: epochs 0–40" == t for t in labels)
        assert any("median, 10–90 %" in t for t in labels)
    else:  # many windows: lines, no markers, a band
        assert line.get_marker() in ("None", None, "")
        assert "all: 10–90 % of certified |λ|" in labels
    plots._plt().close(fig)


def test_moduli_without_any_certified_value():
    sp = RunSpectra.build([_row("all", (0, 41), [0.5, 2.0], [1.0, 1.0])], label="x", residual_tol=TOL)
    fig = plots.moduli_figure(sp)
    assert any("no certified" in t.get_text() for t in fig.axes[0].texts)
    fig.canvas.draw()  # the log axis does not fail on an empty series
    plots._plt().close(fig)


def test_singular_values_keyed_by_window():
    sp = _spectra(layers=("all", "l0"))
    fig = plots.singular_values_figure(sp)
    axes = _panels(fig)
    assert [ax.get_title() for ax in axes] == ["all", "l0"]
    fig.canvas.draw()
    for ax in axes:
        assert ax.get_xlabel() == "index i" and ax.get_yscale() == "log"
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks)
        assert len([ln for ln in ax.get_lines() if ln.get_linestyle() == "-"]) == 3  # one per window
    assert _colorbar(fig).get_ylabel() == plots.TIME_LABEL
    plots._plt().close(fig)


def test_group_figures_name_groups_runs_and_analysis():
    groups = {"2": [_spectra(layers=("all",), label="d2-a"), _spectra(layers=("all",), label="d2-b")],
              "3": [_spectra(layers=("all",), label="d3-a")]}
    fig = plots.group_spectrum_figure(groups, by="depth")
    circles, a_n = fig.axes[:2], fig.axes[2]
    titles = [ax.get_title() for ax in circles]
    assert titles[0].startswith("depth=2 (2 runs)") and titles[1].startswith("depth=3 (1 run)")
    assert "qr-w20s10-x" in fig._suptitle.get_text()
    # every mark filled: certified in the group's colour (the same colour as the group's
    # median line below), uncertified grey; none hollow
    for gi, ax in enumerate(circles):
        colours = {tuple(np.round(c[:3], 3)) for coll in ax.collections for c in coll.get_facecolors()}
        assert tuple(np.round(to_rgba(plots.group_colour(gi))[:3], 3)) in colours
        assert all(len(coll.get_facecolors()) for coll in ax.collections)   # no facecolors="none"
    medians = [ln for ln in a_n.get_lines() if ln.get_linewidth() > 2]
    assert [ln.get_color() for ln in medians] == [plots.group_colour(0), plots.group_colour(1)]
    # 3 of 4 Ritz values certified in every window of every run: the median share is 0.75
    np.testing.assert_allclose(medians[0].get_ydata(), 0.75)
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels[:2] == ["depth=2 (2 runs)", "depth=3 (1 run)"] and "not certified (any window)" in labels
    fig.canvas.draw()
    box = fig.legends[0].get_window_extent()
    assert all(not box.overlaps(ax.get_window_extent()) for ax in fig.axes)   # outside the data
    assert not box.overlaps(fig._suptitle.get_window_extent())
    plots._plt().close(fig)

    fig = plots.group_moduli_figure(groups, by="depth")
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels == ["depth=2 (2 runs)", "depth=3 (1 run)", "median of the group's runs",
                      "band: min–max of the runs", "one run"]   # a key for every mark
    a1, a2 = fig.axes[:2]
    assert a1.get_yscale() == a2.get_yscale() == "log"
    # per group: its colour on thin run lines and a thick median, the same in both panels
    for ax in (a1, a2):
        thick = [ln for ln in ax.get_lines() if ln.get_linewidth() > 2]
        assert [ln.get_color() for ln in thick] == [plots.group_colour(0), plots.group_colour(1)]
        assert len([ln for ln in ax.get_lines() if ln.get_linewidth() < 1]) == 3   # one per run
    # the median of depth 2 (λ = 3.0 at every window in both runs): ||λ|max − 1| = 2
    np.testing.assert_allclose([ln for ln in a1.get_lines() if ln.get_linewidth() > 2][0].get_ydata(), 2.0)
    fig.canvas.draw()
    legend_box = fig.legends[0].get_window_extent()
    assert all(not legend_box.overlaps(ax.get_window_extent()) for ax in (a1, a2))   # outside the data
    assert "qr-w20s10-x" in fig._suptitle.get_text()
    plots._plt().close(fig)


def test_group_band_median_and_percentiles():
    runs = [(np.array([1.0, 2.0]), np.array([v, 10 * v])) for v in (1.0, 2.0, 3.0, 4.0, 100.0)]
    x, med, lo, hi, what = plots._group_band(runs)
    assert x.tolist() == [1.0, 2.0] and med.tolist() == [3.0, 30.0] and what == "10–90 %"
    np.testing.assert_allclose(lo, np.percentile([1, 2, 3, 4, 100], 10) * np.array([1, 10]))
    x, med, lo, hi, what = plots._group_band(runs[:2] + [(np.array([3.0]), np.array([7.0]))])
    assert x.tolist() == [1.0, 2.0, 3.0] and med.tolist() == [1.5, 15.0, 7.0] and what == "min–max"
    assert lo.tolist() == [1.0, 10.0, 7.0] and hi.tolist() == [2.0, 20.0, 7.0]


def test_analysis_figures_written(tmp_path):
    paths = plots.analysis_figures(_spectra(), tmp_path)
    assert [p.name for p in paths] == ["spectrum.png", "eigenvalues_over_training.png", "singular_values.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in paths)


def _verdict(converged_epoch=None, bad=False, share=(0.2, 0.5, 0.9), cls="still_improving"):
    epochs = [19, 29, 39][:len(share)]
    return {"converged_at": None if converged_epoch is None else epochs.index(converged_epoch),
            "converged_epoch": converged_epoch, "bad_init": bad, "class": cls,
            "criterion": {"delta": 0.01, "share": 0.8, "k": 2}, "window_epochs": epochs,
            "window_checks": [[e - 19, e + 1, s >= 0.8] for e, s in zip(epochs, share)],
            "certified": [[[1.0, 0.0, s]] for s in share]}


@pytest.mark.parametrize("n", [1, 60])
def test_group_convergence_figure_keys_every_mark_and_keeps_runs_that_never_converged(n):
    from pipeline.apps import verdict_plots

    groups = {"a": [(f"a{i}", _verdict(39, cls="converged")) for i in range(n)] + [("a-x", _verdict())],
              "b": [(f"b{i}", _verdict(None, bad=True, share=(0.0, 0.0, 0.1))) for i in range(n)]}
    fig = verdict_plots.group_figure(groups, by="init", analysis_id="qr-x")
    a_s, a_c, a_r = fig.axes
    # top: the group's median share within δ of 1 (no certified pair in the stored rows'
    # evidence: summed from `certified`), in the group's colour
    medians = [ln for ln in a_s.get_lines() if ln.get_linewidth() > 2]
    assert [ln.get_color() for ln in medians] == [plots.group_colour(0), plots.group_colour(1)]
    np.testing.assert_allclose(medians[0].get_ydata(), [0.2, 0.5, 0.9])
    # middle: share of the group's runs converged by each epoch, over all its runs
    steps = a_c.get_lines()
    assert [ln.get_color() for ln in steps] == [plots.group_colour(0), plots.group_colour(1)]
    assert max(steps[0].get_ydata()) == pytest.approx(n / (n + 1), abs=0.02)
    assert max(steps[1].get_ydata()) == pytest.approx(0.0, abs=0.02)
    # bottom: every run drawn, filled in its group's colour; runs that never met the
    # criterion in the "not met" strip beyond the last epoch, bad inits edged black
    dots = [(c.get_offsets()[0], c.get_facecolors()[0], c.get_edgecolors()[0]) for c in a_r.collections
            if len(c.get_offsets())]
    assert len(dots) == 2 * n + 1
    not_met = [d for d in dots if d[0][0] > 39 * 1.04]
    assert len(not_met) == n + 1
    assert all(np.allclose(d[1][:3], to_rgba(plots.group_colour(1))[:3]) and np.allclose(d[2][:3], 0)
               for d in dots if d[0][1] < 0.5)                     # group b: the bottom row, all bad inits
    assert any(t.get_text() == "not met" for t in a_r.texts)
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels[0] == f"init=a: {n + 1} runs, {n} converged, 1 not met"
    assert labels[1] == f"init=b: {n} run{'s' * (n > 1)}, 0 converged, {n} not met"
    assert "bottom: one run that never met it (strip)" in labels and "black edge: judged a bad init" in labels
    assert any(lab.startswith("marker size") for lab in labels)
    fig.canvas.draw()
    box = fig.legends[0].get_window_extent()
    assert all(not box.overlaps(ax.get_window_extent()) for ax in fig.axes)   # outside the data
    assert "qr-x" in fig._suptitle.get_text()
    plots._plt().close(fig)
