"""The whole serving app for the role-matrix and fuzz tests: real routes, real SQLite, real key table,
and a real (tiny) model bundle behind a deterministic hashing encoder, so that predictions run end to end
without loading MiniLM.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from fastapi import FastAPI
from fastapi.testclient import TestClient
from numpy.typing import NDArray
from pydantic import SecretStr

from hitl.settings import LabelStudioSettings, ServingSettings, Settings
from labeling.config import Taxonomy
from learner.training import TrainingConfig, train_bundle
from serving.app import create_app
from serving.keys import Role, create_key
from serving.model import ModelHolder
from serving.store import Store

WEBHOOK_SECRET = "role-matrix-webhook-secret"
LABELS = ["Home & Kitchen > Cookware", "Sports > Running", "Toys > Games"]


class HashEncoder:
    """Texts -> fixed pseudo-random unit vectors (sha256-seeded): deterministic and instant."""

    encoder_id = "test-hash-encoder-16"
    dim = 16

    def encode(self, texts: Sequence[str]) -> NDArray[np.float32]:
        rows = []
        for text in texts:
            seed = int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "little")
            row = np.random.default_rng(seed).standard_normal(self.dim)
            rows.append(row / np.linalg.norm(row))
        return np.asarray(rows, dtype=np.float32).reshape(len(texts), self.dim)


def train_tiny_bundle(out_dir: Path) -> Path:
    encoder = HashEncoder()
    texts = [f"item {i}" for i in range(120)]
    labels = [LABELS[i % len(LABELS)] for i in range(len(texts))]
    x = encoder.encode(texts)
    result = train_bundle(
        x[:60],
        labels[:60],
        x[60:],
        labels[60:],
        config=TrainingConfig(epochs=5, device="cpu"),
        encoder_ref="test-hash",
        encoder_id=encoder.encoder_id,
    )
    return result.bundle.save(out_dir)


@dataclass(frozen=True)
class RunningApp:
    app: FastAPI
    client: TestClient
    store: Store
    keys: dict[Role, str]


@contextmanager
def running_app(tmp_path: Path, *, ml_backend_auth: bool = True) -> Iterator[RunningApp]:
    """`create_app(settings)` with its lifespan running, and one fresh key per role."""
    settings = Settings(
        state_dir=tmp_path,
        # Port 9 (discard): nothing answers, so these apps can never write to a Label Studio that runs
        # here, this session's or a developer's `make up` on the default port.
        labelstudio=LabelStudioSettings(
            url="http://127.0.0.1:9", sync_interval_s=0, webhook_secret=SecretStr(WEBHOOK_SECRET)
        ),
        serving=ServingSettings(
            database_url=f"sqlite:///{tmp_path / 'hitl.db'}",
            model_source="bundle",
            bundle_path=train_tiny_bundle(tmp_path / "bundle"),
            model_poll_interval_s=0,
            outbox_enabled=False,
            ml_backend_auth=ml_backend_auth,
            # The role matrix presents wrong keys to every endpoint from one address on purpose;
            # throttling them is tested on its own (tests/unit/serving/test_security.py).
            auth_max_failures=0,
        ),
    )
    holder = ModelHolder(settings, encoder_factory=lambda _ref: HashEncoder())
    app = create_app(settings, model=holder)
    try:
        with TestClient(app, raise_server_exceptions=False) as client:
            store: Store = app.state.store
            # A bootstrapped Label Studio project, as in production (the ML backend needs its taxonomy).
            store.save_project(1, settings.labelstudio.project_title, None, Taxonomy.from_paths(LABELS))
            keys = {role: create_key(store, f"matrix-{role.value}", role)[1] for role in Role}
            yield RunningApp(app=app, client=client, store=store, keys=keys)
    finally:
        holder.close()


def app_for_collection() -> FastAPI:
    """The app's route table, for tests that enumerate endpoints."""
    # Building the app runs no lifespan: nothing is opened; only the route table is read.
    return create_app(
        Settings(
            labelstudio=LabelStudioSettings(sync_interval_s=0), serving=ServingSettings(model_source="none")
        )
    )
