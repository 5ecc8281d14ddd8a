"""The product owners' dashboard: a login form, a cookie session, and the page.

- `GET /login`, `POST /login` (form field `api_key`): a key of a dashboard role (product_owner,
  ml_engineer, admin) opens a session; any other role is refused with 403 and the reason.
- `POST /logout`: ends the session.
- `GET /dashboard`: the page (HTML shell + `/static/dashboard/*`, no CDN); without a valid session or key
  it redirects to the login page. Its charts fetch `GET /v1/metrics/dashboard`, which accepts the session
  cookie or the usual `Authorization: Bearer` / `X-API-Key` headers (`require_dashboard_roles`).

Sessions live in `serving.sessions`. The cookie is HttpOnly and SameSite=Strict, which is what keeps other
sites from posting to `/logout` or reading the metrics with it.
"""

from __future__ import annotations

import html
import logging
from importlib import resources
from string import Template
from urllib.parse import parse_qs, urlsplit

from fastapi import APIRouter, Request, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from serving.deps import SettingsDep, StoreDep
from serving.keys import Principal, authenticate
from serving.security import PresentedKey, check_throttle, record_failure, route_of
from serving.sessions import (
    DASHBOARD_ROLES,
    SESSION_COOKIE,
    end_session,
    open_session,
    presented_principal,
    session_principal,
)
from serving.settings import DashboardSettings

logger = logging.getLogger(__name__)

router = APIRouter(tags=["dashboard"])

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
    "X-Frame-Options": "DENY",  # frame-ancestors 'none' for browsers that do not read CSP
}


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


def _set_cookie(response: Response, token: str, dashboard: DashboardSettings) -> None:
    response.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=dashboard.session_ttl_s,
        path="/",
        httponly=True,
        samesite="strict",
        secure=dashboard.secure_cookie,
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
        try:
            parts = urlsplit(referer)
        except ValueError:  # not a URL at all (an unclosed "[" host): no origin of ours either
            return True
        origin = f"{parts.scheme}://{parts.netloc}"
    return origin.rstrip("/").lower() != own.lower()


def _refuse_cross_origin(request: Request) -> HTMLResponse | None:
    if not _cross_origin(request):
        return None
    logger.info("refused a cross-origin form post to %s", route_of(request.scope))
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
    try:
        fields = parse_qs(body.decode("utf-8", errors="replace"), max_num_fields=10)
    except ValueError:  # more fields than the form has
        return _login_page("the form has too many fields", status.HTTP_400_BAD_REQUEST)
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
    _set_cookie(response, token, settings.dashboard)
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
async def dashboard_page(
    request: Request, store: StoreDep, settings: SettingsDep, key: PresentedKey
) -> Response:
    """The page; no credentials -> the login page, a key or session of another role -> 403."""
    principal, _ = await presented_principal(request, store, key, request.cookies.get(SESSION_COOKIE))
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


__all__ = ["router"]
