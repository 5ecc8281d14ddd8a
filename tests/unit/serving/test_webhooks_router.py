from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from hitl.settings import LabelStudioSettings, Settings
from labeling.config import Taxonomy
from labeling.webhooks import SECRET_HEADER
from serving.app import create_app
from serving.store import Store

URL = "/v1/webhooks/label-studio"
SECRET = "unit-secret"
TAX = Taxonomy.from_paths(["Sports > Running", "Home & Kitchen > Cookware"])


@pytest.fixture
def store(tmp_path: Path) -> Store:
    db = Store(f"sqlite:///{tmp_path / 'hitl.db'}")
    db.create_all()
    db.save_project(1, "Products", 1, TAX)
    return db


@pytest.fixture
def client(tmp_path: Path, store: Store) -> Iterator[TestClient]:
    settings = Settings(
        state_dir=tmp_path,
        labelstudio=LabelStudioSettings(webhook_secret=SecretStr(SECRET), sync_interval_s=0),
    )
    with TestClient(create_app(settings, store=store), raise_server_exceptions=False) as test_client:
        yield test_client


def payload(
    label: list[str], action: str = "ANNOTATION_CREATED", updated: str = "2025-01-01T10:00:00Z"
) -> dict[str, Any]:
    return {
        "action": action,
        "annotation": {
            "id": 7,
            "task": 3,
            "completed_by": 2,
            "lead_time": 2.0,
            "was_cancelled": False,
            "created_at": "2025-01-01T10:00:00Z",
            "updated_at": updated,
            "result": [
                {
                    "from_name": "category",
                    "to_name": "title",
                    "type": "taxonomy",
                    "value": {"taxonomy": [label]},
                }
            ],
        },
        "task": {"id": 3, "data": {"item_id": "sku-1"}, "meta": {"item_id": "sku-1"}},
        "project": {"id": 1, "token": "project-token-never-logged"},
    }


def post(client: TestClient, body: dict[str, Any], secret: str | None = SECRET) -> Any:
    return client.post(URL, json=body, headers={SECRET_HEADER: secret} if secret else {})


def test_health(client: TestClient) -> None:
    assert client.get("/v1/health").json() == {"status": "ok"}


def test_stored_once_then_update_appends_history(client: TestClient, store: Store) -> None:
    assert post(client, payload(["Sports", "Running"])).json() == {"status": "stored", "action": "created"}
    assert post(client, payload(["Sports", "Running"])).json()["status"] == "duplicate"
    upd = payload(["Home & Kitchen", "Cookware"], "ANNOTATION_UPDATED", "2025-01-01T10:01:00Z")
    assert post(client, upd).status_code == 200
    assert [(r.action, r.label) for r in store.history(7)] == [
        ("created", "Sports > Running"),
        ("updated", "Home & Kitchen > Cookware"),
    ]


@pytest.mark.parametrize("secret", [None, "wrong", SECRET + "x"])
def test_bad_or_missing_secret_is_401(client: TestClient, store: Store, secret: str | None) -> None:
    answer = post(client, payload(["Sports", "Running"]), secret)
    assert answer.status_code == 401
    assert store.corrections() == []


def test_malformed_is_422_per_field_without_traceback(client: TestClient, store: Store) -> None:
    body = payload(["Sports", "Running"])
    del body["annotation"]["updated_at"]
    body["task"]["id"] = "x"
    answer = post(client, body)
    assert answer.status_code == 422
    locs = {".".join(map(str, d["loc"])) for d in answer.json()["detail"]}
    assert locs == {"ANNOTATION_CREATED.annotation.updated_at", "ANNOTATION_CREATED.task.id"}
    assert store.corrections() == []
    assert post(client, {"action": "NOPE"}).status_code == 422
    assert client.post(URL, content=b"{oops", headers={SECRET_HEADER: SECRET}).status_code == 422


def test_label_outside_taxonomy_is_rejected_with_a_clear_error_and_recorded(
    client: TestClient, store: Store
) -> None:
    answer = post(client, payload(["Garden", "Hoses"]))
    assert answer.status_code == 422
    assert answer.json()["recorded"] is True
    assert "'Garden > Hoses' is not one of the taxonomy's 2 categories" in answer.json()["detail"][0]["msg"]
    (row,) = store.corrections()
    assert (row.action, row.label, row.raw_label) == ("rejected", None, "Garden > Hoses")


def test_deletion_is_recorded(client: TestClient, store: Store) -> None:
    post(client, payload(["Sports", "Running"]))
    body = {"action": "ANNOTATIONS_DELETED", "annotations": [{"id": 7}], "project": {"id": 1}}
    assert post(client, body).json() == {"status": "stored", "deleted": 1}
    assert post(client, body).json() == {"status": "duplicate", "deleted": 0}
    assert [r.action for r in store.history(7)] == ["created", "deleted"]


def test_payload_secrets_never_reach_the_logs(client: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG):
        post(client, payload(["Sports", "Running"]))
        post(client, payload(["Garden", "Hoses"], updated="2025-01-02T00:00:00Z"))
    assert "project-token-never-logged" not in caplog.text
