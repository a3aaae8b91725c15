"""Object-storage faults as a user meets them, against a real S3 API server (moto's, on
loopback; tests/services.py): a missing bucket, an unreachable endpoint and no
credentials are one line ``kma: error: ...`` and exit 2 from ``kma sweep``, ``analyze``,
``runs`` and ``ingest``; an outage mid-command is retried and survived; a longer one
ends in one line and damages nothing already stored."""

import json
import subprocess

import numpy as np
import pytest

from pipeline.storage.layout import Layout
from pipeline.storage.store import TrajectoryStore

from conftest import kma_cmd, refusing_port
from services import s3_outage, s3_server  # noqa: F401  (fixtures)

pytest.importorskip("s3fs")

# each fault's environment, then each command through pipeline.cli.main, in one process
# (imports paid once): what reaches stderr, and the exit code
_RUN_ALL = """
import contextlib, io, json, os, sys, traceback
import s3fs
from pipeline.cli import main
from pipeline.storage import remote
base = dict(os.environ)
out = []
for case in json.loads(sys.argv[1]):
    os.environ.clear()
    os.environ.update({k: v for k, v in base.items() if k not in case["unset"]}, **case["set"])
    s3fs.S3FileSystem.clear_instance_cache()     # a new filesystem from this environment
    remote._reopen.cache_clear()
    for argv in case["commands"]:
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                rc = main(argv)
            except BaseException:
                traceback.print_exc(file=err)
                rc = "raised"
        out.append({"fault": case["fault"], "argv": argv, "rc": rc, "stderr": err.getvalue()})
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    torch = pytest.importorskip("torch")
    d = tmp_path_factory.mktemp("ckpt")
    g = torch.Generator().manual_seed(0)
    paths = []
    for i in range(4):
        paths.append(d / f"{i}.pt")
        torch.save({"w": torch.randn(8, 5, generator=g), "b": torch.randn(8, generator=g)}, paths[-1])
    return [str(p) for p in paths]


def _commands(url, config, checkpoints, tmp_path):
    return [["sweep", str(config), "--store", url, "--tracking-uri", f"sqlite:///{tmp_path / 'ml.db'}", "--yes"],
            ["analyze", "--store", url, "--no-mlflow"],
            ["runs", "--store", url],
            ["ingest", "--store", url, "--run-id", "r1", *checkpoints]]


_KEYS = ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_CONFIG_FILE",
         "AWS_SHARED_CREDENTIALS_FILE"]


def test_storage_faults_are_one_line_exit_2(s3_server, tiny_config, checkpoints, tmp_path, kma_env):
    """A missing bucket, an unreachable endpoint (a port that refuses), and no credentials
    (no AWS_* keys, an empty HOME: the standard chain finds nothing): each of sweep,
    analyze, runs and ingest says so in one line and exits 2."""
    home = tmp_path / "home"
    home.mkdir()
    config = tiny_config()
    with refusing_port() as held:       # bound, not listening: refused while held
        cases = [
            {"fault": "missing bucket", "set": {}, "unset": [], "url": "s3://no-such-bucket-kma/faults",
             "word": "no such bucket 'no-such-bucket-kma'"},
            {"fault": "unreachable endpoint", "unset": [], "url": "s3://kma/faults",
             "set": {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{held.getsockname()[1]}"},
             "word": "cannot reach it (EndpointConnectionError"},
            {"fault": "no credentials", "unset": _KEYS, "url": "s3://kma/faults",
             "set": {"HOME": str(home), "AWS_EC2_METADATA_DISABLED": "true"},   # no instance role here
             "word": "cannot reach it (NoCredentialsError"},
        ]
        for c in cases:
            c["commands"] = _commands(c["url"], config, checkpoints, tmp_path)
        r = subprocess.run([*kma_cmd()[:1], "-c", _RUN_ALL, json.dumps(cases)], capture_output=True, text=True,
                           env={**kma_env, **s3_server}, cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    results = json.loads(r.stdout.strip().splitlines()[-1])
    assert [(x["fault"], x["argv"][0]) for x in results] == [
        (c["fault"], cmd) for c in cases for cmd in ("sweep", "analyze", "runs", "ingest")]
    for c, x in zip([c for c in cases for _ in range(4)], results):
        lines = x["stderr"].strip().splitlines()
        assert x["rc"] == 2 and len(lines) == 1, (x["fault"], x["argv"][0], x["rc"], x["stderr"][-1500:])
        assert lines[0].startswith(f"kma: error: store {c['url']}: ") and c["word"] in lines[0], (x["fault"], lines)
        if x["fault"] == "no credentials":
            assert "AWS_ACCESS_KEY_ID" in lines[0]    # the line says what to set


# --------------------------------------------------------------------------- outages
def _stored_run(url, run_id, T=12, P=4000, seed=0):
    """A complete run on the S3 server (written directly, not through the proxy)."""
    rng = np.random.default_rng(seed)   # three decaying modes (something to certify) and a little noise
    lam = np.array([1.0, 0.9, 0.7])
    X = ((lam[None, :] ** np.arange(T)[:, None]) @ rng.standard_normal((3, P))
         + 1e-4 * rng.standard_normal((T, P))).astype(np.float32)
    layout = Layout.from_named_shapes([("a.weight", (P // 2,)), ("b.weight", (P - P // 2,))])
    w = TrajectoryStore(url).create_run(run_id, layout, extra={"sweep": "outage"})
    for x in X:
        w.append(x)
    w.finish("complete")
    return X


def test_brief_outage_mid_analysis_is_retried(s3_outage, tmp_path, kma_env):
    """The store goes away for 2 s at the analysis' first chunk read: the requests are
    retried with backoff, logged, and the analysis completes with the spectra of an
    undisturbed fit of the same run."""
    from pipeline.workflows.analyze import fit_run
    from pipeline.config import AnalysisParams

    url = "s3://kma/outage-analyze"
    _stored_run(url, "r")
    params = AnalysisParams.from_flags(method="qr", rank=None, tol=None, threshold=None, window=6, stride=3,
                                       per_layer=True, modes=False, seed=0)
    calm = fit_run(TrajectoryStore(url, read_only=True).open_run("r"), params).results_
    s3_outage.down_after(0, 2.0, match=rb"GET [^ ]*/weights/c/")
    r = subprocess.run(kma_cmd("analyze", "--store", url, "--window", "6", "--stride", "3", "--no-mlflow",
                               "--json", tmp_path / "a.json"),
                       capture_output=True, text=True, env={**kma_env, **s3_outage.env}, timeout=300)
    assert r.returncode == 0, r.stderr
    assert s3_outage.outages == 1
    assert "unreachable" in r.stderr and "retrying" in r.stderr    # logged, as a warning
    rows = json.loads((tmp_path / "a.json").read_text())["runs"]
    assert [(x["layer"], tuple(x["window"])) for x in rows] == [(c.layer, tuple(c.window)) for c in calm]
    assert any(c.eigenvalues.size for c in calm)   # something to compare (a window may keep no direction)
    for row, c in zip(rows, calm):
        np.testing.assert_array_equal(np.array(row["eigenvalues"], dtype=float).reshape(-1, 2),
                                      np.stack([c.eigenvalues.real, c.eigenvalues.imag], -1))


def test_long_outage_mid_ingest_is_one_line_and_loses_nothing(s3_outage, checkpoints, tmp_path, kma_env):
    """The store goes away at ``kma ingest``'s first chunk write and stays away past the
    retry time (``KMA_STORE_RETRY_SECONDS=2``): one line, exit 2. Back up, the run stored
    before is whole (complete, same snapshots), the cut-short one is not taken for
    complete, and ingesting it again succeeds."""
    from pipeline.workflows.ingest import ingest

    url = "s3://kma/outage-ingest"
    X = _stored_run(url, "kept")
    s3_outage.down_after(0, None, match=rb"PUT [^ ]*/weights/c/")
    r = subprocess.run(kma_cmd("ingest", "--store", url, "--run-id", "cut", *checkpoints), capture_output=True,
                       text=True, env={**kma_env, **s3_outage.env, "KMA_STORE_RETRY_SECONDS": "2"}, timeout=300)
    s3_outage.up()
    assert s3_outage.outages == 1
    errors = [line for line in r.stderr.splitlines() if line.startswith("kma: error:")]
    assert r.returncode == 2 and len(errors) == 1 and "Traceback" not in r.stderr, r.stderr
    assert errors[0].startswith(f"kma: error: store {url}: unreachable") and "KMA_STORE_RETRY_SECONDS" in errors[0]
    assert r.stderr.strip().splitlines()[-1] == errors[0]
    store = TrajectoryStore(url, read_only=True)
    kept = store.open_run("kept")
    assert kept.status == "complete" and kept.missing_chunks() == []
    np.testing.assert_array_equal(kept.weights().compute(), X)
    assert store.status("cut") not in (None, "complete")       # begun, cut short, not complete
    ingest(checkpoints, url, "cut")                              # the store is back: again, whole
    again = TrajectoryStore(url, read_only=True).open_run("cut")
    assert again.status == "complete" and again.n_snapshots == len(checkpoints)
