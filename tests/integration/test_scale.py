"""The scale test (issue #16): two serving replicas on one PostgreSQL under concurrent predict load, with
Label Studio webhooks and a promotion during the load.

Checked: no prediction lost (every item answered is stored, once), no duplicate Label Studio task (the
replicas' outboxes claim disjoint entries), exactly one retrain for the one trigger (one leader), and
both replicas serving the new champion within the alias poll interval.
"""

from __future__ import annotations

import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from hitl.settings import Settings
from labeling.client import LabelStudioClient
from labeling.config import Taxonomy
from labeling.project import bootstrap_project, webhook_url
from learner.bundle import ModelBundle
from learner.synthetic import generate_catalog
from serving import registry
from serving.embeddings import CachedEmbedding
from serving.keys import create_key
from serving.retrain import add_seed_labels
from serving.store import Correction, Prediction, Store
from tests.integration.conftest import HITL, REPO, cli_env, eventually, wait_healthy

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TITLE = "Scale test"
POLL_S = 2.0


def _replica_env(settings: Settings, state: Path, database_url: str, port: int) -> dict[str, str]:
    return cli_env(
        state,
        HITL_SERVING__DATABASE_URL=database_url,
        HITL_SERVING__PORT=str(port),
        HITL_SERVING__MODEL_SOURCE="registry",
        HITL_SERVING__MODEL_POLL_INTERVAL_S=str(POLL_S),
        HITL_SERVING__OUTBOX_INTERVAL_S="1",
        HITL_SERVING__EMBEDDING_CACHE="database",  # one cache for both replicas, in PostgreSQL
        HITL_LABELSTUDIO__PORT=str(settings.labelstudio.port),
        HITL_LABELSTUDIO__PROJECT_TITLE=TITLE,
        HITL_LABELSTUDIO__SYNC_INTERVAL_S="0",
        HITL_LABELSTUDIO__SENIOR_REVIEWERS="[]",
        HITL_RETRAIN__RETRAIN_EVERY_N_CORRECTIONS="0",  # the one trigger is ours
        HITL_RETRAIN__POLL_INTERVAL_S="0.5",
        HITL_RETRAIN__ACCURACY_TOLERANCE="0.5",  # the gate promotes: the point is the promotion
        HITL_RETRAIN__COVERAGE_TOLERANCE="0.5",
        OMP_WAIT_POLICY="PASSIVE",
    )


def test_two_replicas_under_load_lose_nothing_and_promote_once(
    settings: Settings,
    ls_client: LabelStudioClient,
    postgres_url: str,
    small_bundle_dir: Path,
    tmp_path: Path,
) -> None:
    from labeling.server import free_port

    state = tmp_path / "state"
    shared = Settings(state_dir=state)  # the replicas' MLflow registry: sqlite under the state dir
    v1 = registry.log_bundle(shared, small_bundle_dir, alias=shared.serving.model_alias)
    store = Store(postgres_url)
    store.create_all()
    labels = ModelBundle.load(small_bundle_dir, device="cpu").labels
    taxonomy = Taxonomy.from_paths(labels)
    ports = [free_port(), free_port()]
    info = bootstrap_project(
        ls_client,
        taxonomy,
        title=TITLE,
        webhook_url=webhook_url(f"http://127.0.0.1:{ports[0]}"),
        webhook_secret=settings.labelstudio.webhook_secret.get_secret_value(),
    )
    store.save_project(info.project_id, TITLE, info.webhook_id, taxonomy)
    add_seed_labels(store, generate_catalog(300, seed=0, n_categories=5), level=2)
    service = create_key(store, "load", "service")[1]
    engineer = create_key(store, "engineer", "ml_engineer")[1]
    replicas = [
        subprocess.Popen(
            [str(HITL), "serve"],
            cwd=REPO,
            env=_replica_env(settings, state, postgres_url, port),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for port in ports
    ]
    urls = [f"http://127.0.0.1:{port}" for port in ports]
    try:
        for process, url in zip(replicas, urls, strict=True):
            wait_healthy(process, url)
        eventually(
            lambda: all(httpx.get(f"{u}/readyz", timeout=5).status_code == 200 for u in urls),
            what="both replicas ready",
            timeout=120,
        )
        answered: Counter[str] = Counter()
        versions: Counter[str] = Counter()
        failures: list[str] = []
        items = generate_catalog(20000, seed=5, n_categories=5)
        stop_load = threading.Event()

        def load(worker: int) -> None:
            url = urls[worker % 2]
            with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {service}"}, timeout=60) as c:
                i = worker * 8
                while not stop_load.is_set() and i + 8 <= len(items):
                    batch = [{"id": p.id, "title": p.title, "brand": p.brand, "price": p.price}
                             for p in items[i : i + 8]]  # fmt: skip
                    answer = c.post("/v1/predict", json={"items": batch})
                    if answer.status_code == 200:
                        answered.update(p["id"] for p in answer.json()["predictions"])
                        versions[answer.json()["model_version"]] += 1
                    else:
                        failures.append(f"{answer.status_code} {answer.text[:200]}")
                    i += 8 * 4

        threads = [threading.Thread(target=load, args=(w,)) for w in range(4)]
        for t in threads:
            t.start()
        time.sleep(3)
        # During the load: one retrain trigger (on the second replica), and reviews through Label Studio.
        trigger = httpx.post(
            f"{urls[1]}/v1/retrain", headers={"Authorization": f"Bearer {engineer}"}, json={}, timeout=30
        )
        assert trigger.status_code == 202, trigger.text
        run_id = trigger.json()["run_id"]
        tasks = eventually(
            lambda: list(ls_client.iter_tasks(info.project_id))[:3] or None, what="pushed tasks", timeout=30
        )
        for task in tasks:
            ls_client.create_annotation(task["id"], taxonomy.result_for(labels[0]))

        def finished() -> dict[str, object] | None:
            run = httpx.get(
                f"{urls[0]}/v1/retrain/{run_id}", headers={"Authorization": f"Bearer {engineer}"}, timeout=10
            ).json()
            return run if run["finished_at"] else None

        try:  # the load goes on through the retrain, the promotion and both hot swaps
            run = eventually(finished, what="the retrain", timeout=240)
            assert run["status"] == "promoted", f"{run['status']}: {run.get('error')}"
            v2 = registry.version_label(shared, str(run["version"]))
            promoted_at = time.monotonic()
            eventually(
                lambda: all(httpx.get(f"{u}/readyz", timeout=5).json()["model_version"] == v2 for u in urls),
                what="both replicas on the new champion",
                timeout=POLL_S * 3 + 10,
            )
            assert time.monotonic() - promoted_at <= POLL_S * 3 + 10
            time.sleep(2)  # a little load on the new champion too
        finally:
            stop_load.set()
            for t in threads:
                t.join(60)

        assert failures == []
        v1_label = registry.version_label(shared, v1)
        assert v2 != v1_label
        assert versions[v1_label] > 0, "the load ran before the promotion"
        assert versions[v2] > 0, "... and after it: the promotion happened during the load"
        runs = httpx.get(f"{urls[1]}/v1/retrain", headers={"Authorization": f"Bearer {engineer}"}).json()
        assert [r["id"] for r in runs] == [run_id], "exactly one retrain for the one trigger"
        with store.session() as session:
            stored = Counter(
                item
                for (item,) in session.execute(
                    select(Prediction.item_id).where(Prediction.requested_by == "load")
                )
            )
        assert stored == answered, "every answered prediction stored, once (0 lost)"

        def corrections() -> int:
            with store.session() as session:
                return int(session.scalar(select(func.count()).select_from(Correction)) or 0)

        # Webhooks arrive on Label Studio's time: the retrain may finish before the last one lands.
        assert eventually(corrections, lambda n: n >= 3, what="the webhooks' corrections", timeout=60) == 3
        per_item = Counter(t["data"]["item_id"] for t in ls_client.iter_tasks(info.project_id))
        assert per_item, "escalations reached Label Studio"
        assert max(per_item.values()) == 1, "0 duplicate tasks"
        with store.session() as session:
            shared = session.scalar(select(func.count()).select_from(CachedEmbedding))
        assert (shared or 0) >= len(answered), "both replicas' embeddings are in the shared cache"
    finally:
        for process in replicas:
            process.terminate()
        for process in replicas:
            try:
                process.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
        store.close()
