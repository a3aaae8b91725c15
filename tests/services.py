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

    # fsspec caches S3FileSystem instances by their (empty) options: one made in an earlier
    # module would still point at that module's server, stopped since
    s3fs.S3FileSystem.clear_instance_cache()
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    fs.mkdir("kma")
    yield env
    s3fs.S3FileSystem.clear_instance_cache()
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


def _free_port() -> int:
    """A port the OS reports free now (for PostgreSQL, which cannot bind port 0 and tell;
    the server start is retried on another port if it was taken meanwhile)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
