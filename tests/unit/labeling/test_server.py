from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from hitl.settings import LabelStudioSettings
from labeling.exceptions import LabelStudioNotInstalledError, LabelStudioStartError
from labeling.server import BANNED_SUBNETS_EXCEPT_LOOPBACK, LabelStudioServer, free_port


def make(tmp_path: Path, **kw: object) -> LabelStudioServer:
    return LabelStudioServer(
        LabelStudioSettings(venv=tmp_path / "venv", port=free_port(), **kw), tmp_path / "state"
    )


def test_environment_is_headless_and_keeps_the_ssrf_guard_except_loopback(tmp_path: Path) -> None:
    env = make(tmp_path).environment()
    assert env["LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN"] == "true"
    assert env["LABEL_STUDIO_USER_TOKEN"] == "hitl-dev-token-0123456789"
    assert env["SENTRY_DSN"] == ""
    assert env["FRONTEND_SENTRY_DSN"] == ""
    assert env["LATEST_VERSION_CHECK"] == "false"
    assert env["USE_DEFAULT_BANNED_SUBNETS"] == "false"
    banned = [ipaddress.ip_network(s) for s in env["USER_ADDITIONAL_BANNED_SUBNETS"].split(",")]
    assert banned
    assert env["USER_ADDITIONAL_BANNED_SUBNETS"] == BANNED_SUBNETS_EXCEPT_LOOPBACK

    def is_banned(ip: str) -> bool:
        return any(ipaddress.ip_address(ip) in net for net in banned)

    assert not is_banned("127.0.0.1")
    assert not is_banned("::1")
    assert is_banned("169.254.169.254")
    assert is_banned("10.1.2.3")
    assert is_banned("192.168.0.1")
    assert not is_banned("93.184.216.34")


def test_status_and_stop_without_a_server(tmp_path: Path) -> None:
    server = make(tmp_path)
    assert not server.status().running
    assert server.stop() is False
    server.pid_file.parent.mkdir(parents=True)
    server.pid_file.write_text("999999999\n")  # a stale PID file is cleaned up, nothing is signalled
    assert server.stop() is False
    assert not server.pid_file.exists()


def test_start_refuses_without_install_or_with_an_external_url(tmp_path: Path) -> None:
    with pytest.raises(LabelStudioNotInstalledError, match="hitl labelstudio install"):
        make(tmp_path).start()
    with pytest.raises(LabelStudioStartError, match="external"):
        make(tmp_path, url="http://ls.example:8080").start()
