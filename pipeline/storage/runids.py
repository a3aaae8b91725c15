"""The run-id rule: one function decides which ids may name a run.

A run id is one path component under ``<store>/runs/``, so it must never be able to
name anything else: not the store root (``..``), not the group itself (``.``), not
zarr's metadata file (``zarr.json``), not a nested group (``a/b``, or ``a\\b``, which
zarr turns into ``a/b``), and nothing that breaks a one-line table (newlines). The rule:

    an ASCII letter or digit, then up to 127 letters, digits, ``.``, ``_`` or ``-``
    (at most 128 characters), and not ``zarr.json`` (in any letter case).

Every id the project generates passes: sweep variant ids such as
``mlp-d3-w32-tanh-kaiming-adam-s0-21b4b00a49`` (names from the registries, numbers,
a 10-hex-digit digest; ``-`` for a negative seed), with room for suffixes such as a
restart attempt's ``-r1``. Every command that takes a run id checks it with
:func:`check_run_id` before doing anything; the store checks again before it writes
or deletes (defence in depth).

Ids already in a store that break the rule (written by older versions) stay readable:
:func:`check_run_id` accepts an id outside the rule when it is exactly one of the ids
listed in the store (``listed``), so such a run can still be listed, read and
analysed, but never created, replaced or deleted through its id.
"""

from __future__ import annotations

import re
from typing import Callable, Iterable

from ..errors import KMAError

MAX_LENGTH = 128
RULE = "a letter or digit, then letters, digits, '.', '_' or '-', at most 128 characters"
_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,%d}" % (MAX_LENGTH - 1))
_RESERVED = {"zarr.json"}


class InvalidRunId(KMAError):
    """A run id outside the rule (and not an existing legacy run)."""


def is_valid(run_id: object) -> bool:
    """Whether ``run_id`` follows the rule (see the module docstring)."""
    return (
        isinstance(run_id, str)
        and _PATTERN.fullmatch(run_id) is not None
        and run_id.lower() not in _RESERVED
    )


def shown(run_id: str) -> str:
    """``run_id`` printable on one line (control characters escaped, long ids cut)."""
    text = run_id if run_id.isprintable() else ascii(run_id)[1:-1]
    return text if len(text) <= 80 else text[:77] + "..."


def check_run_id(
    run_id: object,
    *,
    what: str = "run id",
    listed: Iterable[str] | Callable[[], Iterable[str]] | None = None,
) -> str:
    """Return ``run_id`` if it follows the rule, else raise :class:`InvalidRunId`.

    ``listed`` (the store's run ids, or a callable returning them, called only when
    needed) admits an existing id that predates the rule, for reading only.
    """
    if is_valid(run_id):
        return run_id  # type: ignore[return-value]
    if listed is not None and isinstance(run_id, str) and run_id:
        ids = listed() if callable(listed) else listed
        if run_id in set(ids):
            return run_id
    if not isinstance(run_id, str) or not run_id:
        raise InvalidRunId(f"{what} is empty: expected {RULE}")
    if len(run_id) > MAX_LENGTH:
        reason = f"{len(run_id)} characters, more than {MAX_LENGTH}"
    elif run_id in (".", ".."):
        reason = "names a directory, not a run"
    elif run_id.lower() in _RESERVED:
        reason = "reserved name"
    elif set(run_id) & set("/\\"):
        reason = "path separators are not allowed"
    elif not run_id.isprintable():
        reason = "control characters (e.g. newlines) are not allowed"
    elif not run_id[0].isascii() or not run_id[0].isalnum():
        reason = "must start with a letter or digit"
    else:
        bad = sorted({c for c in run_id if not (c.isascii() and (c.isalnum() or c in "._-"))})
        reason = "characters " + " ".join(repr(c) for c in bad) + " are not allowed"
    raise InvalidRunId(f"{what} '{shown(run_id)}': invalid ({reason}); expected {RULE}")
