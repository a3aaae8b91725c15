"""Ray as KMA meets it when it connects: :func:`init_ray` connects to a cluster or starts
a local one, for the sweep and for Dask-on-Ray alike.

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

from ..errors import KMAError

__all__ = ["init_ray", "RAY_AUTH_MODE", "AUTH_LOGGER", "LocalAuthNotice", "quiet_local_auth_notice", "AuthFailed",
           "auth_line", "fd2_captured", "is_auth_error", "no_reset_at_exit", "node_of_task"]


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


def init_ray(address: str | None, console):
    """Connect to a Ray cluster, or start a local one when no address is given."""
    import ray

    if ray.is_initialized():
        return ray
    address = address or os.environ.get("RAY_ADDRESS")  # set inside `ray job submit`
    if address and address != "auto":
        _check_tcp(address)
    kwargs = dict(logging_level=logging.WARNING, log_to_driver=False, include_dashboard=False)
    try:
        if address:
            console.info(f"connecting to Ray at {address}")
            os.environ.setdefault("RAY_gcs_rpc_server_reconnect_timeout_s", "10")
            # Ray's C++ client logs a failed attempt (a missing token among them) on the
            # process's stderr once a second and then raises a bare "Failed to connect":
            # hold those lines back, read the cause from them, pass them on if it connects
            with fd2_captured() as captured:
                try:
                    ray.init(address=address, **kwargs)
                except Exception:  # noqa: BLE001 - re-raised, with the cause when it is the token
                    if "Unauthenticated" in captured() or "InvalidAuthToken" in captured():
                        raise AuthFailed(auth_line(captured())) from None
                    raise
                held = captured()
            sys.stderr.write(held)
        else:
            # Ray (2.59+) turns token authentication on for a cluster ray.init starts and
            # warns on every start that it did: KMA's own local cluster keeps that secure
            # default without the notice (a RAY_AUTH_MODE the user set is Ray's to apply)
            quiet_local_auth_notice()
            # "local": always a new cluster of its own, never one `ray start` left running
            ray.init(address="local", num_cpus=os.cpu_count(), **kwargs)
    except Exception as e:  # noqa: BLE001 - ray.init's failures are the user's address or setup
        if not isinstance(e, (ConnectionError, RuntimeError, ValueError, TimeoutError)) \
                and not is_auth_error(e):
            raise
        where = address or "a local Ray"
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if address and is_auth_error(e):
            raise KMAError(
                f"Ray at {address}: the cluster requires token authentication and refused this client "
                f"({msg[:120]}); set {RAY_AUTH_MODE}=token and RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH) "
                "to the cluster's token") from None
        raise KMAError(f"Ray at {where}: cannot connect ({msg[:200]})") from None
    no_reset_at_exit()
    return ray


def _check_tcp(address: str, timeout: float = 5.0) -> None:
    """Ray itself retries an unreachable address for minutes: fail fast instead."""
    import socket
    from urllib.parse import urlparse

    hostport = urlparse(address).netloc if "://" in address else address
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise KMAError(f"Ray address {address!r}: expected HOST:PORT or ray://HOST:PORT")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as e:
        raise KMAError(f"Ray at {address}: unreachable ({e.strerror or e})") from None


def node_of_task() -> dict:
    """``{"node_ip", "node_id"}`` of the node this code runs on (inside a Ray task)."""
    try:
        import ray

        return {"node_ip": ray.util.get_node_ip_address(),
                "node_id": ray.get_runtime_context().get_node_id()}
    except Exception:  # noqa: BLE001 - outside Ray, or Ray not initialised
        import socket

        return {"node_ip": socket.gethostname(), "node_id": None}
