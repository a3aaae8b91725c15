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


# --------------------------------------------------------------------------- Ray, two nodes
class RayCluster:
    """A head and a second node started by ``ray start`` (see :func:`ray_cluster`)."""

    def __init__(self, root, gcs, dashboard, env, head_dir, node2_dir, credentials, hook):
        self.root, self.gcs, self.dashboard, self.env = root, gcs, dashboard, env
        self.head_dir, self.node2_dir = head_dir, node2_dir
        self.credentials = credentials  # node2's AWS credentials file (the test may take it away)
        self.hook = hook                # $KMA_TEST_TASK_HOOK on both nodes
        self.node_ids: dict[str, str] = {}  # "head" / "node2" -> Ray node id

    def processes(self):
        """Every process of this cluster: those whose command line names its temp dirs,
        and their children (workers), never another Ray on the machine."""
        import psutil

        found = set()
        for p in psutil.process_iter(["cmdline"]):
            if any(str(self.root) in a for a in (p.info["cmdline"] or [])):
                found.add(p)
        for p in list(found):
            try:
                found.update(p.children(recursive=True))
            except psutil.Error:
                pass
        return found


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray_start(args, env, cwd, log):
    """``ray start ARGS`` (it returns once the node runs); its own ports all chosen here,
    so nothing clashes with another Ray on the machine (other tests run Ray meanwhile)."""
    ports = ["--node-manager-port", "--object-manager-port", "--dashboard-agent-listen-port",
             "--dashboard-agent-grpc-port", "--runtime-env-agent-port", "--metrics-export-port"]
    cmd = [f"{sys.prefix}/bin/ray", "start", *args, "--disable-usage-stats"]
    for flag in ports:
        cmd += [flag, str(_free_port())]
    with open(log, "a") as out:
        r = subprocess.run(cmd, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, timeout=240)
    assert r.returncode == 0, f"ray start failed: {open(log).read()[-2000:]}"


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory, s3_server):
    """Two Ray nodes on loopback, as a user starts them: ``ray start --head`` (1 CPU, the
    dashboard and its job server for ``ray job submit``) and ``ray start --address`` (1 CPU,
    custom resource ``node2``), each in its own working directory and temp dir, with
    Ray 2.60's token authentication on (``RAY_AUTH_MODE=token``, a token file of this
    cluster's own: ``ray start`` otherwise turns it on only where ``~/.ray/auth_token``
    exists). Both nodes reach the S3 server of :func:`s3_server`; node2 reads its AWS
    credentials from a credentials file (``AWS_SHARED_CREDENTIALS_FILE``), the head from
    the environment. Torn down by killing this cluster's processes by pid (``ray stop``
    would stop every Ray of the user on the machine)."""
    import secrets
    from pathlib import Path

    import psutil

    import shutil
    import tempfile

    root = tmp_path_factory.mktemp("raycl")
    rt = Path(tempfile.mkdtemp(prefix="kray", dir="/tmp"))  # Ray's sockets: paths under 108 bytes
    head_dir, node2_dir, hook = root / "head", root / "node2", root / "hook"
    for d in (head_dir, node2_dir, hook):
        d.mkdir()
    token = root / "auth_token"
    token.write_text(secrets.token_hex(32))
    repo = str(Path(__file__).resolve().parents[1])
    base = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "MLFLOW_TRACKING"))}
    base.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token), KMA_TEST_TASK_HOOK=str(hook),
                PYTHONPATH=repo + os.pathsep + os.environ.get("PYTHONPATH", ""), RAY_USAGE_STATS_ENABLED="0")
    credentials = node2_dir / "aws_credentials"
    credentials.write_text(f"[default]\naws_access_key_id = {s3_server['AWS_ACCESS_KEY_ID']}\n"
                           f"aws_secret_access_key = {s3_server['AWS_SECRET_ACCESS_KEY']}\n")
    node2_env = {k: v for k, v in base.items() if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    node2_env.update(AWS_SHARED_CREDENTIALS_FILE=str(credentials), AWS_EC2_METADATA_DISABLED="true")
    gcs_port, dash_port = _free_port(), _free_port()
    cluster = RayCluster(rt, f"127.0.0.1:{gcs_port}", f"http://127.0.0.1:{dash_port}",
                         {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)},
                         head_dir, node2_dir, credentials, hook)
    try:
        _ray_start(["--head", "--node-ip-address", "127.0.0.1", "--port", str(gcs_port), "--num-cpus", "1",
                    "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash_port),
                    "--ray-client-server-port", str(_free_port()), "--temp-dir", str(rt / "h")],
                   base, head_dir, root / "head.log")
        _ray_start(["--address", cluster.gcs, "--node-ip-address", "127.0.0.1", "--num-cpus", "1",
                    "--resources", '{"node2": 1}', "--temp-dir", str(rt / "n")],
                   node2_env, node2_dir, root / "node2.log")
        cluster.node_ids = _wait_for(lambda: _two_nodes(cluster, base), "the second Ray node did not join",
                                     limit_s=120)
        yield cluster
    finally:
        procs = cluster.processes()
        for p in procs:
            try:
                p.terminate()
            except psutil.Error:
                pass
        _, alive = psutil.wait_procs(list(procs), timeout=5)
        for p in alive:
            try:
                p.kill()
            except psutil.Error:
                pass
        shutil.rmtree(rt, ignore_errors=True)


def _two_nodes(cluster, env) -> dict | None:
    """``{"head": id, "node2": id}`` once both nodes are alive (asked with ``ray list nodes``)."""
    import json

    r = subprocess.run([f"{sys.prefix}/bin/ray", "list", "nodes", "--address", cluster.gcs, "--format", "json",
                        "--filter", "state=ALIVE"], env=env, capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        return None
    try:
        nodes = json.loads(r.stdout)
    except ValueError:
        return None
    if len(nodes) < 2:
        time.sleep(1.0)
        return None
    ids = {}
    for n in nodes:
        ids["node2" if "node2" in (n.get("resources_total") or {}) else "head"] = n["node_id"]
    return ids if len(ids) == 2 else None
