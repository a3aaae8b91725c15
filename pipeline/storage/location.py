"""Where a trajectory store lives, parsed once: :class:`StoreLocation`.

A store is a local path (``kma-store``, ``~/runs``, ``file:///data/s``) or an fsspec URL
(``s3://bucket/prefix``, ``memory://x``). Whether it is local, its absolute form (what a
sweep ships to its tasks), its canonical form (what MLflow tags record: symlinks resolved,
no trailing slash) and a credentials-free form for messages are decided here and nowhere
else (:func:`without_credentials` and :func:`has_password` serve tracking URIs too).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit


@dataclass(frozen=True)
class StoreLocation:
    """``url`` as given (a string); see the module docstring."""

    url: str

    def __post_init__(self):
        object.__setattr__(self, "url", str(self.url))

    def __str__(self) -> str:
        return self.url

    @property
    def is_local(self) -> bool:
        """A path on this machine's filesystem (no scheme, or ``file://``)."""
        return "://" not in self.url or self.url.startswith("file://")

    @property
    def scheme(self) -> str:
        return "file" if self.is_local else self.url.split("://", 1)[0]

    @property
    def path(self) -> Path:
        """The local path, absolute against the working directory, ``~`` expanded (not
        resolved). ValueError for a URL."""
        if not self.is_local:
            raise ValueError(f"store {self.url} is not a local path")
        return Path(self.url.removeprefix("file://")).expanduser().absolute()

    def absolute(self) -> str:
        """A local path made absolute (what a sweep ships to its tasks); URLs unchanged."""
        return str(self.path) if self.is_local else self.url

    def canonical(self) -> str:
        """The location as recorded elsewhere (MLflow tags): local paths absolute with
        symlinks resolved, URLs without a trailing slash."""
        return str(self.path.resolve()) if self.is_local else self.url.rstrip("/")

    @property
    def shown(self) -> str:
        """The location without user name and password, for logs and messages."""
        return self.url if self.is_local else without_credentials(self.url)


def has_password(url: str) -> bool:
    """Whether ``url`` carries a password (an unparsable one counts as carrying one)."""
    try:
        return bool(urlsplit(url).password)
    except ValueError:
        return True


def without_credentials(url: str) -> str:
    """``url`` without user name and password (``postgresql://u:p@db/x`` → ``postgresql://db/x``)."""
    try:
        parts = urlsplit(url)
        if not (parts.username or parts.password):
            return url
        host = parts.hostname or ""
        return urlunsplit(parts._replace(netloc=f"{host}:{parts.port}" if parts.port else host))
    except ValueError:
        return url.split("://", 1)[0] + "://…"
