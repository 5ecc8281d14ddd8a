"""Smoke test of `hitl serve`: the installed command serves a bundle, answers the probes, stops on SIGTERM."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from labeling.server import free_port
from tests.integration.conftest import HITL, REPO, cli_env, wait_healthy

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_hitl_serve_starts_is_ready_and_stops_cleanly_on_sigterm(
    small_bundle_dir: Path, tmp_path: Path
) -> None:
    assert HITL.is_file(), f"the `hitl` console script is not installed next to {sys.executable}"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = cli_env(
        tmp_path / "state",
        HITL_LABELSTUDIO__SYNC_INTERVAL_S="0",  # no Label Studio here
        HITL_SERVING__OUTBOX_ENABLED="false",
    )
    process = subprocess.Popen(
        [str(HITL), "serve", "--bundle", str(small_bundle_dir), "--port", str(port)],
        cwd=REPO,  # configs/default.yaml
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_healthy(process, url)
        ready = httpx.get(f"{url}/readyz", timeout=10)
        assert ready.status_code == 200, ready.text
        body = ready.json()
        assert body["status"] == "ready"
        assert body["database"] is True
        assert body["model_loaded"] is True
        assert body["model_version"].startswith("local:")
        assert (tmp_path / "state" / "hitl.db").is_file()  # the state dir came from HITL_STATE_DIR
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    # uvicorn shuts down gracefully, then re-raises the signal it caught (`Server.capture_signals`), so a
    # clean stop on SIGTERM ends "killed by SIGTERM", as supervisors (systemd, Docker) expect; 0 is clean too.
    assert process.returncode in (0, -signal.SIGTERM), output
    assert time.monotonic() - started < 30
    assert "Traceback" not in output, output
    assert "Application shutdown complete" in output, output  # the lifespan's shutdown ran to its end
    assert "Finished server process" in output, output
