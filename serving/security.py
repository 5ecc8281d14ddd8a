"""Roles and API keys: the dependency every protected endpoint declares.

- `Role`: the five roles.
- `Principal`: who is calling.
- `require_roles(*roles)`: a FastAPI dependency factory. Missing or unknown key -> 401, known key with
  another role -> 403 (`admin` passes every check). The allowed roles are recorded on the returned callable
  as `allowed_roles` so the role-matrix test can enumerate every endpoint.
Keys travel as `Authorization: Bearer <key>` (or `X-API-Key: <key>`) and are stored hashed.

`Role` and `Principal` are defined in `serving.keys` (the key table needs them, and importing that module
here is what registers the table on `serving.store.Base`) and re-exported from here.
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request, status
from fastapi.concurrency import run_in_threadpool
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from serving.keys import Principal, Role, authenticate
from serving.store import Store

logger = logging.getLogger(__name__)

API_KEY_HEADER = "X-API-Key"
# auto_error=False: we answer 401 (with `WWW-Authenticate`) ourselves, whichever header is missing.
_bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer hitl_...`")
_api_key = APIKeyHeader(name=API_KEY_HEADER, auto_error=False, description="An API key (alternative header)")


def _unauthorized() -> HTTPException:
    # Never echo what was presented: the detail is the same for a missing and a wrong key.
    return HTTPException(
        status.HTTP_401_UNAUTHORIZED,
        detail="missing or invalid API key",
        headers={"WWW-Authenticate": "Bearer"},
    )


class KeyCache:
    """Recently verified keys -> their principal, for `ttl_s` seconds (per app, on `app.state.key_cache`).

    Verifying a key is a database round trip; at hundreds of requests per second that was a fifth of
    the serving CPU (experiments/bench_serving). Entries are keyed by the key's SHA-256, never the
    plaintext. A revocation through the API clears the cache at once; one made by another process (the
    CLI) takes effect within `ttl_s`. `ttl_s` 0 disables caching.
    """

    def __init__(self, ttl_s: float, max_entries: int = 1024) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._entries: OrderedDict[str, tuple[float, Principal]] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def _digest(plaintext: str) -> str:
        return hashlib.sha256(plaintext.encode("utf-8", "surrogatepass")).hexdigest()

    def get(self, plaintext: str) -> Principal | None:
        if self.ttl_s <= 0:
            return None
        digest = self._digest(plaintext)
        with self._lock:
            entry = self._entries.get(digest)
            if entry is None:
                return None
            if time.monotonic() >= entry[0]:
                del self._entries[digest]
                return None
            return entry[1]

    def put(self, plaintext: str, principal: Principal) -> None:
        if self.ttl_s <= 0:
            return
        with self._lock:
            self._entries[self._digest(plaintext)] = (time.monotonic() + self.ttl_s, principal)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


class AuthThrottle:
    """Failed authentications per client address in a sliding window: past ``max_failures`` within
    ``window_s`` the client is refused 429 (with Retry-After) before its key is even looked up, so
    guessing keys costs it time and the database nothing. ``max_failures`` 0 turns it off."""

    def __init__(self, max_failures: int, window_s: float, max_clients: int = 10_000) -> None:
        self.max_failures = max_failures
        self.window_s = window_s
        self.max_clients = max_clients
        self._failures: OrderedDict[str, list[float]] = OrderedDict()
        self._lock = threading.Lock()

    def _recent(self, client: str, now: float) -> list[float]:
        kept = [t for t in self._failures.get(client, []) if now - t < self.window_s]
        if kept:
            self._failures[client] = kept
        else:
            self._failures.pop(client, None)
        return kept

    def retry_after(self, client: str) -> int | None:
        """Seconds until ``client`` may try again, or None when it is not throttled."""
        if self.max_failures <= 0:
            return None
        now = time.monotonic()
        with self._lock:
            recent = self._recent(client, now)
            if len(recent) < self.max_failures:
                return None
            return max(1, math.ceil(self.window_s - (now - recent[-self.max_failures])))

    def failed(self, client: str) -> None:
        if self.max_failures <= 0:
            return
        now = time.monotonic()
        with self._lock:
            self._failures[client] = [*self._recent(client, now), now]
            self._failures.move_to_end(client)
            while len(self._failures) > self.max_clients:
                self._failures.popitem(last=False)


def client_address(request: Request) -> str:
    return request.client.host if request.client is not None else "unknown"


def check_throttle(request: Request, scope: str = "key") -> None:
    """429 with Retry-After when this client failed to authenticate too often (`AuthThrottle`) in
    `scope`: API keys and dashboard sign-ins (``key``), the Label Studio webhook's secret, the ML
    backend's password. Scopes are counted apart, so one misconfigured client on an address (every
    local service shares 127.0.0.1) locks out only its own kind of request."""
    throttle: AuthThrottle | None = getattr(request.app.state, "auth_throttle", None)
    wait = throttle.retry_after(f"{scope}:{client_address(request)}") if throttle is not None else None
    if wait is not None:
        raise HTTPException(
            status.HTTP_429_TOO_MANY_REQUESTS,
            detail=f"too many failed authentications from this address; retry after {wait} s",
            headers={"Retry-After": str(wait)},
        )


def record_failure(request: Request, scope: str = "key") -> None:
    throttle: AuthThrottle | None = getattr(request.app.state, "auth_throttle", None)
    if throttle is not None:
        throttle.failed(f"{scope}:{client_address(request)}")


async def presented_key(
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    api_key: Annotated[str | None, Depends(_api_key)],
) -> str | None:
    """The API key a request presents: `Authorization: Bearer <key>`, else `X-API-Key` (a dependency)."""
    return bearer.credentials if bearer is not None else api_key


PresentedKey = Annotated[str | None, Depends(presented_key)]


async def key_principal(request: Request, presented: str) -> Principal | None:
    """The principal of the API key `presented`, or None (then counted as a failure for the client's
    address). A key verified within `serving.key_cache_ttl_s` is trusted without a database lookup,
    and passes even from a throttled address: many clients can share one (a proxy, NAT, Label
    Studio's container), and one guesser must not lock them all out; any other key from a throttled
    address is refused with 429."""
    cache: KeyCache | None = getattr(request.app.state, "key_cache", None)
    principal = cache.get(presented) if cache is not None else None
    if principal is not None:
        return principal
    check_throttle(request)
    store: Store = request.app.state.store
    principal = await run_in_threadpool(authenticate, store, presented)
    if principal is None:
        record_failure(request)
    elif cache is not None:
        cache.put(presented, principal)
    return principal


def route_of(scope: Mapping[str, Any]) -> str:
    """The route template (``/v1/items/{item_id}``), never the raw path: paths carry ids, which logs
    must not hold."""
    route = scope.get("route")
    return getattr(route, "path", None) or "unmatched"


def admit(request: Request, principal: Principal, allowed: frozenset[Role]) -> Principal:
    """`principal` if its role is in `allowed` (recorded on the request), else 403 naming the roles."""
    request.state.principal = principal
    if principal.role not in allowed:
        logger.info("key %d (%s) denied %s", principal.key_id, principal.role.value, route_of(request.scope))
        needed = ", ".join(sorted(r.value for r in allowed))
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            detail=f"role {principal.role.value!r} may not call this endpoint (needs one of: {needed})",
        )
    return principal


def require_roles(*roles: Role) -> Callable[..., Any]:
    """A dependency that admits callers whose key has one of `roles` (or `admin`)."""
    allowed = frozenset(roles) | {Role.ADMIN}

    async def dependency(request: Request, presented: PresentedKey) -> Principal:
        principal = await key_principal(request, presented) if presented else None
        if principal is None:
            logger.info("rejected a request to %s: missing or invalid API key", route_of(request.scope))
            raise _unauthorized()
        return admit(request, principal, allowed)

    dependency.allowed_roles = allowed  # type: ignore[attr-defined]
    return dependency


def allowed_roles_of(call: Any) -> frozenset[Role] | None:
    """The roles a `require_roles` dependency admits; `None` for any other callable."""
    roles = getattr(call, "allowed_roles", None)
    return roles if isinstance(roles, frozenset) else None


__all__ = [
    "API_KEY_HEADER",
    "AuthThrottle",
    "KeyCache",
    "Principal",
    "Role",
    "admit",
    "allowed_roles_of",
    "check_throttle",
    "record_failure",
    "require_roles",
]
