"""Helpers for the serving tests: request bodies, and API keys for the app's roles.

The small REAL model bundle the serving tests use is the suite's `small_bundle_dir` fixture
(`learner.synthetic_bundle`); `catalog_items` draws fresh items from the same synthetic catalog.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn
from fastapi import FastAPI

from learner.synthetic import generate_catalog
from learner.synthetic_bundle import N_CATEGORIES
from serving.keys import create_key
from serving.security import Role
from serving.store import NewPrediction, Store


def catalog_items(n: int = 40, *, seed: int = 7) -> list[dict[str, Any]]:
    """Fresh items (other seed than training) as request bodies, without labels or prices."""
    return [
        {"id": f"it-{seed}-{i}", "title": p.title, "description": p.description, "brand": p.brand}
        for i, p in enumerate(generate_catalog(n, seed=seed, n_categories=N_CATEGORIES))
    ]


def auth(store: Store, role: Role, name: str | None = None) -> dict[str, str]:
    """Headers carrying a fresh real API key with `role` (stored hashed by `serving.keys`)."""
    _, key = create_key(store, name or f"test-{role.value}", role)
    return {"Authorization": f"Bearer {key}"}


@contextmanager
def served(app: FastAPI) -> Iterator[int]:
    """`app` behind a real uvicorn server on a free local port (its lifespan runs); yields the port."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def new(item_id: str, decision: str = "escalated", label: str = "A > B") -> NewPrediction:
    return NewPrediction(
        item_id=item_id, title=f"title {item_id}", description="", brand=None, price=10.0,
        category_hint=None, label=label, confidence=0.5, threshold=0.9, top_k=[(label, 0.5)],
        decision=decision, reasons=["below_threshold"] if decision == "escalated" else ["above_threshold"],
        priority=0.7,
    )  # fmt: skip
