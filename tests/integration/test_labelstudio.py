"""Acceptance for issue #3 against a real Label Studio and the real serving app."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from hitl.settings import Settings
from labeling.client import LabelStudioClient, ReviewerAccount
from labeling.push import Escalation, push_escalations
from labeling.server import free_port
from labeling.sync import sync_project
from labeling.webhooks import SECRET_HEADER
from serving.store import CorrectionRecord, Store
from tests.integration.conftest import TAXONOMY, Receiver

pytestmark = pytest.mark.integration


def _escalations(prefix: str, n: int, version: str, *, label: str = "Sports > Running") -> list[Escalation]:
    return [
        Escalation(
            item_id=f"{prefix}-{i}",
            title=f"Item {i} & co <b>",
            description="A thing",
            brand="Acme",
            price=10.0 + i,
            predicted_label=label,
            confidence=0.4,
            priority=(i + 1) / (n + 1),
            reasons=["low_confidence"],
            model_version=version,
        )
        for i in range(n)
    ]


def _wait_for(
    check: Callable[[], list[CorrectionRecord]], count: int, timeout: float = 10.0
) -> list[CorrectionRecord]:
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def _push_one(ls_client: LabelStudioClient, store: Store, project_id: int, item: str) -> int:
    report = push_escalations(ls_client, store, project_id, TAXONOMY, _escalations(item, 1, "v-annot"))
    return report.task_ids[f"{item}-0"]


def test_bootstrap_twice_gives_one_project_and_one_webhook(
    ls_client: LabelStudioClient, settings: Settings, project_id: int, receiver: Receiver
) -> None:
    from labeling.project import bootstrap_project, webhook_url

    for _ in range(2):
        again = bootstrap_project(
            ls_client,
            TAXONOMY,
            title=settings.labelstudio.project_title,
            webhook_url=webhook_url(settings.serving.base_url),
            webhook_secret=settings.labelstudio.webhook_secret.get_secret_value(),
        )
        assert again.project_id == project_id
        assert not again.project_created
        assert not again.webhook_created
    body = ls_client._request("GET", "/api/projects/", "list", params={"page_size": 100})
    titles = [p["title"] for p in body["results"]]
    assert titles.count(settings.labelstudio.project_title) == 1
    hooks = ls_client.list_webhooks(project_id)
    assert len(hooks) == 1
    assert sorted(hooks[0]["actions"]) == ["ANNOTATIONS_DELETED", "ANNOTATION_CREATED", "ANNOTATION_UPDATED"]
    assert hooks[0]["headers"] == {SECRET_HEADER: settings.labelstudio.webhook_secret.get_secret_value()}
    project = ls_client.get_project(project_id)
    assert project["sampling"] == "Uncertainty sampling"
    # A skipped task comes back to whoever skipped it; an empty submission is refused.
    assert (project["skip_queue"], project["enable_empty_annotation"]) == ("REQUEUE_FOR_ME", False)


def test_push_50_read_back_never_twice_and_most_useful_first(
    ls_client: LabelStudioClient, reviewer_client: LabelStudioClient, store: Store, project_id: int
) -> None:
    items = _escalations("push", 50, "v-push")
    first = push_escalations(ls_client, store, project_id, TAXONOMY, items, batch_size=20)
    assert (first.pushed, first.skipped) == (50, 0)
    again = push_escalations(ls_client, store, project_id, TAXONOMY, items)
    assert (again.pushed, again.skipped) == (0, 50)

    tasks = {t["meta"].get("item_id"): t for t in ls_client.iter_tasks(project_id, page_size=30)}
    pushed = {k: v for k, v in tasks.items() if k and k.startswith("push-")}
    assert len(pushed) == 50
    sample = pushed["push-7"]
    assert sample["data"]["title"] == "Item 7 & co <b>"
    assert sample["meta"]["reasons"] == ["low_confidence"]
    (prediction,) = sample["predictions"]
    assert prediction["model_version"] == "v-push"
    assert prediction["result"][0]["from_name"] == "suggestion"
    assert prediction["result"][0]["value"]["choices"] == ["Sports > Running"]
    assert prediction["score"] == pytest.approx(1 - 8 / 51, abs=1e-5)

    # Label Studio serves the most useful item first once the project shows this model version.
    ls_client.set_model_version(project_id, "v-push")
    assert ls_client.get_project(project_id)["model_version"] == "v-push"
    nxt = reviewer_client._request("GET", f"/api/projects/{project_id}/next", "next task")
    assert nxt["meta"]["item_id"] == "push-49"


def test_webhook_stores_correction_once_even_if_delivered_twice(
    ls_client: LabelStudioClient,
    reviewer_client: LabelStudioClient,
    reviewer: ReviewerAccount,
    store: Store,
    project_id: int,
    receiver: Receiver,
    settings: Settings,
) -> None:
    task_id = _push_one(ls_client, store, project_id, "hook")
    result = TAXONOMY.result_for("Home & Kitchen > Cookware")
    annotation = reviewer_client.create_annotation(task_id, result, lead_time=4.5)
    rows = _wait_for(lambda: store.history(annotation["id"]), 1)
    assert len(rows) == 1
    row = rows[0]
    assert (row.action, row.source, row.label) == ("created", "webhook", "Home & Kitchen > Cookware")
    assert row.reviewer_id == reviewer.user_id
    assert row.item_id == "hook-0"
    assert row.lead_time == pytest.approx(4.5)
    assert (row.predicted_label, row.model_version) == ("Sports > Running", "v-annot")

    # Deliver the same event again, as Label Studio would: stored once.
    payload: dict[str, Any] = {
        "action": "ANNOTATION_CREATED",
        "annotation": ls_client._request("GET", f"/api/annotations/{annotation['id']}/", "get annotation"),
        "task": ls_client.get_task(task_id),
        "project": {"id": project_id, "token": "not-to-be-logged"},
    }
    answer = httpx.post(
        f"{receiver.url}/v1/webhooks/label-studio",
        json=payload,
        headers={SECRET_HEADER: settings.labelstudio.webhook_secret.get_secret_value()},
    )
    assert answer.status_code == 200
    assert answer.json()["status"] == "duplicate"
    assert len(store.history(annotation["id"])) == 1


def test_update_changes_label_and_keeps_history_then_delete_is_recorded(
    ls_client: LabelStudioClient,
    reviewer_client: LabelStudioClient,
    store: Store,
    project_id: int,
    receiver: Receiver,
) -> None:
    task_id = _push_one(ls_client, store, project_id, "upd")
    annotation = reviewer_client.create_annotation(task_id, TAXONOMY.result_for("Sports > Cycling"))
    _wait_for(lambda: store.history(annotation["id"]), 1)
    reviewer_client.update_annotation(annotation["id"], TAXONOMY.result_for("Toys <3+> > Games"))
    history = _wait_for(lambda: store.history(annotation["id"]), 2)
    assert [(r.action, r.label) for r in history] == [
        ("created", "Sports > Cycling"),
        ("updated", "Toys <3+> > Games"),
    ]
    assert store.current_labels(project_id=project_id)["upd-0"].label == "Toys <3+> > Games"

    assert ls_client.annotation_exists(annotation["id"])  # what the sync asks before recording a deletion
    ls_client.delete_annotation(annotation["id"])
    assert not ls_client.annotation_exists(annotation["id"])
    history = _wait_for(lambda: store.history(annotation["id"]), 3)
    assert [r.action for r in history] == ["created", "updated", "deleted"]
    assert "upd-0" not in store.current_labels(project_id=project_id)


def test_sync_recovers_corrections_missed_while_receiver_was_down(
    ls_client: LabelStudioClient,
    reviewer_client: LabelStudioClient,
    store: Store,
    project_id: int,
    receiver: Receiver,
) -> None:
    tasks = [_push_one(ls_client, store, project_id, f"down{i}") for i in range(3)]
    receiver.stop()
    try:
        made = [
            reviewer_client.create_annotation(t, TAXONOMY.result_for("Sports > Running")) for t in tasks[:2]
        ]
        cancelled = reviewer_client.create_annotation(tasks[2], [], was_cancelled=True)
    finally:
        receiver.start()
    ids = [a["id"] for a in [*made, cancelled]]
    assert all(store.history(i) == [] for i in ids)

    report = sync_project(ls_client, store, project_id, TAXONOMY)
    assert report.recorded >= 3
    for annotation in made:
        (row,) = store.history(annotation["id"])
        assert (row.action, row.source, row.label) == ("created", "sync", "Sports > Running")
        assert row.predicted_label == "Sports > Running"
    (skipped,) = store.history(cancelled["id"])
    assert (skipped.action, skipped.label, skipped.was_cancelled) == ("cancelled", None, True)

    assert sync_project(ls_client, store, project_id, TAXONOMY).recorded == 0


def _delete_by_hand_then_push_another(
    ls_client: LabelStudioClient, store: Store, project_id: int, gone: str, other: str
) -> int:
    """Push item `gone`-0 (version v-a), delete its task by hand, push item `other`-0: its task id."""
    first = push_escalations(ls_client, store, project_id, TAXONOMY, _escalations(gone, 1, "v-a"))
    assert ls_client.delete_task(first.task_ids[f"{gone}-0"])  # someone cleans up in Label Studio's UI
    assert ls_client.task_ids_of_items(project_id, [f"{gone}-0"]) == {}  # gone from the project
    # Label Studio on SQLite gives the next task the highest id + 1: the deleted one's, another item's.
    pushed = push_escalations(ls_client, store, project_id, TAXONOMY, _escalations(other, 1, "v-a"))
    return pushed.task_ids[f"{other}-0"]


def test_an_item_whose_task_was_deleted_by_hand_gets_a_new_one_and_never_anothers(
    ls_client: LabelStudioClient, store: Store, project_id: int
) -> None:
    other_task = _delete_by_hand_then_push_another(ls_client, store, project_id, "gone", "next")

    # The next champion's escalation of the deleted item: a new task, and the other item's is untouched.
    again = push_escalations(ls_client, store, project_id, TAXONOMY, _escalations("gone", 1, "v-b"))
    assert (again.reimported, again.pushed, again.updated) == (1, 1, 0)
    new_task = again.task_ids["gone-0"]
    assert ls_client.task_ids_of_items(project_id, ["gone-0", "next-0"]) == {
        "gone-0": [new_task],
        "next-0": [other_task],
    }
    kept = ls_client.get_task(other_task)
    assert kept["data"]["item_id"] == "next-0"
    assert {p["model_version"] for p in kept["predictions"]} == {"v-a"}
    assert store.open_task_ids(project_id, ["gone-0", "next-0"]) == {"gone-0": new_task, "next-0": other_task}


def test_closing_an_item_whose_task_was_deleted_by_hand_never_deletes_anothers(
    ls_client: LabelStudioClient, store: Store, project_id: int
) -> None:
    other_task = _delete_by_hand_then_push_another(ls_client, store, project_id, "closegone", "closenext")

    # The next champion auto-accepts the deleted item: nothing to delete, and the other task stays.
    close = [e.model_copy(update={"action": "close"}) for e in _escalations("closegone", 1, "v-b")]
    report = push_escalations(ls_client, store, project_id, TAXONOMY, close)
    assert (report.closed, report.skipped) == (0, 1)
    assert ls_client.task_ids_of_items(project_id, ["closegone-0", "closenext-0"]) == {
        "closenext-0": [other_task]
    }
    assert store.open_task_ids(project_id, ["closegone-0", "closenext-0"]) == {"closenext-0": other_task}
    (gone,) = [
        e
        for e in store.audit_trail(item_id="closegone-0", kind="labelstudio_task")
        if e.action == "task_closed"
    ]
    assert gone.details["reason"] == "deleted in Label Studio"


def test_closing_an_item_a_reviewer_annotated_keeps_the_task_and_the_label(
    ls_client: LabelStudioClient, store: Store, project_id: int
) -> None:
    # A newer champion auto-accepts an item that was re-routed after its review: deleting the task
    # would take the annotation with it, and the sync would then record the label as deleted.
    pushed = push_escalations(ls_client, store, project_id, TAXONOMY, _escalations("reviewed", 1, "v-a"))
    task_id = pushed.task_ids["reviewed-0"]
    annotation = ls_client.create_annotation(task_id, TAXONOMY.result_for("Sports > Running"))
    close = [e.model_copy(update={"action": "close"}) for e in _escalations("reviewed", 1, "v-b")]
    report = push_escalations(ls_client, store, project_id, TAXONOMY, close)
    assert (report.kept, report.closed) == (1, 0)
    assert ls_client.task_ids_of_items(project_id, ["reviewed-0"]) == {"reviewed-0": [task_id]}
    assert ls_client.annotation_exists(annotation["id"])
    # A later escalation's retried import never takes the reviewed task for its own.
    assert ls_client.tasks_of_items(project_id, ["reviewed-0"]) == {}
    assert store.open_task_ids(project_id, ["reviewed-0"]) == {}
    sync_project(ls_client, store, project_id, TAXONOMY)
    assert store.current_labels()["reviewed-0"].label == "Sports > Running"
    (closed,) = [
        e
        for e in store.audit_trail(item_id="reviewed-0", kind="labelstudio_task")
        if e.action == "task_closed"
    ]
    assert "a reviewer annotated it" in closed.details["reason"]


def test_a_hold_meant_for_another_item_leaves_the_task_alone(
    ls_client: LabelStudioClient, store: Store, project_id: int
) -> None:
    task_id = _push_one(ls_client, store, project_id, "holdmine")
    ls_client._request("PATCH", f"/api/tasks/{task_id}/", "set overlap", json={"overlap": 3})
    # The hold was computed for an item whose task had this id before Label Studio reused it.
    assert ls_client.hold_task(task_id, hold=True, item_id="someone-else") is None
    assert ls_client.get_task(task_id)["overlap"] == 3
    assert ls_client.hold_task(task_id, hold=True, item_id="holdmine-0") == 1
    assert ls_client.get_task(task_id)["overlap"] == 1


def test_tasks_are_found_by_their_item_id_exactly(
    ls_client: LabelStudioClient, store: Store, project_id: int
) -> None:
    report = push_escalations(ls_client, store, project_id, TAXONOMY, _escalations("find", 12, "v-find"))
    wanted = ["find-1", "find-11", "find-404"]
    found = ls_client.tasks_of_items(project_id, wanted)
    assert found == {"find-1": report.task_ids["find-1"], "find-11": report.task_ids["find-11"]}
    many = [f"find-{i}" for i in range(12)] + [f"absent-{i}" for i in range(60)]  # more than one query
    assert ls_client.tasks_of_items(project_id, many) == report.task_ids


def test_the_apps_periodic_sync_records_what_no_webhook_delivered(
    ls_client: LabelStudioClient,
    reviewer_client: LabelStudioClient,
    store: Store,
    project_id: int,
    receiver: Receiver,
    settings: Settings,
) -> None:
    """The app's own reconciliation (`labelstudio.sync_interval_s`), not a direct `sync_project` call:
    a webhook refused or lost (the app down, the address throttled) is read from Label Studio later."""
    task = _push_one(ls_client, store, project_id, "periodic")
    receiver.stop()
    try:
        made = reviewer_client.create_annotation(task, TAXONOMY.result_for("Sports > Running"))
    finally:
        receiver.start()
    assert store.history(made["id"]) == []
    syncing = Receiver(
        settings.model_copy(
            update={
                "labelstudio": settings.labelstudio.model_copy(update={"sync_interval_s": 1}),
                "serving": settings.serving.model_copy(update={"port": free_port()}),
            }
        ),
        store,
    )
    syncing.start()
    try:
        rows = _wait_for(lambda: store.history(made["id"]), 1, timeout=30)
    finally:
        syncing.stop()
    assert [(r.action, r.source, r.label) for r in rows] == [("created", "sync", "Sports > Running")]


@pytest.mark.parametrize("secret", [None, "wrong-secret"])
def test_bad_secret_is_401_and_stores_nothing(
    receiver: Receiver, store: Store, project_id: int, secret: str | None
) -> None:
    before = len(store.corrections())
    headers = {SECRET_HEADER: secret} if secret else {}
    body = {"action": "ANNOTATIONS_DELETED", "annotations": [{"id": 999999}], "project": {"id": project_id}}
    answer = httpx.post(f"{receiver.url}/v1/webhooks/label-studio", json=body, headers=headers)
    assert answer.status_code == 401
    assert len(store.corrections()) == before


def test_malformed_payload_is_422_with_reasons_and_stores_nothing(
    receiver: Receiver, store: Store, settings: Settings
) -> None:
    before = len(store.corrections())
    body = {
        "action": "ANNOTATION_CREATED",
        "annotation": {"id": "not-a-number", "task": 1},
        "project": {"id": 1},
    }
    answer = httpx.post(
        f"{receiver.url}/v1/webhooks/label-studio",
        json=body,
        headers={SECRET_HEADER: settings.labelstudio.webhook_secret.get_secret_value()},
    )
    assert answer.status_code == 422
    locs = {".".join(map(str, d["loc"])) for d in answer.json()["detail"]}
    assert {"ANNOTATION_CREATED.annotation.id", "ANNOTATION_CREATED.task"} <= locs
    assert "Traceback" not in answer.text
    assert len(store.corrections()) == before


def test_cli_status_bootstrap_and_sync(
    settings: Settings, project_id: int, receiver: Receiver, tmp_path: Any
) -> None:
    from typer.testing import CliRunner

    from hitl import cli_labelstudio

    runner = CliRunner()
    status = runner.invoke(cli_labelstudio.app, ["status"], obj=settings)
    assert status.exit_code == 0, status.output
    assert "healthy" in status.output
    assert "senior review: 1 senior reviewer(s) for high-stakes items\n" in status.output
    taxonomy = tmp_path / "taxonomy.txt"
    taxonomy.write_text("\n".join(TAXONOMY.labels))
    boot = runner.invoke(
        cli_labelstudio.app, ["bootstrap", "--taxonomy", str(taxonomy), "--no-ml-backend"], obj=settings
    )
    assert boot.exit_code == 0, boot.output
    assert f"project {project_id}" in boot.output
    assert "up to date" in boot.output
    assert "kept" in boot.output
    # This receiver serves no model, so its ML backend's /setup answers 503 and Label Studio refuses
    # the connection: a clear message and exit 1, and the project stays recorded.
    with_backend = runner.invoke(
        cli_labelstudio.app, ["bootstrap", "--taxonomy", str(taxonomy)], obj=settings
    )
    assert with_backend.exit_code == 1
    assert "ML backend not connected" in with_backend.output
    assert "project and its webhook are saved" in with_backend.output
    status = runner.invoke(cli_labelstudio.app, ["status"], obj=settings)
    assert "ML backend: not connected" in status.output
    synced = runner.invoke(cli_labelstudio.app, ["sync"], obj=settings)
    assert synced.exit_code == 0, synced.output
    assert "0 recorded" in synced.output
