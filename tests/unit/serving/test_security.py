"""API keys (`serving.keys`), the `require_roles` dependency and the admin-only `/v1/keys` router."""

from __future__ import annotations

import base64
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import Depends, FastAPI
from fastapi.testclient import TestClient

from hitl.settings import LabelStudioSettings, RetrainSettings, ServingSettings, Settings
from labeling.client import WEBHOOK_PATH
from labeling.webhooks import SECRET_HEADER
from serving import keys
from serving.app import create_app
from serving.keys import KEY_PREFIX, ApiKey, Role, authenticate, create_key, list_keys, revoke_key
from serving.routers import keys as keys_router
from serving.security import AuthThrottle, KeyCache, Principal, allowed_roles_of, require_roles
from serving.store import Store


# ------------------------------------------------------------------ keys
@pytest.mark.every_database
def test_created_key_is_random_prefixed_and_only_its_hash_is_stored(store: Store) -> None:
    key_id, plaintext = create_key(store, "ingest", Role.SERVICE)
    _, other = create_key(store, "ingest", "service")
    assert plaintext.startswith(KEY_PREFIX)
    assert len(plaintext) >= len(KEY_PREFIX) + 40
    assert plaintext != other
    with store.session() as session:
        row = session.get(ApiKey, key_id)
        assert row is not None
        stored = [str(v) for v in vars(row).values()]
    assert plaintext not in stored
    assert row.key_hash == keys.hash_key(plaintext) != plaintext
    assert row.display_prefix == plaintext[: len(row.display_prefix)]


@pytest.mark.every_database
def test_authenticate_known_unknown_and_revoked(store: Store) -> None:
    key_id, plaintext = create_key(store, "merch", Role.MERCHANDISER)
    assert authenticate(store, plaintext) == Principal(key_id=key_id, name="merch", role=Role.MERCHANDISER)
    assert authenticate(store, plaintext + "x") is None
    assert authenticate(store, plaintext[len(KEY_PREFIX) :]) is None  # no prefix
    assert authenticate(store, "") is None
    info = revoke_key(store, key_id)
    assert info is not None
    assert not info.active
    assert authenticate(store, plaintext) is None
    assert revoke_key(store, key_id) == info  # idempotent: the first revocation time is kept
    assert revoke_key(store, 999) is None


@pytest.mark.every_database
def test_last_used_is_recorded(store: Store) -> None:
    _key_id, plaintext = create_key(store, "po", Role.PRODUCT_OWNER)
    assert list_keys(store)[0].last_used_at is None
    authenticate(store, plaintext)
    assert list_keys(store)[0].last_used_at is not None


@pytest.mark.every_database
def test_unknown_role_and_bad_name_are_refused(store: Store) -> None:
    with pytest.raises(keys.UnknownRoleError, match="valid roles: service, merchandiser"):
        create_key(store, "x", "root")
    with pytest.raises(ValueError, match="1 to 100"):
        create_key(store, "   ", Role.ADMIN)
    assert list_keys(store) == []


@pytest.mark.every_database
def test_list_hides_revoked_on_request(store: Store) -> None:
    first, _ = create_key(store, "a", Role.ADMIN)
    second, _ = create_key(store, "b", Role.ML_ENGINEER)
    revoke_key(store, first)
    assert [k.id for k in list_keys(store)] == [first, second]
    assert [k.id for k in list_keys(store, include_revoked=False)] == [second]
    assert keys.active_admin_count(store) == 0


# ------------------------------------------------------------------ the dependency
def _app(store: Store) -> FastAPI:
    app = FastAPI()
    app.state.store = store

    @app.get("/ml")
    def ml(principal: Principal = Depends(require_roles(Role.ML_ENGINEER))) -> dict[str, str]:
        return {"name": principal.name, "role": principal.role.value}

    app.include_router(keys_router.router)
    return app


@pytest.fixture
def client(store: Store) -> Iterator[TestClient]:
    with TestClient(_app(store)) as test_client:
        yield test_client


def test_allowed_roles_are_recorded_and_admin_always_included() -> None:
    assert allowed_roles_of(require_roles(Role.SERVICE)) == frozenset({Role.SERVICE, Role.ADMIN})
    assert allowed_roles_of(require_roles()) == frozenset({Role.ADMIN})
    assert allowed_roles_of(lambda: None) is None


def test_bearer_and_x_api_key_both_work(client: TestClient, store: Store) -> None:
    _, plaintext = create_key(store, "eng", Role.ML_ENGINEER)
    assert client.get("/ml", headers={"Authorization": f"Bearer {plaintext}"}).json() == {
        "name": "eng",
        "role": "ml_engineer",
    }
    assert client.get("/ml", headers={"X-API-Key": plaintext}).status_code == 200
    _, admin = create_key(store, "root", Role.ADMIN)
    assert client.get("/ml", headers={"X-API-Key": admin}).json()["role"] == "admin"


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer hitl_wrong"},
        {"Authorization": "Basic hitl_wrong"},
        {"X-API-Key": "hitl_wrong"},
        {"Authorization": "Bearer "},
    ],
)
def test_missing_or_wrong_key_is_401_with_bearer_challenge(
    client: TestClient, headers: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    response = client.get("/ml", headers=headers)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert response.json() == {"detail": "missing or invalid API key"}
    assert "hitl_wrong" not in caplog.text


def test_revoked_key_is_401_and_other_role_is_403(client: TestClient, store: Store) -> None:
    key_id, plaintext = create_key(store, "svc", Role.SERVICE)
    forbidden = client.get("/ml", headers={"Authorization": f"Bearer {plaintext}"})
    assert forbidden.status_code == 403
    assert "service" in forbidden.json()["detail"]
    assert plaintext not in forbidden.text
    revoke_key(store, key_id)
    assert client.get("/ml", headers={"Authorization": f"Bearer {plaintext}"}).status_code == 401


# ------------------------------------------------------------------ /v1/keys
def test_keys_router_create_list_revoke(
    client: TestClient, store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    admin_id, admin = create_key(store, "root", Role.ADMIN)
    auth = {"Authorization": f"Bearer {admin}"}
    created = client.post("/v1/keys", json={"name": "predictor", "role": "service"}, headers=auth)
    assert created.status_code == 201
    assert created.headers["Cache-Control"] == "no-store"
    body = created.json()
    assert body["role"] == "service"
    assert body["active"] is True
    assert body["key"].startswith(body["prefix"])
    assert authenticate(store, body["key"]) is not None
    assert body["key"] not in caplog.text

    listed = client.get("/v1/keys", headers=auth)
    assert [k["name"] for k in listed.json()["keys"]] == ["root", "predictor"]
    assert body["key"] not in listed.text
    assert "key_hash" not in listed.text
    assert all("key" not in k for k in listed.json()["keys"])

    assert client.delete(f"/v1/keys/{body['id']}", headers=auth).status_code == 204
    assert authenticate(store, body["key"]) is None
    assert client.get("/v1/keys", headers=auth).json()["keys"][-1]["name"] == "root"
    everything = client.get("/v1/keys", params={"include_revoked": True}, headers=auth).json()["keys"]
    assert [k["active"] for k in everything] == [True, False]
    assert client.delete("/v1/keys/999", headers=auth).status_code == 404
    # The last active admin key cannot be revoked through the API (that would lock every admin out).
    refused = client.delete(f"/v1/keys/{admin_id}", headers=auth)
    assert refused.status_code == 409
    assert authenticate(store, admin) is not None


def test_keys_router_validates_and_is_admin_only(client: TestClient, store: Store) -> None:
    _, admin = create_key(store, "root", Role.ADMIN)
    _, engineer = create_key(store, "eng", Role.ML_ENGINEER)
    auth = {"Authorization": f"Bearer {admin}"}
    assert client.post("/v1/keys", json={"name": "x", "role": "root"}, headers=auth).status_code == 422
    assert client.post("/v1/keys", json={"name": " ", "role": "service"}, headers=auth).status_code == 422
    forged = client.post("/v1/keys", json={"name": "a\nb\x1b[31m", "role": "service"}, headers=auth)
    assert forged.status_code == 422  # a newline or an escape would forge rows in `hitl keys list`
    assert "control or format character" in forged.text
    assert (
        client.post(
            "/v1/keys", json={"name": "x", "role": "service", "key": "mine"}, headers=auth
        ).status_code
        == 422
    )
    denied = client.post(
        "/v1/keys", json={"name": "x", "role": "admin"}, headers={"Authorization": f"Bearer {engineer}"}
    )
    assert denied.status_code == 403
    assert len(list_keys(store)) == 2


def test_second_admin_can_be_revoked(client: TestClient, store: Store) -> None:
    _, admin = create_key(store, "root", Role.ADMIN)
    second, _ = create_key(store, "backup", Role.ADMIN)
    assert (
        client.delete(f"/v1/keys/{second}", headers={"Authorization": f"Bearer {admin}"}).status_code == 204
    )


def test_key_cache_expires_clears_and_never_holds_the_plaintext(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [100.0]
    monkeypatch.setattr("serving.security.time.monotonic", lambda: clock[0])
    cache = KeyCache(ttl_s=5.0, max_entries=2)
    who = Principal(key_id=1, name="svc", role=Role.SERVICE)
    cache.put("hitl_secret", who)
    assert cache.get("hitl_secret") == who
    assert "hitl_secret" not in repr(cache._entries)
    clock[0] += 5.0
    assert cache.get("hitl_secret") is None  # expired
    cache.put("hitl_a", who)
    cache.put("hitl_b", who)
    cache.put("hitl_c", who)  # over max_entries: the oldest goes
    assert cache.get("hitl_a") is None
    assert cache.get("hitl_c") == who
    cache.clear()
    assert cache.get("hitl_c") is None
    disabled = KeyCache(ttl_s=0)
    disabled.put("hitl_x", who)
    assert disabled.get("hitl_x") is None


def bare_settings(tmp_path: Path) -> Settings:
    """The app with nothing running beside its routes: no model, outbox, sync or retrain worker."""
    return Settings(
        state_dir=tmp_path,
        labelstudio=LabelStudioSettings(sync_interval_s=0),
        serving=ServingSettings(model_source="none", outbox_enabled=False, model_poll_interval_s=0),
        retrain=RetrainSettings(enabled=False),
    )


def test_a_key_revoked_through_the_api_stops_working_at_once(tmp_path: Path) -> None:
    settings = bare_settings(tmp_path)
    store = Store(settings.database_url)
    with TestClient(create_app(settings, store=store)) as client:  # the lifespan creates the tables
        _, admin = create_key(store, "root", Role.ADMIN)
        key_id, engineer = create_key(store, "eng", Role.ML_ENGINEER)
        auth = {"Authorization": f"Bearer {engineer}"}
        assert client.get("/v1/audit", headers=auth).status_code == 200  # now cached
        assert client.get("/v1/audit", headers=auth).status_code == 200
        assert client.delete(f"/v1/keys/{key_id}", headers={"X-API-Key": admin}).status_code == 204
        assert client.get("/v1/audit", headers=auth).status_code == 401
    store.close()


@pytest.mark.every_database
def test_wrong_keys_are_throttled_per_address_then_429_with_retry_after(store: Store) -> None:
    # Issue #12.8: wrong keys were never throttled.
    app = _app(store)
    app.state.auth_throttle = AuthThrottle(max_failures=3, window_s=60)
    _, good = create_key(store, "eng", Role.ML_ENGINEER)
    with TestClient(app) as client:
        assert [client.get("/ml", headers={"X-API-Key": "hitl_wrong"}).status_code for _ in range(3)] == [
            401
        ] * 3
        throttled = client.get("/ml", headers={"X-API-Key": "hitl_wrong"})
        assert throttled.status_code == 429
        assert 1 <= int(throttled.headers["Retry-After"]) <= 60
        # A key not verified lately waits: the address is refused before any key is looked up ...
        assert client.get("/ml", headers={"X-API-Key": good}).status_code == 429
        assert client.get("/ml").status_code == 401  # no key presented: nothing to guess
    # ... while one verified moments ago passes: clients behind one proxy are not all locked out.
    app.state.key_cache = KeyCache(60)
    app.state.auth_throttle = AuthThrottle(max_failures=1, window_s=60)
    with TestClient(app) as client:
        assert client.get("/ml", headers={"X-API-Key": good}).status_code == 200
        assert client.get("/ml", headers={"X-API-Key": "hitl_wrong"}).status_code == 401
        assert client.get("/ml", headers={"X-API-Key": "hitl_other"}).status_code == 429
        assert client.get("/ml", headers={"X-API-Key": good}).status_code == 200


def test_the_throttle_forgets_after_its_window(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [100.0]  # a fake clock: a busy CI machine cannot stretch the window under the test
    monkeypatch.setattr("serving.security.time.monotonic", lambda: clock[0])
    throttle = AuthThrottle(max_failures=2, window_s=60)
    throttle.failed("a")
    clock[0] += 30
    throttle.failed("a")
    assert throttle.retry_after("a") == 30  # until the first failure leaves the window
    assert throttle.retry_after("b") is None
    clock[0] += 30
    assert throttle.retry_after("a") is None
    assert AuthThrottle(max_failures=0, window_s=1).retry_after("a") is None


def test_the_app_is_not_built_with_dev_placeholder_secrets_on_a_public_address() -> None:
    with pytest.raises(ValueError, match=r"refusing to serve on '0\.0\.0\.0'"):
        create_app(Settings(serving=ServingSettings(host="0.0.0.0")))


@pytest.mark.every_database
def test_a_key_named_after_a_person_is_stored_masked(store: Store) -> None:
    key_id, _ = create_key(store, "  jane.doe@corp.com laptop ", Role.SERVICE)
    assert {k.id: k.name for k in list_keys(store)}[key_id] == "[EMAIL] laptop"


def test_refusals_log_the_route_template_never_the_ids_in_the_path(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = bare_settings(tmp_path)
    store = Store(settings.database_url)
    caplog.set_level(logging.INFO, logger="serving.security")
    caplog.set_level(logging.INFO, logger="serving.access")
    with TestClient(create_app(settings, store=store)) as client:
        _, service = create_key(store, "svc", Role.SERVICE)
        assert client.get("/v1/items/jane-doe-order-77").status_code == 401
        wrong_role = client.get("/v1/items/jane-doe-order-77", headers={"Authorization": f"Bearer {service}"})
        assert wrong_role.status_code == 403
    store.close()
    assert "rejected a request to /v1/items/{item_id}" in caplog.text
    assert "denied /v1/items/{item_id}" in caplog.text
    assert "GET /v1/items/{item_id} 401" in caplog.text  # the access log
    assert "GET /v1/items/{item_id} 403" in caplog.text
    assert "jane-doe-order-77" not in caplog.text


def test_credential_failures_throttle_only_their_own_kind_and_a_missing_one_is_no_guess(
    tmp_path: Path,
) -> None:
    """Seen live after `make up`: the webhook Label Studio adds for the ML backend carries no
    credentials, once per project event. Counted as failures, they throttled every local client
    within a minute, and corrections (webhooks) and predictions got 429."""
    settings = bare_settings(tmp_path).model_copy(
        update={"serving": bare_settings(tmp_path).serving.model_copy(update={"auth_max_failures": 3})}
    )
    secret = settings.labelstudio.webhook_secret.get_secret_value()
    store = Store(settings.database_url)
    with TestClient(create_app(settings, store=store)) as client:
        _, key = create_key(store, "eng", Role.ML_ENGINEER)
        engineer = {"Authorization": f"Bearer {key}"}
        # Label Studio's own ML-backend webhook, many times over: refused, never throttled.
        for _ in range(10):
            answer = client.post("/ml-backend/webhook", json={"action": "ANNOTATION_CREATED"})
            assert answer.status_code == 401
        assert client.post(WEBHOOK_PATH, content=b"{}", headers={SECRET_HEADER: secret}).status_code == 422
        assert client.get("/v1/audit", headers=engineer).status_code == 200
        # Guessing the ML backend's password: throttled there, and only there.
        guess = {"Authorization": "Basic " + base64.b64encode(b"labelstudio:guess").decode()}
        statuses = [client.get("/ml-backend/health", headers=guess).status_code for _ in range(4)]
        assert statuses == [401, 401, 401, 429]
        assert client.post(WEBHOOK_PATH, content=b"{}", headers={SECRET_HEADER: secret}).status_code == 422
        assert client.get("/v1/audit", headers=engineer).status_code == 200
    store.close()
