"""A throwaway PostgreSQL cluster for tests, started from the host's server binaries.

    postgres       session-scoped PostgresCluster: .socket_dir, .port, .url(db), .create_database()
    postgres_url   a fresh, empty database for one test, as a store URL
                   ("postgresql://postgres@127.0.0.1:PORT/DB?host=SOCKET_DIR"); dropped afterwards

tests/conftest.py defines both, once for every directory. The cluster listens on a unix socket
in its own directory and on 127.0.0.1 (a free port), trusts every local connection, runs without
fsync (a test database need not survive a power cut), is stopped at the end of the session. initdb
refuses to run as root, so as root everything runs as the `postgres` system user. Without the
binaries (Debian's postgresql-15) the tests that need it are skipped, or fail under CI.
"""

import contextlib
import glob
import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import free_port

SUPERUSER = "postgres"


def _bindir() -> Path | None:
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/postgres"),
        key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0,
    )
    return Path(found[-1]).parent if found else None


class PostgresCluster:
    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.root = Path(tempfile.mkdtemp(prefix="hutch-pg-", dir="/tmp"))  # short: socket path
        self.data = self.root / "data"
        self.socket_dir = self.root
        self.port = free_port()
        self._names = itertools.count()
        self._as: list[str] = []
        if os.geteuid() == 0:
            pw = pwd.getpwnam(SUPERUSER)
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
            self._as = ["runuser", "-u", SUPERUSER, "--"]

    def _run(self, *argv: str, timeout: float = 60) -> None:
        proc = subprocess.run(
            [*self._as, *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            cwd=self.root,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed: {proc.stdout}{proc.stderr}")

    def start(self) -> "PostgresCluster":
        self._run(
            str(self.bindir / "initdb"),
            "-D",
            str(self.data),
            "-U",
            SUPERUSER,
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
        )
        options = " ".join(
            [
                f"-k {self.socket_dir}",
                "-c listen_addresses=127.0.0.1",
                f"-p {self.port}",
                "-c fsync=off",
                "-c synchronous_commit=off",
                "-c full_page_writes=off",
                "-c max_connections=200",
                "-c shared_buffers=32MB",
            ]
        )
        try:
            self._run(
                str(self.bindir / "pg_ctl"),
                "-D",
                str(self.data),
                "-l",
                str(self.root / "postgres.log"),
                "-o",
                options,
                "-w",
                "-t",
                "60",
                "start",
            )
        except RuntimeError as e:
            log = (self.root / "postgres.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{e}\n{log}") from None
        return self

    def stop(self) -> None:
        with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
            self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop")
        shutil.rmtree(self.root, ignore_errors=True)

    def url(self, database: str = "postgres") -> str:
        """A store URL over the unix socket (drop `?host=...` to go through TCP instead)."""
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}?host={self.socket_dir}"

    def tcp_url(self, database: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def sql(self, statement: str, database: str = "postgres") -> str:
        """Run one statement with psql as the superuser; its output."""
        proc = subprocess.run(
            [
                str(self.bindir / "psql"),
                "-X",
                "-q",
                "-At",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                str(self.socket_dir),
                "-p",
                str(self.port),
                "-U",
                SUPERUSER,
                "-d",
                database,
                "-c",
                statement,
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"psql {statement!r} failed: {proc.stderr}")
        return proc.stdout

    def create_database(self, template: str = "template1") -> str:
        name = f"test_{os.getpid()}_{next(self._names)}"
        self.sql(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
        return name

    def drop_database(self, name: str) -> None:
        self.sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresCluster]:
    bindir = _bindir()
    if bindir is None:
        message = "PostgreSQL server binaries not found: apt-get install postgresql-15"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    cluster = PostgresCluster(bindir)
    try:
        cluster.start()
    except BaseException:
        cluster.stop()
        raise
    yield cluster
    cluster.stop()


@pytest.fixture
def postgres_url(postgres: PostgresCluster) -> Iterator[str]:
    name = postgres.create_database()
    yield postgres.url(name)
    postgres.drop_database(name)
