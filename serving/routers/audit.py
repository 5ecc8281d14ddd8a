"""`GET /v1/audit`: the append-only audit trail, optionally for one item or one kind of event."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query
from fastapi.concurrency import run_in_threadpool

from serving.deps import MAX_ROW_ID, ItemIdQuery, StoreDep
from serving.routers.convert import audit_out
from serving.schemas import AuditTrailOut
from serving.security import Principal, Role, require_roles

router = APIRouter(prefix="/v1", tags=["audit"])


@router.get("/audit", response_model=AuditTrailOut)
async def audit_trail(
    store: StoreDep,
    _: Annotated[Principal, Depends(require_roles(Role.ML_ENGINEER))],
    item: ItemIdQuery = None,
    kind: Annotated[
        Literal["model_decision", "review", "model_event"] | None,
        Query(description="only events of this kind (model_event: champion moves)"),
    ] = None,
    after_id: Annotated[int, Query(ge=0, le=MAX_ROW_ID)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> AuditTrailOut:
    """Model decisions, reviews and champion moves, oldest first; page with `after_id`."""
    rows = await run_in_threadpool(store.audit_trail, item_id=item, kind=kind, limit=limit, after_id=after_id)
    return AuditTrailOut(
        count=len(rows),
        next_after_id=rows[-1].id if len(rows) == limit else None,
        events=[audit_out(r) for r in rows],
    )
