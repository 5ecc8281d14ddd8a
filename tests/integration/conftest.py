"""A real Label Studio for the whole session, and the real serving app under uvicorn.

Label Studio is installed into the project's `.venv-labelstudio` when missing (this is how CI gets it),
started on a free loopback port with a temporary data dir, and stopped at the end.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn

from hitl.settings import LabelStudioSettings, ServingSettings, Settings
from labeling.client import LabelStudioClient, ReviewerAccount
from labeling.config import Taxonomy
from labeling.project import bootstrap_project, webhook_url
from labeling.server import LabelStudioServer, free_port
from serving.app import create_app
from serving.store import Store

REPO = Path(__file__).resolve().parents[2]
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
    info = bootstrap_project(
        ls_client,
        TAXONOMY,
        title=settings.labelstudio.project_title,
        webhook_url=webhook_url(settings.serving.base_url),
        webhook_secret=settings.labelstudio.webhook_secret.get_secret_value(),
    )
    store.save_project(info.project_id, settings.labelstudio.project_title, info.webhook_id, TAXONOMY)
    return info.project_id
