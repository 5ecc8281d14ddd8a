"""Idempotent project bootstrap: one project per title, one webhook per (project, URL)."""

from __future__ import annotations

from collections.abc import Callable

from labeling.client import QUEUE_SETTINGS, SAMPLING, WEBHOOK_PATH, LabelStudioClient, ProjectInfo
from labeling.config import Taxonomy, build_label_config
from labeling.webhooks import SECRET_HEADER


def webhook_url(serving_base_url: str) -> str:
    return serving_base_url.rstrip("/") + WEBHOOK_PATH


def bootstrap_project(
    client: LabelStudioClient,
    taxonomy: Taxonomy,
    *,
    title: str,
    webhook_url: str,
    webhook_secret: str,
    model_version: str | None = None,
    record_taxonomy: Callable[[int], None] | None = None,
) -> ProjectInfo:
    """Create or update the project (config from `taxonomy`, uncertainty sampling) and its webhook.

    Running it again changes nothing but what differs; it never creates a second project or webhook.
    The ML backend is connected separately (`LabelStudioClient.ensure_ml_backend`), once the project is
    recorded: it needs the serving API up, and the project must not be lost when that API is down.

    `record_taxonomy(project_id)` tells our side the taxonomy before a reviewer can choose from it:
    right after creating the project, and before changing its label config (serving's store then
    accepts the old and the new categories until the bootstrap has finished: `Store.widen_taxonomy`).
    The other way round, a reviewer who chose a category the re-bootstrap just added was rejected by the
    old taxonomy, for good (the sync never looks again at a state it holds).
    """
    label_config = build_label_config(taxonomy)
    project = client.find_project(title)
    created = project is None
    config_updated = False
    if project is None:
        project = client.create_project(title, label_config, model_version=model_version)
        # Label Studio on a busy SQLite database has answered one create with a second project of the
        # same title (integration suite: ids 5 and 6). The oldest is the project; a newer twin is removed.
        oldest = client.find_project(title)
        if oldest is not None and int(oldest["id"]) != int(project["id"]):
            client.delete_project(int(project["id"]))
            project = oldest
        if record_taxonomy is not None:
            record_taxonomy(int(project["id"]))
    else:
        changes: dict[str, object] = {}
        if (project.get("label_config") or "").strip() != label_config.strip():
            changes["label_config"] = label_config
        if project.get("sampling") != SAMPLING:
            changes["sampling"] = SAMPLING
        changes.update({k: v for k, v in QUEUE_SETTINGS.items() if project.get(k) != v})
        if model_version and project.get("model_version") != model_version:
            changes["model_version"] = model_version
        if changes:
            if "label_config" in changes and record_taxonomy is not None:
                record_taxonomy(int(project["id"]))
            client.update_project(int(project["id"]), **changes)
            config_updated = "label_config" in changes
    project_id = int(project["id"])
    hook_id, hook_created = client.ensure_webhook(project_id, webhook_url, webhook_secret, SECRET_HEADER)
    return ProjectInfo(project_id, hook_id, created, hook_created, config_updated)
