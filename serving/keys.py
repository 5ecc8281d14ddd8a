"""API keys: who may call the serving API, and with which role.

A key is `hitl_` + 256 random bits (`secrets.token_urlsafe(32)`). Only its SHA-256 is stored. A fast,
unsalted hash is the right tool here, unlike for passwords: the input is already high-entropy random data,
so there is nothing to brute-force or look up in a rainbow table, and a slow KDF (bcrypt, argon2) would
only add latency to every request. Because the hash is deterministic, a presented key is found by an
indexed lookup of its hash (no per-key comparison loop whose timing could leak anything), and the match is
re-checked with `hmac.compare_digest`.

The plaintext is returned once by `create_key` and never stored, logged or echoed.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum

from sqlalchemy import DateTime, Integer, String, func, select
from sqlalchemy.orm import Mapped, mapped_column

from learner.data import check_identifier
from learner.pii import mask_pii
from serving.store import Base, Store

KEY_PREFIX = "hitl_"
# How much of a key is kept in clear to tell keys apart in listings (`hitl_` + 6 of its ~43 random chars).
DISPLAY_CHARS = len(KEY_PREFIX) + 6
# `last_used_at` is refreshed at most this often, so that a busy key does not write on every request.
LAST_USED_RESOLUTION = timedelta(minutes=1)
MAX_NAME_LENGTH = 100


class Role(StrEnum):
    SERVICE = "service"  # predict
    MERCHANDISER = "merchandiser"  # review queue, item history
    ML_ENGINEER = "ml_engineer"  # retrain, promote, audit
    PRODUCT_OWNER = "product_owner"  # metrics, dashboard
    ADMIN = "admin"  # keys; passes every role check


@dataclass(frozen=True)
class Principal:
    key_id: int
    name: str
    role: Role


class UnknownRoleError(ValueError):
    """A role name that is not one of `Role`."""

    def __init__(self, value: str) -> None:
        self.value = value
        super().__init__(f"unknown role {value!r}; valid roles: {', '.join(r.value for r in Role)}")


def parse_role(value: str | Role) -> Role:
    try:
        return Role(value)
    except ValueError:
        raise UnknownRoleError(str(value)) from None


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def hash_key(plaintext: str) -> str:
    return hashlib.sha256(plaintext.encode("utf-8")).hexdigest()


class ApiKey(Base):
    """One issued key. Revoking keeps the row (`revoked_at`) so that audit entries still resolve."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(MAX_NAME_LENGTH))
    role: Mapped[str] = mapped_column(String(32))
    display_prefix: Mapped[str] = mapped_column(String(16))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=_now)
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime)


@dataclass(frozen=True)
class ApiKeyInfo:
    """What may be shown about a key: never its plaintext nor its hash."""

    id: int
    name: str
    role: Role
    prefix: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    @classmethod
    def of(cls, row: ApiKey) -> ApiKeyInfo:
        def aware(value: datetime | None) -> datetime | None:
            return value.replace(tzinfo=UTC) if value is not None else None

        return cls(
            id=row.id,
            name=row.name,
            role=Role(row.role),
            prefix=row.display_prefix,
            created_at=row.created_at.replace(tzinfo=UTC),
            last_used_at=aware(row.last_used_at),
            revoked_at=aware(row.revoked_at),
        )


def clean_key_name(name: str) -> str:
    """`name` stripped and checked (ValueError saying why), personal data masked."""
    cleaned = name.strip()
    if not cleaned or len(cleaned) > MAX_NAME_LENGTH:
        raise ValueError(f"a key name must have 1 to {MAX_NAME_LENGTH} characters")
    # Printed in `hitl keys list`, the audit trail and logs: a newline or an escape sequence there
    # would forge rows or recolour a terminal.
    cleaned = check_identifier(cleaned, "a key name")
    # A key's name is stored on every prediction it makes and names the actor in the audit trail and
    # MLflow: a person's e-mail or phone number there is masked like any other free text. The stored
    # name is the masked one, so the limit applies to it too (a mask can be longer than what it hides).
    masked = mask_pii(cleaned)
    if len(masked) > MAX_NAME_LENGTH:
        raise ValueError(
            f"a key name must have 1 to {MAX_NAME_LENGTH} characters once personal data in it is masked "
            f"({len(masked)})"
        )
    return masked


def create_key(store: Store, name: str, role: Role | str) -> tuple[int, str]:
    """Issue a key; returns `(key_id, plaintext)`. The plaintext cannot be recovered later."""
    checked_role, checked_name = parse_role(role), clean_key_name(name)
    plaintext = KEY_PREFIX + secrets.token_urlsafe(32)
    row = ApiKey(
        name=checked_name,
        role=checked_role.value,
        display_prefix=plaintext[:DISPLAY_CHARS],
        key_hash=hash_key(plaintext),
    )
    with store.session() as session:
        session.add(row)
        session.flush()
        return row.id, plaintext


def get_key(store: Store, key_id: int) -> ApiKeyInfo | None:
    with store.session() as session:
        row = session.get(ApiKey, key_id)
        return ApiKeyInfo.of(row) if row is not None else None


def list_keys(store: Store, *, include_revoked: bool = True) -> list[ApiKeyInfo]:
    query = select(ApiKey).order_by(ApiKey.id)
    if not include_revoked:
        query = query.where(ApiKey.revoked_at.is_(None))
    with store.session() as session:
        return [ApiKeyInfo.of(row) for row in session.scalars(query).all()]


def active_admin_count(store: Store) -> int:
    with store.session() as session:
        count = session.scalar(
            select(func.count())
            .select_from(ApiKey)
            .where(ApiKey.role == Role.ADMIN.value, ApiKey.revoked_at.is_(None))
        )
    return int(count or 0)


def revoke_key(store: Store, key_id: int) -> ApiKeyInfo | None:
    """Revoke a key (idempotent); `None` when no such key exists."""
    with store.session() as session:
        row = session.get(ApiKey, key_id)
        if row is None:
            return None
        if row.revoked_at is None:
            row.revoked_at = _now()
        return ApiKeyInfo.of(row)


def authenticate(store: Store, plaintext: str) -> Principal | None:
    """The principal an active key stands for, else `None` (unknown, malformed or revoked)."""
    if not plaintext.startswith(KEY_PREFIX) or len(plaintext) > 256:
        return None
    digest = hash_key(plaintext)
    with store.session() as session:
        row = session.scalars(select(ApiKey).where(ApiKey.key_hash == digest)).first()
        if row is None or row.revoked_at is not None or not hmac.compare_digest(row.key_hash, digest):
            return None
        now = _now()
        if row.last_used_at is None or now - row.last_used_at >= LAST_USED_RESOLUTION:
            row.last_used_at = now
        return Principal(key_id=row.id, name=row.name, role=Role(row.role))


__all__ = [
    "KEY_PREFIX",
    "ApiKey",
    "ApiKeyInfo",
    "Principal",
    "Role",
    "UnknownRoleError",
    "active_admin_count",
    "authenticate",
    "clean_key_name",
    "create_key",
    "get_key",
    "list_keys",
    "parse_role",
    "revoke_key",
]
