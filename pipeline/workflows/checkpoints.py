"""Read the common checkpoint forms as state_dicts, never running pickled code.

Four forms, one per ingested run:

- ``pytorch``: a ``torch.save`` file (``.pt``, ``.pth``, ``.bin``, any other name) holding
  a state_dict, or a mapping with one under ``state_dict`` / ``model_state_dict`` / ``model``;
- ``safetensors``: a ``.safetensors`` file (no pickle at all);
- ``lightning``: a PyTorch Lightning ``.ckpt``: its ``state_dict``, with the ``model.``
  prefix dropped when every key has it (a LightningModule holding ``self.model``), so
  layer names match the bare model's;
- ``hf``: a Hugging Face folder (``checkpoint-<step>/`` of the Trainer, or a
  ``save_pretrained`` folder) holding ``model.safetensors`` or ``pytorch_model.bin``, or
  their sharded form (``model.safetensors.index.json`` / ``pytorch_model.bin.index.json``
  and the shards it names). A folder holding ``checkpoint-*/`` folders stands for them.

Pickled files are read with ``torch.load(weights_only=True)`` only: tensors, plain
containers and numbers. A file carrying any other object (a class whose unpickling would
run code) is refused, naming the objects; nothing of it is executed. A Lightning 2.x
``.ckpt`` needs nothing more: its hyper-parameters, loop and callback states are plain
containers.

Order: the files and folders as given, except that Hugging Face folders and Lightning
``.ckpt`` files, which record their global step, are ordered by it (a shell's
``checkpoint-*`` puts ``checkpoint-1000`` before ``checkpoint-500``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ..errors import KMAError, plural

FORM_NAMES = {  # form: (one, many)
    "pytorch": ("PyTorch file", "PyTorch files"),
    "safetensors": (".safetensors file", ".safetensors files"),
    "lightning": ("Lightning .ckpt file", "Lightning .ckpt files"),
    "hf": ("Hugging Face checkpoint folder", "Hugging Face checkpoint folders"),
}
_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model")
_HF_FILES = (  # (file, sharded?) in the order transformers prefers them
    ("model.safetensors.index.json", True),
    ("model.safetensors", False),
    ("pytorch_model.bin.index.json", True),
    ("pytorch_model.bin", False),
)
_STEP_DIR = re.compile(r"checkpoint-(\d+)")
_SHARD = re.compile(r"-\d{5}-of-\d{5}\.(safetensors|bin)$")


@dataclass(frozen=True)
class Checkpoint:
    """One snapshot's source: ``path`` (a file, or an HF folder), its ``form``, and the
    global ``step`` the form records (``None`` where it records none)."""

    path: Path
    form: str
    step: int | None = None

    def load(self) -> dict:
        """The state_dict ``{name: tensor}`` (CPU)."""
        if self.form == "safetensors":
            return _safetensors(self.path)
        if self.form == "hf":
            return _hf_folder(self.path)
        obj = _torch_load(self.path)
        if self.form == "lightning":
            return _lightning_state(self.path, obj)
        return _unwrap(self.path, obj)


def discover(paths: Sequence[str | Path]) -> list[Checkpoint]:
    """The checkpoints ``paths`` stand for (an HF output folder: its ``checkpoint-*``
    folders), all of one form, in snapshot order (:func:`in_step_order`). Only a
    Lightning file's step is read from the file (memory-mapped: its pickle, not its
    tensors); nothing else but names."""
    found: list[Checkpoint] = []
    for p in map(Path, paths):
        found.extend(_classify(p))
    forms = {c.form for c in found}
    if len(forms) > 1:
        counts = [plural(sum(c.form == f for c in found), *FORM_NAMES[f]) for f in FORM_NAMES if f in forms]
        raise KMAError(f"ingest: mixed checkpoint forms ({', '.join(counts)}); a run is one series of one form")
    if forms == {"lightning"}:
        found = [Checkpoint(c.path, c.form, _lightning_step(_torch_load(c.path))) for c in found]
    return [found[i] for i in in_step_order(found, [c.step for c in found])]


def _classify(p: Path) -> list[Checkpoint]:
    if p.is_dir():
        if _hf_model_file(p) is not None:
            return [Checkpoint(p, "hf", _hf_step(p))]
        subs = [d for d in p.iterdir() if d.is_dir() and _STEP_DIR.fullmatch(d.name)]
        for d in subs:
            if _hf_model_file(d) is None:
                raise KMAError(f"{d}: no {', '.join(f for f, _ in _HF_FILES)} in this checkpoint folder")
        if subs:
            return [Checkpoint(d, "hf", _hf_step(d)) for d in sorted(subs)]
        raise KMAError(f"{p}: a folder without a Hugging Face checkpoint (no {', '.join(f for f, _ in _HF_FILES)}, "
                       f"no checkpoint-<step> folders)")
    if not p.is_file():
        raise KMAError(f"{p}: no such checkpoint file")
    if _SHARD.search(p.name):
        raise KMAError(f"{p}: one shard of a sharded checkpoint; give the folder holding it and its index")
    suffix = p.suffix.lower()
    form = {".safetensors": "safetensors", ".ckpt": "lightning"}.get(suffix, "pytorch")
    return [Checkpoint(p, form)]


def in_step_order(found: Sequence[Checkpoint], steps: Sequence[int | None]) -> list[int]:
    """Snapshot order: indices into ``found`` by global step when every checkpoint
    records one (HF folders, Lightning files), else as given. One step twice (a
    ``last.ckpt`` beside its epoch's file, a folder given twice) is refused."""
    if any(s is None for s in steps):
        return list(range(len(found)))
    seen: dict[int, int] = {}
    for i, s in enumerate(steps):
        if s in seen:
            raise KMAError(f"{found[i].path}: global step {s} again (also {found[seen[s]].path}); give each step once")
        seen[s] = i
    return [seen[s] for s in sorted(seen)]


# -- Hugging Face folders -----------------------------------------------------------------
def _hf_model_file(folder: Path) -> tuple[Path, bool] | None:
    for name, sharded in _HF_FILES:
        if (folder / name).is_file():
            return folder / name, sharded
    return None


def _hf_step(folder: Path) -> int | None:
    m = _STEP_DIR.fullmatch(folder.name)
    if m:
        return int(m.group(1))
    state = folder / "trainer_state.json"
    if state.is_file():
        try:
            step = json.loads(state.read_text()).get("global_step")
        except (OSError, ValueError, AttributeError):
            return None
        return step if isinstance(step, int) else None
    return None


def _hf_folder(folder: Path) -> dict:
    found = _hf_model_file(folder)
    if found is None:
        raise KMAError(f"{folder}: its model file is gone")
    path, sharded = found
    if not sharded:
        return _safetensors(path) if path.suffix == ".safetensors" else _unwrap(path, _torch_load(path))
    try:
        weight_map = json.loads(path.read_text())["weight_map"]
        if not isinstance(weight_map, dict) or not weight_map:
            raise TypeError
    except (OSError, ValueError, KeyError, TypeError):
        raise KMAError(f"{path}: not a readable shard index (expected a non-empty 'weight_map')") from None
    shards: dict[str, list[str]] = {}
    for name, shard in weight_map.items():
        if not isinstance(shard, str) or Path(shard).name != shard or shard in ("", ".", ".."):
            raise KMAError(f"{path}: key {name!r} names shard {shard!r}, not a file name in {folder}")
        shards.setdefault(shard, []).append(name)
    state: dict = {}
    for shard, names in shards.items():
        f = folder / shard
        if not f.is_file():
            raise KMAError(f"{path}: shard {shard} is missing")
        part = _safetensors(f) if shard.endswith(".safetensors") else _unwrap(f, _torch_load(f))
        missing = [n for n in names if n not in part]
        if missing:
            raise KMAError(f"{f}: lacks {plural(len(missing), 'key')} the index puts there (first: {missing[0]!r})")
        state.update((n, part[n]) for n in names)
    return state


# -- files ------------------------------------------------------------------------------
def _safetensors(path: Path) -> dict:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise KMAError(f"{path}: not a readable safetensors file ({_first_line(e)})") from None
    if not state:
        raise KMAError(f"{path}: holds no tensors")
    return state


def _torch_load(path: Path):
    """``torch.load(weights_only=True)``: tensors and plain containers only; anything
    else is refused (:func:`_refused`), never unpickled."""
    import pickle
    import warnings

    import torch

    with warnings.catch_warnings():  # a plain pickle's protocol: the refusal says enough
        warnings.filterwarnings("ignore", message="Detected pickle protocol")
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except pickle.UnpicklingError as e:
            raise _refused(path, e) from None
        except Exception:  # noqa: BLE001 - the legacy (non-zip) format cannot be memory-mapped
            pass
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            raise _refused(path, e) from None
        except Exception as e:  # noqa: BLE001 - unreadable, truncated, or not a checkpoint
            raise KMAError(f"{path}: not a readable PyTorch checkpoint ({type(e).__name__})") from None


def _refused(path: Path, error: Exception) -> KMAError:
    """The refusal of a pickle ``torch.load(weights_only=True)`` would not load: the
    objects it carries beyond tensors and containers, read without running anything."""
    names = _unsafe_globals(path, str(error))
    if not names:
        return KMAError(f"{path}: not a readable PyTorch checkpoint (UnpicklingError)")
    return KMAError(f"{path}: refused: it carries pickled objects beyond tensors and plain containers "
                    f"({', '.join(names[:3])}{', ...' if len(names) > 3 else ''}); nothing in it was run "
                    f"(save the state_dict alone, or as .safetensors)")


def _unsafe_globals(path: Path, message: str) -> list[str]:
    import torch

    try:  # reads the pickle's opcodes (zip format); executes nothing
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        if names:
            return list(names)
    except Exception:  # noqa: BLE001 - the legacy format or a plain pickle
        pass
    names = re.findall(r"Unsupported global: GLOBAL (\S+)", message)
    if names:
        return names
    try:  # what weights-only loading admits (private in torch 2.13; without it, name all)
        from torch._weights_only_unpickler import _get_allowed_globals

        allowed = set(_get_allowed_globals())
    except Exception:  # noqa: BLE001
        allowed = set()
    return [n for n in _pickle_globals(path) if n not in allowed and not n.startswith("torch._utils._rebuild")]


def _pickle_globals(path: Path, limit: int = 1_000_000) -> list[str]:
    """Globals a plain pickle names, from its opcodes (:mod:`pickletools` parses, it
    does not execute); empty when the file is no pickle."""
    import pickletools

    names: list[str] = []
    strings: list[str] = []
    try:
        with open(path, "rb") as f:
            for n, (op, arg, _) in enumerate(pickletools.genops(f)):
                if n > limit:
                    break
                if op.name == "GLOBAL":
                    names.append(str(arg).replace(" ", "."))
                elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                    names.append(".".join(strings[-2:]))
                elif isinstance(arg, str):
                    strings.append(arg)
    except Exception:  # noqa: BLE001 - not a pickle, or truncated: no names
        return names
    return list(dict.fromkeys(names))


def _unwrap(path: Path, obj) -> dict:
    if isinstance(obj, dict):
        for key in _WRAPPER_KEYS:
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj:
        raise KMAError(f"{path}: expected a state_dict (a mapping of names to tensors)")
    return obj


# -- Lightning --------------------------------------------------------------------------
def _lightning_state(path: Path, obj) -> dict:
    state = obj.get("state_dict") if isinstance(obj, dict) else None
    if not isinstance(state, dict) or not state:
        raise KMAError(f"{path}: a .ckpt without a 'state_dict' (not a Lightning checkpoint)")
    # the LightningModule's own names (``model.`` kept): the names KMACallback records for
    # the same fit live, so a fit recorded and the same fit ingested have the same layers
    return state


def _lightning_step(obj) -> int | None:
    step = obj.get("global_step") if isinstance(obj, dict) else None
    return step if isinstance(step, int) and not isinstance(step, bool) else None


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def describe(found: Sequence[Checkpoint]) -> str:
    """``"3 Hugging Face checkpoint folders"``: what an ingest read."""
    return plural(len(found), *FORM_NAMES[found[0].form]) if found else "nothing"
