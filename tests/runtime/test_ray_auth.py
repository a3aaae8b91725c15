"""Ray's token authentication, as KMA meets it (no cluster started here; the end-to-end
sweep test checks that a real local sweep prints no Ray warning):

- the notice Ray logs each time ``ray.init`` starts a local cluster with token auth on
  is dropped, Ray's other authentication warnings are not;
- a remote cluster that refuses the client's token is recognised from what Ray's C++
  client writes on file descriptor 2, which KMA holds back while it connects.
"""

from __future__ import annotations

import logging
import os

import pytest

from pipeline.runtime import ray_connect as rc


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_local_token_notice_is_dropped_and_other_auth_warnings_kept():
    setup = pytest.importorskip("ray._private.authentication.authentication_token_setup")
    logger = logging.getLogger(rc.AUTH_LOGGER)
    assert setup.logger is logger  # the logger Ray's notice goes through
    seen = _Collect()
    logger.addHandler(seen)
    try:
        rc.quiet_local_auth_notice()
        rc.quiet_local_auth_notice()   # idempotent: one filter
        assert sum(isinstance(f, rc.LocalAuthNotice) for f in logger.filters) == 1
        setup._warn_token_auth_enabled()    # Ray's own call, as ray.init makes it
        setup._warn_token_auth_disabled()
    finally:
        logger.removeHandler(seen)
    assert len(seen.messages) == 1 and seen.messages[0].startswith("Token authentication is disabled")


def test_fd2_is_held_back_while_connecting_and_restored():
    with rc.fd2_captured() as captured:
        os.write(2, b"[W gcs_client.cc:210] Failed to get cluster ID from GCS server: Unauthenticated: "
                    b"RPC error: InvalidAuthToken: Authentication token is missing or incorrect\n")
        text = captured()
    assert "InvalidAuthToken" in text
    assert rc.auth_line(text) == ("Unauthenticated: RPC error: InvalidAuthToken: Authentication "
                                       "token is missing or incorrect")
    assert os.fstat(2)  # fd 2 is open again (restored)


@pytest.mark.parametrize("exc, is_auth", [
    (rc.AuthFailed("Unauthenticated: ..."), True),
    (RuntimeError("Token authentication is enabled but no authentication token was found"), True),
    (ConnectionError("Failed to connect to Ray cluster at 10.0.0.1:6379"), False),
    (ValueError("When connecting to an existing cluster, num_cpus and num_gpus must not be provided."), False),
])
def test_auth_failures_told_apart(exc, is_auth):
    assert rc.is_auth_error(exc) is is_auth


def _on_a_terminal(code: str) -> bytes:
    """What ``python -c code`` writes to a pseudo-terminal (stdout and stderr), all of it."""
    import pty
    import subprocess
    import sys

    main, sub = pty.openpty()
    from pathlib import Path

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    p = subprocess.Popen([sys.executable, "-c", code], stdin=sub, stdout=sub, stderr=sub, close_fds=True,
                         env=env)
    os.close(sub)
    out = b""
    while True:
        try:
            data = os.read(main, 4096)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        out += data
    p.wait(timeout=120)
    os.close(main)
    return out


def test_no_escape_sequence_after_the_summary_on_a_terminal():
    """Ray initialises colorama, whose exit handler writes ESC[0m to a terminal after the
    sweep's last line; the driver unregisters it (checked against Ray's own module)."""
    pytest.importorskip("ray")
    load = "import ray.autoscaler._private.cli_logger; from pipeline.runtime import ray_connect as rc; "
    control = _on_a_terminal(load + "print('summary')")
    assert control.endswith(b"summary\r\n\x1b[0m\n") or control.endswith(b"summary\r\n\x1b[0m"), control[-40:]
    fixed = _on_a_terminal(load + "rc.no_reset_at_exit(); print('summary')")
    assert fixed.endswith(b"summary\r\n"), fixed[-40:]
