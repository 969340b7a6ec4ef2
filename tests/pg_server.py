"""A throwaway PostgreSQL from Debian's packages, started on loopback by the tests
(the PostgreSQL counterpart of :mod:`tests.servers`).

Debian keeps the server binaries off PATH, in ``/usr/lib/postgresql/<major>/bin``
(package ``postgresql``, which pulls ``postgresql-<major>``); the newest installed major
is used (``SHADOWPROXY_PG_BINDIR`` overrides). ``initdb`` runs into a fresh directory,
the server listens on 127.0.0.1 on a free port with its Unix socket in that directory,
with durability off (``fsync``, ``synchronous_commit``, ``full_page_writes``): a test
server, not a store to keep.

As root, ``initdb`` and ``postgres`` refuse to run, so both run as the ``postgres``
system user (created by the package) through ``subprocess``'s ``user=``/``group=``
(``runuser -u postgres --`` does the same by hand). That user must be able to reach
the directory: pytest's own temp dirs (``/tmp/pytest-of-root``) are 0700 root, so a
private ``/tmp/sp-pg-*`` (0700, chowned to postgres, removed at stop) is used then.

When ``CI=true`` missing binaries are a failure, never a silent skip.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

from tests.servers import _free_port

PACKAGE = "postgresql"   # Debian: the supported major (postgresql-15 on bookworm)
_NEEDED = ("initdb", "postgres", "createdb")
_SOCKET_MAX = 100        # sun_path is 108 bytes; "/.s.PGSQL.65535" is added to the dir

# fast and quiet: nothing a test server needs to survive a crash
SETTINGS = {
    "listen_addresses": "127.0.0.1",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "wal_level": "minimal",
    "max_wal_senders": "0",
    "max_connections": "100",
    "shared_buffers": "64MB",
    "jit": "off",
    "timezone": "UTC",
    "log_min_messages": "warning",
    "logging_collector": "off",
}


def _clean_env() -> dict[str, str]:
    """The environment without libpq's PG* variables (PGHOST, PGPASSWORD, ...), which
    would otherwise redirect our client programs."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PG")}


def find_bindir() -> Path | None:
    """The directory holding initdb/postgres/createdb: ``SHADOWPROXY_PG_BINDIR``, else
    the newest ``/usr/lib/postgresql/<major>/bin``, else wherever PATH has initdb."""
    cands: list[Path] = []
    if os.environ.get("SHADOWPROXY_PG_BINDIR"):
        cands.append(Path(os.environ["SHADOWPROXY_PG_BINDIR"]))
    majors = []
    for d in Path("/usr/lib/postgresql").glob("*/bin"):
        try:
            majors.append((float(d.parent.name), d))
        except ValueError:
            continue
    cands.extend(d for _v, d in sorted(majors, reverse=True))
    which = shutil.which("initdb")
    if which:
        cands.append(Path(os.path.realpath(which)).parent)
    for d in cands:
        if all(os.access(d / b, os.X_OK) for b in _NEEDED):
            return d
    return None


def require_postgres() -> Path:
    """The bin dir, or skip (fail when CI=true) with how to install it."""
    found = find_bindir()
    if found is not None:
        return found
    msg = (f"PostgreSQL server binaries ({', '.join(_NEEDED)}) not found in "
           f"/usr/lib/postgresql/*/bin: apt-get install {PACKAGE}")
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(msg)
    pytest.skip(msg)


def _reachable(path: Path, uid: int, gids: set[int]) -> bool:
    """Can ``uid`` search every directory from / down to ``path``?"""
    p = path.resolve()
    for d in [p, *p.parents]:
        st = d.stat()
        if st.st_uid == uid:
            bit = stat.S_IXUSR
        elif st.st_gid in gids:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not st.st_mode & bit:
            return False
    return True


class PgServer:
    """One PostgreSQL cluster: ``initdb`` then ``postgres`` in the foreground."""

    def __init__(self, root: Path, *, user: str = "shadowproxy",
                 database: str = "shadowproxy", password: str | None = None,
                 bindir: Path | None = None, settings: dict[str, str] | None = None) -> None:
        self.settings = {**SETTINGS, **(settings or {})}
        found = bindir or find_bindir()
        if found is None:
            raise RuntimeError(f"PostgreSQL binaries not found: apt-get install {PACKAGE}")
        self.bindir: Path = found
        self.user = user
        self.database = database
        self.password = password
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self._owned_root = False
        self._run_as: pwd.struct_passwd | None = None
        if os.geteuid() == 0:
            try:
                self._run_as = pwd.getpwnam("postgres")
            except KeyError:
                raise RuntimeError("running as root: initdb and postgres refuse root and "
                                   "the 'postgres' system user (made by the postgresql "
                                   "package) does not exist") from None
        root = Path(root)
        root.mkdir(parents=True, exist_ok=True)
        usable = len(str(root.resolve())) <= _SOCKET_MAX
        if self._run_as is not None and usable:
            ru = self._run_as
            gids = {ru.pw_gid, *os.getgrouplist(ru.pw_name, ru.pw_gid)}
            usable = _reachable(root, ru.pw_uid, gids)
        if usable:
            root = root / f"pg-{secrets.token_hex(3)}"
            root.mkdir()
        else:   # e.g. pytest's 0700 root-owned dirs, or a path too long for the socket
            root = Path(tempfile.mkdtemp(prefix="sp-pg-", dir="/tmp"))
            self._owned_root = True
        if self._run_as is not None:
            os.chown(root, self._run_as.pw_uid, self._run_as.pw_gid)
        os.chmod(root, 0o700)
        self.root = root
        self.data = root / "data"
        self.log_path = root / "postgres.log"

    # -- addresses

    @property
    def socket_dir(self) -> str:
        return str(self.root)

    @property
    def url(self) -> str:
        return self.url_for(self.database)

    def url_for(self, database: str) -> str:
        auth = quote(self.user, safe="")
        if self.password is not None:
            auth += ":" + quote(self.password, safe="")
        return f"postgresql://{auth}@127.0.0.1:{self.port}/{quote(database, safe='')}"

    # -- lifecycle

    def _run(self, argv: list[str], what: str) -> None:
        """Run a server-side program (as postgres when we are root)."""
        kw: dict[str, object] = {}
        if self._run_as is not None:
            kw = {"user": self._run_as.pw_uid, "group": self._run_as.pw_gid,
                  "extra_groups": []}
        r = subprocess.run(argv, cwd=self.root, env=_clean_env(), capture_output=True,
                           timeout=120, check=False, **kw)   # type: ignore[call-overload]
        if r.returncode != 0:
            raise RuntimeError(f"{what} failed ({r.returncode}): "
                               f"{(r.stderr or r.stdout).decode(errors='replace').strip()}")

    def _initdb(self) -> None:
        argv = [str(self.bindir / "initdb"), "-D", str(self.data), "-U", self.user,
                "-E", "UTF8", "--no-locale", "--no-sync", "--no-instructions"]
        if self.password is None:
            argv += ["--auth=trust"]
        else:   # password over TCP (what the URL says), trust on the private socket
            pwfile = self.root / "pwfile"
            pwfile.write_text(self.password + "\n")
            if self._run_as is not None:
                os.chown(pwfile, self._run_as.pw_uid, self._run_as.pw_gid)
            argv += ["--auth-local=trust", "--auth-host=scram-sha-256",
                     f"--pwfile={pwfile}"]
        try:
            self._run(argv, "initdb")
        finally:
            (self.root / "pwfile").unlink(missing_ok=True)

    def _ready(self) -> bool:
        """postmaster.pid's 8th line says 'ready' once connections are accepted."""
        try:
            lines = (self.data / "postmaster.pid").read_text().splitlines()
        except OSError:
            return False
        return len(lines) >= 8 and lines[7].strip() == "ready"

    def start(self, timeout: float = 30.0) -> PgServer:
        self._initdb()
        for attempt in range(3):           # the free port may be taken meanwhile
            self.port = _free_port()
            if self._launch(timeout):
                self._createdb(self.database)
                return self
            if "could not bind" not in self.log() or attempt == 2:
                raise RuntimeError(f"postgres exited ({self.proc.returncode}): "  # type: ignore[union-attr]
                                   f"{self.log()}")
        raise AssertionError("unreachable")

    def _launch(self, timeout: float) -> bool:
        """Start ``postgres`` on :attr:`port` over :attr:`data`; → True once ready,
        False when it exited (raises when it did not get ready in time)."""
        argv = [str(self.bindir / "postgres"), "-D", str(self.data),
                "-p", str(self.port), "-k", self.socket_dir]
        for k, v in self.settings.items():
            argv += ["-c", f"{k}={v}"]
        kw: dict[str, object] = {}
        if self._run_as is not None:
            kw = {"user": self._run_as.pw_uid, "group": self._run_as.pw_gid,
                  "extra_groups": []}
        with open(self.log_path, "ab") as log:
            # own session: a ^C to pytest must not stop it before the fixture does
            self.proc = subprocess.Popen(  # type: ignore[call-overload]
                argv, cwd=self.root, env=_clean_env(), stdin=subprocess.DEVNULL,
                stdout=log, stderr=log, start_new_session=True, **kw)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._ready():
                return True
            if self.proc.poll() is not None:
                return False
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"postgres did not get ready in {timeout}s: {self.log()}")

    def halt(self, mode: str = "fast", timeout: float = 30.0) -> None:
        """Stop the server but keep its data directory and port (:meth:`resume` starts
        it again): ``fast`` (SIGINT: backends told to quit, a checkpoint), ``immediate``
        (SIGQUIT: like a crash, recovery at the next start) or ``kill`` (SIGKILL of the
        postmaster and its backends)."""
        p = self.proc
        if p is None or p.poll() is not None:
            return
        if mode == "kill":
            os.killpg(p.pid, signal.SIGKILL)
        else:
            p.send_signal(signal.SIGINT if mode == "fast" else signal.SIGQUIT)
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
        if mode == "kill":    # orphaned backends may linger a moment: wait for them
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and \
                    (self.data / "postmaster.pid").exists() and _pid_alive_any(self.data):
                time.sleep(0.05)

    def resume(self, timeout: float = 60.0) -> None:
        """Start the server again on the same port and data directory after
        :meth:`halt` (a port taken meanwhile by someone else is an error)."""
        for _attempt in range(50):      # the old socket may linger in TIME_WAIT briefly
            if self._launch(timeout):
                return
            if "could not bind" not in self.log(4000) and \
                    "already in use" not in self.log(4000):
                break
            time.sleep(0.1)
        raise RuntimeError(f"postgres did not start again on port {self.port}: {self.log()}")

    def log(self, tail: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-tail:].strip()
        except OSError:
            return "(no log)"

    def _createdb(self, name: str, template: str | None = None) -> None:
        argv = [str(self.bindir / "createdb"), "-h", self.socket_dir, "-p", str(self.port),
                "-U", self.user]
        if template:
            argv += ["-T", template]
        r = subprocess.run([*argv, name], env=_clean_env(), capture_output=True,
                           timeout=60, check=False)
        if r.returncode != 0:
            raise RuntimeError(f"createdb {name} failed: {r.stderr.decode(errors='replace')}")

    def create_database(self, name: str | None = None) -> str:
        """A new empty database (isolation between tests); → its URL."""
        name = name or f"t_{secrets.token_hex(6)}"
        self._createdb(name)
        return self.url_for(name)

    def stop(self, timeout: float = 10.0) -> None:
        """Fast shutdown (SIGINT), SIGKILL after ``timeout``; removes a private dir."""
        p = self.proc
        if p is not None and p.poll() is None:
            p.send_signal(signal.SIGINT)
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)    # its own session: the backends too
                p.wait()
        if self._owned_root:
            shutil.rmtree(self.root, ignore_errors=True)


def _pid_alive_any(data: Path) -> bool:
    """Is the postmaster named in ``data/postmaster.pid`` still running?"""
    try:
        pid = int((data / "postmaster.pid").read_text().split()[0])
        os.kill(pid, 0)
    except (OSError, ValueError, IndexError):
        return False
    return True


def start_postgres(tmpdir: Path | str, **kw: object) -> PgServer:
    """initdb + start a PostgreSQL under ``tmpdir`` (see :class:`PgServer`)."""
    return PgServer(Path(tmpdir), **kw).start()  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PgServer]:
    """One PostgreSQL for the session; skipped without the binaries, failed if CI=true."""
    bindir = require_postgres()
    server = PgServer(tmp_path_factory.mktemp("pg"), bindir=bindir)
    try:
        server.start()
    except Exception:
        server.stop()
        raise
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_url(postgres: PgServer) -> str:
    """A fresh database on the session's server, for one test."""
    return postgres.create_database()
