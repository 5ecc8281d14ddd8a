"""Dashboard sessions: who may view the product owners' dashboard, by API key or session cookie.

A session's cookie holds 256 random bits; only their SHA-256 is stored (`dashboard_sessions`), with an
expiry (`dashboard.session_ttl_s`). A session dies with its key: a revoked key ends every session it
opened. `require_dashboard_roles` admits a dashboard role (product_owner, ml_engineer, admin) by a header
key (`serving.security.key_principal`, cached and throttled like every key) or a live session.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.concurrency import run_in_threadpool
from fastapi.security import APIKeyCookie
from sqlalchemy import DateTime, ForeignKey, Integer, String, delete, select
from sqlalchemy.orm import Mapped, mapped_column

from serving.deps import StoreDep
from serving.keys import ApiKey, Principal, Role, hash_key
from serving.security import PresentedKey, admit, check_throttle, key_principal, record_failure
from serving.store import Base, Store

SESSION_COOKIE = "hitl_session"
DASHBOARD_ROLES = frozenset({Role.PRODUCT_OWNER, Role.ML_ENGINEER, Role.ADMIN})
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


async def presented_principal(
    request: Request, store: Store, key: str | None, token: str | None
) -> tuple[Principal | None, bool]:
    """(principal, something was presented). A header key (`serving.security.key_principal`) wins over
    the session cookie."""
    if key:
        return await key_principal(request, key), True
    if token:
        check_throttle(request)
        principal = await run_in_threadpool(session_principal, store, token)
        if principal is None:
            record_failure(request)
        return principal, True
    return None, False


def require_dashboard_roles() -> Callable[..., Awaitable[Principal]]:
    """Like `serving.security.require_roles(product_owner, ml_engineer)`, but a session cookie also
    counts: missing or invalid credentials -> 401, another role -> 403 with the reason."""
    allowed = DASHBOARD_ROLES

    async def dependency(
        request: Request,
        store: StoreDep,
        key: PresentedKey,
        cookie: Annotated[str | None, Depends(_cookie)],
    ) -> Principal:
        principal, _ = await presented_principal(request, store, key, cookie)
        if principal is None:
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED,
                detail="missing or invalid API key or dashboard session",
                headers={"WWW-Authenticate": "Bearer"},
            )
        return admit(request, principal, allowed)

    dependency.allowed_roles = allowed  # type: ignore[attr-defined]
    return dependency
