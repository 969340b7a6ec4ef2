"""The config loader: the issue's shape, units, env substitution, and errors naming file,
line, key."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from shadowproxy.cli import main
from shadowproxy.config import load, loads, parse_duration, parse_size
from shadowproxy.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent

ISSUE_SHAPE = """\
listen: 127.0.0.1:8080
admin: {listen: 127.0.0.1:8081}
upstreams:
  primary: http://127.0.0.1:9001
  candidate: http://127.0.0.1:9002
  secondary: http://127.0.0.1:9003     # optional
mirror:
  sample: 1.0
  methods: [GET, HEAD, OPTIONS]
  max_body: 1MiB
  queue: 10000
  concurrency: 64
  timeout: 5s
  add_headers: {X-Shadow-Request: "1"}
routes:
  - name: user
    match: /api/users/{id}
    methods: [GET]
  - match: /admin/**
    mirror: false
store:
  url: sqlite:///./shadowproxy.db
"""


def test_issue_shape_loads_into_typed_frozen_config() -> None:
    cfg = loads(ISSUE_SHAPE, file="shape.yaml")
    assert cfg.upstreams.secondary == "http://127.0.0.1:9003"
    assert cfg.mirror.max_body == 1024 * 1024
    assert cfg.mirror.timeout == 5.0
    assert cfg.mirror.methods == ("GET", "HEAD", "OPTIONS")
    assert cfg.routes[0].key == "user" and cfg.routes[0].methods == ("GET",)
    assert cfg.routes[1].key == "/admin/**" and cfg.routes[1].mirror is False
    with pytest.raises(AttributeError):
        cfg.listen = "x"  # type: ignore[misc]


@pytest.mark.parametrize("text,seconds", [("250ms", 0.25), ("5s", 5), ("1m", 60), ("2h", 7200),
                                          ("7d", 604800), (3, 3.0), ("1.5s", 1.5)])
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text,n", [("64KiB", 65536), ("1MiB", 1048576), ("10MB", 10_000_000),
                                    (512, 512), ("1GiB", 1024**3)])
def test_sizes(text: object, n: int) -> None:
    assert parse_size(text) == n


def test_env_substitution_retypes_plain_scalars() -> None:
    text = "upstreams:\n  primary: ${P}\nmirror:\n  queue: ${Q}\n  timeout: ${T:-250ms}\n"
    cfg = loads(text, env={"P": "http://127.0.0.1:1", "Q": "42"})
    assert cfg.upstreams.primary == "http://127.0.0.1:1"
    assert cfg.mirror.queue == 42 and cfg.mirror.timeout == 0.25


@pytest.mark.parametrize("text,line,key,words", [
    ("upstreams:\n  primary: http://a:1\nmirror:\n  queu: 3\n", 4, "mirror.queu", "unknown key"),
    ("upstreams:\n  primary: http://a:1\nmirror:\n  queue: many\n", 4, "mirror.queue",
     "expected an integer"),
    ("upstreams:\n  primary: http://a:1\nmirror:\n  timeout: 5 parsecs\n", 4, "mirror.timeout",
     "duration"),
    ("upstreams:\n  primary: ftp://a\n", 2, "upstreams.primary", "http://"),
    ("upstreams:\n  primary: http://a:1\nmirror:\n  sample: 1.5\n", 4, "mirror.sample",
     "between 0 and 1"),
    ("upstreams:\n  primary: http://a:1\nroutes:\n  - match: /a\n  - match: nope\n", 5,
     "routes[1].match", "starts with '/'"),
    ("upstreams:\n  primary: ${MISSING}\n", 2, "upstreams.primary", "MISSING is not set"),
    ("listen: 127.0.0.1:80\n", 1, "upstreams", "required key is missing"),
    ("upstreams:\n  primary: http://a:1\nmirror: [1, 2]\n", 3, "mirror", "expected a mapping"),
    ("upstreams:\n  primary: http://a:1\nlisten: nope\n", 3, "listen", "host:port"),
    ("upstreams:\n  primary: http://a:1\nmirror:\n  sample_by: user\n", 4, "mirror.sample_by",
     "header:NAME"),
    ("upstreams:\n  primary: http://a:1\ncompare:\n  arrays:\n    - {path: $.a, mode: keyed}\n",
     5, "compare.arrays[0].key", "needs a key"),
    ("upstreams: {primary: http://a:1}\nchecks:\n  - name: x\n", 3, "checks[0]",
     "at least one"),
    ("upstreams: {primary: http://a:1}\nchecks:\n  - name: x\n    max_p50_ratio: 1.1\n"
     "    latency_baseline: candidate\n", 5, "checks[0].latency_baseline",
     "expected one of secondary, primary"),
    ("upstreams: {primary: http://a:1}\nroutes:\n  - {match: /o, methods: [GET]}\n"
     "  - {match: /o, methods: [POST], compare: {ignore: [$.id]}}\n", 4, "routes[1]",
     "distinct name"),
    ("upstreams:\n  primary: http://a:1\n  primary: http://b:1\n", 3, "upstreams.primary",
     "twice"),
    ("upstreams: {primary: http://a:1}\nmirror:\n  add_headers: {Content-Length: '0'}\n", 3,
     "mirror.add_headers", "the proxy's to set"),
    ("upstreams: {primary: http://a:1}\nmirror:\n  add_headers: {Host: shadow}\n", 3,
     "mirror.add_headers", "the proxy's to set"),
    ("upstreams: {primary: http://a:1}\nmirror:\n  add_headers: {'X A': '1'}\n", 3,
     "mirror.add_headers", "not a header name"),
    ("upstreams: {primary: http://a:1}\nmirror:\n  add_headers: {X-Env: \"a\\r\\nX-Evil: 1\"}\n",
     3, "mirror.add_headers", "printable ASCII"),
    ("upstreams: {primary: http://a:1}\nmirror:\n  add_headers: {X-Env: \"caf\\u00e9\"}\n", 3,
     "mirror.add_headers", "printable ASCII"),
    ("upstreams: {primary: http://a:1}\nroutes:\n  - match: /x\n    compare:\n"
     "      ignor: [$.a]\n", 5, "routes[0].compare.ignor", "unknown key"),
    ("upstreams: {primary: http://a:1}\nadmin:\n  listen: 0.0.0.0:9\n", 3, "admin.listen",
     "beyond loopback without a token"),
    ("upstreams: {primary: http://a:1}\nadmin:\n  listen: 0.0.0.0:9\n  token_env: EMPTY\n", 3,
     "admin.listen", "beyond loopback without a token"),
    ("upstreams: {primary: http://a:1}\ntimeouts:\n  primary: 0s\n", 3, "timeouts.primary",
     "greater than 0"),
    ("upstreams: {primary: http://a:1}\ntimeouts:\n  connect: 0ms\n", 3, "timeouts.connect",
     "greater than 0"),
    ("upstreams: {primary: http://a:1}\nshadow:\n  processes: 0\n", 3, "shadow.processes",
     "at least 1"),
    ("upstreams: {primary: http://a:1}\nshadow:\n  nice: 20\n", 3, "shadow.nice",
     "between 0"),
    ("upstreams: {primary: http://a:1}\nshadow:\n  nice: -5\n", 3, "shadow.nice",
     "between 0"),
])
def test_errors_name_file_line_and_key(text: str, line: int, key: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        loads(text, file="bad.yaml", env={"EMPTY": ""})
    err = info.value
    assert err.file == "bad.yaml"
    assert err.line == line, str(err)
    assert err.key == key, str(err)
    assert words in str(err)
    assert str(err).startswith(f"bad.yaml:{line}: {key}: ")


def test_the_config_names_the_line_of_a_key_for_later_errors() -> None:
    cfg = loads("upstreams: {primary: http://a:1}\n\nlisten: 127.0.0.1:8080\n", file="c.yaml")
    assert cfg.where("listen") == "c.yaml:3: listen"
    assert cfg.where("admin.listen") == "c.yaml: admin.listen"     # a default: no line
    assert loads("upstreams: {primary: http://a:1}\nadmin: {listen: '[::1]:9'}\n")  # loopback


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("upstreams:\n  primary: http://a:1\nmirror: {queue: 3\n")
    with pytest.raises(ConfigError) as info:
        load(p)
    assert info.value.line is not None and info.value.file == str(p)


def test_example_and_demo_configs_are_valid() -> None:
    for path in sorted((ROOT / "config").glob("*.yaml")):
        load(path, env={"SHADOWPROXY_ADMIN_TOKEN": "t"})


def test_cli_validate_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(textwrap.dedent(ISSUE_SHAPE))
    bad = tmp_path / "bad.yaml"
    bad.write_text("upstreams:\n  primary: http://a:1\nworkers: -1\n")
    assert main(["validate", "-c", str(good)]) == 0
    assert main(["validate", "-c", str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:3: workers: must be at least 1" in err
    assert main(["validate", "-c", str(tmp_path / "missing.yaml")]) == 2


def _keys(cls: type, prefix: str = "") -> list[str]:
    import dataclasses
    import typing

    out = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if cls.__name__ == "Config" and f.name in ("source", "lines"):
            continue
        out.append(prefix + f.name)
        tp = hints[f.name]
        for arg in (tp, *typing.get_args(tp)):
            for inner in (arg, *typing.get_args(arg)):
                if dataclasses.is_dataclass(inner):
                    out.extend(_keys(inner, prefix + f.name + "."))
    return out


def test_configuration_reference_names_every_key() -> None:
    import re

    from shadowproxy.config import Config

    doc = (ROOT / "docs" / "configuration.md").read_text()
    missing = sorted({k for k in _keys(Config)
                      if not re.search(r"[`{.,] ?" + re.escape(k.rsplit(".", 1)[-1]) + r"[`},.]",
                                       doc)})
    assert not missing, f"docs/configuration.md lacks {missing}"


def test_store_url_postgres_password_env_and_instance():
    base = "upstreams: {primary: http://a:1}\n"
    cfg = loads(base + "instance: pod-7\nstore: {url: 'postgresql://sp@db:5432/shadow?sslmode="
                "require', password_env: PGPW}\n", env={"PGPW": "x"})
    assert cfg.instance == "pod-7" and cfg.store.password_env == "PGPW"
    assert loads(base + "store: {url: 'postgres://sp@db/shadow'}\n").store.url.startswith(
        "postgres://")
    import os
    import socket
    assert loads(base).instance == (os.environ.get("POD_NAME") or socket.gethostname())
    for text, key in [
            ("store: {url: 'mysql://a/b'}\n", "store.url"),
            ("store: {url: 'postgresql://sp@db:5432/'}\n", "store.url"),
            ("store: {url: 'postgresql://sp@db:5432/x', password_env: NOPE}\n",
             "store.password_env"),
            ("store: {password_env: PGPW}\n", "store.password_env"),
            ("instance: 'a b'\n", "instance")]:
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            loads(base + text, env={"PGPW": "x"})
