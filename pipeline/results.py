"""Stored analyses read back: which analyses a run holds (current, or made by an older
engine), and a stored analysis' windows as :class:`~pipeline.koopman.WindowResult` rows.

What ``kma analyze`` writes (:mod:`pipeline.workflows.analyze`), ``kma sync``, ``kma compare``,
``kma runs`` and the verdicts read here: the store's per-run analysis verbs
(:class:`~pipeline.storage.analyses.RunAnalyses`) turned into the engine's results.
"""

from __future__ import annotations

import numpy as np

from .koopman import ENGINE_VERSION, WindowResult
from .koopman.core import unit_circle_verdicts
from .storage.store import Run


def is_outdated(params: dict) -> bool:
    """A stored analysis' ``params`` come from an older engine (no ``engine`` key: 1)."""
    return int(params.get("engine", 1)) < ENGINE_VERSION


def load_results(run: Run, analysis_id: str) -> list[WindowResult]:
    """Read back a stored analysis as :class:`WindowResult` rows."""
    attrs, layers = run.read_analysis(analysis_id)   # StoreError (a KMAError) if absent
    out = []
    for layer in attrs["layers"]:
        a = layers[layer]
        eig, amp, res, sv = (a[k] for k in ("eigenvalues", "amplitudes", "residuals", "singular_values"))
        floors, kap, info = (a.get(k) for k in ("residual_floors", "conditions", "informative"))
        mis, lim = a.get("misfit"), a.get("misfit_limit")            # engine >= 4
        factors = (attrs.get("factors") or {}).get(layer)
        for i, (w, k) in enumerate(zip(a["windows"], a["rank"])):
            n = int(np.isfinite(res[i]).sum())
            lam = eig[i, :n, 0] + 1j * eig[i, :n, 1]
            extra = {}
            if kap is not None:      # engine >= 2 (older analyses: residuals only)
                extra = dict(residual_floors=floors[i, :n], conditions=kap[i, :n],
                             unit_circle=unit_circle_verdicts(lam, kap[i, :n] * res[i, :n]),
                             informative=bool(info[i]))
            if mis is not None and np.isfinite(mis[i]):
                extra.update(misfit=float(mis[i]), misfit_limit=float(lim[i]))
            if factors:
                extra["factor"] = str(factors[i])
            out.append(WindowResult(
                layer, (int(w[0]), int(w[1])), lam, amp[i, :n, 0] + 1j * amp[i, :n, 1],
                res[i, :n], sv[i][np.isfinite(sv[i])], int(k), **extra))
    return out


def list_analyses(run: Run, *, outdated: bool = True) -> list[str]:
    """Ids of the run's completely written analyses (an interrupted one is not listed);
    ``outdated=False`` leaves out those of an older engine (:func:`is_outdated`)."""
    return [aid for aid, key in run.list_analyses().items() if outdated or not is_outdated(key)]


def outdated_analyses(run: Run) -> list[str]:
    """Complete analyses of the run made by an older engine: kept, listed as outdated;
    ``kma analyze`` with the same options stores a current one beside them."""
    return [aid for aid, key in run.list_analyses().items() if is_outdated(key)]
