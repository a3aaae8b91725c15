"""Real servers on loopback shared by the storage and cluster tests: fixtures import from
here (``from services import s3_server``). Each starts a real process on a port the OS
picks and stops it at the end of the module that uses it."""

import os
import re
import subprocess
import sys
import time
from pathlib import Path

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


# ----------------------------------------------------------------- PostgreSQL + mlflow server
# Debian's PostgreSQL (`apt-get install postgresql`; .ci/run installs it when missing).
# initdb and postgres refuse to run as root: when the tests run as root (as CI does), the
# fixture runs them as the `postgres` system user the Debian package creates, in a temp
# dir that user owns.
PG_BIN_GLOB = "/usr/lib/postgresql/*/bin"
PG_SUPERUSER = "kma"


def need(what: str):
    """A server a test needs cannot be had here: a failure in CI (``CI`` set, as .ci/run
    does), where it must be there, elsewhere a skip naming what is missing."""
    if os.environ.get("CI"):
        pytest.fail(f"{what}; CI must provide it (.ci/run installs it)", pytrace=False)
    pytest.skip(what, allow_module_level=True)


def _pg_bindir() -> str | None:
    """The newest Debian PostgreSQL bin folder, or the one holding ``initdb`` on PATH."""
    import glob
    import shutil

    found = sorted(glob.glob(PG_BIN_GLOB), key=lambda p: int(p.split("/")[-2]) if p.split("/")[-2].isdigit() else 0)
    if found and os.path.exists(f"{found[-1]}/postgres"):
        return found[-1]
    initdb = shutil.which("initdb")
    return os.path.dirname(initdb) if initdb else None


class PostgresServer:
    """A PostgreSQL cluster of its own in a temp dir, on ``127.0.0.1:port`` (and a unix
    socket in the temp dir), trust authentication for its superuser ``kma``."""

    def __init__(self):
        import pwd
        import tempfile

        self.bindir = _pg_bindir()
        if self.bindir is None:
            need("PostgreSQL is not installed (no initdb: apt-get install postgresql)")
        self.as_user: list[str] = []
        pw = None
        if os.geteuid() == 0:
            try:
                pw = pwd.getpwnam("postgres")
            except KeyError:
                need("running as root and there is no 'postgres' user to run PostgreSQL as")
            self.as_user = ["runuser", "-u", "postgres", "--"]
        self.dir = tempfile.mkdtemp(prefix="kma-pg-")   # in /tmp: reachable by the postgres user
        if pw is not None:
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
        self.data = f"{self.dir}/data"
        self.log = f"{self.dir}/postgres.log"
        self.proc = None
        self.port = None
        self._run("initdb", "-D", self.data, "-U", PG_SUPERUSER, "--auth=trust", "-E", "UTF8", "--no-sync")

    def _run(self, tool: str, *args: str) -> None:
        r = subprocess.run([*self.as_user, f"{self.bindir}/{tool}", *args], capture_output=True, text=True,
                           timeout=120)
        assert r.returncode == 0, f"{tool} failed: {r.stderr[-1000:]}"

    def start(self) -> "PostgresServer":
        for _ in range(5):   # a port taken between _free_port() and the bind: another one
            self.port = _free_port()
            with open(self.log, "w") as out:
                self.proc = subprocess.Popen(
                    [*self.as_user, f"{self.bindir}/postgres", "-D", self.data, "-p", str(self.port),
                     "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={self.dir}",
                     "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
                     "-c", "logging_collector=off"],
                    stdout=subprocess.DEVNULL, stderr=out, start_new_session=True)
            if _wait_for(self._ready, "PostgreSQL did not start"):
                self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", PG_SUPERUSER, "mlflow")
                return self
        raise AssertionError(f"PostgreSQL could not bind a port: {self._log_tail()}")

    def _ready(self):
        text = self._log_tail(100_000)
        if "ready to accept connections" in text:
            return True
        if self.proc.poll() is not None:
            assert "could not bind" in text or "could not create" in text, \
                f"postgres exited: {text[-1000:]}"
            return False
        return None

    def _log_tail(self, n=1000) -> str:
        with open(self.log, errors="replace") as f:
            return f.read()[-n:]

    def create_database(self, name: str) -> str:
        self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", PG_SUPERUSER, name)
        return self.url(name)

    def url(self, database: str = "mlflow") -> str:
        """SQLAlchemy URL with the psycopg2 driver named: a bare ``postgresql://`` means
        psycopg 3 under SQLAlchemy 2.1, which KMA does not install."""
        return f"postgresql+psycopg2://{PG_SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def stop(self) -> None:
        import shutil
        import signal

        if self.proc is not None and self.proc.poll() is None:
            try:   # the postmaster (runuser's child when run as root): fast shutdown
                with open(f"{self.data}/postmaster.pid") as f:
                    os.kill(int(f.readline()), signal.SIGINT)
            except (OSError, ValueError):
                self.proc.terminate()
            self.proc.wait(timeout=60)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def postgres_server():
    """A real PostgreSQL (Debian's) on loopback, with a database ``mlflow``."""
    pg = PostgresServer()
    try:
        yield pg.start()
    finally:
        pg.stop()


class MlflowServer:
    """``mlflow server`` backed by ``backend`` (a database URL) with artifacts proxied to
    ``artifacts`` (``--serve-artifacts``): on 127.0.0.1 and a port uvicorn picks (read
    back from its log), or ``port`` on a restart; its working directory is a temp dir of
    its own, which tests may check stays empty."""

    def __init__(self, backend: str, artifacts: str, workdir):
        self.backend, self.artifacts, self.workdir = backend, artifacts, Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = 0
        self.proc = None
        self.log = self.workdir.parent / f"{self.workdir.name}.log"

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "MlflowServer":
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen(
                [f"{sys.prefix}/bin/mlflow", "server", "--backend-store-uri", self.backend,
                 "--artifacts-destination", self.artifacts, "--serve-artifacts",
                 "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"],
                cwd=self.workdir, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                env=dict(os.environ))
        try:
            self.port = _wait_for(self._listening, "mlflow server did not start", limit_s=180)
            _wait_for(self._healthy, "mlflow server did not answer /health", limit_s=180)
        except BaseException:
            self.stop()
            raise
        return self

    def _listening(self):
        text = self.log.read_text(errors="replace")
        assert self.proc.poll() is None, f"mlflow server exited: {text[-1500:]}"
        m = re.search(r"Uvicorn running on http://127\.0\.0\.1:(\d+)", text)
        return int(m.group(1)) if m else None

    def _healthy(self):
        import urllib.request

        assert self.proc.poll() is None, f"mlflow server exited: {self.log.read_text()[-1500:]}"
        try:
            with urllib.request.urlopen(f"{self.uri}/health", timeout=5) as r:
                return True if r.status == 200 else None
        except OSError:
            return None

    def stop(self, kill: bool = False) -> None:
        """Stop the server and everything it started (its own process group): SIGTERM, and
        SIGKILL if it is still there after a few seconds (uvicorn's graceful shutdown can
        take tens of seconds); ``kill=True``: SIGKILL at once (a crash)."""
        import signal

        if self.proc is not None and self.proc.poll() is None:
            if not kill:
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=0 if kill else 5)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)
        self.proc = None


@pytest.fixture(scope="module")
def mlflow_server(s3_server, postgres_server, tmp_path_factory):
    """``mlflow server`` on PostgreSQL with artifacts on the S3 server (bucket
    ``mlflow-artifacts``): what a cluster's tracking server is (infra/compose.yaml)."""
    import s3fs

    s3fs.S3FileSystem(skip_instance_cache=True).mkdir("mlflow-artifacts")
    server = MlflowServer(postgres_server.url("mlflow"), "s3://mlflow-artifacts",
                          tmp_path_factory.mktemp("mlflow-server") / "cwd").start()
    try:
        yield server
    finally:
        server.stop()
