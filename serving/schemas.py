"""Request and response bodies of the serving API."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationInfo, field_validator

from learner.data import check_identifier, clean_text, clean_title
from serving.routing import Decision

ItemId = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=255)]


class ItemIn(BaseModel):
    """One catalog item to categorise. Types are strict: "12" is not a price, 1 is not an id.

    Free text is masked (`learner.pii.mask_pii`: emails, phone and card numbers) as it is validated,
    so raw personal data goes no further than this model: not to the store, the outbox, Label Studio,
    the features, the API's answers or the logs.
    """

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    id: ItemId
    title: str = Field(description="non-empty after stripping whitespace")
    description: str = ""
    brand: str | None = None
    price: float | None = Field(None, ge=0, allow_inf_nan=False)
    category_hint: str | None = Field(
        None, max_length=500, description="the feed's own category, if any ('A > B'); checked for novelty"
    )

    @field_validator("id")
    @classmethod
    def _id(cls, value: str) -> str:
        return check_identifier(value, "id")

    @field_validator("title")
    @classmethod
    def _title(cls, value: str) -> str:
        return clean_title(value)

    @field_validator("description")
    @classmethod
    def _description(cls, value: str) -> str:
        return clean_text(value, "description")

    @field_validator("brand", "category_hint")
    @classmethod
    def _optional(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        return clean_text(value, str(info.field_name)) or None


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    items: list[ItemIn] = Field(
        min_length=1, description="one or more items; at most serving.max_batch_size, ids unique"
    )


class ScoredLabel(BaseModel):
    category: str
    confidence: float


class ItemPrediction(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    id: str
    prediction_id: int
    category: str = Field(description="' > '-joined category path")
    category_path: list[str]
    confidence: float = Field(description="calibrated probability of `category`")
    threshold: float | None = Field(description="the class's auto-accept threshold; null = never")
    top_k: list[ScoredLabel]
    model_version: str
    decision: Decision
    reasons: list[str]


class PredictResponse(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    model_version: str
    predictions: list[ItemPrediction]


class PredictionOut(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    id: int
    model_version: str
    category: str
    confidence: float
    threshold: float | None
    top_k: list[ScoredLabel]
    decision: str
    reasons: list[str]
    priority: float
    requested_by: str | None
    created_at: datetime


class AuditOut(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    id: int
    item_id: str | None
    prediction_id: int | None
    kind: str
    actor: str
    action: str
    before: str | None
    after: str | None
    model_version: str | None
    details: dict[str, Any]
    created_at: datetime


class CorrectionOut(BaseModel):
    action: str
    source: str
    annotation_id: int
    task_id: int | None
    label: str | None
    reviewer_id: int | None
    updated_at: datetime
    received_at: datetime


class ItemOut(BaseModel):
    id: str
    title: str
    description: str
    brand: str | None
    price: float | None
    category_hint: str | None
    first_seen_at: datetime
    updated_at: datetime


class ItemHistoryOut(BaseModel):
    item: ItemOut
    current_category: str | None = Field(description="the reviewed label if any, else the latest prediction")
    predictions: list[PredictionOut]
    corrections: list[CorrectionOut]
    audit: list[AuditOut]


class EscalationOut(BaseModel):
    item_id: str
    title: str
    brand: str | None
    price: float | None
    prediction: PredictionOut


class EscalationsOut(BaseModel):
    count: int
    escalations: list[EscalationOut]


class AuditTrailOut(BaseModel):
    count: int
    next_after_id: int | None = Field(description="pass as after_id for the next page; null = no more")
    events: list[AuditOut]


class HealthOut(BaseModel):
    status: str


class ReadyOut(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    status: Literal["ready", "not_ready"]
    database: bool
    model_loaded: bool
    model_version: str | None
    detail: str | None = None
