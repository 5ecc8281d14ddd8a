"""The role matrix (issue #4): every endpoint x every role, no key and a wrong key.

Endpoints are ENUMERATED from the app, not listed here: any route whose dependencies include a
`require_roles(...)` dependency is checked against the roles it declares, so a new endpoint is covered
the day it lands. And every `/v1` route must be protected, except the few PUBLIC ones below: a new
endpoint that forgets its `require_roles` fails `test_every_v1_route_is_protected`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from labeling.client import WEBHOOK_PATH
from serving.keys import KEY_PREFIX, Role
from serving.routers.ml_backend import ML_BACKEND_PREFIX, require_ml_backend_auth
from serving.security import allowed_roles_of
from tests.integration.auth_app import RunningApp, app_for_collection, running_app

pytestmark = pytest.mark.integration

# Unauthenticated on purpose: Label Studio authenticates with the shared webhook secret; liveness.
PUBLIC = {WEBHOOK_PATH: "Label Studio's shared secret", "/v1/health": "liveness probe"}
# Outside /v1, reachable without a key on purpose (each answers without identifiers or item data).
PUBLIC_OUTSIDE_V1 = {
    "/healthz": "liveness probe",
    "/readyz": "readiness probe: says what is missing, never why",
    "/metrics": "Prometheus scrape: counts and latencies by route template, no identifiers",
    "/login": "the dashboard's sign-in form (takes a key)",
    "/logout": "ends a dashboard session",
    "/dashboard": "redirects to /login without a session",
}
WRONG_KEY = KEY_PREFIX + "not-a-key-" + "x" * 32
NO_BODY = {"GET", "DELETE", "HEAD", "OPTIONS"}
ROLE_NAMES = {role.value for role in Role}
# The dashboard's JSON figures (issue #7); the HTML page `/dashboard` is checked separately: without a
# key it redirects to the login form instead of answering 401.
DASHBOARD_FIGURES = ("dashboard", "escalation-summary", "spot-checks", "queue", "reviews", "throughput",
                     "cost", "segments", "model-timeline")  # fmt: skip


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str
    allowed: frozenset[Role] | None  # None: no `require_roles` dependency

    def __str__(self) -> str:
        return f"{self.method} {self.path}"


def _routes(routes: Iterable[Any]) -> Iterator[Any]:
    """Every concrete route, through included routers (FastAPI keeps those lazily in this version)."""
    for route in routes:
        candidates = getattr(route, "effective_candidates", None)
        if callable(candidates):
            yield from _routes(candidates())
        elif getattr(route, "original_router", None) is not None:  # pragma: no cover - other FastAPI layout
            yield from _routes(route.original_router.routes)
        else:
            yield route


def _allowed(dependant: Any) -> frozenset[Role] | None:
    """The union of roles admitted by the `require_roles` dependencies anywhere under `dependant`."""
    found: frozenset[Role] | None = None
    for dependency in dependant.dependencies:
        roles = allowed_roles_of(dependency.call)
        if roles is not None:
            # Several role checks on one route: a caller must pass all of them.
            found = roles if found is None else found & roles
        inner = _allowed(dependency)
        if inner is not None:
            found = inner if found is None else found & inner
    return found


def endpoints(app: Any) -> list[Endpoint]:
    found = []
    for route in _routes(app.router.routes):
        dependant = getattr(route, "dependant", None)
        if dependant is None:  # docs, openapi.json, static routes
            continue
        for method in sorted(set(route.methods or ()) - {"HEAD", "OPTIONS"}):
            found.append(Endpoint(method, route.path_format or route.path, _allowed(dependant)))
    return found


ALL = endpoints(app_for_collection())
PROTECTED = [e for e in ALL if e.allowed is not None]


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningApp]:
    with running_app(tmp_path_factory.mktemp("roles")) as app:
        yield app


# ------------------------------------------------------------------ minimal requests from the schema
def _resolve(schema: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        node: Any = spec
        for part in schema["$ref"].lstrip("#/").split("/"):
            node = node[part]
        schema = node
    return schema


def example(schema: dict[str, Any], spec: dict[str, Any]) -> Any:
    """A small value that satisfies simple schemas (enough to get past validation most of the time)."""
    schema = _resolve(schema, spec)
    if "example" in schema:
        return schema["example"]
    if "enum" in schema:
        return schema["enum"][0]
    if "const" in schema:
        return schema["const"]
    for combinator in ("anyOf", "oneOf", "allOf"):
        if combinator in schema:
            options = [s for s in schema[combinator] if _resolve(s, spec).get("type") != "null"]
            return example((options or schema[combinator])[0], spec)
    kind = schema.get("type")
    if kind == "object" or "properties" in schema:
        props = schema.get("properties", {})
        return {name: example(props[name], spec) for name in schema.get("required", []) if name in props}
    if kind == "array":
        return [example(schema.get("items", {}), spec) for _ in range(max(1, schema.get("minItems", 1)))]
    if kind == "integer":
        # Large ids: an allowed caller gets 404, never touches a real row (e.g. revokes a matrix key).
        return max(int(schema.get("minimum", 0)), 10**6) if schema.get("maximum", 10**7) >= 10**6 else 1
    if kind == "number":
        return float(schema.get("minimum", 1.0))
    if kind == "boolean":
        return False
    return "matrix-probe".ljust(int(schema.get("minLength", 0)), "x")


def request_for(endpoint: Endpoint, spec: dict[str, Any]) -> dict[str, Any]:
    operation = spec["paths"].get(endpoint.path, {}).get(endpoint.method.lower(), {})
    path, params = endpoint.path, {}
    for parameter in operation.get("parameters", []):
        value = example(parameter.get("schema", {}), spec)
        if parameter["in"] == "path":
            path = path.replace("{" + parameter["name"] + "}", str(value))
        elif parameter["in"] == "query" and parameter.get("required"):
            params[parameter["name"]] = value
    for name in endpoint.path.split("{")[1:]:  # a path parameter the schema does not describe
        path = path.replace("{" + name.split("}")[0] + "}", "matrix-probe")
    kwargs: dict[str, Any] = {"params": params}
    body = operation.get("requestBody", {}).get("content", {}).get("application/json")
    if body is not None:
        kwargs["json"] = example(body.get("schema", {}), spec)
    elif endpoint.method not in NO_BODY:
        kwargs["json"] = {}
    return {"method": endpoint.method, "url": path, **kwargs}


# ------------------------------------------------------------------ the tests
def test_routes_are_found_and_match_the_openapi_document() -> None:
    """Guards the enumeration itself: if it silently found nothing, the matrix would pass vacuously."""
    spec = app_for_collection().openapi()
    documented = {(m.upper(), p) for p, ops in spec["paths"].items() for m in ops}
    walked = {(e.method, e.path) for e in ALL}
    assert documented <= walked
    keys_routes = {(e.method, e.path): e.allowed for e in PROTECTED if e.path.startswith("/v1/keys")}
    assert keys_routes == {
        ("POST", "/v1/keys"): frozenset({Role.ADMIN}),
        ("GET", "/v1/keys"): frozenset({Role.ADMIN}),
        ("DELETE", "/v1/keys/{key_id}"): frozenset({Role.ADMIN}),
    }
    dashboard_roles = frozenset({Role.PRODUCT_OWNER, Role.ML_ENGINEER, Role.ADMIN})
    metrics_routes = {e.path: e.allowed for e in PROTECTED if e.path.startswith("/v1/metrics/")}
    assert metrics_routes == {
        "/v1/metrics/escalation": dashboard_roles,
        **{f"/v1/metrics/{name}": dashboard_roles for name in DASHBOARD_FIGURES},
    }


def test_every_v1_route_is_protected() -> None:
    unprotected = [
        str(e) for e in ALL if e.path.startswith("/v1/") and e.allowed is None and e.path not in PUBLIC
    ]
    assert unprotected == [], f"add Depends(require_roles(...)) to: {unprotected}"


def _calls(dependant: Any) -> set[Any]:
    found: set[Any] = set()
    for dependency in dependant.dependencies:
        found |= {dependency.call} | _calls(dependency)
    return found


def test_every_route_outside_v1_is_protected_or_public_on_purpose() -> None:
    """Beyond `/v1`: the ML backend answers only Label Studio's basic auth, and the rest is on a list
    with the reason it needs no key (a new route outside it fails here until someone decides)."""
    app = app_for_collection()
    unchecked = []
    for route in _routes(app.router.routes):
        dependant = getattr(route, "dependant", None)
        if dependant is None or route.path.startswith("/v1/"):
            continue
        if route.path.startswith(ML_BACKEND_PREFIX):
            assert require_ml_backend_auth in _calls(dependant), route.path
        elif route.path not in PUBLIC_OUTSIDE_V1:
            unchecked.append(route.path)
    assert unchecked == [], f"protect these routes or list them in PUBLIC_OUTSIDE_V1: {unchecked}"


def test_item_history_is_for_the_roles_that_work_on_items() -> None:
    """It holds item text, reviewer ids and the item's audit events (`/v1/audit` is ml_engineer's):
    merchandisers and ML engineers, not the product owner's metrics key."""
    (items,) = [e for e in PROTECTED if e.path == "/v1/items/{item_id}"]
    assert items.allowed == frozenset({Role.MERCHANDISER, Role.ML_ENGINEER, Role.ADMIN})


@pytest.mark.parametrize("endpoint", PROTECTED, ids=str)
def test_role_matrix(endpoint: Endpoint, running: RunningApp) -> None:
    assert endpoint.allowed is not None
    request = request_for(endpoint, running.app.openapi())
    callers: dict[str, dict[str, str]] = {
        "no key": {},
        "wrong key": {"Authorization": f"Bearer {WRONG_KEY}"},
        "wrong key (X-API-Key)": {"X-API-Key": WRONG_KEY},
        "not a bearer": {"Authorization": f"Basic {WRONG_KEY}"},
    }
    callers.update({role.value: {"Authorization": f"Bearer {key}"} for role, key in running.keys.items()})
    table = {}
    for caller, headers in callers.items():
        response = running.client.request(**request, headers=headers)
        table[caller] = response.status_code
        assert WRONG_KEY not in response.text
        assert all(key not in response.text for key in running.keys.values())
        if caller in ROLE_NAMES and Role(caller) in endpoint.allowed:
            assert response.status_code not in (401, 403), f"{caller}: {response.text}"
        elif caller in ROLE_NAMES:
            assert response.status_code == 403, f"{caller}: {response.text}"
        else:
            assert response.status_code == 401, f"{caller}: {response.text}"
            assert response.headers["WWW-Authenticate"] == "Bearer"
        assert response.status_code < 500, f"{caller}: {response.text}"
    assert table["admin"] not in (401, 403)  # admin passes every check


def test_admin_is_allowed_everywhere_and_nothing_else_is_allowed_everywhere() -> None:
    assert PROTECTED, "no protected endpoint found"
    assert all(Role.ADMIN in e.allowed for e in PROTECTED if e.allowed is not None)
    for role in set(Role) - {Role.ADMIN}:
        assert any(e.allowed is not None and role not in e.allowed for e in PROTECTED), role


def test_public_routes_need_no_key(running: RunningApp) -> None:
    assert running.client.get("/v1/health").status_code == 200
    # The webhook is guarded by its own secret, not by an API key: a key alone does not open it.
    response = running.client.post(
        WEBHOOK_PATH, json={}, headers={"Authorization": f"Bearer {running.keys[Role.ADMIN]}"}
    )
    assert response.status_code == 401


def test_dashboard_page_roles(running: RunningApp) -> None:
    """No key or a wrong key: the login page; a dashboard role: the page; any other role: 403."""
    for headers in ({}, {"Authorization": f"Bearer {WRONG_KEY}"}):
        response = running.client.get("/dashboard", headers=headers, follow_redirects=False)
        assert response.status_code == 303
        assert response.headers["location"] == "/login"
    assert running.client.get("/login").status_code == 200
    for role, key in running.keys.items():
        response = running.client.get("/dashboard", headers={"X-API-Key": key}, follow_redirects=False)
        allowed = role in (Role.PRODUCT_OWNER, Role.ML_ENGINEER, Role.ADMIN)
        assert response.status_code == (200 if allowed else 403), role
        assert key not in response.text
