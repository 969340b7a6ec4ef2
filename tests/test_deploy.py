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
                env={"SHADOWPROXY_ADMIN_TOKEN": "t"})
    assert cfg.upstreams.primary == "http://127.0.0.1:9000"
    assert cfg.mirror.sample_by == "header:X-User-Id"
    deploy = next(d for d in docs if d["kind"] == "Deployment")
    containers = {c["name"]: c for c in deploy["spec"]["template"]["spec"]["containers"]}
    side = containers["shadowproxy"]
    assert side["args"] == ["run", "-c", "/etc/shadowproxy/config.yaml"]
    mounts = {m["name"]: m["mountPath"] for m in side["volumeMounts"]}
    assert mounts["config"] == "/etc/shadowproxy"
    # the app container listens where the config's primary points
    assert containers["app"]["ports"][0]["containerPort"] == 9000


def test_dockerfile_runs_the_cli_with_the_mounted_config() -> None:
    text = (ROOT / "deploy/Dockerfile").read_text()
    assert 'ENTRYPOINT ["shadowproxy"]' in text
    assert '"/etc/shadowproxy/config.yaml"' in text
    assert "STOPSIGNAL SIGTERM" in text
