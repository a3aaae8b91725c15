"""Output paths the user names (``--json PATH``, ``--plots DIR``, ``--out DIR``).

They are checked before any work (:func:`check_file`, :func:`check_dir`), so a typo
costs nothing; a file is written atomically (:func:`write_text_atomic`): a temporary
file beside it, renamed over it, and removed again if anything fails.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .errors import KMAError


def _nearest_existing(p: Path) -> Path:
    """``p`` itself or the closest ancestor that exists (folders are created later)."""
    p = p.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _check_creatable(p: Path, flag: str) -> None:
    """Every missing folder on the way to ``p`` can be created."""
    base = _nearest_existing(p)
    if not base.is_dir():
        raise KMAError(f"{flag} {p}: {base} is a file, not a folder")
    if not os.access(base, os.W_OK | os.X_OK):
        raise KMAError(f"{flag} {p}: cannot write in {base} (permission denied or read-only)")


def _check_outside_store(p: Path, flag: str) -> None:
    """An output never lands inside a Zarr store: it would replace a run's (or the
    store's) metadata, or mix foreign files into the store."""
    from .pathsafety import store_holding

    store = store_holding(p)
    if store is not None:
        raise KMAError(f"{flag} {p}: is inside the Zarr store {store}; write outputs outside the store")


def shown_path(p) -> str:
    """A path short enough for one line (a 4,000-character one keeps its two ends)."""
    text = str(p)
    return text if len(text) <= 120 else f"{text[:60]}...{text[-40:]} ({len(text):,} characters)"


def check_path_length(p, what: str) -> None:
    """A path the system can name: no component over NAME_MAX (255 bytes), the whole under
    PATH_MAX (4,096): else one :class:`KMAError` line naming ``what``, instead of an
    ENAMETOOLONG traceback from whatever touches it first."""
    p = Path(p)
    if len(os.fsencode(str(p.absolute()))) >= 4096:
        raise KMAError(f"{what} {shown_path(p)}: path too long (the limit is 4,095 bytes)")
    for part in p.parts:
        if len(os.fsencode(part)) > 255:
            raise KMAError(f"{what} {shown_path(p)}: a name in the path is too long ({len(part)} characters; "
                           "the limit is 255)")



def check_file(path: str | os.PathLike, flag: str) -> None:
    """A file ``path`` can be written: not a folder, not inside a store, and its folder
    exists or can be made."""
    p = Path(path)
    check_path_length(p, flag)
    _check_outside_store(p, flag)
    if p.is_dir():
        raise KMAError(f"{flag} {p}: is a folder; give a file name")
    if p.exists() and not os.access(p, os.W_OK):
        raise KMAError(f"{flag} {p}: the file exists and is not writable")
    _check_creatable(p.parent, flag)


def check_dir(path: str | os.PathLike, flag: str) -> None:
    """Files can be written into folder ``path`` (which may not exist yet), outside any store."""
    p = Path(path)
    check_path_length(p, flag)
    _check_outside_store(p, flag)
    if p.exists() and not p.is_dir():
        raise KMAError(f"{flag} {p}: is a file; give a folder")
    _check_creatable(p, flag)


def write_text_atomic(path: str | os.PathLike, text: str, flag: str) -> None:
    """Write ``text`` to ``path`` all at once or not at all (no temporary file left)."""
    p = Path(path)
    tmp = None
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, p)
        tmp = None
    except OSError as e:
        raise KMAError(f"{flag} {p}: cannot write ({e.strerror or e})") from None
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
