"""Sweep configuration: a validated schema, grid expansion and stable run ids.

A sweep YAML describes a grid; :func:`expand` turns it into :class:`Variant` objects,
each a fully resolved, scalar configuration. A variant's run id is derived from its
resolved content, so the same sweep always maps to the same run ids and a re-run finds
its earlier results.

Every model forbids unknown keys: a typo is an error naming its path
(``model.widht: unknown key``), never a silently ignored value.

One concept per module; every name is re-exported here, so ``from pipeline.config
import X`` works whichever module defines ``X``:

- :mod:`.base` — the strict base model and the grid field types (``IntGrid``, ...);
- :mod:`.tasks` — the training tasks (``MultiscaleTask``, ``DigitsTask``, ``BlobsTask``);
- :mod:`.losses` — loss values, specs (``SobolevLossSpec``), names and labels;
- :mod:`.grids` — the network and optimizer grids (``ModelGrid``, ``OptimizerGrid``);
- :mod:`.analysis` — ``AnalysisParams`` (YAML and CLI) and ``RELIABLE_RESIDUAL``;
- :mod:`.policies` — snapshots, resources, stopping, bad inits, prune, accelerate;
- :mod:`.sweep` — ``SweepConfig``, ``Variant``, the identity rule, ``expand``, params;
- :mod:`.loading` — ``load``/``validate``, overrides, error messages, name checks.
"""

# Every name is imported from its module on first use (PEP 562), so that importing one
# model (``from pipeline.config import AnalysisParams``, as ``kma analyze`` does) loads its
# module only and not every schema of the package. The private names are re-exported too
# (a pure move: nothing that imported them breaks).
import importlib as _importlib

_HOME = {
    **dict.fromkeys(('FloatGrid', 'IntGrid', 'NameGrid', '_as_list', '_grid_check', '_is_kind', '_KIND_NAMES', '_show', '_Strict'), "base"),
    **dict.fromkeys(('BlobsTask', 'DigitsTask', 'MultiscaleTask', 'TaskConfig'), "tasks"),
    **dict.fromkeys(('GRID_LOSSES', 'GRID_TASKS', 'LOSS_SPECS', 'LossGrid', 'LossSpec', 'LossValue', 'SobolevLossSpec', '_loss_entry', '_loss_grid_check', 'loss_label', 'loss_name'), "losses"),
    **dict.fromkeys(('ModelGrid', 'OptimizerGrid'), "grids"),
    **dict.fromkeys(('_RANK_ARGS', 'RELIABLE_RESIDUAL', 'AnalysisParams'), "analysis"),
    **dict.fromkeys(('AccelerateConfig', 'FreezeConfig', 'OnBadInit', 'PruneConfig', 'Resources', 'SnapshotPolicy', 'StopPolicy'), "policies"),
    **dict.fromkeys(('EXECUTION_ONLY', 'MAX_GRID', 'MAX_NAME', 'MAX_SEEDS', 'SweepConfig', 'Variant', '_axes', 'expand', 'flatten_dict', 'grid_size', 'identity', 'resolved_dict', 'variant_params'), "sweep"),
    **dict.fromkeys(('_TAGS', '_TYPE_ERRORS', '_check_axes', '_check_finite', '_check_grid_losses', '_format_error', '_is_tag', '_merge', 'check_names', 'load', 'parse_overrides', 'validate'), "loading"),
}


def __getattr__(name):
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(_importlib.import_module(f".{home}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_HOME))


# the public names are the table's: a name is added once, to _HOME
__all__ = sorted(n for n in _HOME if not n.startswith("_"))
