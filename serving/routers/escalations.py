"""`GET /v1/escalations`: the open review queue."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query
from fastapi.concurrency import run_in_threadpool

from serving.deps import StoreDep
from serving.routers.convert import prediction_out
from serving.routing import Reason
from serving.schemas import EscalationOut, EscalationsOut
from serving.security import Principal, Role, require_roles

router = APIRouter(prefix="/v1", tags=["escalations"])


@router.get("/escalations", response_model=EscalationsOut)
async def open_escalations(
    store: StoreDep,
    _: Annotated[Principal, Depends(require_roles(Role.MERCHANDISER, Role.ML_ENGINEER))],
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
    reason: Annotated[Reason | None, Query(description="only escalations with this reason")] = None,
) -> EscalationsOut:
    """Items whose newest prediction was escalated and not reviewed since, most useful first."""
    rows = await run_in_threadpool(
        store.open_escalations, limit=limit, offset=offset, reason=None if reason is None else reason.value
    )
    return EscalationsOut(
        count=len(rows),
        escalations=[
            EscalationOut(
                item_id=r.prediction.item_id,
                title=r.title,
                brand=r.brand,
                price=r.price,
                prediction=prediction_out(r.prediction),
            )
            for r in rows
        ],
    )
