"""``kma compare``: runs side by side, grouped by a config key (depth, init, seed, ...).

A comparison uses ONE analysis parameter set for all its runs: the one named with
``--analysis``, else the most recent current analysis that the runs share (shared by
the most runs; the most recently created among equals). Runs without that analysis are
named as skipped, never compared through another analysis. For every compared run: the
final losses and, from the whole network's spectrum in the last window, how many Ritz
values are certified, the largest certified |λ| and the distance of the closest
certified λ to 1 (converging training clusters its eigenvalues at 1). A table per run,
means per group, and the group figures of :mod:`pipeline.plots`, written into a folder
of their own: ``<out>/<by>-<analysis_id>-<hash of the run ids>/``.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np

from .analyze import RELIABLE_RESIDUAL, list_analyses, load_results
from ..config import flatten_dict, loss_label
from ..errors import KMAError, plural
from ..storage.store import FINISHED, TrajectoryStore

log = logging.getLogger(__name__)


def _flat_config(run) -> dict:
    """The run's config flattened (``loss.name``, ``loss.s``); a loss given by a mapping
    is also ``loss`` = its canonical label (``sobolev(s=1)``), so ``--by loss`` groups
    plain names and mappings alike."""
    if not isinstance(run.config, dict):
        return {}
    flat = flatten_dict(run.config)
    if isinstance(run.config.get("loss"), dict) and "name" in run.config["loss"]:
        flat["loss"] = loss_label(run.config["loss"])
    return flat


def choose_analysis(analyses: dict[str, dict[str, str]]) -> str | None:
    """The analysis id a comparison uses when none is named.

    ``analyses`` is ``{run_id: {analysis_id: created}}`` (each run's current analyses).
    Returns the id shared by the most runs (all of them, where one is common to all),
    the most recently created among equals; None if no run has an analysis."""
    count: dict[str, int] = {}
    created: dict[str, str] = {}
    for ids in analyses.values():
        for aid, when in ids.items():
            count[aid] = count.get(aid, 0) + 1
            created[aid] = max(created.get(aid, ""), str(when or ""))
    if not count:
        return None
    return max(count, key=lambda a: (count[a], created[a], a))


def collect(store: TrajectoryStore, run_ids=None, analysis_id=None, by="depth", sweep=None,
            skipped: dict | None = None, missing: dict | None = None) -> list[dict]:
    """One row per finished run that has the comparison's analysis (all rows share it:
    ``row["analysis_id"]``; ``row["spectra"]`` is its :class:`~pipeline.spectra.RunSpectra`).

    Runs named in ``run_ids`` must exist and ``by`` must be a (flattened) config key of
    the runs (else KMAError, before any analysis is read). A run with damaged metadata
    or an unreadable analysis is not compared: ``skipped`` (if given) receives
    ``{run_id: reason}``; a run without the chosen analysis goes to ``missing``.
    """
    from ..storage.health import check_named_runs, shown_status, split_runs
    from .sync import short_name

    skipped = {} if skipped is None else skipped
    missing = {} if missing is None else missing
    if run_ids:
        check_named_runs(store, run_ids)
    ids, damaged = split_runs(store, FINISHED)
    skipped.update({rid: msg for rid, msg in damaged.items() if not run_ids or rid in run_ids})
    for rid in run_ids or []:  # a named run that is not finished is said so, not dropped
        if rid not in ids and rid not in damaged:
            skipped[rid] = f"run {rid}: skipped: not finished (status {shown_status(store, rid)})"
    runs = {}
    for rid in ids:
        if run_ids and rid not in run_ids:
            continue
        run = store.open_run(rid)
        if sweep and run.attrs.get("sweep") != sweep:
            continue
        runs[rid] = run
    if not runs:
        raise _nothing(store, analysis_id, skipped)
    keys = sorted({k for run in runs.values() for k in _flat_config(run)})
    if by not in keys:
        raise KMAError(f"--by {by}: not a config key of these runs{_did_you_mean(by, keys)}; "
                       f"known: {', '.join(keys) or 'none'}")

    current, every = {}, {}
    for rid, run in runs.items():
        every[rid] = list_analyses(run)
        current[rid] = {a: run.analysis_info(a).get("created", "") for a in list_analyses(run, outdated=False)}
    aid = analysis_id
    if aid is None:  # the current one they share; else (only older engines' analyses) any
        aid = choose_analysis(current) or choose_analysis(
            {rid: {a: runs[rid].analysis_info(a).get("created", "") for a in a_ids} for rid, a_ids in every.items()})
    if aid is None and not any(every.values()):   # finished runs, none analysed yet
        raise KMAError(f"{plural(len(runs), 'finished run')} in {store.url}, but none has an analysis; "
                       f"run kma analyze --store {store.url} first")
    if aid is None or not any(aid in a_ids for a_ids in every.values()):
        raise _nothing(store, aid, skipped)

    rows = []
    for rid, run in runs.items():
        if aid not in every[rid]:
            has = ", ".join(every[rid]) or "none"
            missing[rid] = f"run {rid}: skipped: no analysis {aid} (its analyses: {has})"
            continue
        try:
            rows.append(_row(run, aid, by, short_name(run)))
        except (KMAError, KeyError, ValueError, TypeError, OSError) as e:
            skipped[rid] = f"run {rid}: skipped: its analysis cannot be read ({type(e).__name__}: {str(e)[:150]})"
    if not rows:
        raise _nothing(store, aid, skipped)
    return rows


def _did_you_mean(by: str, keys: list[str]) -> str:
    """``" (did you mean lr?)"`` for ``optim.lr``: a key whose last part is a known key."""
    import difflib

    tail = by.rsplit(".", 1)[-1]
    close = [k for k in keys if k == tail or k.rsplit(".", 1)[-1] == tail] or difflib.get_close_matches(by, keys, 1)
    return f" (did you mean {close[0]}?)" if close else ""


def _nothing(store, analysis_id, skipped) -> KMAError:
    return KMAError(f"no finished runs{' with analysis ' + analysis_id if analysis_id else ''} in {store.url}"
                    + (f" ({len(skipped)} skipped: {next(iter(skipped.values()))})" if skipped else ""))


def _last(values):
    vals = [v for v in (values or []) if v is not None]
    return float(vals[-1]) if vals else float("nan")


def _row(run, aid: str, by: str, label: str) -> dict:
    from ..apps import verdicts
    from ..spectra import RunSpectra

    info = run.analysis_info(aid)
    key = info.get("params", {})
    tol = float(key.get("residual_tol", RELIABLE_RESIDUAL))
    results = load_results(run, aid)
    spectra = RunSpectra.of_run(run, results, residual_tol=tol, analysis_id=aid, label=label)
    verdict = info.get("verdict") or verdicts.for_stored(run, results, tol)  # stored with the analysis
    row = {
        "run_id": run.run_id,
        "group": str(_flat_config(run).get(by, "-")),
        "status": run.status,
        "train_loss": _last(run.metrics.get("train_loss")),
        "val_loss": _last(run.metrics.get("val_loss")),
        "val_accuracy": _last(run.metrics.get("val_accuracy")),
        "analysis_id": aid,
        "residual_tol": tol,
        "spectra": spectra,
        "verdict": verdict,
        "converged": verdicts.cell(verdict),
        "bad_init": verdicts.bad_init_cell(verdict),
    }
    whole = spectra.rows("all")
    if whole:
        i = whole[-1]
        ok = spectra.reliable[i]
        lam = spectra.results[i].eigenvalues[ok]
        row.update(
            n_reliable=int(ok.sum()),
            max_abs_reliable=float(np.abs(lam).max()) if lam.size else float("nan"),
            min_dist_to_1=float(np.abs(lam - 1).min()) if lam.size else float("nan"),
        )
    return row


COLUMNS = ["group", "run_id", "status", "train_loss", "val_loss", "val_accuracy", "n_reliable",
           "max_abs_reliable", "min_dist_to_1", "converged", "bad_init"]
VERDICT_COLUMNS = ("converged", "bad_init")   # text cells; a group row counts them


def _group_order(values):
    """Group values in natural order: numbers by value, then the rest by name."""
    def key(v):
        try:
            return (0, float(v), "")
        except ValueError:
            return (1, 0.0, v)
    return sorted(set(values), key=key)


JUSTIFY = {c.upper(): "right" for c in COLUMNS[3:]}


def table_data(rows: list[dict], by: str = "") -> tuple[str, list[str], list[list[str]]]:
    """(title, column headers, cells) of the comparison: the title names the analysis and
    the grouping; a row per run, then a mean row per group."""
    cols = COLUMNS

    def fmt(v):
        if isinstance(v, float):
            return "-" if np.isnan(v) else f"{v:.4g}"
        return "-" if v is None else str(v)

    order = {g: i for i, g in enumerate(_group_order(r["group"] for r in rows))}
    data = [[fmt(r.get(c)) for c in cols] for r in sorted(rows, key=lambda r: (order[r["group"]], r["run_id"]))]
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(r["group"], []).append(r)
    for g in sorted(groups, key=order.get):
        rs = groups[g]
        mean = [g, f"(mean of {len(rs)})", ""] + [
            _count(rs, c) if c in VERDICT_COLUMNS else
            fmt(float(np.nanmean([r.get(c, np.nan) for r in rs])) if any(np.isfinite(r.get(c, np.nan)) for r in rs) else np.nan)
            for c in cols[3:]
        ]
        data.append(mean)
    aids = sorted({str(r["analysis_id"]) for r in rows})
    head = f"analysis {', '.join(aids)} · {plural(len(rows), 'run')}" + (f" by {by}" if by else "")
    return head, [c.upper() for c in cols], data


def table(rows: list[dict], by: str = "") -> str:
    """The comparison as plain text (``table.txt``): :func:`table_data`'s title line,
    then the columns."""
    from ..console import table_text

    head, cols, data = table_data(rows, by)
    return head + "\n" + table_text(cols, data, justify=JUSTIFY)


def _count(rows: list[dict], col: str) -> str:
    """A group's verdict cell: ``k/n`` runs converged (or judged bad inits); ``-`` when
    none was assessed."""
    if col == "converged":
        return f"{sum((r.get('verdict') or {}).get('converged_at') is not None for r in rows)}/{len(rows)}"
    vals = [(r.get("verdict") or {}).get("bad_init") for r in rows]
    return "-" if all(v is None for v in vals) else f"{sum(bool(v) for v in vals)}/{len(rows)}"


def folder(out: str | Path, rows: list[dict], by: str) -> Path:
    """``<out>/<by>-<analysis_id>-<8 hex digits of the sorted run ids>``: one folder per
    comparison, so comparing other runs, by another key or another analysis never
    overwrites an earlier comparison."""
    digest = hashlib.sha256("\n".join(sorted(r["run_id"] for r in rows)).encode()).hexdigest()[:8]
    safe_by = "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in by)
    return Path(out) / f"{safe_by}-{rows[0]['analysis_id']}-{digest}"


def groups(rows: list[dict]) -> dict[str, list]:
    """``{group value: [RunSpectra, ...]}`` in natural group order, runs by id."""
    out = {}
    for g in _group_order(r["group"] for r in rows):
        out[g] = [r["spectra"] for r in sorted(rows, key=lambda r: r["run_id"]) if r["group"] == g]
    return out


def dynamics(rows: list[dict], alpha: float = 0.05, n_perm: int = 999, seed: int = 0) -> dict:
    """The ``dynamics`` section of ``kma compare --json``: distances between the runs'
    training dynamics from their certified spectra and, per pair of groups, the
    seed-to-seed permutation test (:mod:`pipeline.apps.dynamics`). Runs in group order,
    then by id; groups named as in the table."""
    from ..apps import dynamics as dyn

    order = _group_order(r["group"] for r in rows)
    ranked = sorted(rows, key=lambda r: (order.index(r["group"]), r["run_id"]))
    return dyn.section([r["run_id"] for r in ranked], [r["group"] for r in ranked],
                       [r["spectra"] for r in ranked], order=order, alpha=alpha, n_perm=n_perm, seed=seed,
                       residual_tol=float(ranked[0].get("residual_tol", RELIABLE_RESIDUAL)))


def json_report(rows: list[dict], by: str, section: dict) -> dict:
    """``kma compare --json``: ``{"by", "analysis_id", "rows": [table row per run],
    "dynamics": section}`` (NaN cells as null)."""
    def cell(v):
        if isinstance(v, (float, np.floating)):
            return None if not np.isfinite(v) else float(v)
        return v if v is None or isinstance(v, (str, int, bool)) else str(v)

    table_rows = [{c: cell(r.get(c)) for c in COLUMNS} for r in sorted(rows, key=lambda r: r["run_id"])]
    return {"by": by, "analysis_id": rows[0]["analysis_id"], "rows": table_rows, "dynamics": section}


def figures(rows: list[dict], out: Path, by: str, section: dict | None = None) -> list[Path]:
    """``group_spectrum.png`` (Ritz values per group on the unit circle, coloured by
    position in training) and ``group_moduli.png`` (largest certified |λ| and distance to
    1 over training, a line per run), written into ``out``; both titles name the analysis.
    With the dynamics ``section`` also ``dynamics_matrix.png`` and ``dynamics_mds.png``
    (:mod:`pipeline.apps.dynamics_plots`)."""
    from .. import plots

    from ..apps import dynamics_plots, verdict_plots

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    g = groups(rows)
    order = _group_order(r["group"] for r in rows)
    vg = {k: [(r["spectra"].label, r["verdict"]) for r in sorted(rows, key=lambda r: r["run_id"])
              if r["group"] == k] for k in order}
    files = [plots.save(plots.group_spectrum_figure(g, by=by), out / "group_spectrum.png"),
             plots.save(plots.group_moduli_figure(g, by=by), out / "group_moduli.png"),
             verdict_plots.save_group_figure(vg, out / "group_convergence.png", by=by,
                                             analysis_id=rows[0]["analysis_id"])]
    if section is not None:
        files += dynamics_plots.save_figures(section, out, by=by, analysis_id=rows[0]["analysis_id"])
    return files


def experiment_of(store: TrajectoryStore, rows: list[dict]) -> str:
    """``<sweep>-comparisons`` when all compared runs come from one sweep, else
    ``kma-compare``: comparison records kept apart from the sweep's training runs, so its
    runs table holds one row per variant and nothing else."""
    sweeps = {store.open_run(r["run_id"]).attrs.get("sweep") for r in rows}
    return f"{sweeps.pop()}-comparisons" if len(sweeps) == 1 and None not in sweeps else "kma-compare"


def register(tracker, experiment: str, rows: list[dict], by: str, out: Path, files: list[Path],
             store: str) -> str:
    """Log the comparison as an MLflow run named ``compare <by> <analysis id>`` in
    ``experiment``: params (by, analysis id, run count), tags (``kma.kind=comparison``,
    the compared run ids) and ``files`` (the table and the figures) as artifacts. An
    earlier record of the same comparison (same folder name, same store) is replaced."""
    from ..tracking.tracker import TAG_ANALYSIS, TAG_KIND, TAG_STORE, quote_filter_value

    aid = rows[0]["analysis_id"]
    exp_id = tracker.experiment_id(experiment)
    flt = (f"tags.`{TAG_KIND}` = 'comparison' and tags.`kma.comparison` = '{out.name}'"
           f" and tags.`{TAG_STORE}` = '{quote_filter_value(store)}'")
    for old in tracker.client.search_runs([exp_id], filter_string=flt, max_results=1000):
        tracker.client.delete_run(old.info.run_id)
    ids = sorted(r["run_id"] for r in rows)
    run = tracker.client.create_run(exp_id, run_name=f"compare {by} {aid}", tags={
        TAG_KIND: "comparison", TAG_ANALYSIS: aid, TAG_STORE: store, "kma.comparison": out.name,
        "kma.by": by, "kma.runs": ",".join(ids)[:5000]})
    rid = run.info.run_id
    tracker.log_params(rid, {"by": by, "analysis_id": aid, "n_runs": len(rows),
                             "n_groups": len({r["group"] for r in rows})})
    for path in files:
        tracker.client.log_artifact(rid, str(path))
    tracker.client.set_terminated(rid, "FINISHED")
    log.info("comparison %s registered in MLflow experiment %s as %s", out.name, experiment, rid)
    return rid


# ------------------------------------------------------------------ no silent mixing
BUDGET_KEYS = ("epochs", "batch_size")   # with every task.* and snapshot.* key: what a mean must not mix


def mixed_keys(store: TrajectoryStore, rows: list[dict], by: str) -> dict[str, list[str]]:
    """The training budget and task keys (``epochs``, ``batch_size``, ``task.*``,
    ``snapshot.*``) whose values differ among the compared runs, ``{key: [values]}``
    (``by`` itself excepted: differing there is the comparison)."""
    seen: dict[str, set] = {}
    for r in rows:
        for k, v in _flat_config(store.open_run(r["run_id"])).items():
            if k != by and (k in BUDGET_KEYS or k.startswith(("task.", "snapshot."))):
                seen.setdefault(k, set()).add(str(v))
    return {k: sorted(vs, key=lambda s: (len(s), s)) for k, vs in sorted(seen.items()) if len(vs) > 1}


def check_not_mixed(store: TrajectoryStore, rows: list[dict], by: str, allow: bool, console=None) -> None:
    """Refuse (KMAError) to average runs trained with different budgets or on different
    tasks into one group mean, naming what differs; ``allow`` (``--allow-mixed``) turns
    the refusal into a warning."""
    mixed = mixed_keys(store, rows, by)
    if not mixed:
        return
    what = "; ".join(f"{k}: {', '.join(v[:6])}{' …' if len(v) > 6 else ''}" for k, v in mixed.items())
    if not allow:
        raise KMAError(f"these runs differ in budget or task ({what}): their group means would mix them; "
                       "compare one setting at a time (--sweep NAME, --run ID), group by it "
                       f"(--by {next(iter(mixed))}), or pass --allow-mixed")
    if console is not None:
        console.error(f"kma: warning: group means mix runs that differ in budget or task ({what})")
