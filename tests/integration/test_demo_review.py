"""`hitl demo review` against the real Label Studio and the real serving app (issue #14 item 6).

The installed command works a project of this test's own as its own merchandiser, through Label Studio's
API: Label Studio serves the tasks in its queue order (the audit first, then by priority), the command
clicks the first correct suggestion or picks the category in the taxonomy, and skips an item whose
category it does not know. Each annotation reaches the store through the webhook, as a label.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from hitl.settings import Settings
from labeling.client import LabelStudioClient
from labeling.push import Escalation
from learner.data import Product, write_catalog
from serving.store import Store
from tests.integration.conftest import (
    HITL,
    REPO,
    REVIEWER_PASSWORD,
    Receiver,
    bootstrap_recorded,
    cli_env,
    deliver_now,
    eventually,
)

pytestmark = pytest.mark.integration

VERSION = "v-demo-review"
CANDIDATES = [
    ("Home & Kitchen > Decor", 0.46),
    ("Home & Kitchen > Cookware", 0.31),
    ("Sports > Running", 0.1),
]
# item id -> (the escalation's priority, the item's true category; None = not in the catalog)
ITEMS: dict[str, tuple[float, str | None]] = {
    "demo-audit": (1.0, "Home & Kitchen > Cookware"),  # the second suggestion: one click
    "demo-low": (0.9, "Sports > Cycling"),  # not suggested: picked in the taxonomy
    "demo-mid": (0.6, "Home & Kitchen > Decor"),  # the model's guess, confirmed
    "demo-unknown": (0.3, None),  # no known category: skipped
}


def _escalation(item_id: str, priority: float) -> Escalation:
    return Escalation(
        item_id=item_id,
        title=f"Enamel casserole {item_id}",
        predicted_label=CANDIDATES[0][0],
        confidence=CANDIDATES[0][1],
        threshold=0.9,
        candidates=CANDIDATES,
        priority=priority,
        reasons=["audit"] if priority == 1.0 else ["below_threshold"],
        model_version=VERSION,
    )


@pytest.fixture
def own_project(
    ls_client: LabelStudioClient, settings: Settings, store: Store, receiver: Receiver
) -> tuple[int, Settings]:
    own = settings.model_copy(
        update={"labelstudio": settings.labelstudio.model_copy(update={"project_title": "Demo review"})}
    )
    return bootstrap_recorded(ls_client, own, store), own


def _up_state(state_dir: Path, project_id: int) -> None:
    """What `hitl up` leaves for `hitl demo review`: the catalog (the ground truth) and the project."""
    up = state_dir / "up"
    up.mkdir(parents=True)
    products = [
        Product(id=item_id, title=f"Enamel casserole {item_id}", category=truth.split(" > "))
        for item_id, (_, truth) in ITEMS.items()
        if truth is not None
    ]
    write_catalog(products, up / "catalog.jsonl")
    (up / "state.json").write_text(
        json.dumps({"catalog": str(up / "catalog.jsonl"), "project_id": project_id})
    )


def test_demo_review_works_label_studios_queue_in_order_and_its_labels_reach_the_store(
    ls_client: LabelStudioClient,
    store: Store,
    own_project: tuple[int, Settings],
    tmp_path: Path,
) -> None:
    project_id, settings = own_project
    merchandiser = ls_client.ensure_reviewer("demo-merchandiser@hitl.local", REVIEWER_PASSWORD)
    report = deliver_now(
        store, settings, [_escalation(item, priority) for item, (priority, _) in ITEMS.items()], VERSION
    )
    assert report.failed == 0, report.errors
    ls_client.set_model_version(project_id, VERSION)  # as a promotion does: the queue follows it
    state_dir = tmp_path / "state"
    _up_state(state_dir, project_id)
    env = cli_env(
        state_dir,
        HITL_LABELSTUDIO__PORT=str(settings.labelstudio.port),
        HITL_LABELSTUDIO__TOKEN=merchandiser.token,  # works as that merchandiser
        HITL_LABELSTUDIO__PROJECT_TITLE="Demo review",
    )

    done = subprocess.run(
        [str(HITL), "demo", "review", "--n", str(len(ITEMS)), "--pace", "0"],
        cwd=REPO,  # configs/default.yaml
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert done.returncode == 0, done.stdout + done.stderr
    assert "done: 3 labels (2 by one click, 0 wrong on purpose), 1 skipped" in done.stdout
    reviews: list[dict[str, Any]] = [
        json.loads(line) for line in (state_dir / "up" / "review.jsonl").read_text().splitlines()
    ]
    assert [r["item_id"] for r in reviews] == list(ITEMS), "Label Studio's queue order: audit, then priority"
    assert [r["one_click"] for r in reviews] == [True, False, True, False]
    assert all(r["model_version"] == VERSION for r in reviews)

    def stored() -> dict[str, str | None] | None:
        labels = store.current_labels()
        found = {i: labels[i].label for i in ITEMS if i in labels and labels[i].source == "webhook"}
        return found if len(found) == 3 else None

    labels = eventually(stored, what="the three labels through the webhook", timeout=30)
    assert labels == {item: truth for item, (_, truth) in ITEMS.items() if truth is not None}
    assert "demo-unknown" not in store.current_labels(), "a skip is not a label"


def test_demo_review_without_a_length_says_so_and_exits_2(tmp_path: Path) -> None:
    env = cli_env(tmp_path)

    done = subprocess.run(
        [str(HITL), "demo", "review"], cwd=REPO, env=env, capture_output=True, text=True, timeout=60
    )

    assert done.returncode == 2
    assert "--n N (tasks) and/or --minutes M" in done.stderr
