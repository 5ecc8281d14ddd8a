"""`/v1/keys`: issue, list and revoke API keys (admin only).

A new key's plaintext is in the creation response and nowhere else, ever; listings show its prefix.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request, Response, status
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field, field_validator

from serving import keys
from serving.deps import RowIdPath, StoreDep
from serving.keys import ApiKeyInfo, Principal, Role
from serving.security import require_roles

router = APIRouter(prefix="/v1/keys", tags=["keys"])
AdminDep = Annotated[Principal, Depends(require_roles(Role.ADMIN))]


class ApiKeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(
        min_length=1,
        max_length=keys.MAX_NAME_LENGTH,
        pattern=r"\S",
        description="who or what uses the key, e.g. 'catalog-ingest'",
    )
    role: Role

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return keys.clean_key_name(value)  # the CLI's rules: no control characters, PII masked


class ApiKeyPublic(BaseModel):
    id: int
    name: str
    role: Role
    prefix: str = Field(description="the first characters of the key, to recognise it")
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None
    active: bool

    @classmethod
    def of(cls, info: ApiKeyInfo) -> ApiKeyPublic:
        return cls(
            id=info.id,
            name=info.name,
            role=info.role,
            prefix=info.prefix,
            created_at=info.created_at,
            last_used_at=info.last_used_at,
            revoked_at=info.revoked_at,
            active=info.active,
        )


class ApiKeyCreated(ApiKeyPublic):
    key: str = Field(description="the API key itself: shown this once, store it now")


class ApiKeyList(BaseModel):
    keys: list[ApiKeyPublic]


_NOT_FOUND: dict[int | str, dict[str, Any]] = {status.HTTP_404_NOT_FOUND: {"description": "no such key"}}


@router.post("", status_code=status.HTTP_201_CREATED, response_model=ApiKeyCreated)
async def create_api_key(
    body: ApiKeyCreate, store: StoreDep, _: AdminDep, response: Response
) -> ApiKeyCreated:
    """Issue a key. The response is the only place its plaintext ever appears."""
    key_id, plaintext = await run_in_threadpool(keys.create_key, store, body.name, body.role)
    info = await run_in_threadpool(keys.get_key, store, key_id)
    if info is None:  # pragma: no cover - just written in the same database
        raise HTTPException(status.HTTP_500_INTERNAL_SERVER_ERROR, detail="key vanished")
    response.headers["Cache-Control"] = "no-store"
    return ApiKeyCreated(**ApiKeyPublic.of(info).model_dump(), key=plaintext)


@router.get("", response_model=ApiKeyList)
async def list_api_keys(store: StoreDep, _: AdminDep, include_revoked: bool = False) -> ApiKeyList:
    """Every key (active only unless `include_revoked`), oldest first; never a plaintext or a hash."""
    infos = await run_in_threadpool(keys.list_keys, store, include_revoked=include_revoked)
    return ApiKeyList(keys=[ApiKeyPublic.of(i) for i in infos])


@router.delete(
    "/{key_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={
        **_NOT_FOUND,
        status.HTTP_409_CONFLICT: {"description": "the last active admin key cannot be revoked here"},
    },
)
async def revoke_api_key(request: Request, key_id: RowIdPath, store: StoreDep, _: AdminDep) -> Response:
    """Revoke a key (idempotent). The last active admin key can only be revoked with the CLI."""
    info = await run_in_threadpool(keys.get_key, store, key_id)
    if info is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no key {key_id}")
    if (
        info.active
        and info.role is Role.ADMIN
        and await run_in_threadpool(keys.active_admin_count, store) <= 1
    ):
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            detail="refusing to revoke the last active admin key; create another first",
        )
    await run_in_threadpool(keys.revoke_key, store, key_id)
    cache = getattr(request.app.state, "key_cache", None)
    if cache is not None:  # the revoked key must stop working now, not when its cache entry expires
        cache.clear()
    return Response(status_code=status.HTTP_204_NO_CONTENT)
