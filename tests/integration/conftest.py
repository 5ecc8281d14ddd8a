"""A real Label Studio for the whole session, the real serving app under uvicorn, a throwaway PostgreSQL,
and a small real model bundle.

Label Studio is installed into the project's `.venv-labelstudio` when missing (this is how CI gets it),
started on a free loopback port with a temporary data dir, and stopped at the end.

PostgreSQL is started from the server binaries on the machine (`initdb`, `pg_ctl`, `postgres`: on PATH or
under /usr/lib/postgresql/<version>/bin) in a temporary directory, on a free loopback port, with password
authentication; as root it runs as the `postgres` system user, since PostgreSQL refuses to run as root.
Tests that need it skip when the binaries are absent.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import httpx
import pytest
import uvicorn
from sqlalchemy import create_engine, text

from hitl.settings import LabelStudioSettings, ServingSettings, Settings
from labeling.client import LabelStudioClient, ReviewerAccount
from labeling.config import Taxonomy
from labeling.project import bootstrap_project, webhook_url
from labeling.push import Escalation
from labeling.server import LabelStudioServer, free_port
from serving.app import create_app
from serving.outbox import DeliveryReport, OutboxWorker, enqueue_escalations
from serving.store import Store
from tests.integration.browser import browser, chromium  # noqa: F401  (fixtures for every module)

if TYPE_CHECKING:
    from learner.encoder import HFEncoder

REPO = Path(__file__).resolve().parents[2]
HITL = Path(sys.executable).with_name("hitl")  # the console script of this environment
TAXONOMY = Taxonomy.from_paths(
    [
        "Home & Kitchen > Cookware",
        "Home & Kitchen > Decor",
        "Sports > Running",
        "Sports > Cycling",
        "Toys <3+> > Games",
    ]
)
REVIEWER_PASSWORD = "reviewer-password-1"
T = TypeVar("T")


def eventually(
    read: Callable[[], T], ok: Callable[[T], object] = bool, *, timeout: float = 20.0, what: str = "it"
) -> T:
    """Poll `read` until `ok` holds for its value (webhooks and the outbox worker run on their own time);
    a read that raises (an element not rendered yet) counts as not yet. Fails naming `what`."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = read()
        except Exception:
            pass
        else:
            if ok(value):
                return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.2)


@pytest.fixture(scope="session")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    state = tmp_path_factory.mktemp("hitl-state")
    return Settings(
        state_dir=state,
        labelstudio=LabelStudioSettings(
            port=free_port(), venv=REPO / ".venv-labelstudio", sync_interval_s=0, webhook_timeout_s=3.0
        ),
        serving=ServingSettings(port=free_port()),
    )


@pytest.fixture(scope="session")
def label_studio(settings: Settings) -> Iterator[LabelStudioServer]:
    server = LabelStudioServer(settings.labelstudio, settings.state_dir)
    server.install()
    started = time.monotonic()
    server.start()
    print(f"\nLabel Studio healthy after {time.monotonic() - started:.1f} s (PID {server.recorded_pid()})")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def ls_client(label_studio: LabelStudioServer, settings: Settings) -> Iterator[LabelStudioClient]:
    with LabelStudioClient.from_settings(settings.labelstudio) as client:
        yield client


@pytest.fixture(scope="session")
def reviewer(ls_client: LabelStudioClient, settings: Settings) -> ReviewerAccount:
    return ls_client.ensure_reviewer(settings.labelstudio.reviewer_username, REVIEWER_PASSWORD)


@pytest.fixture(scope="session")
def reviewer_client(reviewer: ReviewerAccount, settings: Settings) -> Iterator[LabelStudioClient]:
    with LabelStudioClient(settings.labelstudio.base_url, reviewer.token) as client:
        yield client


@pytest.fixture(scope="session")
def store(settings: Settings) -> Iterator[Store]:
    db = Store(settings.database_url)
    db.create_all()
    yield db
    db.close()


class Receiver:
    """The serving app under uvicorn in a thread; `stop()` and `start()` again for 'receiver down'."""

    def __init__(self, settings: Settings, store: Store) -> None:
        self.settings = settings
        self.store = store
        self.url = settings.serving.base_url
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        config = uvicorn.Config(
            create_app(self.settings, store=self.store),
            host=self.settings.serving.host,
            port=self.settings.serving.port,
            log_level="warning",
            lifespan="on",
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 20
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError(f"uvicorn did not start on port {self.settings.serving.port}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(10)
        self._server = self._thread = None


@pytest.fixture(scope="session")
def receiver(settings: Settings, store: Store) -> Iterator[Receiver]:
    running = Receiver(settings, store)
    running.start()
    yield running
    running.stop()


@pytest.fixture(scope="session")
def project_id(ls_client: LabelStudioClient, settings: Settings, store: Store) -> int:
    return bootstrap_recorded(ls_client, settings, store)


def bootstrap_recorded(ls_client: LabelStudioClient, settings: Settings, store: Store) -> int:
    """The project `settings` name, on `TAXONOMY`, with its webhook to the session's app, recorded in
    `store` (as `hitl labelstudio bootstrap` does)."""
    info = bootstrap_project(
        ls_client,
        TAXONOMY,
        title=settings.labelstudio.project_title,
        webhook_url=webhook_url(settings.serving.base_url),
        webhook_secret=settings.labelstudio.webhook_secret.get_secret_value(),
    )
    store.save_project(info.project_id, settings.labelstudio.project_title, info.webhook_id, TAXONOMY)
    return info.project_id


def deliver_now(
    store: Store, settings: Settings, escalations: Sequence[Escalation], version: str, **worker: Any
) -> DeliveryReport:
    """Enqueue `escalations` and run one outbox pass an hour ahead (past any backoff), as the serving
    app's worker would; `worker` goes to `OutboxWorker` (e.g. ``similar``)."""
    with store.session() as session:
        enqueue_escalations(session, escalations, version)
    later = datetime.now(UTC).replace(tzinfo=None) + timedelta(hours=1)
    return OutboxWorker(store, settings, clock=lambda: later, **worker).run_once()


def cli_env(state_dir: Path, **overrides: str) -> dict[str, str]:
    """The environment of a `hitl` subprocess: this process's, with its own state dir, on the CPU and
    offline, plus `overrides` (``HITL_...`` names); the default configuration (any `HITL_CONFIG` from
    outside dropped)."""
    env = os.environ | {
        "HITL_STATE_DIR": str(state_dir),
        "HITL_LEARNER__DEVICE": "cpu",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        **overrides,
    }
    env.pop("HITL_CONFIG", None)
    return env


def wait_healthy(process: subprocess.Popen[str], url: str, deadline_s: float = 180) -> None:
    """Wait until `hitl serve` (`process`) answers /healthz at `url`; fail with its output if it exits."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            output = process.stdout.read() if process.stdout else ""
            pytest.fail(f"`hitl serve` exited with {process.returncode} before it was healthy:\n{output}")
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    pytest.fail(f"`hitl serve` was not healthy at {url} within {deadline_s:.0f} s")


# ---------------------------------------------------------------- a small real model bundle
@pytest.fixture(scope="session")
def small_bundle_dir(minilm_encoder: HFEncoder, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`experiments.fixtures.train_small_bundle`, trained once for the integration session."""
    from experiments.fixtures import train_small_bundle

    cache = tmp_path_factory.getbasetemp() / "serving-embeddings"  # shared with the serving unit tests
    cache.mkdir(exist_ok=True)
    return train_small_bundle(minilm_encoder, cache, tmp_path_factory.mktemp("small-bundle"))


# ---------------------------------------------------------------- a throwaway PostgreSQL
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
        pytest.skip(
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
