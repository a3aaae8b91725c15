"""Ray as KMA meets it when it connects, kept apart from the sweep driver.

- Ray (2.59+) starts a local cluster with token authentication on and logs a notice on
  every start; :func:`quiet_local_auth_notice` drops that one notice (Ray's secure
  default is kept, its other authentication warnings pass).
- Connecting to a remote cluster that refuses the client's token, Ray's C++ client logs
  ``Unauthenticated`` once a second on file descriptor 2 and then raises a bare "Failed
  to connect": :func:`fd2_captured` holds those lines back so the driver can name the
  cause (:class:`AuthFailed`, :func:`is_auth_error`) in one line.
- Ray initialises colorama, whose exit handler writes an ANSI reset to a terminal after
  the command's last line: :func:`no_reset_at_exit`.
"""

from __future__ import annotations

import logging
import os
import sys
from contextlib import contextmanager

__all__ = ["RAY_AUTH_MODE", "AUTH_LOGGER", "LocalAuthNotice", "quiet_local_auth_notice", "AuthFailed",
           "auth_line", "fd2_captured", "is_auth_error", "no_reset_at_exit"]


def no_reset_at_exit() -> None:
    """Ray initialises colorama, whose exit handler writes an ANSI reset (``ESC[0m``) to
    a terminal after everything else, the sweep's summary included: unregister it (KMA
    leaves the terminal's attributes as it found them; rich resets its own styles)."""
    import atexit

    for name in ("colorama.initialise", "ray.thirdparty_files.colorama.initialise"):
        mod = sys.modules.get(name)
        if mod is not None and hasattr(mod, "reset_all"):
            atexit.unregister(mod.reset_all)


RAY_AUTH_MODE = "RAY_AUTH_MODE"


class LocalAuthNotice(logging.Filter):
    """Drops Ray's "Token authentication is enabled for this Ray cluster" notice, which
    ``ray.init`` logs each time it starts a local cluster with its default (token) mode."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Token authentication is enabled for this Ray cluster")


AUTH_LOGGER = "ray._private.authentication.authentication_token_setup"  # where Ray logs it


def quiet_local_auth_notice() -> None:
    """Install :class:`LocalAuthNotice` on the logger Ray's notice goes through (once)."""
    logger = logging.getLogger(AUTH_LOGGER)
    if not any(isinstance(f, LocalAuthNotice) for f in logger.filters):
        logger.addFilter(LocalAuthNotice())


class AuthFailed(ConnectionError):
    """``ray.init`` was refused for want of the right token."""


def auth_line(text: str) -> str:
    """The cause in what Ray's client logged: ``Unauthenticated: RPC error: InvalidAuthToken: ...``."""
    line = next((x for x in text.splitlines() if "Unauthenticated" in x or "InvalidAuthToken" in x), "")
    return line.split("GCS server: ", 1)[-1].strip()[:160]


@contextmanager
def fd2_captured():
    """File descriptor 2 (where Ray's C++ logs go) into a temporary file for the block;
    yields a function returning what was written there so far."""
    import tempfile

    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), 2)

        def captured() -> str:
            sys.stderr.flush()
            tmp.seek(0)
            return tmp.read().decode("utf-8", "replace")
        try:
            yield captured
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


def is_auth_error(e: BaseException) -> bool:
    """True when ``ray.init`` failed for want of (the right) authentication token."""
    text = f"{type(e).__name__} {e}".lower()
    return isinstance(e, AuthFailed) or type(e).__name__ == "AuthenticationError" or (
        "unauthenticated" in text) or ("token" in text and "auth" in text)
