"""The product owners' dashboard: a login form, a cookie session, and the page.

- `GET /login`, `POST /login` (form field `api_key`): a key of a dashboard role (product_owner,
  ml_engineer, admin) opens a session; any other role is refused with 403 and the reason.
- `POST /logout`: ends the session.
- `GET /dashboard`: the page (HTML shell + `/static/dashboard/*`, no CDN); without a valid session or key
  it redirects to the login page. Its charts fetch `GET /v1/metrics/dashboard`, which accepts the session
  cookie or the usual `Authorization: Bearer` / `X-API-Key` headers (`require_dashboard_roles`).

Session: the cookie holds 256 random bits; only their SHA-256 is stored (`dashboard_sessions`), with an
expiry (`dashboard.session_ttl_s`). The cookie is HttpOnly and SameSite=Strict, which is what keeps other
sites from posting to `/logout` or reading the metrics with it. A session dies with its key: a revoked key
ends every session it opened.
"""

from __future__ import annotations

import html
import logging
import secrets
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from importlib import resources
from string import Template
from typing import Annotated
from urllib.parse import parse_qs, urlsplit

from fastapi import APIRouter, Depends, HTTPException, Request, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.security import APIKeyCookie, APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import DateTime, ForeignKey, Integer, String, delete, select
from sqlalchemy.orm import Mapped, mapped_column

from hitl.settings import Settings
from serving.deps import SettingsDep, StoreDep
from serving.keys import ApiKey, Principal, Role, authenticate, hash_key
from serving.security import admit, check_throttle, record_failure
from serving.store import Base, Store

logger = logging.getLogger(__name__)

router = APIRouter(tags=["dashboard"])

SESSION_COOKIE = "hitl_session"
DASHBOARD_ROLES = frozenset({Role.PRODUCT_OWNER, Role.ML_ENGINEER, Role.ADMIN})
MAX_FORM_BYTES = 4096
# The page runs only our own script and style: no inline code, no third-party origin.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; "
    "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    # Not no-referrer: under it a browser sends `Origin: null` even for our own login form, and the
    # cross-origin check below could not tell it from a foreign page's. same-origin sends nothing
    # to other sites.
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}

_bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer hitl_...`")
_api_key = APIKeyHeader(name="X-API-Key", auto_error=False, description="An API key (alternative header)")
_cookie = APIKeyCookie(name=SESSION_COOKIE, auto_error=False, description="A dashboard session (see /login)")


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


class DashboardSession(Base):
    """One dashboard login. The token itself is never stored."""

    __tablename__ = "dashboard_sessions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    key_id: Mapped[int] = mapped_column(Integer, ForeignKey("api_keys.id"))
    created_at: Mapped[datetime] = mapped_column(DateTime, default=_now)
    expires_at: Mapped[datetime] = mapped_column(DateTime)
    ended_at: Mapped[datetime | None] = mapped_column(DateTime)


def open_session(store: Store, principal: Principal, ttl_s: int) -> str:
    """A new session for `principal`; returns the token (for the cookie only)."""
    token = secrets.token_urlsafe(32)
    with store.session() as session:
        # Expired sessions are useless: drop them here rather than in a background job.
        session.execute(delete(DashboardSession).where(DashboardSession.expires_at <= _now()))
        session.add(
            DashboardSession(
                token_hash=hash_key(token),
                key_id=principal.key_id,
                expires_at=_now() + timedelta(seconds=ttl_s),
            )
        )
    return token


def session_principal(store: Store, token: str) -> Principal | None:
    """The principal of a live session (not ended, not expired, its key not revoked), else `None`."""
    if not token or len(token) > 256:
        return None
    with store.session() as session:
        row = session.execute(
            select(ApiKey.id, ApiKey.name, ApiKey.role)
            .join(DashboardSession, DashboardSession.key_id == ApiKey.id)
            .where(
                DashboardSession.token_hash == hash_key(token),
                DashboardSession.ended_at.is_(None),
                DashboardSession.expires_at > _now(),
                ApiKey.revoked_at.is_(None),
            )
        ).first()
    return None if row is None else Principal(key_id=row[0], name=row[1], role=Role(row[2]))


def end_session(store: Store, token: str) -> None:
    with store.session() as session:
        for row in session.scalars(
            select(DashboardSession).where(
                DashboardSession.token_hash == hash_key(token), DashboardSession.ended_at.is_(None)
            )
        ):
            row.ended_at = _now()


def _presented_principal(store: Store, key: str | None, token: str | None) -> tuple[Principal | None, bool]:
    """(principal, something was presented). A header key wins over the cookie."""
    if key:
        return authenticate(store, key), True
    if token:
        return session_principal(store, token), True
    return None, False


def require_dashboard_roles() -> Callable[..., Principal]:
    """Like `serving.security.require_roles(product_owner, ml_engineer)`, but a session cookie also
    counts: missing or invalid credentials -> 401, another role -> 403 with the reason."""
    allowed = DASHBOARD_ROLES

    def dependency(
        request: Request,
        store: StoreDep,
        bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
        api_key: Annotated[str | None, Depends(_api_key)],
        cookie: Annotated[str | None, Depends(_cookie)],
    ) -> Principal:
        key = bearer.credentials if bearer is not None else api_key
        if key or cookie:
            check_throttle(request)
        principal, presented = _presented_principal(store, key, cookie)
        if principal is None:
            if presented:
                record_failure(request)
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED,
                detail="missing or invalid API key or dashboard session",
                headers={"WWW-Authenticate": "Bearer"},
            )
        return admit(request, principal, allowed)

    dependency.allowed_roles = allowed  # type: ignore[attr-defined]
    return dependency


# ------------------------------------------------------------------------------------------------- pages
def _template(name: str) -> Template:
    return Template(resources.files("serving").joinpath("templates", name).read_text("utf-8"))


def _page(name: str, status_code: int = 200, **values: str) -> HTMLResponse:
    body = _template(name).substitute({k: html.escape(v) for k, v in values.items()})
    return HTMLResponse(body, status_code=status_code, headers=PAGE_HEADERS)


def _login_page(message: str = "", status_code: int = 200) -> HTMLResponse:
    return _page("login.html", status_code, message=message, message_class="error" if message else "hidden")


def _refused(principal: Principal) -> str:
    needed = ", ".join(sorted(r.value for r in DASHBOARD_ROLES))
    return f"role {principal.role.value!r} may not view the dashboard (needs one of: {needed})"


def _set_cookie(response: Response, token: str, settings: Settings) -> None:
    response.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=settings.dashboard.session_ttl_s,
        path="/",
        httponly=True,
        samesite="strict",
        secure=settings.dashboard.secure_cookie,
    )


def _cross_origin(request: Request) -> bool:
    """A browser form posted from another site (login CSRF): its Origin (or, without one, its
    Referer) names a different origin than this server's, or is "null" (an opaque origin: a page
    that hides where it comes from). Non-browser clients send neither."""
    own = f"{request.url.scheme}://{request.headers.get('host', request.url.netloc)}"
    origin = request.headers.get("origin")
    if origin is None:
        referer = request.headers.get("referer")
        if referer is None:
            return False
        parts = urlsplit(referer)
        origin = f"{parts.scheme}://{parts.netloc}"
    return origin.rstrip("/").lower() != own.lower()


def _refuse_cross_origin(request: Request) -> HTMLResponse | None:
    if not _cross_origin(request):
        return None
    logger.info("refused a cross-origin form post to %s", request.url.path)
    return _login_page("cross-origin form submissions are refused", status.HTTP_403_FORBIDDEN)


@router.get("/login", response_class=HTMLResponse, include_in_schema=False)
async def login_form(request: Request, store: StoreDep) -> Response:
    token = request.cookies.get(SESSION_COOKIE)
    if token and await run_in_threadpool(session_principal, store, token) is not None:
        return RedirectResponse("/dashboard", status_code=status.HTTP_303_SEE_OTHER)
    return _login_page()


@router.post("/login", response_class=HTMLResponse, include_in_schema=False)
async def login(request: Request, store: StoreDep, settings: SettingsDep) -> Response:
    refused = _refuse_cross_origin(request)
    if refused is not None:
        return refused
    check_throttle(request)
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        return _login_page(
            f"the form is larger than {MAX_FORM_BYTES} bytes", status.HTTP_413_CONTENT_TOO_LARGE
        )
    fields = parse_qs(body.decode("utf-8", errors="replace"), max_num_fields=10)
    key = (fields.get("api_key") or [""])[0].strip()
    if not key:
        return _login_page("enter an API key", status.HTTP_400_BAD_REQUEST)
    principal = await run_in_threadpool(authenticate, store, key)
    if principal is None:
        record_failure(request)
        logger.info("dashboard login refused: unknown or revoked key")
        return _login_page("unknown or revoked API key", status.HTTP_401_UNAUTHORIZED)
    if principal.role not in DASHBOARD_ROLES:
        logger.info("dashboard login refused to key %d (%s)", principal.key_id, principal.role.value)
        return _login_page(_refused(principal), status.HTTP_403_FORBIDDEN)
    token = await run_in_threadpool(open_session, store, principal, settings.dashboard.session_ttl_s)
    response = RedirectResponse("/dashboard", status_code=status.HTTP_303_SEE_OTHER)
    _set_cookie(response, token, settings)
    return response


@router.post("/logout", include_in_schema=False)
async def logout(request: Request, store: StoreDep) -> Response:
    refused = _refuse_cross_origin(request)
    if refused is not None:
        return refused
    token = request.cookies.get(SESSION_COOKIE)
    if token:
        await run_in_threadpool(end_session, store, token)
    response = RedirectResponse("/login", status_code=status.HTTP_303_SEE_OTHER)
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")
    return response


@router.get("/dashboard", response_class=HTMLResponse, include_in_schema=False)
async def dashboard_page(request: Request, store: StoreDep, settings: SettingsDep) -> Response:
    """The page; no credentials -> the login page, a key or session of another role -> 403."""
    authorization = request.headers.get("Authorization", "")
    key = authorization[7:].strip() if authorization.lower().startswith("bearer ") else None
    key = key or request.headers.get("X-API-Key")
    principal, _ = await run_in_threadpool(
        _presented_principal, store, key, request.cookies.get(SESSION_COOKIE)
    )
    if principal is None:
        return RedirectResponse("/login", status_code=status.HTTP_303_SEE_OTHER)
    if principal.role not in DASHBOARD_ROLES:
        return _login_page(_refused(principal), status.HTTP_403_FORBIDDEN)
    return _page(
        "dashboard.html",
        user=principal.name,
        role=principal.role.value,
        currency=settings.dashboard.currency,
        target=f"{settings.learner.target_accuracy:g}",
    )


__all__ = [
    "DASHBOARD_ROLES",
    "SESSION_COOKIE",
    "DashboardSession",
    "end_session",
    "open_session",
    "require_dashboard_roles",
    "router",
    "session_principal",
]
