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
