"""deploy/: the sidecar's embedded config loads with the real loader; the Dockerfile runs
the CLI."""

from __future__ import annotations

import shlex
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
    assert "'.[postgres,fleet]'" in text   # psycopg, for the fleet's store; the transport


_FLEET_ENV = {"SHADOWPROXY_ADMIN_TOKEN": "t", "SHADOWPROXY_DB_PASSWORD": "p",
              "SHADOWPROXY_REDIS_PASSWORD": "r", "SHADOWPROXY_REDACT_KEY": "k",
              "POD_NAME": "orders-7f9c-abcde"}


def test_kubernetes_fleet_sidecars_and_comparators_share_a_valid_config() -> None:
    fleet = ROOT / "deploy/kubernetes/fleet"
    docs = list(yaml.safe_load_all((fleet / "config.yaml").read_text()))
    cm = next(d for d in docs if d["kind"] == "ConfigMap")
    cfg = loads(cm["data"]["config.yaml"], file="fleet/config.yaml#config.yaml",
                env=_FLEET_ENV)
    assert cfg.transport.url is not None and cfg.transport.url.startswith("redis://redis.")
    assert "@" not in cfg.transport.url          # the password from a Secret
    assert cfg.transport.password_env == "SHADOWPROXY_REDIS_PASSWORD"
    assert cfg.redact.key_env == "SHADOWPROXY_REDACT_KEY"
    assert "postgres.default.svc" in cfg.store.url
    secrets = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Secret"}
    side = next(d for d in yaml.safe_load_all((fleet / "sidecar.yaml").read_text())
                if d["kind"] == "Deployment")
    comp_docs = list(yaml.safe_load_all((fleet / "comparators.yaml").read_text()))
    comp = next(d for d in comp_docs if d["kind"] == "Deployment")
    for deploy, args in ((side, ["run", "-c", "/etc/shadowproxy/config.yaml"]),
                         (comp, ["compare", "-c", "/etc/shadowproxy/config.yaml",
                                 "--processes", "2"])):
        containers = deploy["spec"]["template"]["spec"]["containers"]
        sp = next(c for c in containers if c.get("args", [""])[0] in ("run", "compare"))
        assert sp["args"] == args
        env = {e["name"]: e["valueFrom"] for e in sp["env"]}
        for name in ("SHADOWPROXY_REDIS_PASSWORD", "SHADOWPROXY_REDACT_KEY",
                     "SHADOWPROXY_DB_PASSWORD"):
            ref = env[name]["secretKeyRef"]
            assert ref["key"] in secrets[ref["name"]]["stringData"], name
        vols = deploy["spec"]["template"]["spec"]["volumes"]
        assert vols[0]["configMap"]["name"] == "shadowproxy-fleet-config"
    # the autoscaler scales on a metric the sidecars export
    hpa = next(d for d in comp_docs if d["kind"] == "HorizontalPodAutoscaler")
    metric = hpa["spec"]["metrics"][0]["external"]["metric"]["name"]
    assert metric == "shadowproxy_transport_lag"
    assert f'"{metric}"' in (ROOT / "shadowproxy/admin/metrics.py").read_text()
    assert hpa["spec"]["scaleTargetRef"]["name"] == comp["metadata"]["name"]


def test_compose_fleet_runs_sidecars_comparators_redis_and_postgres() -> None:
    compose = yaml.safe_load((ROOT / "deploy/compose/fleet.yaml").read_text())
    services = compose["services"]
    assert {"redis", "postgres", "sidecar-a", "sidecar-b", "comparators"} <= set(services)
    assert services["comparators"]["command"][0] == "compare"
    text = (ROOT / "deploy/compose/fleet-shadowproxy.yaml").read_text()
    cfg = loads(text, file="compose/fleet-shadowproxy.yaml",
                env={**_FLEET_ENV, "INSTANCE": "sidecar-a", "PRIMARY": "http://p:9000",
                     "CANDIDATE": "http://c:9001"})
    assert cfg.transport.url == "redis://redis:6379/0"
    assert cfg.store.url == "postgresql://shadowproxy@postgres:5432/shadowproxy"


def test_replay_cronjob_picks_yesterdays_files_by_name_once(tmp_path: Path) -> None:
    """The job's own selection, run by sh over a directory of recordings: the files
    opened yesterday (UTC) by the time in their names, gzipped or not, and no other:
    not today's open file, not one opened the day before (whatever its mtime)."""
    import datetime
    import os
    import subprocess

    docs = list(yaml.safe_load_all(
        (ROOT / "deploy/kubernetes/replay-cronjob.yaml").read_text()))
    job = next(d for d in docs if d["kind"] == "CronJob")
    script = job["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["args"][0]
    select = [s.strip() for s in script.split(";")
              if s.strip().startswith(("day=", "files="))]
    assert len(select) == 2 and "-mmin" not in script
    now = datetime.datetime.now(datetime.UTC)
    day = lambda d: (now - datetime.timedelta(days=d)).strftime("%Y%m%d")  # noqa: E731
    names = {f"shadowproxy-pod-a-s0-{day(1)}T010203Z.gor.gz": True,
             f"shadowproxy-pod-b-s1-{day(1)}T235959Z-1.gor": True,
             f"shadowproxy-pod-a-s0-{day(0)}T000102Z.gor": False,
             f"shadowproxy-pod-a-s0-{day(2)}T120000Z.gor.gz": False}
    for name in names:
        (tmp_path / name).write_bytes(b"")
        os.utime(tmp_path / name)                      # every mtime: now
    shell = "; ".join(select).replace("/recordings", str(tmp_path)) + '; echo "$files"'
    out = subprocess.run(["sh", "-c", shell], capture_output=True, text=True, check=True)
    got = {os.path.basename(p) for p in out.stdout.split()}
    assert got == {n for n, want in names.items() if want}


def test_replay_cronjob_replays_the_last_day_and_reports_the_run() -> None:
    docs = list(yaml.safe_load_all(
        (ROOT / "deploy/kubernetes/replay-cronjob.yaml").read_text()))
    job = next(d for d in docs if d["kind"] == "CronJob")
    pod = job["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    (replay,) = pod["containers"]
    script = replay["args"][0]
    # the commands and options the CLI has, in order: replay, report by webhook, check
    from shadowproxy.cli import _parser
    steps = [s.strip() for s in script.split(";") if s.strip().startswith("shadowproxy ")]
    assert [s.split()[1] for s in steps] == ["replay", "report", "check"]
    for step in steps:
        argv = [a for a in shlex.split(step)[1:] if "REPORT_WEBHOOK" not in a]
        argv = [a.replace("$files", "x.gor").replace("$run", "r") for a in argv]
        _parser().parse_args(argv)                # exits on an unknown option
        assert "--run" in argv
    assert "--webhook" in steps[1] and "Bearer ${REPLAY_TOKEN}" in steps[0]
    env = {e["name"]: e.get("valueFrom") for e in replay["env"]}
    assert env["REPLAY_TOKEN"]["secretKeyRef"]["name"] == "shadowproxy-replay"
    # the recordings' masks are the sidecars': the job masks with the same key
    side = list(yaml.safe_load_all((ROOT / "deploy/kubernetes/sidecar.yaml").read_text()))
    cm = next(d for d in side if d["kind"] == "ConfigMap")
    assert pod["volumes"][0]["configMap"]["name"] == cm["metadata"]["name"]
    key_env = loads(cm["data"]["config.yaml"], file="sidecar.yaml#config.yaml",
                    env={"SHADOWPROXY_ADMIN_TOKEN": "t",
                         "SHADOWPROXY_DB_PASSWORD": "p"}).redact.key_env
    assert key_env, "the sidecars mask with a random key: no replay can compare masks"
    deploy = next(d for d in side if d["kind"] == "Deployment")
    (proxy,) = [c for c in deploy["spec"]["template"]["spec"]["containers"]
                if c["name"] == "shadowproxy"]
    side_env = {e["name"]: e.get("valueFrom") for e in proxy["env"]}
    assert env[key_env] == side_env[key_env] is not None
    assert env["SHADOWPROXY_DB_PASSWORD"]["secretKeyRef"]["name"] == "shadowproxy-db"
    mounts = {m["name"]: m["mountPath"] for m in replay["volumeMounts"]}
    assert mounts["recordings"] == "/recordings"
    claim = next(d for d in docs if d["kind"] == "PersistentVolumeClaim")
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
