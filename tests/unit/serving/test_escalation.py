"""The escalation rate is one figure (`serving.escalation`): the dashboard, `GET /v1/metrics/escalation` and
the rates logged to MLflow agree on the same predictions, and a known store gives the known numbers."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from hitl.settings import LabelStudioSettings, MlflowSettings, RetrainSettings, ServingSettings, Settings
from serving import kpis, tracking
from serving.app import create_app
from serving.escalation import (
    RESCORE_ACTOR,
    EscalationWindow,
    combine,
    escalation_windows,
    over_time,
    per_version,
    window_start,
)
from serving.keys import create_key
from serving.store import Prediction, Store
from tests.unit.serving.retrain_support import predicted

HOUR = 3600
T0 = datetime(2026, 6, 10, 9, 0, tzinfo=UTC)
# (version, item, escalated, reasons, hours after T0)
PREDICTIONS = [
    ("v1", "a", True, ["below_threshold"], 0),
    ("v1", "b", True, ["below_threshold", "high_value"], 0),
    ("v1", "c", False, ["above_threshold"], 0),
    ("v1", "d", True, ["audit"], 1),
    ("v2", "e", False, ["above_threshold"], 1),
    ("v2", "f", True, ["below_threshold"], 2),
    ("v2", "g", False, ["above_threshold"], 2),
    ("v2", "h", False, ["above_threshold"], 2),
]


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        state_dir=tmp_path,
        labelstudio=LabelStudioSettings(sync_interval_s=0),
        serving=ServingSettings(model_source="none", outbox_enabled=False),
        retrain=RetrainSettings(enabled=False),
        mlflow=MlflowSettings(registered_model="esc-model"),
    )


@pytest.fixture
def store(settings: Settings) -> Iterator[Store]:
    db = Store(settings.database_url)
    db.create_all()
    for version, item, escalated, reasons, hours in PREDICTIONS:
        name = f"esc-model:{version}"
        predicted(db, name, item, f"title {item}", escalated=escalated, reasons=reasons)
        with db.session() as session:
            session.execute(
                update(Prediction)
                .where(Prediction.item_id == item)
                .values(created_at=(T0 + timedelta(hours=hours, minutes=5)).replace(tzinfo=None))
            )
    # A promotion's re-score of an open escalation is not a new item: it must count nowhere.
    predicted(db, "esc-model:v2", "a", "title a", escalated=True, reasons=["below_threshold"])
    with db.session() as session:
        session.execute(
            update(Prediction)
            .where(Prediction.item_id == "a", Prediction.model_version == "esc-model:v2")
            .values(requested_by=RESCORE_ACTOR)
        )
    yield db
    db.close()


def test_known_store_gives_the_known_windows_and_totals(store: Store) -> None:
    windows = escalation_windows(store, window_s=HOUR)
    assert [(w.model_version, w.predicted, w.escalated) for w in windows] == [
        ("esc-model:v1", 3, 2),
        ("esc-model:v1", 1, 1),
        ("esc-model:v2", 1, 0),
        ("esc-model:v2", 3, 1),
    ]
    assert [(w.predicted, w.escalated) for w in over_time(windows)] == [(3, 2), (2, 1), (3, 1)]
    versions = per_version(windows)
    assert {v: (w.predicted, w.escalated) for v, w in versions.items()} == {
        "esc-model:v1": (4, 3),
        "esc-model:v2": (4, 1),
    }
    assert combine(windows).by_reason == {"audit": 1, "below_threshold": 3, "high_value": 1}


@pytest.mark.slow
def test_dashboard_api_and_mlflow_report_the_same_rates(settings: Settings, store: Store) -> None:
    # MLflow: one run per version, registered, as the retrain job leaves them.
    client = tracking.client(settings)
    client.create_registered_model("esc-model")
    runs = {}
    for version in ("1", "2"):
        run_id = tracking.start_run(settings, run_name=f"v{version}", trigger="test", params={})
        client.create_model_version("esc-model", f"runs:/{run_id}/model", run_id=run_id)
        runs[f"esc-model:v{version}"] = run_id
    windows = escalation_windows(store, window_s=settings.dashboard.window_s)
    assert tracking.log_escalation_windows(settings, windows) == len(windows)

    board = kpis.escalation(store, settings.dashboard)
    _, key = create_key(store, "po", "product_owner")
    with TestClient(create_app(settings, store=store)) as api:
        answer = api.get("/v1/metrics/escalation", headers={"Authorization": f"Bearer {key}"})
    assert answer.status_code == 200, answer.text
    body = answer.json()

    dashboard_by_version = {v.model_version: v.rate for v in board.by_version}
    api_by_version = {v: w["rate"] for v, w in body["by_version"].items()}
    assert dashboard_by_version == pytest.approx(api_by_version)
    assert dashboard_by_version == pytest.approx({"esc-model:v1": 0.75, "esc-model:v2": 0.25})
    assert board.window_s == body["window_s"] == settings.dashboard.window_s
    assert [p.rate for p in board.over_time] == pytest.approx([2 / 3, 1 / 2, 1 / 3])

    api_windows = {
        (w["model_version"], round(datetime.fromisoformat(w["window_start"]).timestamp())): w["rate"]
        for w in body["windows"]
    }
    logged = {}
    for version, run_id in runs.items():
        for point in client.get_metric_history(run_id, "escalation_rate"):
            logged[(version, point.timestamp // 1000)] = point.value
    assert logged == pytest.approx(api_windows)
    assert len(logged) == 4


def test_since_is_read_as_utc_and_clamped_to_the_calendar(store: Store) -> None:
    def counted(since: datetime) -> int:
        return sum(w.predicted for w in escalation_windows(store, window_s=HOUR, since=since))

    assert counted(T0) == 8
    assert counted(T0.replace(tzinfo=None) + timedelta(hours=1)) == 5  # naive: UTC, as the store keeps it
    assert counted(T0.astimezone(timezone(timedelta(hours=2))) + timedelta(hours=2)) == 3
    # Moments whose UTC falls outside the calendar: before everything, after everything.
    assert counted(datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=1)))) == 8
    assert counted(datetime(1, 1, 1)) == 8
    assert counted(datetime(9999, 12, 31, 23, 59, 59, tzinfo=timezone(timedelta(hours=-1)))) == 0


def test_out_of_range_query_and_path_values_are_4xx_not_500(settings: Settings, store: Store) -> None:
    _, owner_key = create_key(store, "po", "product_owner")
    _, admin_key = create_key(store, "root", "admin")
    owner, admin = ({"Authorization": f"Bearer {k}"} for k in (owner_key, admin_key))
    with TestClient(create_app(settings, store=store), raise_server_exceptions=False) as api:
        for since in ("0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00", "0001-01-01"):
            answer = api.get("/v1/metrics/escalation", params={"since": since}, headers=owner)
            assert answer.status_code == 200, (since, answer.text)
        for run_id in ("99999999999999999999", "2147483648", "-99999999999999999999"):
            answer = api.get(f"/v1/retrain/{run_id}", headers=owner)
            assert answer.status_code == 422, (run_id, answer.text)
            assert "less than or equal" in answer.text or "greater than or equal" in answer.text
        refused = api.delete("/v1/keys/99999999999999999999", headers=admin)
        assert refused.status_code == 422


def test_since_starts_at_its_window_and_until_ends_before_it(store: Store) -> None:
    def windows(since: datetime | None = None, until: datetime | None = None) -> list[tuple[float, int]]:
        found = escalation_windows(store, window_s=HOUR, since=since, until=until)
        return [(w.window_start, w.predicted) for w in found]

    half_past = T0 + timedelta(minutes=30)
    assert windows(since=half_past) == windows()  # the first window is whole, not its last half
    assert sum(n for _, n in windows(since=half_past)) == 8
    assert windows(since=T0 + timedelta(hours=1, minutes=59), until=T0 + timedelta(hours=2)) == [
        (T0.timestamp() + HOUR, 1),
        (T0.timestamp() + HOUR, 1),
    ]
    assert window_start(datetime(1, 1, 1), HOUR) == datetime(1, 1, 1)  # the calendar's edge is kept


def test_the_worker_logs_each_closed_window_once_and_never_an_open_one(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from serving.retrain import RetrainWorker

    db = Store(settings.database_url)
    db.create_all()
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    for item, at in (("old", hour - timedelta(minutes=90)), ("new", hour + timedelta(seconds=1))):
        predicted(db, "esc-model:v1", item, f"title {item}", escalated=True, reasons=["below_threshold"])
        with db.session() as session:
            session.execute(
                update(Prediction)
                .where(Prediction.item_id == item)
                .values(created_at=at.replace(tzinfo=None))
            )
    logged: list[list[float]] = []

    def log(_: Settings, windows: list[EscalationWindow]) -> int:
        logged.append([w.window_start for w in windows])
        return len(windows)

    monkeypatch.setattr(tracking, "log_escalation_windows", log)
    worker = RetrainWorker(settings, db, None, auto=False)
    try:
        worker._log_escalation()
        worker._log_escalation()
    finally:
        worker.stop()
        db.close()
    assert logged == [[(hour - timedelta(hours=2)).timestamp()]]  # the window of "old"; "new" is still open
