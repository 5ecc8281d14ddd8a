"""The real app under uvicorn on loopback: concurrent predictions while the model is swapped."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn

from hitl.settings import LabelStudioSettings, ServingSettings, Settings
from labeling.server import free_port
from learner.bundle import ModelBundle
from learner.encoder import HFEncoder
from serving.app import create_app
from serving.model import ModelHolder
from serving.security import Role
from serving.store import AuditEvent, Prediction, Store
from tests.unit.serving.support import auth, catalog_items

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def two_bundles(small_bundle_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    bundle = ModelBundle.load(small_bundle_dir)
    bundle.temperature *= 1.7
    return small_bundle_dir, bundle.save(tmp_path_factory.mktemp("b2"))


@pytest.fixture
def served(
    tmp_path: Path, two_bundles: tuple[Path, Path], minilm_encoder: HFEncoder
) -> Iterator[tuple[str, ModelHolder, Store]]:
    port = free_port()
    settings = Settings(
        state_dir=tmp_path,
        serving=ServingSettings(
            port=port, bundle_path=two_bundles[0], model_poll_interval_s=0, outbox_enabled=False
        ),
        labelstudio=LabelStudioSettings(sync_interval_s=0),
    )
    store = Store(settings.database_url)
    store.create_all()
    holder = ModelHolder(settings, encoder_factory=lambda _r: minilm_encoder)
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings, store=store, model=holder), host="127.0.0.1", port=port,
                       log_level="warning", lifespan="on")
    )  # fmt: skip
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        assert thread.is_alive(), "uvicorn exited"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", holder, store
    server.should_exit = True
    thread.join(10)
    holder.close()
    store.close()


def test_hot_swap_under_concurrent_requests_has_zero_errors(
    served: tuple[str, ModelHolder, Store], two_bundles: tuple[Path, Path]
) -> None:
    url, holder, store = served
    headers = auth(store, Role.SERVICE)
    items = catalog_items(24, seed=21)
    with httpx.Client(base_url=url, timeout=60) as warm:  # embed once: the load below is cached
        assert warm.post("/v1/predict", json={"items": items}, headers=headers).status_code == 200
        assert warm.get("/readyz").json()["status"] == "ready"
    statuses: Counter[int] = Counter()
    versions: Counter[str] = Counter()
    stop = threading.Event()
    lock = threading.Lock()

    def client(worker: int) -> None:
        with httpx.Client(base_url=url, timeout=60) as http:
            i = 0
            while not stop.is_set():
                item = items[(worker * 7 + i) % len(items)]
                answer = http.post("/v1/predict", json={"items": [item]}, headers=headers)
                with lock:
                    statuses[answer.status_code] += 1
                    if answer.status_code == 200:
                        body = answer.json()
                        assert {p["model_version"] for p in body["predictions"]} == {body["model_version"]}
                        versions[body["model_version"]] += 1
                i += 1

    threads = [threading.Thread(target=client, args=(w,)) for w in range(6)]
    for t in threads:
        t.start()
    for n in range(6):
        time.sleep(0.3)
        holder.load_bundle(two_bundles[(n + 1) % 2])
    time.sleep(0.3)
    stop.set()
    for t in threads:
        t.join(30)
    assert set(statuses) == {200}, statuses
    assert len(versions) == 2, versions  # both models answered
    assert store.count(Prediction) == store.count(AuditEvent) == sum(statuses.values()) + len(items)
