"""`hitl serve`: how the served app logs."""

from __future__ import annotations

from hitl import cli_serve


def test_served_logs_replace_uvicorns_access_log_with_route_templates() -> None:
    config = cli_serve.log_config()
    assert config["loggers"]["uvicorn.access"]["handlers"] == []  # raw paths and queries: off
    for package in ("serving", "labeling", "learner", "hitl"):
        assert config["loggers"][package]["level"] == "INFO"
    assert "uvicorn.access" not in cli_serve.log_config()["loggers"]["serving"]["handlers"]
