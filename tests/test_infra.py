"""infra/ checked offline (no Kubernetes API server or Docker engine here): every manifest
parses; the Services the KubeRay manifests name (``http://mlflow:5000``) exist with those
ports and select the pods that serve them; the MLflow server reaches PostgreSQL through
psycopg2 (a bare ``postgresql://`` resolves to psycopg 3 under SQLAlchemy 2.1, which the
image lacks: the compose stack could not start); secrets are referenced, never inlined;
the MLflow/psycopg2 pins agree between the [cluster] extra and the image."""

from __future__ import annotations

import json
import re
import tomllib

import pytest
import yaml

from conftest import REPO

INFRA = REPO / "infra"


def _docs(path):
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _k8s():
    """Every Kubernetes object under infra/k8s and infra/kuberay."""
    return [d for sub in ("k8s", "kuberay") for p in sorted((INFRA / sub).glob("*.yaml")) for d in _docs(p)]


def _strings(obj):
    """Every string value in a parsed YAML tree."""
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _strings(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _strings(v)


def _containers(obj):
    spec = obj["spec"]["template"]["spec"]
    return spec["containers"]


def test_every_infra_yaml_parses():
    files = sorted(INFRA.rglob("*.yaml"))
    assert {p.name for p in files} >= {"compose.yaml", "ray-cluster.yaml", "raycluster.yaml", "rayjob.yaml",
                                       "mlflow.yaml", "postgres.yaml"}
    for p in files:
        assert _docs(p), p


def test_services_the_ray_jobs_name_exist_and_select_their_pods():
    objs = _k8s()
    services = {o["metadata"]["name"]: o for o in objs if o["kind"] == "Service"}
    workloads = [o for o in objs if o["kind"] in ("Deployment", "StatefulSet")]
    kuberay = "\n".join(_strings([d for f in ("raycluster.yaml", "rayjob.yaml")
                                  for d in _docs(INFRA / "kuberay" / f)]))   # values, not comments
    named = set(re.findall(r"http://([a-z0-9-]+):(\d+)", kuberay))
    assert ("mlflow", "5000") in named
    for host, port in named:
        svc = services.get(host)
        assert svc is not None, f"the KubeRay manifests use http://{host}:{port}; no Service {host} in infra/k8s"
        (sport,) = [p for p in svc["spec"]["ports"] if p["port"] == int(port)]
        # a workload whose pods carry the selector's labels and expose the target port
        sel = svc["spec"]["selector"]
        backing = [w for w in workloads
                   if sel.items() <= w["spec"]["template"]["metadata"]["labels"].items()]
        assert len(backing) == 1, f"Service {host}: {len(backing)} workloads match {sel}"
        assert sel.items() <= backing[0]["spec"]["selector"]["matchLabels"].items()
        ports = {(p.get("name"), p["containerPort"]) for c in _containers(backing[0]) for p in c["ports"]}
        assert any(sport["targetPort"] in (name, num) for name, num in ports), (host, sport, ports)


def _env(container) -> list[tuple[str, dict]]:
    return [(e["name"], e) for e in container.get("env", [])]


def test_mlflow_deployment_uses_psycopg2_and_the_postgres_service():
    from sqlalchemy.engine import make_url

    objs = _k8s()
    services = {o["metadata"]["name"]: o for o in objs if o["kind"] == "Service"}
    (dep,) = [o for o in objs if o["kind"] == "Deployment" and o["metadata"]["name"] == "mlflow"]
    (c,) = _containers(dep)
    env = _env(c)
    values = {}
    for name, e in env:   # Kubernetes expands $(VAR) only from variables defined before it
        if "value" in e:
            for ref in re.findall(r"\$\((\w+)\)", e["value"]):
                assert ref in values, f"{name} uses $({ref}) before it is defined"
            values[name] = re.sub(r"\$\((\w+)\)", lambda m: values[m.group(1)], e["value"])
        else:
            values[name] = f"<{name}>"
    uri = values["MLFLOW_BACKEND_STORE_URI"].replace("<POSTGRES_PASSWORD>", "pw")
    url = make_url(uri)
    assert url.get_dialect().driver == "psycopg2"
    (pg_port,) = [p["port"] for p in services[url.host]["spec"]["ports"]]
    assert url.port == pg_port == 5432
    assert values["MLFLOW_ARTIFACTS_DESTINATION"].startswith("s3://")
    assert values["MLFLOW_SERVE_ARTIFACTS"] == "true"
    assert "mlflow:5000" in values["MLFLOW_SERVER_ALLOWED_HOSTS"].split(",")


def test_compose_mlflow_backend_resolves_to_psycopg2():
    """The bug: ``postgresql://`` is psycopg 3 under SQLAlchemy 2.1; the compose file names
    psycopg2, which the image (and the [cluster] extra) installs."""
    from sqlalchemy.engine import make_url

    compose = yaml.safe_load((INFRA / "compose.yaml").read_text())
    cmd = compose["services"]["mlflow"]["command"]
    uri = cmd[cmd.index("--backend-store-uri") + 1]
    resolved = re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", uri)   # compose's ${VAR:-default}
    assert make_url(resolved).get_dialect().driver == "psycopg2"
    pytest.importorskip("psycopg2")   # the driver imports (an import error was the compose failure)
    make_url(resolved).get_dialect().import_dbapi()
    if make_url("postgresql://u@h/d").get_dialect().driver != "psycopg2":
        assert not uri.startswith("postgresql://")


def test_secrets_are_referenced_not_inlined():
    objs = _k8s()
    assert not [o for o in objs if o["kind"] == "Secret"], "a Secret's values in a manifest"
    headers = "\n".join(p.read_text() for sub in ("k8s", "kuberay") for p in (INFRA / sub).glob("*.yaml"))
    for o in objs:
        if o["kind"] not in ("Deployment", "StatefulSet", "RayCluster"):
            continue
        specs = ([g["template"] for g in [o["spec"]["headGroupSpec"], *o["spec"]["workerGroupSpecs"]]]
                 if o["kind"] == "RayCluster" else [o["spec"]["template"]])
        for spec in specs:
            for c in spec["spec"]["containers"]:
                for name, e in _env(c):
                    if re.search(r"PASSWORD|SECRET|ACCESS_KEY|TOKEN", name):
                        assert "valueFrom" in e, f"{o['metadata']['name']}: {name} given inline"
                refs = [s["secretRef"]["name"] for s in c.get("envFrom", []) if "secretRef" in s]
                refs += [e["valueFrom"]["secretKeyRef"]["name"] for _, e in _env(c)
                         if "secretKeyRef" in e.get("valueFrom", {})]
                for ref in refs:   # each Secret has its `kubectl create secret` line in a header
                    assert f"kubectl create secret generic {ref}" in headers, ref


def test_mlflow_and_psycopg2_pinned_alike_in_extra_and_image():
    extra = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["cluster"]
    pins = dict(re.fullmatch(r"([A-Za-z0-9_.-]+)(?:\[[^]]*\])?==(.+)", x).groups() for x in extra if "==" in x)
    docker = (INFRA / "Dockerfile").read_text()
    args = dict(re.findall(r"^ARG (\w+)=(\S+)$", docker, re.M))
    assert pins["mlflow"] == args["MLFLOW_VERSION"]
    assert pins["psycopg2-binary"] == args["PSYCOPG2_VERSION"]
    assert '"psycopg2-binary==${PSYCOPG2_VERSION}"' in docker and '"mlflow==${MLFLOW_VERSION}"' in docker


def test_store_policy_covers_the_bucket_the_jobs_use():
    policy = json.loads((INFRA / "iam-store-policy.json").read_text())
    text = "\n".join((INFRA / f).read_text() for f in ("ray-cluster.yaml", "kuberay/rayjob.yaml"))
    buckets = set(re.findall(r"s3://([a-z0-9.-]+)/", text))
    assert buckets == {"kma"}
    resources = {r for s in policy["Statement"] for r in ([s["Resource"]] if isinstance(s["Resource"], str)
                                                          else s["Resource"])}
    actions = {a for s in policy["Statement"] for a in s["Action"]}
    for b in buckets:
        assert {f"arn:aws:s3:::{b}", f"arn:aws:s3:::{b}/*"} <= resources
    # what the store does: list, read, write, delete (wipes, leases), multipart chunk uploads
    assert {"s3:ListBucket", "s3:GetObject", "s3:PutObject", "s3:DeleteObject",
            "s3:AbortMultipartUpload"} <= actions
