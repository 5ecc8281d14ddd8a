"""`POST /v1/predict` through the real app with a real (small) model."""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from learner.encoder import HFEncoder
from learner.loop import AuditPolicy
from learner.settings import LearnerSettings
from serving.outbox import OutboxEntry
from serving.routing import audit_draw
from serving.security import Role
from serving.store import AuditEvent, Item, Prediction, Store
from tests.unit.serving.support import auth, catalog_items, served_app, served_settings

pytestmark = pytest.mark.slow


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    db = Store(f"sqlite:///{tmp_path / 'hitl.db'}")
    db.create_all()
    yield db
    db.close()


@pytest.fixture
def app_client(
    small_bundle_dir: Path, embedding_dir: Path, minilm_encoder: HFEncoder, store: Store
) -> Iterator[TestClient]:
    settings = served_settings(small_bundle_dir, embedding_dir, always_review_brands=["Reviewme"])
    with served_app(settings, store, minilm_encoder) as (client, _):
        yield client


def test_predicts_routes_and_records_everything(app_client: TestClient, store: Store) -> None:
    items = catalog_items(20)
    items[0] |= {"price": 5000.0}
    items[1] |= {"brand": "Reviewme"}
    items[2] |= {"category_hint": "Garden > Lawn Mowers"}
    answer = app_client.post("/v1/predict", json={"items": items})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    predictions = body["predictions"]
    assert [p["id"] for p in predictions] == [i["id"] for i in items]
    for p in predictions:
        assert 0 < p["confidence"] <= 1
        assert p["category"] == " > ".join(p["category_path"])
        assert p["top_k"][0]["category"] == p["category"]
        assert len(p["top_k"]) == 3
        assert p["model_version"] == body["model_version"].strip()
        assert p["model_version"].startswith("local:")
        assert (p["decision"] == "auto_accepted") == (p["reasons"] == ["above_threshold"])
    assert "high_value" in predictions[0]["reasons"]
    assert "always_review_brand" in predictions[1]["reasons"]
    assert "unknown_category_hint" in predictions[2]["reasons"]
    decisions = {p["decision"] for p in predictions}
    assert decisions == {"auto_accepted", "escalated"}, "a real model auto-accepts some clean items"

    # one item row, one prediction row and one audit row per item; escalations in the outbox
    assert store.count(Item) == store.count(Prediction) == store.count(AuditEvent) == 20
    escalated = [p for p in predictions if p["decision"] == "escalated"]
    assert store.count(OutboxEntry) == len(escalated)
    audit = app_client.get("/v1/audit")
    assert audit.status_code == 403  # a service key cannot read the audit trail


def test_item_history_escalations_and_audit(app_client: TestClient, store: Store) -> None:
    items = catalog_items(6, seed=11)
    items[0] |= {"price": 5000.0}
    assert app_client.post("/v1/predict", json={"items": items}).status_code == 200
    app_client.headers.update(auth(store, Role.ML_ENGINEER))
    history = app_client.get(f"/v1/items/{items[0]['id']}").json()
    assert history["item"]["price"] == 5000.0
    assert history["predictions"][0]["decision"] == "escalated"
    assert history["audit"][0]["kind"] == "model_decision"
    assert history["audit"][0]["actor"].startswith("model:local:")
    assert history["audit"][0]["details"]["requested_by"] == "svc"
    queue = app_client.get("/v1/escalations").json()
    assert items[0]["id"] in {e["item_id"] for e in queue["escalations"]}
    only_high = app_client.get("/v1/escalations", params={"reason": "high_value"}).json()
    assert [e["item_id"] for e in only_high["escalations"]] == [items[0]["id"]]
    trail = app_client.get("/v1/audit", params={"item": items[1]["id"]}).json()
    assert trail["count"] == 1
    assert trail["events"][0]["item_id"] == items[1]["id"]
    page = app_client.get("/v1/audit", params={"limit": 2}).json()
    rest = app_client.get("/v1/audit", params={"after_id": page["next_after_id"]}).json()
    assert page["count"] + rest["count"] == 6
    assert app_client.get("/v1/items/nope").status_code == 404


def test_repredicting_is_stable_and_appends(app_client: TestClient, store: Store) -> None:
    items = catalog_items(5, seed=12)
    first = app_client.post("/v1/predict", json={"items": items}).json()["predictions"]
    second = app_client.post("/v1/predict", json={"items": items}).json()["predictions"]
    assert [(p["category"], p["decision"]) for p in first] == [(p["category"], p["decision"]) for p in second]
    assert store.count(Item) == 5
    assert store.count(Prediction) == 10
    assert store.count(AuditEvent) == 10


BAD: list[tuple[str, Any, tuple[Any, ...]]] = [
    ("empty title", {"items": [{"id": "a", "title": ""}]}, ("body", "items", 0, "title")),
    ("whitespace title", {"items": [{"id": "a", "title": "  \t "}]}, ("body", "items", 0, "title")),
    ("long title", {"items": [{"id": "a", "title": "x" * 301}]}, ("body", "items", 0, "title")),
    ("negative price", {"items": [{"id": "a", "title": "t", "price": -1}]}, ("body", "items", 0, "price")),
    ("string price", {"items": [{"id": "a", "title": "t", "price": "12"}]}, ("body", "items", 0, "price")),
    ("int id", {"items": [{"id": 5, "title": "t"}]}, ("body", "items", 0, "id")),
    ("blank id", {"items": [{"id": " ", "title": "t"}]}, ("body", "items", 0, "id")),
    (
        "unknown field",
        {"items": [{"id": "a", "title": "t", "colour": "red"}]},
        ("body", "items", 0, "colour"),
    ),
    ("no items", {"items": []}, ("body", "items")),
    ("oversized batch", {"items": [{"id": str(i), "title": "t"} for i in range(65)]}, ("body", "items")),
    (
        "duplicate ids",
        {"items": [{"id": "a", "title": "t"}, {"id": "a", "title": "u"}]},
        ("body", "items", 1, "id"),
    ),
    ("not a list", {"items": {"id": "a"}}, ("body", "items")),
    # Issue #12.2 / #12.8: each of these answered 500 or was stored.
    (
        "lone surrogate in a title",
        {"items": [{"id": "a", "title": "t\ud800"}]},
        ("body", "items", 0, "title"),
    ),
    ("lone surrogate in an id", {"items": [{"id": "\ud800", "title": "t"}]}, ("body", "items", 0, "id")),
    ("zero-width title", {"items": [{"id": "a", "title": "\u200b\u200b"}]}, ("body", "items", 0, "title")),
    ("NUL in an id", {"items": [{"id": "a\x00b", "title": "t"}]}, ("body", "items", 0, "id")),
    ("control character in an id", {"items": [{"id": "a\x07", "title": "t"}]}, ("body", "items", 0, "id")),
    (
        "NUL in a description",
        {"items": [{"id": "a", "title": "t", "description": "\x00"}]},
        ("body", "items", 0, "description"),
    ),
]


@pytest.mark.parametrize(("case", "body", "loc"), BAD, ids=[c for c, _, _ in BAD])
def test_bad_input_is_422_per_field_and_stores_nothing(
    app_client: TestClient, store: Store, case: str, body: Any, loc: tuple[Any, ...]
) -> None:
    # json.dumps escapes lone surrogates, as a client's JSON encoder may (httpx refuses to).
    raw = json.dumps(body).encode()
    answer = app_client.post("/v1/predict", content=raw, headers={"content-type": "application/json"})
    assert answer.status_code == 422, case
    assert tuple(answer.json()["detail"][0]["loc"]) == loc
    assert store.count(Item) == store.count(Prediction) == store.count(AuditEvent) == 0
    # The error body never echoes the input (it may hold PII), and the next request still works.
    assert "input" not in answer.json()["detail"][0]
    assert app_client.post("/v1/predict", json={"items": [{"id": "ok", "title": "a pan"}]}).status_code == 200


def test_nan_price_is_422(app_client: TestClient, store: Store) -> None:
    raw = '{"items": [{"id": "a", "title": "t", "price": NaN}]}'
    answer = app_client.post("/v1/predict", content=raw, headers={"content-type": "application/json"})
    assert answer.status_code == 422
    assert json.dumps(answer.json())  # the error body itself is valid JSON
    assert store.count(Prediction) == 0


def test_metrics_count_predictions_and_reasons(app_client: TestClient) -> None:
    items = catalog_items(4, seed=13)
    items[0] |= {"price": 9999.0}
    app_client.post("/v1/predict", json={"items": items})
    text = app_client.get("/metrics").text
    assert 'hitl_escalations_total{model_version="local:' in text
    assert 'reason="high_value"' in text
    assert "hitl_predictions_total" in text
    assert 'route="/v1/predict"' in text
    assert "hitl_model_ready 1.0" in text
    assert app_client.get("/readyz").json()["status"] == "ready"


def test_concurrent_requests_each_get_their_own_committed_rows(app_client: TestClient, store: Store) -> None:
    items = catalog_items(8, seed=14)
    warm = app_client.post("/v1/predict", json={"items": items}).json()["predictions"]
    fresh = catalog_items(16, seed=15)

    def call(i: int) -> tuple[list[str], list[dict[str, Any]]]:
        # Cached single items (scored inline) mixed with requests that must encode (scored on a thread).
        body = [items[i % 8]] if i % 2 == 0 else [items[i % 8], fresh[i]]
        answer = app_client.post("/v1/predict", json={"items": body})
        assert answer.status_code == 200, answer.text
        return [b["id"] for b in body], answer.json()["predictions"]

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(call, range(16)))
    by_id = {p["prediction_id"]: p for _, predictions in results for p in predictions}
    assert len(by_id) == 24  # every prediction got its own id
    for sent, predictions in results:
        assert [p["id"] for p in predictions] == sent
    # Cached or not, inline or on a thread: the same item gets the same answer.
    first = {p["id"]: (p["category"], p["confidence"]) for p in warm}
    for p in by_id.values():
        if p["id"] in first:
            assert (p["category"], p["confidence"]) == pytest.approx(first[p["id"]])
    assert store.count(Prediction) == store.count(AuditEvent) == 8 + 24
    history = store.item_history(fresh[1]["id"])
    assert history is not None
    assert [r.id for r in history.predictions] == [
        p["prediction_id"] for p in by_id.values() if p["id"] == fresh[1]["id"]
    ]


def test_personal_data_is_masked_before_it_is_stored_or_answered(
    app_client: TestClient, store: Store
) -> None:
    # Issue #12.3: raw emails, phone and card numbers reached the items table and the outbox.
    item = {"id": "pii", "title": "Pan, mail jane@example.com", "description": "card 4111 1111 1111 1111"}
    answer = app_client.post("/v1/predict", json={"items": [item]})
    assert answer.status_code == 200
    with store.session() as session:
        row = session.get(Item, "pii")
        assert row is not None
        assert (row.title, row.description) == ("Pan, mail [EMAIL]", "card [CARD]")
    assert "jane@example.com" not in answer.text


def test_audit_draws_through_the_app_follow_the_default_policy(app_client: TestClient, store: Store) -> None:
    """The certificate weighs each audit by the probability stored with it: through the real app on the
    default settings, every routed item carries `learner.audit.rate`, and is audited exactly when its
    id's fixed uniform draw falls below it (so a re-prediction never flips a draw)."""
    policy = AuditPolicy.of(LearnerSettings().audit)
    items = catalog_items(400, seed=31)
    for start in range(0, len(items), 64):  # the app's max_batch_size here
        assert app_client.post("/v1/predict", json={"items": items[start : start + 64]}).status_code == 200
    with store.session() as session:
        stored = {p.item_id: p for p in session.scalars(select(Prediction)).all()}
    assert len(stored) == len(items)
    audited = {i for i, p in stored.items() if {"audit", "spot_check"} & set(p.reasons)}
    assert {p.audit_probability for p in stored.values()} == {policy.rate}
    assert audited == {i for i in stored if audit_draw(policy.seed, i) < policy.rate}
    # 400 draws at 0.08: 32 expected, s.d. 5.4; 4.5 s.d. either side.
    assert abs(len(audited) - 0.08 * len(items)) <= 4.5 * (len(items) * 0.08 * 0.92) ** 0.5


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(title=st.text(min_size=0, max_size=400), brand=st.none() | st.text(max_size=60))
def test_any_text_is_answered_or_refused_never_a_500_with_the_real_encoder(
    app_client: TestClient, title: str, brand: str | None
) -> None:
    """The schema fuzzing runs on a hash encoder; here arbitrary Unicode goes through the real
    tokenizer and model: zero-width and bidi marks, combining runs, emoji, surrogates, controls."""
    item = {"id": "fuzz-1", "title": title, "description": "", "brand": brand}
    answer = app_client.post("/v1/predict", json={"items": [item]})
    assert answer.status_code in (200, 422), (answer.status_code, answer.text[:300])
    if answer.status_code == 200:
        (prediction,) = answer.json()["predictions"]
        assert 0.0 <= prediction["confidence"] <= 1.0
