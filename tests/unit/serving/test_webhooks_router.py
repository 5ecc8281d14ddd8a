from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from hitl.settings import LabelStudioSettings, ServingSettings, Settings
from labeling.config import Taxonomy
from labeling.exceptions import LabelStudioUnavailableError
from labeling.reviewers import ReviewerTiers
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


def test_an_unknown_project_is_409_and_nothing_is_stored(client: TestClient, store: Store) -> None:
    # A bootstrap between creating the project and recording it: a rejection stored now would stay.
    body = payload(["Sports", "Running"])
    body["project"]["id"] = 2
    answer = post(client, body)
    assert answer.status_code == 409
    assert answer.json()["recorded"] is False
    assert "project 2 is not bootstrapped here" in answer.json()["detail"]
    assert store.corrections() == []
    store.save_project(2, "Products", 1, TAX)
    assert post(client, body).json() == {"status": "stored", "action": "created"}


def test_while_label_studio_users_cannot_be_read_a_needs_senior_label_is_503_and_not_stored(
    client: TestClient, store: Store
) -> None:
    users = {5: "head@shop.example"}
    down = [True]

    def directory() -> dict[int, str]:
        if down[0]:
            raise LabelStudioUnavailableError("Label Studio at http://127.0.0.1:1 did not answer list users")
        return dict(users)

    client.app.state.reviewer_tiers = ReviewerTiers(  # type: ignore[attr-defined]
        ["head@shop.example"], directory, min_refresh_s=0.0
    )
    body = payload(["Sports", "Running"])
    body["task"]["meta"]["needs_senior"] = True
    body["annotation"]["updated_by"] = 5
    answer = post(client, body)
    assert answer.status_code == 503
    assert answer.headers["Retry-After"] == "30"
    assert answer.json()["recorded"] is False
    assert "user 5 is not among the 0 users" in answer.json()["detail"]
    assert store.corrections() == []  # before: stored as a proposal, which no sync looked at again
    down[0] = False
    assert post(client, body).json() == {"status": "stored", "action": "created"}
    (row,) = store.corrections()
    assert (row.action, row.label, row.reviewer_id) == ("created", "Sports > Running", 5)


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


def _mutate(path: str, value: Any) -> dict[str, Any]:
    body = payload(["Sports", "Running"])
    *parents, last = path.split(".")
    node: Any = body
    for key in parents:
        node = node[int(key)] if key.isdigit() else node[key]
    node[int(last) if last.isdigit() else last] = value
    return body


MALFORMED = {
    "value is a string": (_mutate("annotation.result.0.value", "Sports"), "annotation.result"),
    "taxonomy [null]": (_mutate("annotation.result.0.value", {"taxonomy": [None]}), "annotation.result"),
    "taxonomy {}": (_mutate("annotation.result.0.value", {"taxonomy": {}}), "annotation.result"),
    "annotation id 2**70": (_mutate("annotation.id", 2**70), "annotation.id"),
    "task id 2**70": (_mutate("task.id", 2**70), "task.id"),
    "project id 2**70": (_mutate("project.id", 2**70), "project.id"),
    "reviewer id 2**70": (_mutate("annotation.completed_by", 2**70), "annotation.completed_by"),
    "negative annotation id": (_mutate("annotation.id", -7), "annotation.id"),
    "NaN lead time": (_mutate("annotation.lead_time", "nan"), "annotation.lead_time"),
    # Found by the schema fuzzing: year 1 at +03:00 is before year 1 in UTC.
    "date before year 1 in UTC": (
        _mutate("annotation.created_at", "0001-01-01T00:00:00.0+03:00"),
        "annotation.created_at",
    ),
    "NUL in the item id": (_mutate("task.meta.item_id", "sku\x00-1"), "task.meta"),
    "item id is an object": (_mutate("task.meta.item_id", {"id": 1}), "task.meta"),
    "lone surrogate in a label": (
        _mutate("annotation.result.0.value", {"taxonomy": [["Sports", "\ud800"]]}),
        "annotation.result",
    ),
    "deleted id 2**70": (
        {"action": "ANNOTATIONS_DELETED", "annotations": [{"id": 2**70}], "project": {"id": 1}},
        "annotations.0.id",
    ),
}


@pytest.mark.parametrize("case", list(MALFORMED), ids=list(MALFORMED))
def test_malformed_bodies_are_4xx_naming_the_field_and_the_connection_stays_usable(
    client: TestClient, store: Store, case: str
) -> None:
    """Issue #12.2: each of these answered 500 (and Label Studio never retries a webhook)."""
    body, field = MALFORMED[case]
    # json.dumps escapes a lone surrogate as JSON allows ("\\ud800"); httpx would refuse to encode it.
    answer = client.post(URL, content=json.dumps(body).encode(), headers={SECRET_HEADER: SECRET})
    assert answer.status_code == 422, answer.text
    locs = [".".join(map(str, d["loc"][1:])) for d in answer.json()["detail"]]
    assert field in locs
    assert store.corrections() == []
    assert post(client, payload(["Sports", "Running"])).json() == {"status": "stored", "action": "created"}


def test_deeply_nested_json_is_422(client: TestClient, store: Store) -> None:
    answer = client.post(URL, content=b"[" * 500_000, headers={SECRET_HEADER: SECRET})
    assert answer.status_code == 422
    assert answer.json()["detail"][0]["msg"] == "JSON nested too deeply"
    assert store.corrections() == []


def test_a_5_mb_body_is_refused_by_size_before_it_is_parsed(client: TestClient, store: Store) -> None:
    answer = client.post(URL, content=b"[" * 5_000_000, headers={SECRET_HEADER: SECRET})
    assert answer.status_code == 413
    assert store.corrections() == []


def test_guessing_the_secret_is_throttled_like_api_keys(tmp_path: Path, store: Store) -> None:
    settings = Settings(
        state_dir=tmp_path,
        labelstudio=LabelStudioSettings(webhook_secret=SecretStr(SECRET), sync_interval_s=0),
        serving=ServingSettings(auth_max_failures=3),
    )
    with TestClient(create_app(settings, store=store), raise_server_exceptions=False) as client:
        body = payload(["Sports", "Running"])
        assert [post(client, body, f"guess-{i}").status_code for i in range(3)] == [401] * 3
        throttled = post(client, body)  # the right secret, from the address that guessed
        assert throttled.status_code == 429
        assert "Retry-After" in throttled.headers
    assert store.annotation_versions(1) == {}  # nothing stored: the sync reads it from Label Studio later
