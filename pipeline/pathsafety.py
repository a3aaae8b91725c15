"""What a command must never touch: files outside a store reached through a link, and a
store's own files named as an output.

:func:`local_link` finds a symbolic link on the way into, or anywhere under, a run's
folder of a local store (a link can point out of the store: listing and deleting through
it would delete files elsewhere). :func:`store_holding` finds the Zarr store an output
path (``--json``, ``--plots``, ``--out``) would land in, so that a report never replaces
a run's or the store's metadata.
"""

from __future__ import annotations

import os
from pathlib import Path


def local_link(root: Path, parts: tuple[str, ...]) -> str | None:
    """The first symbolic link among ``root/parts[0]``, ``root/parts[0]/parts[1]``, ...
    and everything under the last (walked without following links), as a sentence; None
    if there is none (or the folder does not exist)."""
    path = Path(root)
    rel = []
    for part in parts:
        path = path / part
        rel.append(part)
        if path.is_symlink():
            return f"{'/'.join(rel)} is a symbolic link (to {os.readlink(path)[:200]})"
        if not path.exists():
            return None
    for folder, dirs, files in os.walk(path, followlinks=False):
        for name in (*dirs, *files):
            p = Path(folder) / name
            if p.is_symlink():
                inner = p.relative_to(root).as_posix()
                return f"{inner} is a symbolic link (to {os.readlink(p)[:200]})"
    return None


def store_holding(path: str | os.PathLike) -> Path | None:
    """The folder of the Zarr hierarchy (a folder holding ``zarr.json``) that ``path``
    (a file or folder to be written, which may not exist yet) would land in, or None.
    Links are resolved first, so a link into a store is found too."""
    p = Path(path).expanduser().absolute()
    try:
        p = p.resolve()
    except (OSError, RuntimeError):
        pass
    try:
        for folder in ([p] if p.is_dir() else []) + list(p.parents):
            if (folder / "zarr.json").is_file():
                top = folder   # the topmost: a run's group sits inside the store's root
                for up in folder.parents:
                    if not (up / "zarr.json").is_file():
                        break
                    top = up
                return top
    except OSError:
        return None
    return None
