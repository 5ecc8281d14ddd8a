"""Body limits apply in the ASGI layer, before authentication and before the body is read (#12.6)."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import Request

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
    head = (
        b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )
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


def test_beyond_the_in_flight_limit_requests_get_503_with_retry_after() -> None:
    # Issue #12.7: a real server, a route that holds its slot 0.5 s, 6 requests at once, limit 2.
    import asyncio

    import httpx
    from fastapi import FastAPI

    from serving.limits import InFlightLimitMiddleware

    app = FastAPI()

    @app.post("/slow")
    async def slow(request: Request) -> dict[str, str]:
        await request.body()
        await asyncio.sleep(0.5)
        return {"status": "done"}

    @app.post("/cheap")
    async def cheap(request: Request) -> dict[str, str]:
        await request.body()
        await asyncio.sleep(0.5)
        return {"status": "done"}

    app.add_middleware(InFlightLimitMiddleware, limit=2, paths=("/slow",), retry_after_s=3)

    async def burst(port: int, path: str) -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            return list(await asyncio.gather(*(client.post(path) for _ in range(6))))

    with served(app) as bound:
        answers = asyncio.run(burst(bound, "/slow"))
        assert sorted(a.status_code for a in answers) == [200, 200, 503, 503, 503, 503]
        assert all(a.headers["retry-after"] == "3" for a in answers if a.status_code == 503)
        assert all("overloaded" in a.json()["detail"] for a in answers if a.status_code == 503)
        assert [a.status_code for a in asyncio.run(burst(bound, "/cheap"))] == [200] * 6  # not limited
        assert httpx.post(f"http://127.0.0.1:{bound}/slow").status_code == 200  # slots are given back
        # Clients that never finish sending their bodies hold no slot (the reviewer's lock-out case).
        stalled = [socket.create_connection(("127.0.0.1", bound)) for _ in range(3)]
        for conn in stalled:
            conn.sendall(b"POST /slow HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{")
        time.sleep(0.2)
        assert httpx.post(f"http://127.0.0.1:{bound}/slow").status_code == 200
        for conn in stalled:
            conn.close()


def test_the_app_bounds_predictions_by_settings(tmp_path: Path) -> None:
    from serving.limits import InFlightLimitMiddleware

    settings = Settings(state_dir=tmp_path, serving={"max_in_flight": 5, "overload_retry_after_s": 2})
    found = [
        m for m in create_app(settings).user_middleware if getattr(m, "cls", None) is InFlightLimitMiddleware
    ]
    assert len(found) == 1
    kwargs = dict(getattr(found[0], "kwargs", {}))
    assert kwargs["limit"] == 5
    assert "/v1/predict" in kwargs["paths"]
