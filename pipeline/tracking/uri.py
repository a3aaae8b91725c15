"""A tracking URI, parsed once: :class:`TrackingURI`.

MLflow takes a URI (``sqlite:///mlflow.db``, ``http://host:5000``,
``postgresql://user:pass@db/mlflow``). KMA needs four things of it, each decided here
and nowhere else: the absolute form (a relative SQLite path made absolute against this
process's working directory, ``~`` expanded, the query kept), the SQLite database file
it names (if any), whether it carries a password (never recorded in a store), and a
credentials-free form for logs and messages.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..storage.location import has_password, without_credentials

SQLITE = "sqlite:///"


@dataclass(frozen=True)
class TrackingURI:
    """``uri`` as given (a string); see the module docstring."""

    uri: str

    def __str__(self) -> str:
        return self.uri

    @property
    def is_sqlite_file(self) -> bool:
        return self.uri.startswith(SQLITE) and ":memory:" not in self.uri

    def absolute(self) -> str:
        """The URI with a relative SQLite path made absolute (``sqlite:///mlflow.db`` →
        ``sqlite:////cwd/mlflow.db``): the URI a sweep records in its store and the folder
        its artifacts go to then name the same file from any directory, and a job's scratch
        working directory (``ray job submit``'s) is never where a later command looks.
        Other URIs, and SQLite paths already absolute, are returned unchanged."""
        if not self.is_sqlite_file or self.uri.startswith(SQLITE + "/"):
            return self.uri
        path, sep, query = self.uri.removeprefix(SQLITE).partition("?")
        return f"{SQLITE}{Path(path).expanduser().resolve()}{sep}{query}"

    @property
    def sqlite_path(self) -> Path | None:
        """The database file of a SQLite URI (absolute; the query left out), else None."""
        if not self.is_sqlite_file:
            return None
        return Path(self.absolute().removeprefix(SQLITE).partition("?")[0])

    @property
    def has_password(self) -> bool:
        """Whether the URI carries a password (an unparsable one counts as carrying one)."""
        return has_password(self.uri)

    @property
    def shown(self) -> str:
        """The URI without user name and password, for logs and messages."""
        return without_credentials(self.uri)


def absolute_tracking_uri(uri: str) -> str:
    """``TrackingURI(uri).absolute()``."""
    return TrackingURI(uri).absolute()
