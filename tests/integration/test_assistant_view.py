"""The assistant view of a task (issue #14 item 3) against the real Label Studio and the real serving app.

The outbox worker pushes an escalation as the serving app does: the task holds the model's top-3
categories as one-click suggestions (the prediction pre-selected), the reasons in plain words and the
most similar labelled items with their human labels. A reviewer who clicks the second suggestion gives
that category as the label.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from hitl.settings import Settings
from labeling.client import LabelStudioClient
from labeling.push import Escalation
from learner.data import Product
from serving.retrain.labels import add_seed_labels
from serving.similar import SimilarLabelled
from serving.store import Store
from tests.integration.conftest import TAXONOMY, Receiver, deliver_now, eventually

pytestmark = pytest.mark.integration

SEEDS = [
    ("seed-pan-24", "Stainless steel frying pan 24 cm", ["Home & Kitchen", "Cookware"]),
    ("seed-pan-20", "Stainless steel frying pan 20 cm", ["Home & Kitchen", "Cookware"]),
    ("seed-vase", "Glass flower vase", ["Home & Kitchen", "Decor"]),
    ("seed-shoe", "Trail running shoe", ["Sports", "Running"]),
    ("seed-bike", "Bicycle bell chrome", ["Sports", "Cycling"]),
]


@pytest.fixture
def labelled_store(tmp_path: Path, settings: Settings, project_id: int) -> Iterator[Store]:
    db = Store(f"sqlite:///{tmp_path / 'assistant.db'}")
    db.create_all()
    db.save_project(project_id, settings.labelstudio.project_title, None, TAXONOMY)
    add_seed_labels(
        db, [Product(id=i, title=t, category=c) for i, t, c in SEEDS], level=2
    )  # what people labelled
    yield db
    db.close()


def test_a_task_offers_the_top_3_as_one_click_choices_with_similar_labelled_items(
    ls_client: LabelStudioClient,
    reviewer_client: LabelStudioClient,
    labelled_store: Store,
    store: Store,
    project_id: int,
    receiver: Receiver,
    settings: Settings,
) -> None:
    escalation = Escalation(
        item_id="assist-pan",
        title="Stainless steel frying pan 28 cm",
        brand="Acme",
        price=39.0,
        predicted_label="Home & Kitchen > Decor",
        confidence=0.41,
        threshold=0.83,
        candidates=[
            ("Home & Kitchen > Decor", 0.41),
            ("Home & Kitchen > Cookware", 0.37),
            ("Sports > Cycling", 0.08),
            ("Sports > Running", 0.05),
        ],
        priority=0.6,
        reasons=["below_threshold"],
        model_version="v-assist",
    )
    similar = SimilarLabelled(labelled_store).fill
    report = deliver_now(labelled_store, settings, [escalation], "v-assist", similar=similar)
    assert (report.delivered, report.failed) == (1, 0), report.errors
    (task_id,) = labelled_store.open_task_ids(project_id, ["assist-pan"]).values()
    task = ls_client.get_task(task_id)
    data = task["data"]
    assert [s["value"] for s in data["suggestions"]] == [
        "Home & Kitchen > Decor",
        "Home & Kitchen > Cookware",
        "Sports > Cycling",
    ]
    assert data["suggestions"][1]["html"] == "Home &amp; Kitchen &gt; Cookware · 37%"
    assert data["reason"] == "confidence 0.41 below this category's certified 0.83"
    similar = data["similar"].split(" · ")
    assert len(similar) == 3
    assert set(similar[:2]) == {  # the same pan in other sizes, with the label people gave them
        "“Stainless steel frying pan 24 cm” → Home & Kitchen > Cookware",
        "“Stainless steel frying pan 20 cm” → Home & Kitchen > Cookware",
    }
    (prediction,) = task["predictions"]
    assert prediction["result"][0]["from_name"] == "suggestion"
    assert prediction["result"][0]["value"]["choices"] == ["Home & Kitchen > Decor"]

    # One click on the second suggestion, and submit: that is the label.
    annotation = reviewer_client.create_annotation(
        task_id, TAXONOMY.result_for("Home & Kitchen > Cookware", suggested=True)
    )
    (row,) = eventually(lambda: store.history(annotation["id"]), what="the webhook's correction")
    assert (row.action, row.label, row.predicted_label) == (
        "created",
        "Home & Kitchen > Cookware",
        "Home & Kitchen > Decor",
    )
    ls_client.delete_task(task_id)  # the project is shared by the session's tests
