"""Import an ordered series of checkpoints (state_dicts) as a stored run.

The forms (PyTorch files, ``.safetensors``, Lightning ``.ckpt``, Hugging Face
``checkpoint-*/`` folders, sharded or not) and their order are read by
:mod:`.checkpoints`; a series is one form, and nothing pickled is loaded beyond what
``torch.load(weights_only=True)`` allows. Every checkpoint must hold the same
floating-point tensors with the same shapes, with finite
values that the storage dtype can hold (``float16`` stops at 65504). All files are
checked first — the run id, then every file's keys, shapes and values (memory-mapped;
this reads each file once more than the write does) — and only then is the store
opened, so a bad series never leaves a half-written run behind or touches what is
already stored. While it writes, the ingest holds the run's lease
(:mod:`pipeline.storage.lease`), so ``kma runs`` shows it ``running``, not ``interrupted``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from ..errors import KMAError, plural
from ..storage.layout import Layout
from ..storage.runids import check_run_id
from ..storage.store import FINISHED, TrajectoryStore
from .checkpoints import Checkpoint, describe, discover

_FLOAT16_MAX = 65504.0

def ingest(
    files: Sequence[str | Path],
    store_url: str,
    run_id: str,
    *,
    layers: Sequence[str] | None = None,
    dtype: str = "float32",
    overwrite: bool = False,
) -> dict:
    """Write the checkpoints ``files`` stand for (files, or HF folders; see
    :mod:`.checkpoints` for the order) as snapshots of run ``run_id``."""
    if not files:
        raise KMAError("ingest: no checkpoint files given")
    check_run_id(run_id, what="--run-id")
    found = discover(files)
    first = found[0].load()  # validate every checkpoint before the store is even opened
    try:
        layout = Layout.from_state_dict(first, layers)
    except KMAError as e:
        raise KMAError(f"{found[0].path}: {e}") from None
    if layout.size == 0:
        raise KMAError(f"{found[0].path}: no floating-point tensors to ingest")
    _check_values(layout, first, found[0].path, 0, dtype)
    for i, c in enumerate(found[1:], start=1):
        state = c.load()
        _check_same(layout, state, c.path, found[0].path)
        _check_values(layout, state, c.path, i, dtype)

    from ..storage.lease import LeaseKeeper

    store = TrajectoryStore(store_url)
    store.check_writable()
    if store.status(run_id) in FINISHED and not overwrite:
        raise KMAError(f"run {run_id}: already in {store_url} (pass --overwrite to replace it)")
    with LeaseKeeper(store, "ingested") as leases:
        holder = leases.claim(run_id)
        if holder is not None:
            raise KMAError(f"run {run_id}: being written by {holder.describe()}; try again later")
        return _write(store, found, first, layout, run_id, layers, dtype, overwrite)


def _write(store, found: list[Checkpoint], first, layout, run_id, layers, dtype, overwrite) -> dict:
    if overwrite:
        store.delete_run(run_id)
    writer = store.create_run(
        run_id,
        layout,
        config={"source": "ingest", "form": found[0].form, "files": [str(c.path) for c in found],
                "layers": list(layers or [])},
        capacity=len(found),
        dtype=dtype,
        extra={"sweep": "ingested"},
    )
    try:
        for i, c in enumerate(found):
            state = first if i == 0 else c.load()
            writer.append(layout.flatten(state).float().contiguous(), epoch=i, step=i if c.step is None else c.step)
    except BaseException as e:
        writer.abort(f"ingest interrupted: {type(e).__name__}")
        store.delete_run(run_id)
        if isinstance(e, KMAError):
            raise
        raise KMAError(f"ingest of {run_id} failed ({type(e).__name__}: {e})") from None
    writer.finish("complete")
    return {"run_id": run_id, "n_snapshots": len(found), "n_parameters": layout.size, "form": found[0].form,
            "read": describe(found)}


def _check_values(layout: Layout, state, path: Path, index: int, dtype: str) -> None:
    """Every value finite, and representable in the storage ``dtype``."""
    import torch

    for e in layout.entries:
        t = state[e.name]
        if not torch.isfinite(t).all():
            n = int((~torch.isfinite(t)).sum())
            raise KMAError(f"{path}: snapshot {index}: key {e.name!r} has {plural(n, 'NaN or infinite value')}")
        if t.dtype == torch.float64 and not torch.isfinite(t.float()).all():
            raise KMAError(f"{path}: snapshot {index}: key {e.name!r} overflows float32")
        if dtype == "float16" and t.numel():
            peak = float(t.detach().abs().max())
            if peak > _FLOAT16_MAX:
                raise KMAError(f"{path}: snapshot {index}: key {e.name!r} has |value| up to {peak:.6g}, "
                               f"beyond float16's {_FLOAT16_MAX:g} (use --dtype float32 or bfloat16)")
        if dtype == "bfloat16" and t.numel() and not torch.isfinite(t.to(torch.bfloat16)).all():
            raise KMAError(f"{path}: snapshot {index}: key {e.name!r} overflows bfloat16 (use --dtype float32)")


def _check_same(layout: Layout, state, path: Path, first: Path) -> None:
    for e in layout.entries:
        if e.name not in state:
            raise KMAError(f"{path}: missing key {e.name!r} that the first checkpoint has")
        shape = tuple(state[e.name].shape)
        if shape != e.shape:
            raise KMAError(f"{path}: key {e.name!r} has shape {shape}, {first} has {e.shape}")
