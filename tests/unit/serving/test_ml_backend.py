"""The Label Studio ML-backend protocol with a fake model: shapes, auth, model-not-ready, training."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import SecretStr

from hitl.settings import LabelStudioSettings, ServingSettings, Settings
from labeling.config import Taxonomy
from learner.data import Product
from serving.predictor import ItemText, LabelGuess, Predictor
from serving.routers.ml_backend import ml_backend_url, router
from serving.security import AuthThrottle
from serving.store import Store

USER, PASSWORD = "ls", "unit-ml-password"


def _basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


AUTH = _basic(USER, PASSWORD)
TAX = Taxonomy.from_paths(["Sports > Running", "Home & Kitchen > Cookware"])
FLAT = Taxonomy.from_paths(["Running", "Cookware"])
ENDPOINTS = [("GET", "/ml-backend/health"), ("POST", "/ml-backend/setup"), ("POST", "/ml-backend/predict"),
             ("POST", "/ml-backend/webhook")]  # fmt: skip


@dataclass
class FakeModel:
    model_version: str = "v7"
    seen: list[ItemText] = field(default_factory=list)

    def predict_items(self, items: Sequence[ItemText]) -> list[LabelGuess]:
        for item in items:  # what the real model checks (`serving.service`): a Product, or ValueError
            Product(id="ls", title=item.title, description=item.description, brand=item.brand or None)
        self.seen.extend(items)
        return [
            LabelGuess("Home & Kitchen > Cookware", 0.8)
            if "pan" in item.title.lower()
            else LabelGuess("Sports > Running", 0.55)
            for item in items
        ]


class Holder:
    def __init__(self, model: Predictor | None) -> None:
        self.model = model

    def current(self) -> Predictor | None:
        return self.model


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    db = Store(f"sqlite:///{tmp_path / 'hitl.db'}")
    db.create_all()
    db.save_project(3, "Products", 1, TAX)
    db.save_project(4, "Flat", 2, FLAT)
    yield db
    db.close()


def _app(tmp_path: Path, store: Store, model: Predictor | None, *, auth: bool = True) -> FastAPI:
    app = FastAPI()
    app.include_router(router)
    app.state.settings = Settings(
        state_dir=tmp_path,
        labelstudio=LabelStudioSettings(project_title="Products", sync_interval_s=0),
        serving=ServingSettings(
            ml_backend_auth=auth,
            ml_backend_user=USER,
            ml_backend_password=SecretStr(PASSWORD),
            max_batch_size=2,
        ),
    )
    app.state.store = store
    app.state.model_holder = Holder(model)
    return app


@pytest.fixture
def model() -> FakeModel:
    return FakeModel()


@pytest.fixture
def client(tmp_path: Path, store: Store, model: FakeModel) -> Iterator[TestClient]:
    with TestClient(_app(tmp_path, store, model), headers=AUTH) as test_client:
        yield test_client


def _tasks(*titles: str) -> list[dict[str, Any]]:
    return [
        {"id": 10 + i, "data": {"title": t, "description": "d", "brand": "Acme", "price": "12.50"}}
        for i, t in enumerate(titles)
    ]


def test_url_helper() -> None:
    assert ml_backend_url("http://h:8000/") == "http://h:8000/ml-backend"


# ------------------------------------------------------------------ auth
@pytest.mark.parametrize(("method", "path"), ENDPOINTS)
@pytest.mark.parametrize(
    "auth",
    [None, _basic(USER, "wrong"), _basic("other", PASSWORD), _basic(USER, "")],
    ids=["none", "wrong-password", "wrong-user", "empty-password"],
)
def test_every_endpoint_requires_the_credentials(
    tmp_path: Path, store: Store, model: FakeModel, method: str, path: str, auth: dict[str, str] | None
) -> None:
    with TestClient(_app(tmp_path, store, model)) as anonymous:
        answer = anonymous.request(method, path, json={"action": "START_TRAINING"}, headers=auth)
    assert answer.status_code == 401
    assert answer.headers["WWW-Authenticate"].startswith("Basic")
    assert PASSWORD not in answer.text


def test_malformed_authorization_headers_are_refused(client: TestClient) -> None:
    for header in ["Basic", "Basic !!!notbase64", "Bearer abc", "Basic bm9jb2xvbg=="]:
        assert client.get("/ml-backend/health", headers={"Authorization": header}).status_code == 401


def test_auth_can_be_turned_off(tmp_path: Path, store: Store, model: FakeModel) -> None:
    with TestClient(_app(tmp_path, store, model, auth=False)) as anonymous:
        assert anonymous.get("/ml-backend/health").status_code == 200


# ------------------------------------------------------------------ protocol
def test_health_and_setup(client: TestClient) -> None:
    health = client.get("/ml-backend/health")
    assert health.status_code == 200
    assert health.json()["status"] == "UP"
    assert health.json()["model_version"] == "v7"
    setup = client.post(
        "/ml-backend/setup",
        json={"project": "3.1700000000", "schema": "<View/>", "hostname": "http://ls", "access_token": "x"},
    )
    assert setup.status_code == 200
    assert setup.json() == {"model_version": "v7"}


def test_predict_answers_one_result_per_task_in_the_label_config_format(
    client: TestClient, model: FakeModel
) -> None:
    body = {
        "tasks": _tasks("Running shoe", "Frying pan", "Trail shoe"),
        "project": "3.1700000000",
        "label_config": "<View/>",
        "params": {"login": None, "password": None, "context": None},
    }
    answer = client.post("/ml-backend/predict", json=body)
    assert answer.status_code == 200
    results = answer.json()["results"]
    assert [r["result"] for r in results] == [
        TAX.result_for("Sports > Running"),
        TAX.result_for("Home & Kitchen > Cookware"),
        TAX.result_for("Sports > Running"),
    ]
    assert results[1]["result"][0]["value"] == {"taxonomy": [["Home & Kitchen", "Cookware"]]}
    assert [r["score"] for r in results] == [0.55, 0.8, 0.55]
    assert {r["model_version"] for r in results} == {"v7"}
    # Task data reached the model, price parsed; batches of max_batch_size (2) keep the order.
    assert model.seen[1] == ItemText(title="Frying pan", description="d", brand="Acme", price=12.5)
    assert [i.title for i in model.seen] == ["Running shoe", "Frying pan", "Trail shoe"]


def test_predict_uses_the_project_config_and_blanks_unknown_labels(client: TestClient) -> None:
    answer = client.post("/ml-backend/predict", json={"tasks": _tasks("pan"), "project": "4.1"})
    assert answer.status_code == 200
    # Project 4 is flat and has no "Home & Kitchen > Cookware": an empty pre-annotation, still one result.
    assert answer.json()["results"] == [{"result": [], "score": 0.8, "model_version": "v7"}]


def test_predict_falls_back_to_the_configured_project(client: TestClient) -> None:
    answer = client.post("/ml-backend/predict", json={"tasks": _tasks("shoe"), "project": "99.1"})
    assert answer.json()["results"][0]["result"] == TAX.result_for("Sports > Running")


@pytest.mark.parametrize(
    "project",
    [
        "\u00b2",
        "\u2460.1",
        "99999999999999999999",
        "2147483648.5",
        "0",
        "-3",
        pytest.param("1" * 5000, id="5000-digits"),
    ],
)
def test_a_project_id_no_store_can_hold_falls_back_to_the_configured_project(
    client: TestClient, project: str
) -> None:
    answer = client.post("/ml-backend/predict", json={"tasks": _tasks("shoe"), "project": project})
    assert answer.status_code == 200, answer.text
    assert answer.json()["results"][0]["result"] == TAX.result_for("Sports > Running")
    assert client.post("/ml-backend/setup", json={"project": project}).status_code == 200


def test_characters_no_model_input_may_hold_are_dropped_not_a_500(
    client: TestClient, model: FakeModel
) -> None:
    tasks = [
        {"data": {"title": "Frying\u0000 pan", "description": "non\ud800stick", "brand": "Ac\x00me"}},
        {"data": {"title": "\u0007\u202e"}},  # no visible character: nothing to predict from
        *_tasks("Trail shoe"),
    ]
    # As JSON escapes: a lone surrogate cannot be encoded as UTF-8, but JSON may spell it.
    raw = json.dumps({"tasks": tasks})
    answer = client.post("/ml-backend/predict", content=raw, headers={"Content-Type": "application/json"})
    assert answer.status_code == 200, answer.text
    assert [r["result"] for r in answer.json()["results"]] == [
        TAX.result_for("Home & Kitchen > Cookware"),
        [],
        TAX.result_for("Sports > Running"),
    ]
    assert [(i.title, i.description, i.brand) for i in model.seen[:1]] == [("Frying pan", "nonstick", "Acme")]


def test_missing_fields_are_empty_not_errors(client: TestClient, model: FakeModel) -> None:
    answer = client.post(
        "/ml-backend/predict", json={"tasks": [{"id": 1, "data": {"title": "Shoe", "price": "n/a"}}]}
    )
    assert answer.status_code == 200
    assert model.seen == [ItemText(title="Shoe", description="", brand="", price=None)]


@pytest.mark.parametrize(
    "task",
    [{}, {"id": 1, "data": {}}, {"data": {"title": None}}, {"data": {"title": " \t\n"}},
     {"data": {"description": "a pan", "brand": "Acme"}}],
    ids=["empty-task", "no-title", "null-title", "blank-title", "description-only"],
)  # fmt: skip
def test_a_task_without_a_title_gets_an_empty_result_not_a_500(
    client: TestClient, model: FakeModel, task: dict[str, Any]
) -> None:
    answer = client.post("/ml-backend/predict", json={"tasks": [task]})
    assert answer.status_code == 200, answer.text
    assert answer.json() == {
        "results": [{"result": [], "score": 0.0, "model_version": "v7"}],
        "model_version": "v7",
    }
    assert model.seen == []  # nothing to predict from: the model is not asked


def test_untitled_tasks_keep_their_place_among_titled_ones(client: TestClient, model: FakeModel) -> None:
    tasks = [{}, *_tasks("Frying pan"), {"data": {"title": "  "}}, *_tasks("Trail shoe", "Wok pan"), {}]
    answer = client.post("/ml-backend/predict", json={"tasks": tasks})
    assert answer.status_code == 200, answer.text
    results = answer.json()["results"]
    assert [r["result"] for r in results] == [
        [],
        TAX.result_for("Home & Kitchen > Cookware"),
        [],
        TAX.result_for("Sports > Running"),
        TAX.result_for("Home & Kitchen > Cookware"),
        [],
    ]
    assert [r["score"] for r in results] == [0.0, 0.8, 0.0, 0.55, 0.8, 0.0]
    # Only the titled tasks reached the model, in order, batched by max_batch_size (2).
    assert [i.title for i in model.seen] == ["Frying pan", "Trail shoe", "Wok pan"]


@pytest.mark.parametrize("body", [{}, {"tasks": "nope"}, {"tasks": [{"data": "x"}]}])
def test_predict_rejects_bad_bodies(client: TestClient, body: dict[str, Any]) -> None:
    assert client.post("/ml-backend/predict", json=body).status_code == 422


def test_no_model_loaded_is_503_with_a_reason(tmp_path: Path, store: Store) -> None:
    with TestClient(_app(tmp_path, store, None), headers=AUTH) as empty:
        assert empty.get("/ml-backend/health").json()["model_version"] is None
        for path, body in [("/ml-backend/setup", {}), ("/ml-backend/predict", {"tasks": _tasks("x")})]:
            answer = empty.post(path, json=body)
            assert answer.status_code == 503
            assert "no model" in answer.json()["detail"]


def test_unknown_project_without_a_bootstrapped_one_is_503(tmp_path: Path, model: FakeModel) -> None:
    bare = Store(f"sqlite:///{tmp_path / 'bare.db'}")
    bare.create_all()
    with TestClient(_app(tmp_path, bare, model), headers=AUTH) as test_client:
        answer = test_client.post("/ml-backend/predict", json={"tasks": _tasks("x"), "project": "5.1"})
    assert answer.status_code == 503
    assert "not bootstrapped" in answer.json()["detail"]
    bare.close()


# ------------------------------------------------------------------ webhook
def test_start_training_without_a_trigger_is_accepted_with_a_note(client: TestClient) -> None:
    answer = client.post("/ml-backend/webhook", json={"action": "START_TRAINING", "project": {"id": 3}})
    assert answer.status_code == 202
    assert "no retrain trigger" in answer.json()["note"]


def test_start_training_hands_over_to_the_trigger(tmp_path: Path, store: Store, model: FakeModel) -> None:
    calls: list[str] = []
    app = _app(tmp_path, store, model)
    app.state.retrain_trigger = calls.append
    with TestClient(app, headers=AUTH) as test_client:
        answer = test_client.post(
            "/ml-backend/webhook", json={"action": "START_TRAINING", "project": {"id": 3}}
        )
        assert answer.status_code == 202
        assert calls == ["label-studio"]
        assert (
            test_client.post("/ml-backend/webhook", json={"action": "ANNOTATION_CREATED"}).status_code == 200
        )
    assert calls == ["label-studio"]  # annotation events never trigger training


def test_a_failing_trigger_is_503_without_details(tmp_path: Path, store: Store, model: FakeModel) -> None:
    def broken(_: str) -> None:
        raise RuntimeError("secret internals")

    app = _app(tmp_path, store, model)
    app.state.retrain_trigger = broken
    with TestClient(app, headers=AUTH) as test_client:
        answer = test_client.post("/ml-backend/webhook", json={"action": "START_TRAINING"})
    assert answer.status_code == 503
    assert "secret" not in answer.text


@pytest.mark.parametrize(
    ("action", "expected"),
    [
        ("ANNOTATION_CREATED", "acknowledged"),
        ("ANNOTATION_DELETED", "acknowledged"),
        ("PROJECT_UPDATED", "ignored"),
    ],
)
def test_other_events_are_acknowledged(client: TestClient, action: str, expected: str) -> None:
    answer = client.post("/ml-backend/webhook", json={"action": action, "project": {"token": "t"}})
    assert answer.status_code == 200
    assert answer.json() == {"status": expected}


@pytest.mark.parametrize("raw", [b"not json", b"[]", b"{}", b'{"action": ""}', b'{"action": 3}'])
def test_bad_webhook_bodies_are_422(client: TestClient, raw: bytes) -> None:
    answer = client.post("/ml-backend/webhook", content=raw, headers={"Content-Type": "application/json"})
    assert answer.status_code == 422


def test_guessing_the_password_is_throttled_like_api_keys(
    tmp_path: Path, store: Store, model: FakeModel
) -> None:
    app = _app(tmp_path, store, model)
    app.state.auth_throttle = AuthThrottle(max_failures=3, window_s=60)
    wrong = {"Authorization": "Basic " + base64.b64encode(f"{USER}:guess".encode()).decode()}
    with TestClient(app) as client:
        assert [client.get("/ml-backend/health", headers=wrong).status_code for _ in range(3)] == [401] * 3
        refused = client.get("/ml-backend/health", headers=wrong)
        assert refused.status_code == 429
        assert int(refused.headers["Retry-After"]) >= 1
        # Right credentials from the same address wait too: the address is what is throttled.
        assert client.get("/ml-backend/health", headers=AUTH).status_code == 429
