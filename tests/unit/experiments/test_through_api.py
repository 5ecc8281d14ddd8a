"""The pieces of `experiments.through_api` that need no server: the webhook payload it sends is what
`labeling.webhooks` parses into a correction, and the app settings it derives isolate each run."""

from __future__ import annotations

from pathlib import Path

from experiments.simulate import SimulationConfig
from experiments.through_api import PROJECT_ID, _annotation, _item, run_settings
from hitl.settings import RoutingSettings, Settings
from labeling.config import Taxonomy
from labeling.webhooks import events_from, parse_payload
from learner.data import Product
from learner.training import TrainingConfig

TAXONOMY = Taxonomy.from_paths(["Food > Rice", "Food > Tea", "Home > Soap"])


def test_the_annotation_payload_parses_into_a_created_correction_with_the_reviewers_label() -> None:
    prediction = {"model_version": "m:v3", "confidence": 0.41, "category": "Food > Tea"}
    payload = _annotation(17, "item-9", "Food > Rice", prediction, TAXONOMY)
    event = events_from(parse_payload(payload), TAXONOMY)
    assert event.action == "created"  # type: ignore[union-attr]
    assert event.annotation_id == 17  # type: ignore[union-attr]
    assert event.project_id == PROJECT_ID
    assert event.item_id == "item-9"  # type: ignore[union-attr]
    assert event.label == "Food > Rice"  # type: ignore[union-attr]
    assert event.predicted_label == "Food > Tea"  # type: ignore[union-attr]
    assert event.model_version == "m:v3"  # type: ignore[union-attr]


def test_items_sent_to_predict_cut_texts_the_api_would_refuse() -> None:
    product = Product(id="a", title="Basmati", description="x" * 50, price=12.5, brand="B")
    item = _item(product, max_text=10)
    assert item == {"id": "a", "title": "Basmati", "description": "x" * 10, "brand": "B", "price": 12.5}


def test_run_settings_isolate_the_run_and_leave_retrains_to_explicit_triggers(tmp_path: Path) -> None:
    base = Settings(state_dir=tmp_path / "main")
    config = SimulationConfig(
        strategy="margin",
        training=TrainingConfig(target_accuracy=0.9, delta=0.1),
        routing=RoutingSettings(high_value_price=None),
    )
    one = run_settings(base, config, tmp_path / "run", 12345, rate=0.03)
    two = run_settings(base, config, tmp_path / "run", 12346)
    assert one.state_dir == tmp_path / "run"
    assert one.database_url.endswith(str(tmp_path / "run" / "hitl.db"))
    assert str(tmp_path / "run") in one.tracking_uri
    assert one.serving.port == 12345
    assert one.serving.model_source == "registry"
    assert not one.serving.outbox_enabled
    assert one.retrain.enabled
    assert one.retrain.retrain_every_n_corrections == 0
    assert one.labelstudio.sync_interval_s == 0
    assert one.routing.high_value_price is None
    assert (one.learner.audit.rate, one.learner.audit.seed_share) == (0.03, 0.03)
    assert (one.learner.target_accuracy, one.learner.delta) == (0.9, 0.1)
    assert one.learner.strategy == "margin"
    secret = one.labelstudio.webhook_secret.get_secret_value()
    assert secret != base.labelstudio.webhook_secret.get_secret_value()
    assert secret != two.labelstudio.webhook_secret.get_secret_value()
    assert base.state_dir == tmp_path / "main"  # the caller's settings are untouched
