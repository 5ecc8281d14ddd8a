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
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient

from hitl.settings import RoutingSettings, ServingSettings, Settings
from learner.encoder import HFEncoder
from learner.synthetic import generate_catalog
from learner.synthetic_bundle import N_CATEGORIES
from serving.app import create_app
from serving.keys import create_key
from serving.model import ModelHolder
from serving.security import Role
from serving.store import NewPrediction, Store


def catalog_items(n: int = 40, *, seed: int = 7) -> list[dict[str, Any]]:
    """Fresh items (other seed than training) as request bodies, without labels or prices."""
    return [
        {"id": f"it-{seed}-{i}", "title": p.title, "description": p.description, "brand": p.brand}
        for i, p in enumerate(generate_catalog(n, seed=seed, n_categories=N_CATEGORIES))
    ]


def served_settings(small_bundle_dir: Path, embedding_dir: Path, **routing: Any) -> Settings:
    """The app serving the suite's small bundle, with the session's embedding cache (the training
    catalog's embeddings are already there); no outbox delivery, no polling, no Label Studio sync."""
    return Settings(
        serving=ServingSettings(
            bundle_path=small_bundle_dir,
            model_poll_interval_s=0,
            outbox_enabled=False,
            max_batch_size=64,
            max_text_length=300,
        ),
        routing=RoutingSettings(**({"high_value_price": 1000.0} | routing)),
        labelstudio={"sync_interval_s": 0},
    ).model_copy(update={"state_dir": embedding_dir.parent})


@contextmanager
def served_app(
    settings: Settings, store: Store, encoder: HFEncoder, role: Role = Role.SERVICE, key_name: str = "svc"
) -> Iterator[tuple[TestClient, ModelHolder]]:
    """The real app on `settings` with the real encoder; the client carries a key with `role`."""
    holder = ModelHolder(settings, encoder_factory=lambda _ref: encoder)
    try:
        with TestClient(
            create_app(settings, store=store, model=holder), raise_server_exceptions=False
        ) as client:
            client.headers.update(auth(store, role, key_name))
            yield client, holder
    finally:
        holder.close()


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
