"""`GET /v1/items/{item_id}`: everything that happened to one item."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, status
from fastapi.concurrency import run_in_threadpool

from serving.deps import ItemIdPath, StoreDep
from serving.routers.convert import audit_out, correction_out, prediction_out
from serving.schemas import ItemHistoryOut, ItemOut
from serving.security import Principal, Role, require_roles

router = APIRouter(prefix="/v1", tags=["items"])


@router.get(
    "/items/{item_id}",
    response_model=ItemHistoryOut,
    responses={status.HTTP_404_NOT_FOUND: {"description": "no such item"}},
)
async def item_history(
    item_id: ItemIdPath,
    store: StoreDep,
    # Item text, reviewer ids and the item's audit events: for the roles that work on items.
    _: Annotated[Principal, Depends(require_roles(Role.MERCHANDISER, Role.ML_ENGINEER))],
) -> ItemHistoryOut:
    """The item, every prediction and routing decision, every review, and its audit trail."""
    history = await run_in_threadpool(store.item_history, item_id)
    if history is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no item {item_id!r}")
    reviewed = [c for c in history.corrections if c.action in ("created", "updated") and c.label]
    deleted = {c.annotation_id for c in history.corrections if c.action == "deleted"}
    reviewed = [c for c in reviewed if c.annotation_id not in deleted]
    current = (
        reviewed[-1].label if reviewed else (history.predictions[-1].label if history.predictions else None)
    )
    item = history.item
    return ItemHistoryOut(
        item=ItemOut(
            id=item.id,
            title=item.title,
            description=item.description,
            brand=item.brand,
            price=item.price,
            category_hint=item.category_hint,
            first_seen_at=item.first_seen_at,
            updated_at=item.updated_at,
        ),
        current_category=current,
        predictions=[prediction_out(p) for p in history.predictions],
        corrections=[correction_out(c) for c in history.corrections],
        audit=[audit_out(a) for a in history.audit],
    )
