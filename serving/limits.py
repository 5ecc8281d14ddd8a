"""Request-body limits applied in the ASGI layer, before any route, dependency or key check runs.

A body is refused with 413 as soon as it is known to be too large: at once when its ``Content-Length``
says so, else (chunked) when the bytes received pass the limit. Nothing past the limit is buffered,
so neither an unauthenticated caller nor a broken client can make the server hold hundreds of MB.

Limits by route (the first matching prefix wins; see README "Limits"):

- ``/login``, ``/logout``: `dashboard.MAX_FORM_BYTES` (a form with one API key);
- the ML backend (``{ML_BACKEND_PREFIX}/...``): `ServingSettings.max_ml_backend_body_bytes`, since
  Label Studio sends whole task batches there;
- everything else: `ServingSettings.max_body_bytes`.

`InFlightLimitMiddleware` bounds how many predictions are worked on at once (backpressure).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send


@dataclass(frozen=True)
class BodyLimits:
    default: int
    by_prefix: Sequence[tuple[str, int]] = ()

    def for_path(self, path: str) -> int:
        for prefix, limit in self.by_prefix:
            if path == prefix or path.startswith(prefix.rstrip("/") + "/"):
                return limit
        return self.default


class BodyTooLarge(HTTPException):
    """Raised from inside ``receive``: an HTTPException, so the app's own handler answers 413 even
    where FastAPI wraps body-parsing errors (it re-raises HTTPExceptions untouched)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body larger than {limit} bytes")


async def _send_error(send: Send, error: HTTPException, *headers: tuple[bytes, bytes]) -> None:
    """``error`` as the JSON response the app's own handler would give, sent from the ASGI layer."""
    body = json.dumps({"detail": error.detail}).encode()
    extra = [(k.lower().encode(), v.encode()) for k, v in (error.headers or {}).items()]
    await send(
        {
            "type": "http.response.start",
            "status": error.status_code,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *extra,
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, limits: BodyLimits) -> None:
        self.app = app
        self.limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limits.for_path(scope["path"])
        declared = None
        for name, value in scope["headers"]:
            if name == b"content-length":
                declared = value
                break
        if declared is not None:
            try:
                too_large = int(declared) > limit
            except ValueError:
                too_large = False  # the server itself refuses a malformed Content-Length
            if too_large:  # the rest of the body is never read
                await _send_error(send, BodyTooLarge(limit), (b"connection", b"close"))
                return
            # The server delivers no more than the declared length: nothing left to count.
            await self.app(scope, receive, send)
            return
        received = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except BodyTooLarge as error:
            if not started:
                await _send_error(send, error, (b"connection", b"close"))


class Overloaded(HTTPException):
    """Raised from inside ``receive`` when the body is complete and no slot is free: an
    HTTPException, so the app's handler answers 503 with the Retry-After header."""

    def __init__(self, limit: int, retry_after_s: int) -> None:
        super().__init__(
            503,
            f"overloaded: {limit} requests in flight; retry after {retry_after_s} s",
            headers={"Retry-After": str(retry_after_s)},
        )


class InFlightLimitMiddleware:
    """Backpressure: at most ``limit`` requests to the expensive routes (``paths``) are worked on at
    once; beyond it a request is answered 503 with ``Retry-After``.

    Without it, every extra client adds a thread, a GIL hand-off and a database session to the same
    two cores: the issue measured 196 req/s with 8 clients and 59 req/s at a p99 of 13 s with 200. A
    bounded number in flight keeps throughput at its peak and the accepted requests' latency bounded;
    the refused ones are told when to come back.

    A slot is taken when the request's body has fully arrived, not when its headers have: a client
    that trickles its body (or never sends it, with or without a key) must not hold a slot, or 16 such
    connections would lock every prediction out. The body itself is bounded by `BodyLimitMiddleware`.
    One event loop runs this, so a plain counter is exact. ``limit`` 0 turns it off.
    """

    def __init__(self, app: ASGIApp, limit: int, paths: Sequence[str], retry_after_s: int) -> None:
        self.app = app
        self.limit = limit
        self.paths = frozenset(paths)
        self.retry_after_s = retry_after_s
        self.in_flight = 0
        self.refused = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.limit <= 0 or scope["path"] not in self.paths:
            await self.app(scope, receive, send)
            return
        holding = False
        started = False

        async def gated_receive() -> Message:
            nonlocal holding
            message = await receive()
            if message["type"] == "http.request" and not message.get("more_body", False) and not holding:
                if self.in_flight >= self.limit:
                    self.refused += 1
                    raise Overloaded(self.limit, self.retry_after_s)
                self.in_flight += 1
                holding = True
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, gated_receive, tracking_send)
        except Overloaded as error:  # raised where no handler caught it
            if not started:
                await _send_error(send, error)
        finally:
            if holding:
                self.in_flight -= 1
