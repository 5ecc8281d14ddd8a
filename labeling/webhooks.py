"""Label Studio webhooks: typed payloads, the shared-secret check, and the rules that turn them into events.

Label Studio sends each webhook once, synchronously, with no signature; we add a shared secret as a
custom header when we create the webhook (`SECRET_HEADER`). Payloads carry the project's token: never log
them whole (errors below name fields, never values).
"""

from __future__ import annotations

import hmac
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from labeling.config import Taxonomy, label_from_result
from labeling.exceptions import UnknownProjectError, WebhookAuthError, WebhookPayloadError
from labeling.reviewers import NEEDS_SENIOR
from learner.data import check_identifier, check_text

SECRET_HEADER = "X-HITL-Webhook-Secret"
ACTIONS = ("ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_DELETED")
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

Source = Literal["webhook", "sync"]
# "proposed": a category chosen on a high-stakes task by a reviewer who is not senior
# (`labeling.reviewers`): kept with who proposed what, but not a label.
CorrectionAction = Literal["created", "updated", "cancelled", "rejected", "proposed"]


def utc(value: datetime) -> datetime:
    """Aware UTC (naive values are taken as UTC)."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# Label Studio's ids are positive; the store keeps them in INTEGER columns, whose PostgreSQL range
# ends at 2**31 - 1. Anything outside is malformed, not a 500 from the database.
MAX_ID = 2**31 - 1
LabelStudioId = Annotated[int, Field(ge=1, le=MAX_ID)]


def _strings(value: Any, where: str) -> list[str]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{where} must be a non-empty list of strings")
    return [check_text(v, where) for v in value]


def _check_result(result: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each region's ``value`` is an object; a ``taxonomy`` is a list of category paths (lists of
    strings) and ``choices`` a list of strings, as Label Studio writes them."""
    for i, region in enumerate(result):
        value = region.get("value", {})
        if not isinstance(value, dict):
            raise ValueError(f"result[{i}].value must be an object, got {type(value).__name__}")
        if "taxonomy" in value:
            paths = value["taxonomy"]
            if not isinstance(paths, list):
                raise ValueError(f"result[{i}].value.taxonomy must be a list of category paths")
            for j, path in enumerate(paths):
                _strings(path, f"result[{i}].value.taxonomy[{j}]")
        if "choices" in value:
            _strings(value["choices"], f"result[{i}].value.choices")
    return result


# The longest model version a correction keeps (the store's column: PostgreSQL refuses longer ones).
MAX_VERSION_LENGTH = 255


class _Payload(BaseModel):
    # Validation errors never quote the input: a task's data holds item text.
    model_config = ConfigDict(extra="ignore", frozen=True, hide_input_in_errors=True)


class PredictionPayload(_Payload):
    model_version: str | None = Field(None, max_length=MAX_VERSION_LENGTH)
    score: float | None = Field(None, allow_inf_nan=False)
    result: list[dict[str, Any]] = Field(default_factory=list)

    @field_validator("model_version")
    @classmethod
    def _storable(cls, value: str | None) -> str | None:
        return None if value is None else check_text(value, "model_version")

    _result = field_validator("result")(_check_result)


class AnnotationPayload(_Payload):
    id: LabelStudioId
    task: LabelStudioId
    project: LabelStudioId | None = None
    result: list[dict[str, Any]] = Field(default_factory=list)
    completed_by: LabelStudioId | None = None
    updated_by: LabelStudioId | None = None
    created_at: datetime
    updated_at: datetime
    lead_time: float | None = Field(None, ge=0, allow_inf_nan=False)
    was_cancelled: bool = False
    prediction: PredictionPayload | None = None

    _result = field_validator("result")(_check_result)

    @field_validator("created_at", "updated_at")
    @classmethod
    def _instant(cls, value: datetime, info: ValidationInfo) -> datetime:
        # Year 1 at +03:00 is year 0 in UTC: Python cannot hold it (OverflowError, once a 500).
        try:
            return utc(value)
        except OverflowError:
            raise ValueError(f"{info.field_name} is out of the representable range in UTC") from None

    @field_validator("completed_by", "updated_by", mode="before")
    @classmethod
    def _user_id(cls, value: Any) -> Any:
        # The tasks API may expand users to objects; webhooks send ids.
        return value.get("id") if isinstance(value, Mapping) else value

    @field_validator("prediction", mode="before")
    @classmethod
    def _empty_prediction(cls, value: Any) -> Any:
        return value or None


class TaskPayload(_Payload):
    id: LabelStudioId
    data: dict[str, Any] = Field(default_factory=dict)
    meta: dict[str, Any] = Field(default_factory=dict)

    @field_validator("data", "meta")
    @classmethod
    def _item_id(cls, value: dict[str, Any]) -> dict[str, Any]:
        # The item id joins the correction to its prediction: a string (or a number) without
        # control characters, or nothing.
        item_id = value.get("item_id")
        if item_id is None:
            return value
        if isinstance(item_id, bool) or not isinstance(item_id, str | int):
            raise ValueError(f"item_id must be a string, got {type(item_id).__name__}")
        return {**value, "item_id": check_identifier(str(item_id), "item_id")}


class ProjectRef(_Payload):
    """Only the id: the rest of Label Studio's project object (token included) is dropped here."""

    id: LabelStudioId


class AnnotationEventPayload(_Payload):
    action: Literal["ANNOTATION_CREATED", "ANNOTATION_UPDATED"]
    annotation: AnnotationPayload
    task: TaskPayload
    project: ProjectRef | None = None


class DeletedAnnotationRef(_Payload):
    id: LabelStudioId


class AnnotationsDeletedPayload(_Payload):
    action: Literal["ANNOTATIONS_DELETED"]
    annotations: list[DeletedAnnotationRef] = Field(min_length=1)
    project: ProjectRef | None = None


WebhookPayload = Annotated[AnnotationEventPayload | AnnotationsDeletedPayload, Field(discriminator="action")]
_ADAPTER: TypeAdapter[AnnotationEventPayload | AnnotationsDeletedPayload] = TypeAdapter(WebhookPayload)


def payload_schema() -> dict[str, Any]:
    """JSON Schema of a webhook body with every ``$ref`` inlined, for the OpenAPI document (so the
    API's fuzzing generates webhook bodies too)."""
    schema = _ADAPTER.json_schema()
    defs = schema.pop("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return inline(defs[ref.removeprefix("#/$defs/")])
            return {k: inline(v) for k, v in node.items()}
        if isinstance(node, list):
            return [inline(v) for v in node]
        return node

    out: dict[str, Any] = inline(schema)
    # The discriminator's mapping names $defs that are gone now; the oneOf alone says the same.
    out.pop("discriminator", None)
    return out


@dataclass(frozen=True)
class CorrectionEvent:
    """One state of one annotation, as the store records it (append-only)."""

    action: CorrectionAction
    annotation_id: int
    task_id: int
    project_id: int | None
    item_id: str | None
    label: str | None  # the category when action is created/updated; else None
    raw_label: str | None  # what the reviewer chose, even when rejected or only proposed
    reviewer_id: int | None
    created_at: datetime
    updated_at: datetime
    lead_time: float | None
    was_cancelled: bool
    predicted_label: str | None
    model_version: str | None
    model_score: float | None
    source: Source
    error: str | None = None


@dataclass(frozen=True)
class DeletionEvent:
    annotation_ids: tuple[int, ...]
    project_id: int | None
    source: Source


def check_secret(provided: str | None, expected: str) -> None:
    """Constant-time comparison of the shared-secret header; raises `WebhookAuthError`."""
    if not expected:
        raise WebhookAuthError("no webhook secret is configured: refusing every webhook")
    if provided is None:
        raise WebhookAuthError(f"missing {SECRET_HEADER} header")
    if not hmac.compare_digest(provided.encode("utf-8"), expected.encode("utf-8")):
        raise WebhookAuthError(f"wrong {SECRET_HEADER} header")


def _field_errors(exc: ValidationError) -> list[dict[str, str]]:
    # Only location and reason: pydantic's `input` could echo the project token.
    return [
        {"loc": ".".join(str(p) for p in err["loc"]) or "body", "msg": err["msg"], "type": err["type"]}
        for err in exc.errors(include_url=False, include_input=False)
    ]


def parse_payload(
    body: bytes | str | Mapping[str, Any],
) -> AnnotationEventPayload | AnnotationsDeletedPayload:
    """Validate a webhook body; `WebhookPayloadError.errors` lists one reason per field."""
    try:
        raw: Any = json.loads(body) if isinstance(body, bytes | str) else dict(body)
    # ValueError covers JSONDecodeError and an integer literal longer than Python converts.
    except (UnicodeDecodeError, ValueError) as exc:
        raise WebhookPayloadError(
            [{"loc": "body", "msg": f"not JSON: {exc}", "type": "json_invalid"}]
        ) from None
    except RecursionError:
        raise WebhookPayloadError(
            [{"loc": "body", "msg": "JSON nested too deeply", "type": "json_invalid"}]
        ) from None
    if not isinstance(raw, dict):
        raise WebhookPayloadError([{"loc": "body", "msg": "expected a JSON object", "type": "dict_type"}])
    action = raw.get("action")
    if action not in ACTIONS:
        raise WebhookPayloadError(
            [
                {
                    "loc": "action",
                    "msg": f"unsupported action; expected one of {', '.join(ACTIONS)}",
                    "type": "action",
                }
            ]
        )
    try:
        return _ADAPTER.validate_python(raw)
    except ValidationError as exc:
        raise WebhookPayloadError(_field_errors(exc)) from None


# The longest string kept from a task's meta (a category path, a model version).
MAX_META_TEXT = 1000


def meta_text(value: object, limit: int = MAX_META_TEXT) -> str | None:
    """A string the meta we pushed with a task holds (at most `limit` characters), or None where it
    holds anything else: the meta can be edited in Label Studio, and a broken value there must not
    cost the reviewer's label."""
    if not isinstance(value, str) or not value or len(value) > limit:
        return None
    try:
        return check_text(value, "meta")
    except ValueError:
        return None


def meta_score(value: object) -> float | None:
    """The model's confidence the meta holds (a number in [0, 1], or its decimal string), else None."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        score = float(value)
    except (ValueError, OverflowError):
        return None
    return score if math.isfinite(score) and 0.0 <= score <= 1.0 else None


def _prediction_from(
    annotation: AnnotationPayload, task_meta: Mapping[str, Any]
) -> tuple[str | None, str | None, float | None]:
    """The model's original prediction: from the annotation, else from the meta we pushed with the task
    (what it holds there that is not a usable string or score counts as absent)."""
    predicted = label_from_result(annotation.prediction.result) if annotation.prediction else None
    version = annotation.prediction.model_version if annotation.prediction else None
    score = annotation.prediction.score if annotation.prediction else None
    return (
        predicted or meta_text(task_meta.get("predicted_label")),
        version or meta_text(task_meta.get("model_version"), MAX_VERSION_LENGTH),
        score if score is not None else meta_score(task_meta.get("model_score")),
    )


def correction_from(
    annotation: AnnotationPayload,
    task: TaskPayload | None,
    taxonomy: Taxonomy,
    *,
    updated: bool,
    source: Source,
    project_id: int | None = None,
    is_senior: Callable[[int | None], bool] | None = None,
) -> CorrectionEvent:
    """Apply the rules: cancelled -> recorded, not a label; label outside the taxonomy -> rejected; a
    category on a task that needs a senior reviewer, chosen by someone else -> proposed (with
    `is_senior`; None = no tiers). The author of a state is its ``updated_by``, the account Label
    Studio saw write it: a senior who edits a junior's annotation makes it the label, and
    ``completed_by``, which a client may set to anyone's id when it creates an annotation, names the
    reviewer only when Label Studio sent no ``updated_by``, and never makes a senior's label.

    Decides only what stays true: a project we do not know has no taxonomy to judge by (the caller
    stores nothing then), and `is_senior` raises `ReviewerDirectoryUnavailable` rather than guess."""
    data = task.data if task else {}
    meta = task.meta if task else {}
    item_id = meta.get("item_id", data.get("item_id"))
    predicted, version, score = _prediction_from(annotation, meta)
    raw_label = label_from_result(annotation.result)
    author = annotation.updated_by or annotation.completed_by
    action: CorrectionAction = "updated" if updated else "created"
    label: str | None = raw_label
    error: str | None = None
    if annotation.was_cancelled:
        action, label = "cancelled", None
    elif raw_label is None:
        action, label, error = "rejected", None, f"annotation {annotation.id}: no category was chosen"
    elif raw_label not in taxonomy:
        action, label = "rejected", None
        error = (
            f"annotation {annotation.id}: label {raw_label!r} is not one of the taxonomy's "
            f"{len(taxonomy)} categories"
        )
    elif is_senior is not None and meta.get(NEEDS_SENIOR) is True and not is_senior(annotation.updated_by):
        # Only who saved it counts here: without an updated_by (Label Studio's bulk paths, an import
        # with annotations, predictions turned into annotations) nobody vouches for the category.
        action, label = "proposed", None
    return CorrectionEvent(
        action=action,
        annotation_id=annotation.id,
        task_id=annotation.task,
        project_id=project_id if project_id is not None else annotation.project,
        item_id=str(item_id) if item_id is not None else None,
        label=label,
        raw_label=raw_label,
        reviewer_id=author,
        created_at=utc(annotation.created_at),
        updated_at=utc(annotation.updated_at),
        lead_time=annotation.lead_time,
        was_cancelled=annotation.was_cancelled,
        predicted_label=predicted,
        model_version=version,
        model_score=score,
        source=source,
        error=error,
    )


def events_from(
    payload: AnnotationEventPayload | AnnotationsDeletedPayload,
    taxonomy: Taxonomy | None,
    is_senior: Callable[[int | None], bool] | None = None,
) -> CorrectionEvent | DeletionEvent:
    """The typed event for one webhook payload (`taxonomy`: the project's, None for a project we do
    not know, whose annotations raise `UnknownProjectError`: nothing to judge them by)."""
    project_id = payload.project.id if payload.project else None
    if isinstance(payload, AnnotationsDeletedPayload):
        return DeletionEvent(tuple(a.id for a in payload.annotations), project_id, "webhook")
    if taxonomy is None:
        raise UnknownProjectError(project_id if project_id is not None else payload.annotation.project)
    return correction_from(
        payload.annotation,
        payload.task,
        taxonomy,
        updated=payload.action == "ANNOTATION_UPDATED",
        source="webhook",
        project_id=project_id,
        is_senior=is_senior,
    )


def project_id_of(payload: AnnotationEventPayload | AnnotationsDeletedPayload) -> int | None:
    if payload.project is not None:
        return payload.project.id
    if isinstance(payload, AnnotationEventPayload):
        return payload.annotation.project
    return None


def rejected(events: Sequence[CorrectionEvent]) -> list[CorrectionEvent]:
    return [e for e in events if e.action == "rejected"]
