"""`POST /v1/webhooks/label-studio`: corrections coming back from merchandisers.

Checks the shared secret (constant time) before reading anything, validates the payload, stores it
idempotently and returns. Label Studio waits for this answer inside the merchandiser's request (1 s
timeout by default), so nothing slow happens here: retraining is someone else's job.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from labeling.client import WEBHOOK_PATH
from labeling.exceptions import ReviewerDirectoryUnavailable, UnknownProjectError, WebhookAuthError
from labeling.reviewers import ReviewerTiers, senior_check
from labeling.webhooks import (
    SECRET_HEADER,
    CorrectionEvent,
    DeletionEvent,
    check_secret,
    events_from,
    parse_payload,
    payload_schema,
    project_id_of,
)
from serving.deps import SettingsDep, StoreDep
from serving.security import check_throttle, record_failure
from serving.store import Store

logger = logging.getLogger(__name__)
router = APIRouter(tags=["webhooks"])


def _persist(store: Store, payload_event: CorrectionEvent | DeletionEvent) -> dict[str, Any]:
    if isinstance(payload_event, DeletionEvent):
        new = store.record_deletion(payload_event)
        return {"status": "stored" if new else "duplicate", "deleted": new}
    stored = store.record_correction(payload_event)
    return {"status": "stored" if stored else "duplicate", "action": payload_event.action}


def _not_recorded(status: int, reason: str) -> JSONResponse:
    headers = {"Retry-After": "30"} if status == 503 else None
    return JSONResponse(status_code=status, content={"detail": reason, "recorded": False}, headers=headers)


@router.post(
    WEBHOOK_PATH,
    openapi_extra={
        "requestBody": {"required": True, "content": {"application/json": {"schema": payload_schema()}}}
    },
)
async def label_studio_webhook(request: Request, store: StoreDep, settings: SettingsDep) -> JSONResponse:
    # A per-address limit on wrong secrets, as for API keys (its own scope: failures elsewhere on the
    # address never hold back corrections). A webhook refused meanwhile is not lost: the periodic sync
    # reads the annotation from Label Studio.
    check_throttle(request, "webhook")
    provided = request.headers.get(SECRET_HEADER)
    try:
        check_secret(provided, settings.labelstudio.webhook_secret.get_secret_value())
    except WebhookAuthError:
        if provided is not None:  # a wrong secret is a guess; a missing one is not
            record_failure(request, "webhook")
        raise
    payload = parse_payload(await request.body())
    project_id = project_id_of(payload)
    taxonomy = await run_in_threadpool(store.taxonomy, project_id) if project_id is not None else None
    tiers: ReviewerTiers | None = getattr(request.app.state, "reviewer_tiers", None)
    try:
        # In the threadpool: an unknown reviewer id costs one look-up of Label Studio's users.
        event = await run_in_threadpool(events_from, payload, taxonomy, senior_check(tiers))
    except UnknownProjectError as exc:
        # Not yet ours (a bootstrap between creating the project and recording it), or never: a
        # rejection stored now would stay, since the sync never looks again at a state it holds.
        logger.info("webhook %s project=%s -> not recorded (unknown project)", payload.action, project_id)
        return _not_recorded(409, str(exc))
    except ReviewerDirectoryUnavailable as exc:
        logger.warning("webhook %s project=%s -> not recorded: %s", payload.action, project_id, exc)
        return _not_recorded(503, f"{exc}; nothing recorded (the periodic sync records it later)")
    outcome = await run_in_threadpool(_persist, store, event)
    # Log ids and outcome only: the payload carries the project's token.
    logger.info("webhook %s project=%s -> %s", payload.action, project_id, outcome["status"])
    if isinstance(event, CorrectionEvent) and event.action == "rejected":
        return JSONResponse(
            status_code=422,
            content={
                "detail": [{"loc": ["annotation", "result"], "msg": event.error, "type": "label_rejected"}],
                "recorded": True,
            },
        )
    return JSONResponse(status_code=200, content=outcome)
