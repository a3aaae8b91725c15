"""Real servers on loopback shared by the storage and cluster tests: fixtures import from
here (``from services import s3_server``). Each starts a real process on a port the OS
picks and stops it at the end of the module that uses it."""

import os
import re
import subprocess
import sys
import time

import pytest

@pytest.fixture(scope="module")
def s3_server(tmp_path_factory):
    """moto's server on a port the OS picks (``-p 0``), read back from its own log line:
    no window in which another process can take a port chosen here."""
    log = tmp_path_factory.mktemp("moto") / "server.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([f"{sys.prefix}/bin/moto_server", "-H", "127.0.0.1", "-p", "0"],
                                stdout=subprocess.DEVNULL, stderr=out)
    try:
        port = _wait_for(lambda: _listening_port(log, proc), "S3 server did not start")
    except BaseException:
        proc.kill()
        raise
    env = {"AWS_ACCESS_KEY_ID": "kma", "AWS_SECRET_ACCESS_KEY": "kma-secret",
           "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_DEFAULT_REGION": "us-east-1"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    import s3fs

    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    fs.mkdir("kma")
    yield env
    proc.terminate()
    proc.wait(timeout=30)
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def _listening_port(log, proc) -> int | None:
    """The port in werkzeug's ``Running on http://127.0.0.1:PORT`` line, once printed."""
    assert proc.poll() is None, f"moto_server exited: {log.read_text()[-500:]}"
    m = re.search(r"Running on http://127\.0\.0\.1:(\d+)", log.read_text())
    return int(m.group(1)) if m else None


def _wait_for(probe, what, limit_s=60.0):
    """Poll ``probe()`` until it returns something (a start-up wait, not a measurement)."""
    deadline = time.monotonic() + limit_s
    while (found := probe()) is None:
        assert time.monotonic() < deadline, what
        time.sleep(0.1)
    return found
