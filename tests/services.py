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

    # s3fs caches its filesystems by their arguments, not by the endpoint in the
    # environment: a store opened in this process would reach the previous module's server
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
