"""An unexpected error is a plain 500 that keeps the connection usable and logs no traceback."""

from __future__ import annotations

import http.client
import logging
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from hitl.settings import LabelStudioSettings, MlflowSettings, RetrainSettings, ServingSettings, Settings
from serving.app import create_app
from serving.keys import Role, create_key, list_keys
from serving.store import Store
from tests.unit.serving.support import served


def test_after_a_500_the_next_request_on_the_same_connection_is_served(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Issue #12.2: Starlette's handler re-raised, uvicorn reset the keep-alive connection, and the next
    # valid request on it failed. A route that raises is the fault injected; the server is real.
    app = create_app(Settings(state_dir=tmp_path, labelstudio={"sync_interval_s": 0}))

    def broken(item: str) -> None:
        raise RuntimeError(f"secret-ish detail {item}")

    app.add_api_route("/broken/{item}", broken)
    with served(app) as port:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        with caplog.at_level(logging.ERROR):
            connection.request("GET", "/broken/jane@example.com")
            first = connection.getresponse()
            assert first.status == 500
            assert first.read() == b'{"detail":"internal error"}'
        connection.request("GET", "/v1/health")
        second = connection.getresponse()
        assert second.status == 200
        assert second.read() == b'{"status":"ok"}'
    logged = caplog.text
    assert "RuntimeError" in logged
    assert "/broken/{item}" in logged  # the route template, not the path
    assert "jane@example.com" not in logged
    assert "Traceback" not in logged


@pytest.mark.every_database
def test_strings_the_database_cannot_hold_and_odd_requests_are_4xx_not_500(
    tmp_path: Path, store: Store
) -> None:
    # Found by a review: each was a 500, the NULs on PostgreSQL only (it cannot compare such text).
    settings = Settings(
        state_dir=tmp_path,
        labelstudio=LabelStudioSettings(sync_interval_s=0),
        serving=ServingSettings(model_source="none", outbox_enabled=False),
        retrain=RetrainSettings(enabled=False),
    )
    _, admin = create_key(store, "root", Role.ADMIN)
    auth = {"Authorization": f"Bearer {admin}"}
    with TestClient(create_app(settings, store=store), raise_server_exceptions=False) as api:
        for path in ("/v1/items/a%00b", "/v1/audit?item=a%00", "/v1/audit?after_id=2147483648",
                     "/v1/metrics/escalation?model_version=%00"):  # fmt: skip
            answer = api.get(path, headers=auth)
            assert answer.status_code == 422, (path, answer.text)
        nul_reason = api.post("/v1/retrain", json={"reason": "nightly\u0000"}, headers=auth)
        assert nul_reason.status_code == 422, nul_reason.text
        # 100 characters that masking makes 101: the stored name would not fit its column.
        longer = api.post("/v1/keys", json={"name": "x" * 93 + " a@b.cd", "role": "service"}, headers=auth)
        assert longer.status_code == 422, longer.text
        assert "once personal data in it is masked" in longer.text
        many_fields = api.post(
            "/login",
            content="&".join(["a=1"] * 11),
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        assert many_fields.status_code == 400, many_fields.text
        assert api.request("X1ZZ", "/nothing").status_code in (404, 405)
        metrics = api.get("/metrics", headers=auth)
        assert metrics.status_code == 200
        assert "X1ZZ" not in metrics.text  # a made-up method is "OTHER": /metrics cannot grow without bound
        assert 'method="OTHER"' in metrics.text
    assert [k.name for k in list_keys(store)] == ["root"]


def test_a_promotion_while_the_registry_is_unreachable_is_503_not_404(
    tmp_path: Path, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    # MLflow's own retry settings are process-wide: set here, for this test only.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    settings = Settings(
        state_dir=tmp_path,
        labelstudio=LabelStudioSettings(sync_interval_s=0),
        serving=ServingSettings(model_source="none", outbox_enabled=False),
        retrain=RetrainSettings(retrain_every_n_corrections=0, escalation_log_interval_s=0),
        mlflow=MlflowSettings(tracking_uri="http://127.0.0.1:9", request_timeout_s=2, request_retries=0),
    )
    _, engineer = create_key(store, "eng", Role.ML_ENGINEER)
    with TestClient(create_app(settings, store=store), raise_server_exceptions=False) as api:
        answer = api.post("/v1/models/3/promote", headers={"Authorization": f"Bearer {engineer}"})
    assert answer.status_code == 503, answer.text
    assert answer.headers["Retry-After"] == "10"
