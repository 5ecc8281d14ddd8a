"""`/v1/models`: versions are validated strictly and MLflow calls are bounded (issue #12.4, #12.5, #12.8)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from serving import registry
from serving.keys import Role
from serving.store import AuditEvent
from tests.integration.auth_app import RunningApp, running_app, train_tiny_bundle

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningApp]:
    with running_app(tmp_path_factory.mktemp("versions")) as app:
        yield app


def engineer(running: RunningApp) -> dict[str, str]:
    return {"Authorization": f"Bearer {running.keys[Role.ML_ENGINEER]}"}


@pytest.mark.parametrize("version", ["03", "0", "99999999999999999999", "1e3", "-1", "v1"])
def test_non_canonical_or_absurd_versions_are_422_at_once_and_audit_nothing(
    running: RunningApp, version: str
) -> None:
    events = running.store.count(AuditEvent)
    started = time.perf_counter()
    for action in ("promote", "rollback"):
        answer = running.client.post(f"/v1/models/{version}/{action}", headers=engineer(running))
        assert answer.status_code == 422, answer.text
        assert answer.json()["detail"][0]["loc"] == ["path", "version"]
    assert time.perf_counter() - started < 5  # was ~247 s of MLflow retries for the 20-digit one
    assert running.store.count(AuditEvent) == events


def test_a_version_that_does_not_exist_is_404_and_audits_nothing(running: RunningApp) -> None:
    events = running.store.count(AuditEvent)
    started = time.perf_counter()
    answer = running.client.post("/v1/models/424242/promote", headers=engineer(running))
    assert answer.status_code == 404
    assert "424242" in answer.json()["detail"]
    assert time.perf_counter() - started < 10
    assert running.store.count(AuditEvent) == events


def test_the_champion_shows_its_alias(running: RunningApp, tmp_path: Path) -> None:
    settings = running.app.state.settings
    alias = settings.serving.model_alias
    version = registry.log_bundle(settings, train_tiny_bundle(tmp_path / "b"), alias=alias)
    listed = running.client.get("/v1/models", headers=engineer(running)).json()
    assert listed["champion"] == version
    (row,) = [v for v in listed["versions"] if v["version"] == version]
    assert row["aliases"] == [alias]
