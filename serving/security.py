"""Roles and API keys: the dependency every protected endpoint declares.

INTERFACE (written by the lead; the auth engineer implements the bodies, keeping these names):
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

import logging
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from serving.deps import StoreDep
from serving.keys import Principal, Role, authenticate

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


def require_roles(*roles: Role) -> Callable[..., Principal]:
    """A dependency that admits callers whose key has one of `roles` (or `admin`)."""
    allowed = frozenset(roles) | {Role.ADMIN}
    needed = ", ".join(sorted(r.value for r in allowed))

    def dependency(
        request: Request,
        store: StoreDep,
        bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
        api_key: Annotated[str | None, Depends(_api_key)],
    ) -> Principal:
        presented = bearer.credentials if bearer is not None else api_key
        principal = authenticate(store, presented) if presented else None
        if principal is None:
            logger.info("rejected a request to %s: missing or invalid API key", request.url.path)
            raise _unauthorized()
        request.state.principal = principal
        if principal.role not in allowed:
            logger.info("key %d (%s) denied %s", principal.key_id, principal.role.value, request.url.path)
            raise HTTPException(
                status.HTTP_403_FORBIDDEN,
                detail=f"role {principal.role.value!r} may not call this endpoint (needs one of: {needed})",
            )
        return principal

    dependency.allowed_roles = allowed  # type: ignore[attr-defined]
    return dependency


def allowed_roles_of(call: Any) -> frozenset[Role] | None:
    """The roles a `require_roles` dependency admits; `None` for any other callable."""
    roles = getattr(call, "allowed_roles", None)
    return roles if isinstance(roles, frozenset) else None


__all__ = ["API_KEY_HEADER", "Principal", "Role", "allowed_roles_of", "require_roles"]
