"""`serving.routers.retrain`: free text that reaches the audit trail and MLflow is masked on the way in."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.testclient import TestClient

from serving.routers.retrain import ReasonQuery, RetrainRequest


def test_a_retrain_reason_has_its_personal_data_masked() -> None:
    asked = RetrainRequest(reason="asked by jane.doe@corp.com, call +44 20 7946 0958")
    assert asked.reason == "asked by [EMAIL], call [PHONE]"
    assert RetrainRequest().reason == "api"


def test_a_promotion_reason_in_the_query_has_its_personal_data_masked() -> None:
    app = FastAPI()

    @app.get("/echo")
    def echo(reason: ReasonQuery = None) -> dict[str, str | None]:
        return {"reason": reason}

    with TestClient(app) as client:
        assert client.get("/echo", params={"reason": "per jane@corp.com"}).json() == {"reason": "per [EMAIL]"}
        assert client.get("/echo").json() == {"reason": None}
        assert client.get("/echo", params={"reason": ""}).status_code == 422
