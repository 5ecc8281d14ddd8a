from __future__ import annotations

from typing import Any, cast

from labeling.client import QUEUE_SETTINGS, SAMPLING, LabelStudioClient
from labeling.config import Taxonomy, build_label_config
from labeling.project import bootstrap_project

OLD = Taxonomy.from_paths(["Shoes", "Hats"])
NEW = Taxonomy.from_paths(["Shoes", "Hats", "Scarves"])


class ProjectsApi:
    """Label Studio's project and webhook calls, in the order they were made."""

    def __init__(self) -> None:
        self.project: dict[str, Any] | None = None
        self.calls: list[str] = []

    def find_project(self, title: str) -> dict[str, Any] | None:
        return None if self.project is None else dict(self.project)

    def create_project(self, title: str, label_config: str, *, model_version: str | None) -> dict[str, Any]:
        self.calls.append("create")
        self.project = {"id": 4, "label_config": label_config, "sampling": SAMPLING, **QUEUE_SETTINGS}
        return dict(self.project)

    def update_project(self, project_id: int, **changes: Any) -> None:
        self.calls.append("update:" + ",".join(sorted(changes)))
        assert self.project is not None
        self.project.update(changes)

    def ensure_webhook(self, project_id: int, url: str, secret: str, header: str) -> tuple[int, bool]:
        self.calls.append("webhook")
        return 9, False


def bootstrap(api: ProjectsApi, taxonomy: Taxonomy, model_version: str | None = None) -> None:
    bootstrap_project(
        cast(LabelStudioClient, api),
        taxonomy,
        title="Products",
        webhook_url="http://127.0.0.1:8000/v1/webhooks/label-studio",
        webhook_secret="s",
        model_version=model_version,
        record_taxonomy=lambda project_id: api.calls.append(f"record:{project_id}"),
    )


def test_the_taxonomy_is_recorded_before_a_reviewer_can_choose_from_it() -> None:
    api = ProjectsApi()
    bootstrap(api, OLD)
    assert api.calls == ["create", "record:4", "webhook"]  # before the webhook can deliver anything

    api.calls.clear()
    bootstrap(api, NEW)
    # Before: Label Studio offered "Scarves" while the store still judged by the old taxonomy, and a
    # reviewer's "Scarves" was stored as rejected for good.
    assert api.calls == ["record:4", "update:label_config", "webhook"]
    assert api.project is not None
    assert api.project["label_config"] == build_label_config(NEW)

    api.calls.clear()
    bootstrap(api, NEW, model_version="v2")  # no config change: nothing to record first
    assert api.calls == ["update:model_version", "webhook"]


def test_a_project_made_before_the_queue_settings_gets_them() -> None:
    api = ProjectsApi()
    bootstrap(api, OLD)
    assert api.project is not None
    api.project.update(
        skip_queue="REQUEUE_FOR_OTHERS", enable_empty_annotation=True
    )  # Label Studio's defaults
    api.calls.clear()
    bootstrap(api, OLD)
    assert api.calls == ["update:enable_empty_annotation,skip_queue", "webhook"]
    assert api.project["skip_queue"] == "REQUEUE_FOR_ME"
    assert api.project["enable_empty_annotation"] is False
