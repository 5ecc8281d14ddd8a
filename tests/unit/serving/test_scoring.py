"""`serving.scoring`: what the Ray scoring actors are given; a catalog file scored as it streams."""

from __future__ import annotations

import json
import pickle
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr
from sqlalchemy import func, select

from hitl.settings import LabelStudioSettings, MlflowSettings, ServingSettings, Settings
from learner.encoder import HFEncoder
from learner.exceptions import CatalogError
from learner.synthetic import generate_catalog
from learner.synthetic_bundle import N_CATEGORIES
from serving.model import ModelHolder
from serving.schemas import ItemIn
from serving.scoring import (
    CatalogOutline,
    RayScorer,
    ScoringError,
    catalog_items,
    catalog_outline,
    part_path,
    score_catalog,
    settings_for_actors,
)
from serving.service import Scored
from serving.store import Prediction, Store
from tests.unit.serving.support import served_settings


def test_scoring_actors_get_no_credentials_but_what_scoring_needs() -> None:
    secrets = {
        "ls-password-0123456789",
        "ls-token-0123456789abcdef",
        "webhook-secret-0123456789",
        "ml-backend-password-0123",
        "mlflow-user:mlflow-pass",
    }
    settings = Settings(
        labelstudio=LabelStudioSettings(
            password=SecretStr("ls-password-0123456789"),
            token=SecretStr("ls-token-0123456789abcdef"),
            webhook_secret=SecretStr("webhook-secret-0123456789"),
        ),
        mlflow=MlflowSettings(tracking_uri="https://mlflow-user:mlflow-pass@mlflow.corp"),
        serving=ServingSettings(
            ml_backend_password=SecretStr("ml-backend-password-0123"), database_url="sqlite:///scores.db"
        ),
    )
    given = settings_for_actors(settings)

    # What Ray would pickle and ship, secrets revealed as a pickle would hold them.
    shipped = pickle.dumps(given).decode("latin-1")
    revealed = repr(
        [
            given.labelstudio.password.get_secret_value(),
            given.labelstudio.token.get_secret_value(),
            given.labelstudio.webhook_secret.get_secret_value(),
            given.serving.ml_backend_password.get_secret_value(),
            given.mlflow.tracking_uri,
        ]
    )
    assert not any(secret in shipped or secret in revealed for secret in secrets)
    # Scoring still has what it uses: the learner, routing, the cache and the database.
    assert given.learner == settings.learner
    assert given.routing == settings.routing
    assert given.serving.database_url == "sqlite:///scores.db"
    assert given.cache_dir == settings.cache_dir


def _write_jsonl(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def _unlabelled(n: int, seed: int = 5) -> list[dict[str, Any]]:
    return [
        {"id": f"new-{i}", "title": p.title, "description": p.description, "brand": p.brand}
        for i, p in enumerate(generate_catalog(n, seed=seed, n_categories=N_CATEGORIES))
    ]


def test_the_outline_checks_every_record_and_welcomes_items_without_a_category(tmp_path: Path) -> None:
    records = _unlabelled(4)
    good = _write_jsonl(tmp_path / "new.jsonl", [*records, records[1]])  # an exact repeat is skipped
    outline = catalog_outline(good, 3)
    assert (outline.count, outline.first_id, outline.last_id, len(outline.part_digests)) == (
        4,
        "new-0",
        "new-3",
        2,
    )
    assert outline == CatalogOutline.of([ItemIn.model_validate(r) for r in records], 3)

    bad = _write_jsonl(
        tmp_path / "bad.jsonl",
        [records[0], {**records[1], "price": -2}, {**records[2], "title": " "}, {**records[0], "title": "x"}],
    )
    with pytest.raises(CatalogError) as caught:
        catalog_outline(bad, 10)
    assert [p.line for p in caught.value.problems] == [2, 3, 4]
    assert "duplicate id 'new-0' (first at line 1)" in str(caught.value)


def test_a_catalog_file_is_scored_part_by_part_as_it_is_read(
    tmp_path: Path, small_bundle_dir: Path, embedding_dir: Path, minilm_encoder: HFEncoder
) -> None:
    catalog = _write_jsonl(tmp_path / "new.jsonl", _unlabelled(25))
    settings = served_settings(small_bundle_dir, embedding_dir)
    holder = ModelHolder(settings, encoder_factory=lambda _ref: minilm_encoder)
    store = Store(f"sqlite:///{tmp_path / 'hitl.db'}")
    store.create_all()
    read: list[str] = []

    def items() -> Iterator[ItemIn]:
        for item in catalog_items(catalog):
            read.append(item.id)
            yield item

    read_when_recorded: list[int] = []
    try:
        holder.refresh()
        model = holder.require()
        outline = catalog_outline(catalog, 10)
        out = tmp_path / "scored"
        report = score_catalog(
            model, store, items(), settings, out, outline=outline, part_size=10,
            on_part=lambda _n: read_when_recorded.append(len(read)),
        )  # fmt: skip
        assert (report.parts, report.items) == (3, 25)
        # Each part was recorded before the next was read: the catalog is never held whole.
        assert read_when_recorded == [10, 20, 25]
        with store.session() as session:
            assert session.scalar(select(func.count()).select_from(Prediction)) == 25

        # The file changes between the two readings of a resumed run: the changed part is refused
        # before it is scored, and nothing of it is recorded.
        part_path(out, 2).unlink()
        first = _unlabelled(25)
        _write_jsonl(catalog, [*first, {"id": "new-25", "title": "Kettle"}])
        with pytest.raises(
            ScoringError, match=r"changed while it was scored: part 2 \(from item 21\) differs"
        ):
            score_catalog(model, store, catalog_items(catalog), settings, out, outline=outline, part_size=10)
        assert not part_path(out, 2).exists()
        _write_jsonl(catalog, [*first[:24], {**first[24], "title": "Kettle"}])  # one title differs
        with pytest.raises(ScoringError, match=r"part 2 .* differs"):
            score_catalog(model, store, catalog_items(catalog), settings, out, outline=outline, part_size=10)
        with store.session() as session:
            assert session.scalar(select(func.count()).select_from(Prediction)) == 25
        # A resumed run of the changed file is refused by its manifest: the content differs.
        with pytest.raises(ScoringError, match=r"holds the parts of another run .*digest"):
            score_catalog(
                model,
                store,
                catalog_items(catalog),
                settings,
                out,
                outline=catalog_outline(catalog, 10),
                part_size=10,
            )
        with pytest.raises(TypeError, match="need their outline"):
            score_catalog(model, store, catalog_items(catalog), settings, out, part_size=10)
    finally:
        holder.close()
        store.close()


def test_ray_scores_a_stream_in_windows_of_parts() -> None:
    windows: list[list[int]] = []
    pulled: list[int] = []

    class Windowed(RayScorer):
        def __init__(self) -> None:  # no Ray here: only how parts are grouped into pipelines
            self.window_items = 25

        def _pipeline(self, parts: Sequence[Sequence[ItemIn]]) -> Iterator[list[Scored]]:
            windows.append([len(p) for p in parts])
            yield from ([] for _ in parts)

    def parts() -> Iterator[list[ItemIn]]:
        for size in (10, 10, 10, 10, 3):
            pulled.append(size)
            yield [ItemIn(id=f"i{n}", title="Kettle") for n in range(size)]

    stream = Windowed().stream(parts())
    next(stream)
    assert pulled == [10, 10, 10]  # a window of >= 25 items, not the whole stream, was read
    assert len(list(stream)) == 4
    assert windows == [[10, 10, 10], [10, 3]]


def test_two_runs_never_write_into_one_folder_at_once(tmp_path: Path) -> None:
    import fcntl

    from serving.scoring import ScoringError, _only_run

    with (
        _only_run(tmp_path),
        pytest.raises(ScoringError, match="another `hitl score` is writing"),
        _only_run(tmp_path),
    ):
        pass
    with _only_run(tmp_path):  # free again once the first run ended
        pass
    with (tmp_path / ".lock").open("a") as handle:  # and held the way another process would hold it
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
