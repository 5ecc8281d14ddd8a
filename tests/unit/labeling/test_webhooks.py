from __future__ import annotations

import copy
from typing import Any

import pytest

from labeling.config import Taxonomy
from labeling.exceptions import UnknownProjectError, WebhookAuthError, WebhookPayloadError
from labeling.webhooks import (
    AnnotationsDeletedPayload,
    CorrectionEvent,
    DeletionEvent,
    check_secret,
    events_from,
    parse_payload,
)

TAX = Taxonomy.from_paths(["Sports > Running", "Home & Kitchen > Cookware"])


def created(label: list[str] | None = None, **annotation: Any) -> dict[str, Any]:
    result = (
        []
        if label is None
        else [
            {"from_name": "category", "to_name": "title", "type": "taxonomy", "value": {"taxonomy": [label]}}
        ]
    )
    body: dict[str, Any] = {
        "action": "ANNOTATION_CREATED",
        "annotation": {
            "id": 7,
            "task": 3,
            "project": 1,
            "result": result,
            "completed_by": 2,
            "created_at": "2025-01-01T10:00:00.123456Z",
            "updated_at": "2025-01-01T10:00:00.123456Z",
            "lead_time": 3.5,
            "was_cancelled": False,
            "prediction": {},
        },
        "task": {
            "id": 3,
            "data": {"item_id": "sku-1"},
            "meta": {
                "item_id": "sku-1",
                "predicted_label": "Sports > Running",
                "model_version": "v1",
                "model_score": 0.4,
            },
        },
        "project": {"id": 1, "token": "secret-project-token"},
    }
    body["annotation"].update(annotation)
    return body


def test_secret_check() -> None:
    check_secret("s3cret", "s3cret")
    with pytest.raises(WebhookAuthError, match="missing"):
        check_secret(None, "s3cret")
    with pytest.raises(WebhookAuthError, match="wrong"):
        check_secret("s3cre", "s3cret")
    with pytest.raises(WebhookAuthError, match="no webhook secret"):
        check_secret("", "")


def test_correction_keeps_reviewer_times_and_original_prediction() -> None:
    event = events_from(parse_payload(created(["Home & Kitchen", "Cookware"])), TAX)
    assert isinstance(event, CorrectionEvent)
    assert (event.action, event.label, event.item_id, event.reviewer_id) == (
        "created",
        "Home & Kitchen > Cookware",
        "sku-1",
        2,
    )
    assert event.updated_at.isoformat() == "2025-01-01T10:00:00.123456+00:00"
    assert (event.predicted_label, event.model_version, event.model_score) == ("Sports > Running", "v1", 0.4)
    assert event.lead_time == 3.5


def test_prediction_on_the_annotation_wins_over_task_meta() -> None:
    body = created(["Sports", "Running"])
    body["annotation"]["prediction"] = {
        "model_version": "v2",
        "score": 0.9,
        "result": [{"from_name": "category", "value": {"taxonomy": [["Home & Kitchen", "Cookware"]]}}],
    }
    event = events_from(parse_payload(body), TAX)
    assert isinstance(event, CorrectionEvent)
    assert (event.predicted_label, event.model_version, event.model_score) == (
        "Home & Kitchen > Cookware",
        "v2",
        0.9,
    )


def test_update_cancel_and_rejection_rules() -> None:
    body = created(["Sports", "Running"])
    body["action"] = "ANNOTATION_UPDATED"
    assert events_from(parse_payload(body), TAX).action == "updated"  # type: ignore[union-attr]

    cancelled = events_from(parse_payload(created(["Sports", "Running"], was_cancelled=True)), TAX)
    assert isinstance(cancelled, CorrectionEvent)
    assert (cancelled.action, cancelled.label, cancelled.raw_label) == ("cancelled", None, "Sports > Running")

    outside = events_from(parse_payload(created(["Garden", "Hoses"])), TAX)
    assert isinstance(outside, CorrectionEvent)
    assert (outside.action, outside.label, outside.raw_label) == ("rejected", None, "Garden > Hoses")
    assert outside.error is not None
    assert "not one of the taxonomy's 2 categories" in outside.error

    empty = events_from(parse_payload(created(None)), TAX)
    assert empty.action == "rejected"  # type: ignore[union-attr]
    # A project we have not recorded: nothing to judge by, so no decision (a stored rejection stays).
    with pytest.raises(UnknownProjectError, match="project 1 is not bootstrapped here"):
        events_from(parse_payload(created(["Sports", "Running"])), None)


def test_deletion_payload() -> None:
    payload = parse_payload(
        b'{"action": "ANNOTATIONS_DELETED", "annotations": [{"id": 4}, {"id": 5}], "project": {"id": 1}}'
    )
    assert isinstance(payload, AnnotationsDeletedPayload)
    assert events_from(payload, TAX) == DeletionEvent((4, 5), 1, "webhook")


@pytest.mark.parametrize(
    ("mutate", "loc"),
    [
        (lambda b: b["annotation"].pop("id"), "ANNOTATION_CREATED.annotation.id"),
        (
            lambda b: b["annotation"].update(updated_at="yesterday"),
            "ANNOTATION_CREATED.annotation.updated_at",
        ),
        (lambda b: b.pop("task"), "ANNOTATION_CREATED.task"),
        (lambda b: b.update(action="PROJECT_DELETED"), "action"),
    ],
)
def test_malformed_payloads_name_the_field_but_never_echo_values(mutate: Any, loc: str) -> None:
    body = copy.deepcopy(created(["Sports", "Running"]))
    mutate(body)
    with pytest.raises(WebhookPayloadError) as info:
        parse_payload(body)
    assert loc in {e["loc"] for e in info.value.errors}
    assert "secret-project-token" not in str(info.value)


@pytest.mark.parametrize(
    "raw",
    [
        b"{not json",
        b"[1, 2]",
        '"text"',
        # An integer literal longer than Python converts (4,300 digits): malformed, not a crash.
        b'{"action": "ANNOTATIONS_DELETED", "annotations": [{"id": ' + b"1" * 4301 + b"}]}",
    ],
)
def test_non_object_bodies_are_malformed(raw: bytes | str) -> None:
    with pytest.raises(WebhookPayloadError):
        parse_payload(raw)


def _high_stakes(body: dict[str, Any]) -> dict[str, Any]:
    body["task"]["meta"]["needs_senior"] = True
    return body


SENIORS = {5}


def test_on_a_task_that_needs_a_senior_only_a_seniors_category_is_the_label() -> None:
    def is_senior(user: int | None) -> bool:
        return user in SENIORS

    junior = events_from(parse_payload(_high_stakes(created(["Sports", "Running"]))), TAX, is_senior)
    assert isinstance(junior, CorrectionEvent)
    assert (junior.action, junior.label, junior.raw_label) == ("proposed", None, "Sports > Running")
    assert junior.error is None

    senior = events_from(
        parse_payload(_high_stakes(created(["Sports", "Running"], completed_by=5, updated_by=5))),
        TAX,
        is_senior,
    )
    assert (senior.action, senior.label) == ("created", "Sports > Running")  # type: ignore[union-attr]
    # Without an updated_by (Label Studio's bulk imports) nobody vouches for it: a proposal.
    unsaved = _high_stakes(created(["Sports", "Running"], completed_by=5))
    assert events_from(parse_payload(unsaved), TAX, is_senior).action == "proposed"  # type: ignore[union-attr]

    # A senior's edit of the junior's annotation decides: the author of an update is its updated_by.
    edited = _high_stakes(created(["Sports", "Running"], updated_by=5))
    edited["action"] = "ANNOTATION_UPDATED"
    assert events_from(parse_payload(edited), TAX, is_senior).action == "updated"  # type: ignore[union-attr]

    # A junior who creates an annotation naming a senior as completed_by (a field any client may
    # set) is still the author: Label Studio's updated_by is the account that wrote it.
    forged = _high_stakes(created(["Sports", "Running"], completed_by=5, updated_by=2))
    event = events_from(parse_payload(forged), TAX, is_senior)
    assert isinstance(event, CorrectionEvent)
    assert (event.action, event.label, event.reviewer_id) == ("proposed", None, 2)
    # The senior's edit is the senior's in the audit trail too.
    assert events_from(parse_payload(edited), TAX, is_senior).reviewer_id == 5  # type: ignore[union-attr]

    # Without tiers, or on an ordinary task, anyone's category is the label.
    body = _high_stakes(created(["Sports", "Running"]))
    assert events_from(parse_payload(body), TAX).action == "created"  # type: ignore[union-attr]
    ordinary = events_from(parse_payload(created(["Sports", "Running"])), TAX, is_senior)
    assert ordinary.action == "created"  # type: ignore[union-attr]

    # The other rules come first: a skip stays a skip, a category outside the taxonomy is rejected.
    skipped = _high_stakes(created(["Sports", "Running"], was_cancelled=True))
    assert events_from(parse_payload(skipped), TAX, is_senior).action == "cancelled"  # type: ignore[union-attr]
    outside = _high_stakes(created(["Garden", "Hoses"]))
    assert events_from(parse_payload(outside), TAX, is_senior).action == "rejected"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "meta",
    [
        {"predicted_label": {"a": 1}, "model_version": ["v1"], "model_score": "abc"},
        {"predicted_label": 10**20, "model_version": "\ud800", "model_score": {}},
        {"predicted_label": "x" * 5000, "model_version": "v\x001", "model_score": [1]},
        {"predicted_label": "", "model_version": 3, "model_score": "NaN"},
        {"model_score": 10**400},
        {"model_score": 1.5},
        {"model_score": True},
    ],
)
def test_unusable_task_meta_counts_as_absent_and_the_label_is_kept(meta: dict[str, Any]) -> None:
    """The meta we push with a task can be edited in Label Studio: whatever it holds there, the
    reviewer's category is the label, and only usable strings and scores in [0, 1] are kept."""
    body = created(["Home & Kitchen", "Cookware"])
    body["task"]["meta"] = {"item_id": "sku-1", **meta}
    event = events_from(parse_payload(body), TAX)
    assert isinstance(event, CorrectionEvent)
    assert (event.action, event.label, event.item_id) == ("created", "Home & Kitchen > Cookware", "sku-1")
    assert (event.predicted_label, event.model_version, event.model_score) == (None, None, None)


def test_usable_meta_scores_are_read_from_numbers_and_decimal_strings() -> None:
    body = created(["Sports", "Running"])
    for raw, expected in ((0, 0.0), (1, 1.0), ("0.25", 0.25), (0.5, 0.5)):
        body["task"]["meta"]["model_score"] = raw
        event = events_from(parse_payload(body), TAX)
        assert isinstance(event, CorrectionEvent)
        assert event.model_score == expected


def test_a_prediction_version_no_database_can_store_is_malformed() -> None:
    body = created(["Sports", "Running"])
    body["annotation"]["prediction"] = {"model_version": "v\ud8001", "result": []}
    with pytest.raises(WebhookPayloadError) as info:
        parse_payload(body)
    assert "ANNOTATION_CREATED.annotation.prediction.model_version" in {e["loc"] for e in info.value.errors}


def test_a_model_version_longer_than_the_store_keeps_is_malformed_or_absent() -> None:
    # PostgreSQL refuses a value longer than its column: once a 500, and a sync stopped at it.
    body = created(["Sports", "Running"])
    body["annotation"]["prediction"] = {"model_version": "v" * 256, "result": []}
    with pytest.raises(WebhookPayloadError) as info:
        parse_payload(body)
    assert "ANNOTATION_CREATED.annotation.prediction.model_version" in {e["loc"] for e in info.value.errors}
    # In the task's meta (editable in Label Studio) it counts as absent: the label is kept.
    body = created(["Sports", "Running"])
    body["task"]["meta"]["model_version"] = "v" * 256
    event = events_from(parse_payload(body), TAX)
    assert isinstance(event, CorrectionEvent)
    assert (event.label, event.model_version) == ("Sports > Running", None)
    body["task"]["meta"]["model_version"] = "v" * 255
    assert events_from(parse_payload(body), TAX).model_version == "v" * 255  # type: ignore[union-attr]
