"""Shared fixtures: databases (SQLite, and a real PostgreSQL server started from local binaries),
module files built as real ELF, and an in-process CLI runner."""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from klpfleet.collection import ensure_importable

ensure_importable()  # the tests import the collection's module_utils directly

from klpfleet.db.engine import Database, open_database
from klpfleet.db.migrate import upgrade
from klpfleet.sim.elfbuild import build_module

pytest_plugins = ("tests.sshhelpers", "tests.nodehelpers", "tests.labhelpers")  # sshd, execution nodes, the lab


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):
    """Say why a test failed the moment it fails: a run cut short by its time limit still shows the cause."""
    report = yield
    reporter = item.config.pluginmanager.get_plugin("terminalreporter")
    if report.failed and reporter is not None:
        text = report.longreprtext.splitlines()
        reporter.write_line("")
        reporter.write_line(f"FAILED {report.nodeid} ({report.when})", red=True)
        for line in [line for line in text if line.startswith("E ")][:3] or text[-1:]:
            reporter.write_line(f"    {line[:300]}")
        reporter.write_line(f"    machine: {_machine_now()}")
    return report


def _machine_now() -> str:
    """What a failure on a machine that ran out of something would need to show."""
    tmp = shutil.disk_usage(tempfile.gettempdir()).free >> 20
    meminfo = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines() if ":" in line)
    available = int(meminfo.get("MemAvailable", "0 kB").split()[0]) >> 10
    load = os.getloadavg()[0]
    return f"{tmp} MB free in {tempfile.gettempdir()}, {available} MB memory available, load {load:.1f}"


ROOT = Path(__file__).resolve().parents[1]
VERMAGIC_61 = "6.1.0-56-amd64 SMP preempt mod_unload modversions "


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path, monkeypatch):
    """No test touches the user's real data dir or database."""
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("KLPFLEET_ARTIFACTS", str(tmp_path / "artifacts"))
    monkeypatch.delenv("KLPFLEET_DB", raising=False)
    monkeypatch.setenv("KLPFLEET_ACTOR", "pytest")


# ---------------------------------------------------------------- module files


def make_ko(
    path: Path,
    name: str = "livepatch_test",
    *,
    vermagic: str = VERMAGIC_61,
    livepatch: bool = True,
    srcversion: str = "0123456789ABCDEF0123456",
    extra: list[tuple[str, str]] | None = None,
) -> Path:
    fields = [("name", name), ("vermagic", vermagic), ("srcversion", srcversion), ("depends", "")]
    if livepatch:
        fields.append(("livepatch", "Y"))
    fields += extra or []
    path.write_bytes(build_module(fields))
    return path


@pytest.fixture
def ko_factory(tmp_path):
    counter = itertools.count()

    def factory(name: str = "livepatch_test", **kwargs) -> Path:
        return make_ko(tmp_path / f"{name}-{next(counter)}.ko", name, **kwargs)

    return factory


# ---------------------------------------------------------------- CLI


@dataclass
class CliResult:
    code: int
    out: str
    err: str

    def json(self):
        import json

        return json.loads(self.out)


@pytest.fixture
def cli(capsys):
    """Run klpfleet's main() in-process; returns exit code and captured streams."""
    from klpfleet.cli.main import main

    def run(*args: str) -> CliResult:
        if "inventory" in args:
            # ansible-core reads its configuration once per process; the import sets some of it (unparsed
            # sources fail, duplicate keys are errors), so it runs in a process of its own, as operators run it.
            proc = run_klpfleet(*map(str, args))
            return CliResult(proc.returncode, proc.stdout, proc.stderr)
        capsys.readouterr()
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


def run_klpfleet(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """klpfleet as a separate process, the way operators and scripts run it."""
    return subprocess.run(
        [sys.executable, "-m", "klpfleet.cli.main", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        cwd=cwd,
        timeout=timeout,
        check=False,
    )


# ---------------------------------------------------------------- databases


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'klpfleet.db'}"


@pytest.fixture
def sqlite_db(sqlite_url) -> Database:
    db = open_database(sqlite_url, create=True)
    upgrade(db)
    return db


def _pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    """A throwaway PostgreSQL cluster on a loopback port, trust auth, removed at the end."""

    def __init__(self) -> None:
        initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
        if not initdb or not pg_ctl:
            pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not installed")
        self.pg_ctl = pg_ctl
        self.dir = Path(tempfile.mkdtemp(prefix="klpfleet-pg-"))
        self.port = _free_port()
        self.prefix: list[str] = []
        if os.geteuid() == 0:  # postgres refuses to run as root
            try:
                pwd.getpwnam("postgres")
            except KeyError:
                pytest.skip("running as root and no 'postgres' user to run the test server")
            shutil.chown(self.dir, "postgres")
            self.prefix = ["runuser", "-u", "postgres", "--"]
        data = self.dir / "data"
        subprocess.run(
            [*self.prefix, initdb, "-D", str(data), "-U", "klpfleet", "--auth=trust", "-E", "UTF8"],
            check=True,
            capture_output=True,
        )
        self.data = data
        self.start()
        self._counter = itertools.count()

    def start(self) -> None:
        options = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
        self._ctl("-l", str(self.dir / "log"), "-w", "-t", "60", "-o", options, "start")

    def stop_server(self) -> None:
        """Stop it, keeping the data (start() brings it back)."""
        self._ctl("-m", "fast", "-w", "stop")

    def restart(self) -> None:
        """What a restart or failover does to clients: every open connection is cut."""
        self.stop_server()
        self.start()

    def _ctl(self, *args: str) -> None:
        subprocess.run([*self.prefix, self.pg_ctl, "-D", str(self.data), *args], check=True, capture_output=True)

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql+psycopg://klpfleet@127.0.0.1:{self.port}/{dbname}"

    def create_database(self) -> str:
        import psycopg

        name = f"t{os.getpid()}_{next(self._counter)}"
        with psycopg.connect(f"host=127.0.0.1 port={self.port} user=klpfleet dbname=postgres", autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        subprocess.run(
            [*self.prefix, self.pg_ctl, "-D", str(self.data), "-m", "immediate", "stop"],
            capture_output=True,
            check=False,
        )
        shutil.rmtree(self.dir, ignore_errors=True)


def new_pg_server() -> PostgresServer:
    """A server of its own, or a skip with the reason when PostgreSQL cannot run here."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.skip("psycopg not installed (pip install '.[postgres]')")
    return PostgresServer()


@pytest.fixture(scope="session")
def pg_server():
    server = new_pg_server()
    yield server
    server.stop()


@pytest.fixture
def pg_url(pg_server) -> str:
    return pg_server.create_database()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def any_db_url(request, tmp_path) -> str:
    """The same test on the embedded default and on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'klpfleet.db'}"
    return request.getfixturevalue("pg_url")


@pytest.fixture
def any_db(any_db_url) -> Database:
    db = open_database(any_db_url, create=True)
    upgrade(db)
    return db
