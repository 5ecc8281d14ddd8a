"""The dashboard's login, session cookie, page and JSON metrics, through the real app (real SQLite)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from hitl.settings import DashboardSettings, LabelStudioSettings, RetrainSettings, ServingSettings, Settings
from serving import kpis
from serving.app import create_app
from serving.keys import Role, create_key, hash_key, revoke_key
from serving.sessions import SESSION_COOKIE, DashboardSession
from serving.store import Store
from tests.unit.serving.dashboard_seed import seed


@dataclass
class Dashboard:
    client: TestClient
    store: Store
    settings: Settings
    keys: dict[Role, tuple[int, str]]


@pytest.fixture
def dash(tmp_path: Path) -> Iterator[Dashboard]:
    settings = Settings(
        state_dir=tmp_path,
        labelstudio=LabelStudioSettings(sync_interval_s=0),
        serving=ServingSettings(model_source="none", outbox_enabled=False, model_poll_interval_s=0),
        retrain=RetrainSettings(enabled=False),
        dashboard=DashboardSettings(session_ttl_s=600),
    )
    store = Store(settings.database_url)
    app = create_app(settings, store=store)
    with TestClient(app, follow_redirects=False) as client:
        keys = {role: create_key(store, f"dash-{role.value}", role) for role in Role}
        yield Dashboard(client, store, settings, keys)
    store.close()


def _login(dash: Dashboard, role: Role) -> TestClient:
    response = dash.client.post("/login", data={"api_key": dash.keys[role][1]})
    assert response.status_code == 303, response.text
    assert response.headers["location"] == "/dashboard"
    return dash.client


def test_no_credentials_redirect_to_the_login_page(dash: Dashboard) -> None:
    response = dash.client.get("/dashboard")
    assert response.status_code == 303
    assert response.headers["location"] == "/login"
    page = dash.client.get("/login")
    assert page.status_code == 200
    assert 'name="api_key"' in page.text
    assert page.headers["content-security-policy"].startswith("default-src 'self'")


@pytest.mark.parametrize("role", [Role.PRODUCT_OWNER, Role.ML_ENGINEER, Role.ADMIN])
def test_a_dashboard_role_logs_in_with_a_hardened_cookie(dash: Dashboard, role: Role) -> None:
    response = dash.client.post("/login", data={"api_key": dash.keys[role][1]})
    assert response.status_code == 303
    cookie = response.headers["set-cookie"]
    assert f"{SESSION_COOKIE}=" in cookie
    assert "HttpOnly" in cookie
    assert "SameSite=strict" in cookie
    assert "Max-Age=600" in cookie
    token = response.cookies[SESSION_COOKIE]
    with dash.store.session() as session:
        stored = session.scalars(select(DashboardSession.token_hash)).all()
    assert stored == [hash_key(token)]  # only the hash is kept
    page = dash.client.get("/dashboard")
    assert page.status_code == 200
    assert f"dash-{role.value} ({role.value})" in page.text
    assert dash.client.get("/v1/metrics/dashboard").status_code == 200


@pytest.mark.parametrize("role", [Role.MERCHANDISER, Role.SERVICE])
def test_other_roles_are_refused_with_the_reason(dash: Dashboard, role: Role) -> None:
    response = dash.client.post("/login", data={"api_key": dash.keys[role][1]})
    assert response.status_code == 403
    assert f"role &#x27;{role.value}&#x27; may not view the dashboard" in response.text
    assert SESSION_COOKIE not in response.headers.get("set-cookie", "")
    headers = {"Authorization": f"Bearer {dash.keys[role][1]}"}
    assert dash.client.get("/dashboard", headers=headers).status_code == 403
    refused = dash.client.get("/v1/metrics/dashboard", headers=headers)
    assert refused.status_code == 403
    assert "needs one of: admin, ml_engineer, product_owner" in refused.json()["detail"]


def test_a_wrong_key_or_empty_form_is_a_clear_error(dash: Dashboard) -> None:
    wrong = dash.client.post("/login", data={"api_key": "hitl_" + "x" * 43})
    assert wrong.status_code == 401
    assert "unknown or revoked API key" in wrong.text
    assert dash.client.post("/login", data={"api_key": " "}).status_code == 400
    assert dash.client.post("/login", content=b"api_key=" + b"x" * 5000).status_code == 413


def test_the_json_metrics_take_a_header_key_or_the_cookie_and_nothing_else(dash: Dashboard) -> None:
    assert dash.client.get("/v1/metrics/queue").status_code == 401
    dash.client.cookies.set(SESSION_COOKIE, "forged-token")
    assert dash.client.get("/v1/metrics/queue").status_code == 401
    dash.client.cookies.clear()
    owner = {"X-API-Key": dash.keys[Role.PRODUCT_OWNER][1]}
    for path in ("escalation-summary", "spot-checks", "queue", "reviews", "throughput", "cost", "segments",
                 "model-timeline"):  # fmt: skip
        answer = dash.client.get(f"/v1/metrics/{path}", headers=owner)
        assert answer.status_code == 200, path
        # Brands, key names and reasons: never kept by a browser or a proxy.
        assert (answer.headers["Cache-Control"], answer.headers["X-Content-Type-Options"]) == (
            "no-store",
            "nosniff",
        )
    escalation = dash.client.get("/v1/metrics/escalation", headers=owner)
    assert escalation.headers["Cache-Control"] == "no-store"


def test_logout_and_key_revocation_end_the_session(dash: Dashboard) -> None:
    client = _login(dash, Role.PRODUCT_OWNER)
    token = client.cookies[SESSION_COOKIE]
    assert client.get("/v1/metrics/queue").status_code == 200
    assert client.get("/login").headers["location"] == "/dashboard"  # already signed in
    out = client.post("/logout")
    assert out.status_code == 303
    assert out.headers["location"] == "/login"
    client.cookies.set(SESSION_COOKIE, token)  # a copied cookie is dead too
    assert client.get("/v1/metrics/queue").status_code == 401

    client.cookies.clear()
    _login(dash, Role.ML_ENGINEER)
    assert client.get("/v1/metrics/queue").status_code == 200
    revoke_key(dash.store, dash.keys[Role.ML_ENGINEER][0])
    assert client.get("/v1/metrics/queue").status_code == 401
    assert client.get("/dashboard").status_code == 303


def test_an_expired_session_is_refused(dash: Dashboard) -> None:
    client = _login(dash, Role.PRODUCT_OWNER)
    with dash.store.session() as session:
        session.execute(
            update(DashboardSession).values(expires_at=DashboardSession.created_at - timedelta(seconds=1))
        )
    assert client.get("/v1/metrics/dashboard").status_code == 401
    _login(dash, Role.PRODUCT_OWNER)  # a new login drops the expired session row
    with dash.store.session() as session:
        assert len(session.scalars(select(DashboardSession)).all()) == 1


def test_the_page_and_its_assets_are_served_by_the_app(dash: Dashboard) -> None:
    client = _login(dash, Role.PRODUCT_OWNER)
    answer = client.get("/dashboard")
    assert answer.headers["X-Frame-Options"] == "DENY"
    page = answer.text
    assert 'src="/static/dashboard.js"' in page
    assert "http://" not in page
    assert "https://" not in page  # no CDN
    script = client.get("/static/dashboard.js")
    assert script.status_code == 200
    assert "data-series" in script.text
    assert client.get("/static/dashboard.css").status_code == 200


def test_the_json_equals_the_kpis_module_on_seeded_data(dash: Dashboard) -> None:
    seed(dash.store)
    client = _login(dash, Role.PRODUCT_OWNER)
    body = client.get("/v1/metrics/dashboard").json()
    expected = kpis.dashboard(dash.store, dash.settings)
    assert body["escalation"] == expected.escalation.model_dump(mode="json")
    assert body["segments"] == expected.segments.model_dump(mode="json")
    assert body["spot_checks"] == expected.spot_checks.model_dump(mode="json")
    assert body["empty"] == []


def test_a_cross_origin_login_or_logout_is_refused(dash: Dashboard) -> None:
    # Issue #12.8: /login had no CSRF defence. A browser names the page a form was posted from.
    key = {"api_key": dash.keys[Role.PRODUCT_OWNER][1]}
    foreign = (
        {"Origin": "https://evil.example"},
        {"Origin": "null"},
        {"Referer": "https://evil.example/page"},
        {"Referer": "http://[::1"},  # not a URL: no origin of ours, and no 500 either
        {"Referer": "http://[zz]/"},
    )
    for headers in foreign:
        refused = dash.client.post("/login", data=key, headers=headers)
        assert refused.status_code == 403
        assert "cross-origin" in refused.text
        assert dash.client.post("/logout", headers=headers).status_code == 403
    same = dash.client.post("/login", data=key, headers={"Origin": "http://testserver"})
    assert same.status_code == 303
