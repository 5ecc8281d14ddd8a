"""Our ML backend connected to the real Label Studio: health/setup checks pass, training is handed over."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pytest
import uvicorn
from fastapi import FastAPI

from hitl.settings import Settings
from labeling.client import LabelStudioClient
from labeling.exceptions import LabelStudioApiError
from labeling.server import free_port
from serving.predictor import ItemText, LabelGuess
from serving.routers.ml_backend import ml_backend_url, router
from serving.store import Store

pytestmark = pytest.mark.integration


@dataclass
class FakeModel:
    model_version: str = "v-ml-it"

    def predict_items(self, items: Sequence[ItemText]) -> list[LabelGuess]:
        return [LabelGuess("Sports > Running", 0.6) for _ in items]


class Holder:
    def current(self) -> FakeModel:
        return FakeModel()


@dataclass
class Backend:
    url: str
    trainings: list[str]


@pytest.fixture(scope="module")
def backend(settings: Settings, store: Store) -> Iterator[Backend]:
    app = FastAPI()
    app.include_router(router)
    trainings: list[str] = []
    app.state.settings, app.state.store = settings, store
    app.state.model_holder = Holder()
    app.state.retrain_trigger = trainings.append
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError(f"uvicorn did not start on port {port}")
        time.sleep(0.05)
    yield Backend(ml_backend_url(f"http://127.0.0.1:{port}"), trainings)
    server.should_exit = True
    thread.join(10)


def _connect(ls_client: LabelStudioClient, project_id: int, url: str, password: str) -> dict[str, object]:
    body = {
        "url": url,
        "project": project_id,
        "title": "hitl",
        "auth_method": "BASIC_AUTH",
        "basic_auth_user": "labelstudio",
        "basic_auth_pass": password,
    }
    created: dict[str, object] = ls_client._request("POST", "/api/ml", "connect ML backend", json=body)
    return created


def test_label_studio_connects_to_our_ml_backend_and_starts_training(
    ls_client: LabelStudioClient, project_id: int, backend: Backend, settings: Settings
) -> None:
    with pytest.raises(LabelStudioApiError) as refused:
        _connect(ls_client, project_id, backend.url, "wrong-password")
    assert refused.value.status == 400
    assert "authentication" in refused.value.detail

    password = settings.serving.ml_backend_password.get_secret_value()
    created = _connect(ls_client, project_id, backend.url, password)
    ml_id = created["id"]
    try:
        assert created["model_version"] == "v-ml-it"  # from our /setup
        state = ls_client._request("GET", f"/api/ml/{ml_id}", "get ML backend")
        assert state["state"] == "CO"  # connected: health and setup passed with basic auth
        assert password not in str(state)

        ls_client._request("POST", f"/api/ml/{ml_id}/train", "train", json={})
        assert backend.trainings == ["label-studio"]
    finally:
        # Every backend at our url, not only the id the create answered: Label Studio has been seen to
        # list two backends for one create.
        for ml in ls_client.list_ml_backends(project_id):
            if ml["id"] == ml_id or str(ml.get("url", "")).startswith(backend.url):
                ls_client._request("DELETE", f"/api/ml/{ml['id']}", "delete ML backend")
        # Label Studio created a webhook to <url>/webhook for the backend; leave the project as we found it.
        for hook in ls_client.list_webhooks(project_id):
            if str(hook.get("url", "")).startswith(backend.url):
                ls_client._request("DELETE", f"/api/webhooks/{hook['id']}/", "delete webhook")


def test_bootstrap_connects_the_ml_backend_once_and_start_training_reaches_the_trigger(
    ls_client: LabelStudioClient, backend: Backend, settings: Settings
) -> None:
    from labeling.client import MLBackendSpec
    from labeling.config import Taxonomy
    from labeling.project import bootstrap_project

    password = settings.serving.ml_backend_password.get_secret_value()
    spec = MLBackendSpec(url=backend.url, user="labelstudio", password=password)
    kwargs: dict[str, Any] = {
        "title": "ML backend bootstrap",
        "webhook_url": "http://127.0.0.1:9/v1/webhooks/label-studio",
        "webhook_secret": "s3cret-for-this-test",
    }
    taxonomy = Taxonomy.from_paths(["Sports > Running", "Sports > Tennis"])
    first = bootstrap_project(ls_client, taxonomy, **kwargs)
    try:
        _, created = ls_client.ensure_ml_backend(first.project_id, spec)
        assert created
        again = bootstrap_project(ls_client, taxonomy, **kwargs)
        assert again.project_id == first.project_id
        # Connected once: the second call creates nothing. Its id is the one backend kept, which need
        # not be the id the create answered: a CI run saw Label Studio list two backends for one
        # create (ids 2 and 3, the create answering 3), and ensure_ml_backend keeps the oldest.
        ml_id, created_again = ls_client.ensure_ml_backend(first.project_id, spec)
        assert not created_again
        backends = ls_client.list_ml_backends(first.project_id)
        assert [m["id"] for m in backends] == [ml_id]
        assert backends[0]["state"] == "CO"
        assert backends[0]["model_version"] == "v-ml-it"  # Label Studio asked our /setup
        assert password not in str(backends)

        # "Start training" in that project reaches the retrain trigger.
        before = len(backend.trainings)
        ls_client._request("POST", f"/api/ml/{ml_id}/train", "train", json={})
        assert len(backend.trainings) == before + 1
    finally:
        ls_client._request("DELETE", f"/api/projects/{first.project_id}/", "delete project")
