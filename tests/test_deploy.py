"""deploy/: the sidecar's embedded config loads with the real loader; the Dockerfile runs
the CLI."""

from __future__ import annotations

from pathlib import Path

import yaml

from shadowproxy.config import loads

ROOT = Path(__file__).resolve().parent.parent


def test_sidecar_configmap_is_a_valid_config() -> None:
    docs = list(yaml.safe_load_all((ROOT / "deploy/kubernetes/sidecar.yaml").read_text()))
    cm = next(d for d in docs if d["kind"] == "ConfigMap")
    cfg = loads(cm["data"]["config.yaml"], file="sidecar.yaml#config.yaml",
                env={"SHADOWPROXY_ADMIN_TOKEN": "t", "SHADOWPROXY_DB_PASSWORD": "p",
                     "POD_NAME": "orders-7f9c-abcde"})
    assert cfg.upstreams.primary == "http://127.0.0.1:9000"
    # the fleet's one store, the password from a Secret, each pod's rows its own
    assert cfg.store.url.startswith("postgresql://") and ":p@" not in cfg.store.url
    assert cfg.store.password_env == "SHADOWPROXY_DB_PASSWORD"
    assert cfg.mirror.sample_by == "header:X-User-Id"
    deploy = next(d for d in docs if d["kind"] == "Deployment")
    containers = {c["name"]: c for c in deploy["spec"]["template"]["spec"]["containers"]}
    side = containers["shadowproxy"]
    assert side["args"] == ["run", "-c", "/etc/shadowproxy/config.yaml"]
    mounts = {m["name"]: m["mountPath"] for m in side["volumeMounts"]}
    assert mounts["config"] == "/etc/shadowproxy"
    # the app container listens where the config's primary points
    assert containers["app"]["ports"][0]["containerPort"] == 9000
    env = {e["name"]: e["valueFrom"] for e in side["env"]}
    assert env["SHADOWPROXY_DB_PASSWORD"]["secretKeyRef"]["name"] == "shadowproxy-db"
    assert env["POD_NAME"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert any(d["kind"] == "Secret" and d["metadata"]["name"] == "shadowproxy-db"
               for d in docs)


def test_report_cronjob_reads_the_shared_store_with_the_password_secret() -> None:
    docs = list(yaml.safe_load_all(
        (ROOT / "deploy/kubernetes/report-cronjob.yaml").read_text()))
    job = next(d for d in docs if d["kind"] == "CronJob")
    pod = job["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    (report,) = pod["containers"]
    env = {e["name"]: e["valueFrom"] for e in report["env"]}
    assert env["SHADOWPROXY_DB_PASSWORD"]["secretKeyRef"]["name"] == "shadowproxy-db"
    assert "affinity" not in pod          # PostgreSQL: any node, no shared volume


def test_compose_runs_two_instances_on_one_postgres_store() -> None:
    compose = yaml.safe_load((ROOT / "deploy/compose/compose.yaml").read_text())
    services = compose["services"]
    assert {"postgres", "proxy-a", "proxy-b"} <= set(services)
    text = (ROOT / "deploy/compose/shadowproxy.yaml").read_text()
    for name in ("proxy-a", "proxy-b"):
        env = services[name]["environment"]
        cfg = loads(text, file="compose/shadowproxy.yaml",
                    env={"INSTANCE": env["INSTANCE"], "PRIMARY": "http://p:9000",
                         "CANDIDATE": "http://c:9001", "SHADOWPROXY_DB_PASSWORD": "x",
                         "SHADOWPROXY_ADMIN_TOKEN": env["SHADOWPROXY_ADMIN_TOKEN"]})
        assert cfg.instance == name
        assert cfg.store.url == "postgresql://shadowproxy@postgres:5432/shadowproxy"


def test_dockerfile_runs_the_cli_with_the_mounted_config() -> None:
    text = (ROOT / "deploy/Dockerfile").read_text()
    assert 'ENTRYPOINT ["shadowproxy"]' in text
    assert '"/etc/shadowproxy/config.yaml"' in text
    assert "STOPSIGNAL SIGTERM" in text
    assert "'.[postgres]'" in text         # psycopg, for the fleet's store
