"""Helpers for the serving tests: request bodies, and API keys for the app's roles.

The small REAL model bundle the serving tests use is `experiments.fixtures.train_small_bundle` (benchmarks
use it too); `catalog_items` draws fresh items from the same synthetic catalog.
"""

from __future__ import annotations

from typing import Any

from experiments.fixtures import N_CATEGORIES
from learner.synthetic import generate_catalog
from serving.keys import create_key
from serving.security import Role
from serving.store import Store


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
