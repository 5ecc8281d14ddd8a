"""Body limits apply in the ASGI layer, before authentication and before the body is read (#12.6)."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest

from hitl.settings import Settings
from serving.app import create_app
from serving.limits import BodyLimits
from tests.unit.serving.support import served


@pytest.fixture(scope="module")
def port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    tmp = tmp_path_factory.mktemp("limits")
    settings = Settings(
        state_dir=tmp,
        labelstudio={"sync_interval_s": 0},
        serving={"outbox_enabled": False, "model_source": "none", "max_body_bytes": 65_536},
    )
    with served(create_app(settings)) as bound:
        yield bound


def exchange(port: int, head: bytes, body: bytes = b"") -> tuple[int, bytes, float]:
    """Send the request head (and maybe a little body) and read the answer; the claimed rest of the
    body is never sent, so an answer proves the server did not wait to read it."""
    started = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(head + body)
        reply = b""
        while b"\r\n\r\n" not in reply:
            chunk = conn.recv(65536)
            if not chunk:
                break
            reply += chunk
    status = int(reply.split(b" ", 2)[1])
    return status, reply, time.perf_counter() - started


@pytest.mark.parametrize(
    ("path", "declared"),
    [("/login", 300_000_000), ("/v1/predict", 50_000_000), ("/v1/webhooks/label-studio", 10_000_000)],
)
def test_a_declared_oversized_body_is_413_before_it_is_read_or_authenticated(
    port: int, path: str, declared: int
) -> None:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {declared}\r\n\r\n"
    ).encode()
    status, reply, seconds = exchange(port, head, b"{")
    assert status == 413  # not 401: no key was sent, and the limit comes first
    assert b"larger than" in reply
    assert seconds < 5


def test_a_chunked_body_is_cut_off_at_the_limit(port: int) -> None:
    head = b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    chunk = b"a" * 32_768
    body = b"".join(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n" for _ in range(3))
    status, _, _ = exchange(port, head, body)
    assert status == 413


def test_a_body_under_the_limit_reaches_the_route(port: int) -> None:
    head = b"POST /login HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n"
    body = b"api_key=nope"
    status, _, _ = exchange(port, head + f"Content-Length: {len(body)}\r\n\r\n".encode(), body)
    assert status == 401


def test_limits_by_route() -> None:
    limits = BodyLimits(default=100, by_prefix=(("/login", 10), ("/ml-backend", 1000)))
    assert limits.for_path("/login") == 10
    assert limits.for_path("/loginx") == 100
    assert limits.for_path("/ml-backend/predict") == 1000
    assert limits.for_path("/v1/predict") == 100
