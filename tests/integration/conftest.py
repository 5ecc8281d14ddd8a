"""A real Label Studio for the whole session and the real serving app under uvicorn.

Label Studio is installed into the project's `.venv-labelstudio` when missing (this is how CI gets it),
started on a free loopback port with a temporary data dir, and stopped at the end. The throwaway
PostgreSQL (`postgres_url`) and the small real model bundle (`small_bundle_dir`) are fixtures of the whole
suite (tests/conftest.py), since unit tests use them too.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar, overload

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from sqlalchemy import update

from hitl.settings import LabelStudioSettings, ServingSettings, Settings
from labeling.client import LabelStudioClient, ReviewerAccount
from labeling.config import Taxonomy
from labeling.project import bootstrap_project, webhook_url
from labeling.push import Escalation
from labeling.server import LabelStudioServer, free_port
from serving.app import create_app
from serving.outbox import PENDING, DeliveryReport, OutboxEntry, OutboxWorker, enqueue_escalations
from serving.store import Store
from tests.integration.browser import browser, chromium  # noqa: F401  (fixtures for every module)

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


@overload
def eventually(read: Callable[[], T | None], *, timeout: float = 20.0, what: str = "it") -> T: ...


@overload
def eventually(
    read: Callable[[], T], ok: Callable[[T], object], *, timeout: float = 20.0, what: str = "it"
) -> T: ...


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
        self._app: FastAPI | None = None

    def start(self) -> None:
        self._app = create_app(self.settings, store=self.store)
        config = uvicorn.Config(
            self._app,
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
        """Stop the app and wait for its lifespan to stop its workers: a worker left running (an
        outbox pass, a sync) would go on changing Label Studio under later tests."""
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(120)
            if self._thread.is_alive():
                raise RuntimeError(f"the app on port {self.settings.serving.port} did not stop in 120 s")
            # Absent when the lifespan failed before its workers ran: that error is already raised.
            still = getattr(self._app.state, "workers_still_running", []) if self._app is not None else []
            if still:
                raise RuntimeError(f"the app on port {self.settings.serving.port} left {still} running")
        self._server = self._thread = self._app = None


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
    now = datetime.now(UTC).replace(tzinfo=None)
    with store.session() as session:
        enqueue_escalations(session, escalations, version)
        # Not due for 30 minutes, in the same transaction: the session app's own outbox worker, which
        # may run on `store` with another project title, never takes them first.
        session.execute(
            update(OutboxEntry)
            .where(
                OutboxEntry.model_version == version,
                OutboxEntry.item_id.in_([e.item_id for e in escalations]),
                OutboxEntry.status == PENDING,
            )
            .values(next_attempt_at=now + timedelta(minutes=30))
        )
    later = now + timedelta(hours=1)
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
