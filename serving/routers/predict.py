"""`POST /v1/predict`: categorise items, route each to auto-accept or review, record everything."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, status
from fastapi.exceptions import RequestValidationError

from serving.deps import StoreDep, get_metrics, get_model_holder, get_settings
from serving.routing import LABEL_SEPARATOR
from serving.schemas import ItemPrediction, PredictRequest, PredictResponse, ScoredLabel
from serving.security import Principal, Role, require_roles
from serving.service import LoopPolicy, outbox_hook, predict_and_record
from serving.settings import ServingSettings

router = APIRouter(prefix="/v1", tags=["predict"])

NOT_READY: dict[int | str, dict[str, Any]] = {
    status.HTTP_503_SERVICE_UNAVAILABLE: {"description": "no model is loaded yet"}
}


def check_limits(body: PredictRequest, serving: ServingSettings) -> None:
    """The limits that depend on settings (so they cannot live in the static schema): 422 per field."""
    errors: list[dict[str, Any]] = []
    limit = serving.max_batch_size
    if len(body.items) > limit:
        errors.append(
            {
                "loc": ("body", "items"),
                "msg": f"at most {limit} items per request, got {len(body.items)}",
                "type": "too_long",
                "input": len(body.items),
            }
        )
    max_text = serving.max_text_length
    for index, item in enumerate(body.items):
        for name in ("title", "description"):
            value = getattr(item, name)
            if len(value) > max_text:
                errors.append(
                    {
                        "loc": ("body", "items", index, name),
                        "msg": f"at most {max_text} characters, got {len(value)}",
                        "type": "string_too_long",
                        "input": len(value),
                    }
                )
    seen: dict[str, int] = {}
    for index, item in enumerate(body.items):
        if item.id in seen:
            errors.append(
                {
                    "loc": ("body", "items", index, "id"),
                    "msg": f"duplicate id {item.id!r} (first at index {seen[item.id]})",
                    "type": "duplicate_id",
                    "input": item.id,
                }
            )
        seen.setdefault(item.id, index)
    if errors:
        raise RequestValidationError(errors)


@router.post("/predict", response_model=PredictResponse, responses=NOT_READY)
async def predict(
    body: PredictRequest,
    request: Request,
    store: StoreDep,
    principal: Annotated[Principal, Depends(require_roles(Role.SERVICE))],
) -> PredictResponse:
    """Predict each item's category; auto-accept it or escalate it to review, with the reasons."""
    # Async, with the app state read directly: each sync dependency costs a threadpool round trip
    # (two GIL handoffs), which under 16 concurrent clients costs more than these attribute reads.
    settings, holder, metrics = get_settings(request), get_model_holder(request), get_metrics(request)
    check_limits(body, settings.serving)
    model = holder.require()  # one reference for the whole request: a hot swap cannot split it
    scored, ids = await predict_and_record(
        model,
        store,
        body.items,
        settings.routing,
        LoopPolicy.of(settings.learner),
        requested_by=principal.name,
        on_escalated=outbox_hook(settings.routing.high_value_price),
    )
    metrics.observe_decisions(
        model.version, [(s.routed.decision.value, [r.value for r in s.routed.reasons]) for s in scored]
    )
    return PredictResponse(
        model_version=model.version,
        predictions=[
            ItemPrediction(
                id=s.item.id,
                prediction_id=pid,
                category=s.routed.label,
                category_path=s.routed.label.split(LABEL_SEPARATOR),
                confidence=s.routed.confidence,
                threshold=s.routed.threshold,
                top_k=[ScoredLabel(category=c, confidence=p) for c, p in s.routed.top_k],
                model_version=model.version,
                decision=s.routed.decision,
                reasons=[r.value for r in s.routed.reasons],
            )
            for s, pid in zip(scored, ids, strict=True)
        ],
    )
