"""Group figures at a real store's run count and at N synthetic runs made from its runs (perturbed
spectra and verdicts; groups kaiming / orthogonal / xavier / small_variance), to look at them:

    python jobs/experiments/group_figures.py STORE OUT_DIR N   # N <= the store's runs: the real ones
"""
import copy, sys
from pathlib import Path
import numpy as np
from pipeline.storage.store import TrajectoryStore
from pipeline.workflows import compare
from pipeline.spectra import RunSpectra
from pipeline.koopman import WindowResult

store, out, n = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
rows = sorted(compare.collect(TrajectoryStore(store, read_only=True), by="init"), key=lambda r: r["group"])
if n > len(rows):
    rng = np.random.default_rng(0)
    groups = {"kaiming": 0.6, "orthogonal": 0.4, "xavier": 0.25, "small_variance": 0.0}
    new = []
    for k in range(n):
        g = list(groups)[k % 4]
        src = rows[k % 2] if g != "small_variance" else rows[2 + k % 2]
        sp = src["spectra"]
        res = []
        masks = []
        for r, m in zip(sp.results, sp.reliable):
            lam = 1 + (r.eigenvalues - 1) * np.exp(rng.normal(0, 0.4)) * np.exp(1j * rng.normal(0, 0.1))
            res.append(WindowResult(r.layer, r.window, lam, r.amplitudes, r.residuals, r.singular_values, r.rank))
            flip = rng.random(lam.size) < 0.15 * (g != "small_variance")
            masks.append(np.asarray(m, bool) ^ flip)
        sp2 = RunSpectra(f"{g}-{k}", res, masks, sp.end, sp.total, sp.analysis_id, sp.criterion, sp.start)
        v = copy.deepcopy(src["verdict"])
        conv = rng.random() < groups[g]
        ep = v["window_epochs"]
        if conv:
            j = int(rng.integers(2, len(ep)))
            v["converged_at"], v["converged_epoch"], v["class"] = j, ep[j], "converged"
            for i in range(len(ep)):
                v["window_checks"][i][2] = i >= j - 1
        else:
            v["converged_at"] = v["converged_epoch"] = None
            v["class"] = str(rng.choice(["still_improving", "stalled"]))
        ev = v.get("evidence") or {}
        if ev.get("share_at_1"):
            base = {"kaiming": 0.0, "orthogonal": -0.15, "xavier": -0.3, "small_variance": -1}[g]
            ev["share_at_1"] = [float(np.clip(x + base + rng.normal(0, 0.12), 0, 1)) for x in ev["share_at_1"]]
        v["bad_init"] = bool(g == "small_variance" and rng.random() < 0.5)
        new.append({**src, "run_id": f"r{k:03d}-{g}", "group": g, "spectra": sp2, "verdict": v})
    rows = new
out.mkdir(parents=True, exist_ok=True)
print(compare.figures(rows, out, by="init"))
