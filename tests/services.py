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

    _forget_filesystems()   # one made for an earlier module's server would point there
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    fs.mkdir("kma")
    yield env
    _forget_filesystems()
    proc.terminate()
    proc.wait(timeout=30)
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def _forget_filesystems() -> None:
    """Drop the S3 filesystems this process cached (fsspec keys its cache by options, not
    by the AWS_* environment they were built from) and the stores unpickled from URLs."""
    import s3fs

    from pipeline.storage import remote

    s3fs.S3FileSystem.clear_instance_cache()
    remote._reopen.cache_clear()


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


# --------------------------------------------------------------------------- dask.distributed
DASK_WORKER_MEMORY = "320MB"   # each worker's --memory-limit (dask: 10^6 bytes per MB)


@pytest.fixture(scope="module")
def dask_cluster(s3_server, tmp_path_factory):
    """A dask.distributed scheduler and two memory-limited workers (``dask scheduler`` and
    ``dask worker --nworkers 2 --nthreads 1 --memory-limit 320MB``: two worker processes,
    each under a nanny that restarts it past 95% of its limit), as separate processes on
    loopback. The scheduler listens on a port the OS picks (``--port 0``), read back
    from the scheduler file it writes. The workers' environment is the nodes' own: the
    S3 server's AWS_* credentials (``s3_server``) and this checkout on PYTHONPATH.
    Yields ``{"address", "memory_limit" (bytes, per worker), "pids" (worker address -> pid)}``."""
    import json

    from conftest import REPO

    tmp = tmp_path_factory.mktemp("dask")
    sched_file = tmp / "scheduler.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    bindir = f"{sys.prefix}/bin"
    logs = open(tmp / "dask.log", "w")
    procs = [subprocess.Popen([f"{bindir}/dask", "scheduler", "--host", "127.0.0.1", "--port", "0",
                               "--dashboard-address", ":0", "--scheduler-file", str(sched_file)],
                              stdout=subprocess.DEVNULL, stderr=logs, env=env)]
    procs.append(subprocess.Popen([f"{bindir}/dask", "worker", "--scheduler-file", str(sched_file),
                                   "--nthreads", "1", "--nworkers", "2", "--memory-limit", DASK_WORKER_MEMORY,
                                   "--dashboard-address", ":0", "--local-directory", str(tmp / "dw")],
                                  stdout=subprocess.DEVNULL, stderr=logs, env=env))
    from distributed import Client

    def up():
        for p in procs:
            assert p.poll() is None, f"dask process exited with {p.returncode}: {(tmp / 'dask.log').read_text()[-800:]}"
        try:
            addr = json.loads(sched_file.read_text())["address"]
            with Client(addr, timeout=5) as c:
                return addr if len(c.scheduler_info()["workers"]) == 2 else None
        except (OSError, ValueError, KeyError):  # file not (fully) written yet; not up yet
            return None

    client = None
    try:
        addr = _wait_for(up, "dask cluster did not start", limit_s=90)
        assert addr.startswith("tcp://127.0.0.1:") and not addr.endswith(":0"), addr
        client = Client(addr, timeout=10, set_as_default=False)
        limits = {w["memory_limit"] for w in client.scheduler_info()["workers"].values()}
        assert len(limits) == 1, limits
        yield {"address": addr, "memory_limit": limits.pop(), "client": client, "log": tmp / "dask.log",
               "pids": client.run(os.getpid)}
    finally:
        if client is not None:
            try:
                client.shutdown()     # scheduler and workers close at once (SIGTERM: 8 s of nanny grace)
            except Exception:  # noqa: BLE001 - already down: the signals below do it
                pass
            client.close()
        for p in reversed(procs):     # the workers first, while their scheduler is up
            p.terminate()
        for p in reversed(procs):
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
        logs.close()


# --------------------------------------------------------------------------- an outage
class OutageProxy:
    """A TCP proxy on loopback in front of ``target`` (host, port) that can be taken down
    and brought back on the same port: down, it drops the connections it carries and
    refuses new ones (its listening socket is closed), as a restarting or unreachable
    server does. ``down_after(n, seconds)`` takes it down once ``n`` more HTTP requests
    have passed (counted from their request lines), for ``seconds`` (None: until
    :meth:`up`), so an outage lands mid-operation without any timing on the test's side
    (``match``: count only requests for some keys, e.g. the first chunk write).
    A thread per connection direction; :meth:`close` stops it all."""

    _REQUEST = re.compile(rb"^(GET|PUT|POST|HEAD|DELETE) /")

    def __init__(self, target):
        import socket
        import threading

        self.target = target
        self._lock = threading.Lock()
        self._conns: list = []
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._listener.listen(64)
        self._budget: int | None = None      # requests left before the planned outage
        self._outage_s: float | None = None
        self._match = None
        self.requests = 0                    # requests forwarded so far
        self.outages = 0                     # times it went down
        self._closed = False
        self._accepting = threading.Thread(target=self._accept, args=(self._listener,), daemon=True)
        self._accepting.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def down_after(self, n: int, seconds: float | None, match: bytes | None = None) -> None:
        """Go down at the request after the next ``n`` (of those whose request line
        matches the regex ``match``, if given; that request is dropped)."""
        with self._lock:
            self._budget, self._outage_s = n, seconds
            self._match = re.compile(match) if match else None

    def down(self) -> None:
        import socket

        with self._lock:
            if self._listener is None:
                return
            self.outages += 1
            listener, self._listener = self._listener, None
            conns, self._conns = self._conns, []
        listener.close()
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            c.close()

    def up(self) -> None:
        import socket
        import threading

        with self._lock:
            if self._listener is not None or self._closed:
                return
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", self.port))   # the same port: clients keep their endpoint
            s.listen(64)
            self._listener = s
        threading.Thread(target=self._accept, args=(s,), daemon=True).start()

    def close(self) -> None:
        self._closed = True
        self.down()

    def _accept(self, listener) -> None:
        import socket
        import threading

        while True:
            try:
                client, _ = listener.accept()
            except OSError:          # closed: down() or close()
                return
            try:
                server = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._listener is not listener:
                    client.close()
                    server.close()
                    return
                self._conns += [client, server]
            threading.Thread(target=self._pipe, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client, False), daemon=True).start()

    def _pipe(self, src, dst, upstream: bool) -> None:
        import threading

        while True:
            try:
                data = src.recv(65536)
            except OSError:
                data = b""
            if upstream and data and self._REQUEST.match(data):
                with self._lock:
                    self.requests += 1
                    if self._budget is not None and (self._match is None or self._match.match(data)):
                        self._budget -= 1
                        fire = self._budget < 0
                    else:
                        fire = False
                    if fire:
                        self._budget = None
                        seconds = self._outage_s
                if fire:
                    self.down()
                    if seconds is not None:
                        t = threading.Timer(seconds, self.up)
                        t.daemon = True
                        t.start()
                    data = b""
            if not data:
                for s in (src, dst):
                    try:
                        s.close()
                    except OSError:
                        pass
                return
            try:
                dst.sendall(data)
            except OSError:
                return


@pytest.fixture
def s3_outage(s3_server):
    """An :class:`OutageProxy` in front of the module's S3 server; its ``env`` points the
    AWS endpoint at the proxy (pass it to the command under test)."""
    port = int(s3_server["AWS_ENDPOINT_URL"].rsplit(":", 1)[1])
    proxy = OutageProxy(("127.0.0.1", port))
    proxy.env = {**s3_server, "AWS_ENDPOINT_URL": proxy.url}
    yield proxy
    proxy.close()
