"""An unexpected error is a plain 500 that keeps the connection usable and logs no traceback."""

from __future__ import annotations

import http.client
import logging
from pathlib import Path

import pytest

from hitl.settings import Settings
from serving.app import create_app
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
