"""A throwaway PostgreSQL for the tests that need a server database: `postgres_server`, `postgres_url`.

The server is started from the binaries on the machine (`initdb`, `pg_ctl`, `postgres`: on PATH or under
/usr/lib/postgresql/<version>/bin) in a temporary directory, on a free loopback port, with password
authentication; as root it runs as the `postgres` system user, since PostgreSQL refuses to run as root.
It starts on first use, once per session; tests that need it skip when the binaries are absent.
The fixtures are registered for the whole suite in tests/conftest.py.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from labeling.server import free_port
from tests.prerequisites import unavailable

PG_PROGRAMS = ("initdb", "pg_ctl", "postgres")
PG_SYSTEM_USER = "postgres"  # who runs the server when the tests run as root
PG_SUPERUSER = "hitl"


def postgres_bin_dir() -> Path | None:
    """The folder holding `initdb`, `pg_ctl` and `postgres` (PATH first, then the newest Debian install)."""
    candidates: list[Path] = []
    on_path = shutil.which("pg_ctl")
    if on_path:
        candidates.append(Path(on_path).resolve().parent)

    def major(path: Path) -> float:
        name = path.parent.name
        return float(name) if name.replace(".", "", 1).isdigit() else 0.0

    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=major, reverse=True)
    for folder in candidates:
        if all(os.access(folder / program, os.X_OK) for program in PG_PROGRAMS):
            return folder
    return None


@dataclass(frozen=True)
class PostgresServer:
    host: str
    port: int
    user: str
    password: str

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://{self.user}:{self.password}@{self.host}:{self.port}/{database}"


def _postgres_runner() -> tuple[list[str], tuple[int, int] | None]:
    """The command prefix to run PostgreSQL's programs with, and the (uid, gid) that must own its files.

    PostgreSQL refuses to run as root: as root, run them as the `postgres` system user (created when the
    machine lacks it)."""
    if os.geteuid() != 0:
        return [], None
    try:
        account = pwd.getpwnam(PG_SYSTEM_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", PG_SYSTEM_USER],
            check=True,
            capture_output=True,
        )
        account = pwd.getpwnam(PG_SYSTEM_USER)
    return ["runuser", "-u", PG_SYSTEM_USER, "--"], (account.pw_uid, account.pw_gid)


def _run_pg(prefix: list[str], command: list[str], cwd: Path, timeout: float = 120) -> None:
    done = subprocess.run([*prefix, *command], cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(
            f"{Path(command[0]).name} failed ({done.returncode}): {(done.stdout + done.stderr)[-2000:]}"
        )


def _wait_for_postgres(server: PostgresServer, deadline_s: float = 60) -> None:
    import psycopg

    deadline = time.monotonic() + deadline_s
    while True:
        try:
            with psycopg.connect(
                host=server.host, port=server.port, user=server.user, password=server.password,
                dbname="postgres", connect_timeout=2,
            ) as conn:  # fmt: skip
                conn.execute("SELECT 1")
            return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A PostgreSQL server for the session, in a temporary directory that is removed afterwards."""
    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        unavailable(
            "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found on PATH or under "
            "/usr/lib/postgresql/*/bin; install the postgresql server package to run the PostgreSQL tests"
        )
    prefix, owner = _postgres_runner()
    # Under /tmp, not pytest's basetemp: that one is private to the user running pytest (root).
    base = Path(tempfile.mkdtemp(prefix="hitl-pg-"))
    data, log, pwfile = base / "data", base / "postgres.log", base / "pwfile"
    password = secrets.token_urlsafe(24)
    pwfile.write_text(password + "\n")
    if owner is not None:
        for path in (base, pwfile):
            os.chown(path, *owner)
    pg_ctl = str(bin_dir / "pg_ctl")
    started = False
    try:
        _run_pg(
            prefix,
            [str(bin_dir / "initdb"), "-D", str(data), "-U", PG_SUPERUSER, f"--pwfile={pwfile}",
             "--auth=scram-sha-256", "-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions"],
            cwd=base,
        )  # fmt: skip
        for attempt in range(3):  # the free port can be taken before the server binds it
            server = PostgresServer("127.0.0.1", free_port(), PG_SUPERUSER, password)
            options = (
                f"-c listen_addresses={server.host} -c port={server.port} -c unix_socket_directories={base} "
                "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=60"
            )
            try:
                _run_pg(prefix, [pg_ctl, "-D", str(data), "-l", str(log), "-o", options, "-w", "-t", "60",
                                 "start"], cwd=base)  # fmt: skip
                break
            except RuntimeError:
                if attempt == 2:
                    raise RuntimeError(f"PostgreSQL did not start; its log:\n{_tail(log)}") from None
        started = True
        _wait_for_postgres(server)
        yield server
    finally:
        if started:
            _run_pg(prefix, [pg_ctl, "-D", str(data), "-m", "fast", "-w", "-t", "60", "stop"], cwd=base)
        shutil.rmtree(base, ignore_errors=True)


def _tail(path: Path, chars: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError as exc:
        return f"(no log: {exc})"


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """A fresh, empty database on the session's PostgreSQL for one test (dropped afterwards)."""
    name = f"t_{secrets.token_hex(6)}"
    admin = create_engine(postgres_server.url(), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        yield postgres_server.url(name)
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()
