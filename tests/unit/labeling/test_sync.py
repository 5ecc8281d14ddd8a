from __future__ import annotations

from pathlib import Path
from typing import Any, cast

from labeling.client import LabelStudioClient
from labeling.config import Taxonomy
from labeling.sync import sync_project
from serving.store import Store
from tests.unit.labeling.fakes import FakeLabelStudio

TAX = Taxonomy.from_paths(["Shoes", "Hats"])


def annotation(aid: int, label: str, updated: str, **kw: Any) -> dict[str, Any]:
    return {
        "id": aid,
        "completed_by": 2,
        "created_at": "2025-01-01T10:00:00Z",
        "updated_at": updated,
        "result": [{"from_name": "category", "value": {"choices": [label]}}],
        "lead_time": 1.0,
        **kw,
    }


def test_sync_fills_gaps_updates_and_deletions_idempotently(tmp_path: Path) -> None:
    fake = FakeLabelStudio()
    fake.tasks = [
        {
            "id": 1,
            "data": {"item_id": "a"},
            "meta": {"item_id": "a", "predicted_label": "Hats"},
            "predictions": [{"model_version": "v3"}],
            "annotations": [annotation(11, "Shoes", "2025-01-01T10:00:00Z")],
        },
        {
            "id": 2,
            "data": {"item_id": "b"},
            "meta": {"item_id": "b"},
            "annotations": [annotation(12, "Boots", "2025-01-01T10:00:00Z")],
        },
    ]
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    store.create_all()
    client = cast(LabelStudioClient, fake)

    first = sync_project(client, store, 1, TAX)
    assert (first.recorded, first.rejected, first.deleted) == (2, 1, 0)
    (row,) = store.history(11)
    assert (row.action, row.source, row.label, row.model_version, row.predicted_label) == (
        "created",
        "sync",
        "Shoes",
        "v3",
        "Hats",
    )
    assert sync_project(client, store, 1, TAX).recorded == 0

    fake.tasks[0]["annotations"] = [annotation(11, "Hats", "2025-01-01T11:00:00Z")]
    fake.tasks[1]["annotations"] = []
    second = sync_project(client, store, 1, TAX)
    assert (second.recorded, second.deleted) == (1, 1)
    assert [(r.action, r.label) for r in store.history(11)] == [("created", "Shoes"), ("updated", "Hats")]
    assert [r.action for r in store.history(12)] == ["rejected", "deleted"]
