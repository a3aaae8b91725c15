"""User-facing errors.

A :class:`KMAError` is a user mistake or an environment problem the user can fix (bad
config, unknown run, unreachable server). The command line prints its message as one
line and exits with code 2; anything else is a bug and keeps its traceback.
"""


class KMAError(Exception):
    """A problem the user can fix; printed as one line, exit code 2."""

    exit_code = 2


class ConfigError(KMAError):
    """An invalid configuration value, key or file."""


class StoreError(KMAError):
    """The trajectory store cannot be opened, read or written as asked."""


class RunNotFound(StoreError):
    """No run with that id in the store."""


def plural(n, word: str, many: str | None = None, *, count: bool = True, fmt: str = "") -> str:
    """``"1 run"``, ``"2 runs"``, ``"1 spectrum"`` (``many="spectra"``): the one wording
    helper for counts in user-facing messages (here so that every package, the engine
    included, can use it). ``count=False`` gives the word alone; ``fmt`` formats the
    number (``","``: ``"10,000 variants"``)."""
    word = word if n == 1 else (many or word + "s")
    return f"{n:{fmt}} {word}" if count else word
