"""The acceptance test of the loop, on real Label Studio + MLflow (sqlite) + uvicorn + MiniLM:

stream items -> escalations become Label Studio tasks with pre-annotations -> a reviewer annotates k of
them with the true labels -> webhooks -> automatic retrain after N -> a new registered version, promoted
-> serving reports it -> the escalation rate on the next fresh batch is lower than on the first.
Then: a crashing run and a deliberately worse model both leave serving on the champion.

It runs on the DEFAULT learner, routing and gate configuration (target 0.95, expected-error
guarantee, hybrid features, uniform audits); only the sizes are the test's. 800 seed labels hold ~200
seed audits, enough for the first model to certify a little. Of the 800 fresh items ~64 are drawn into
the audit; the reviewer works in Label Studio's order (lowest prediction score first, so audits first),
150 corrections later the challenger has more training labels and more audits, and escalates less.
"""

from __future__ import annotations

import json
import logging
import random
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import pytest

from hitl.settings import (
    LearnerSettings,
    RetrainSettings,
    RoutingSettings,
    ServingSettings,
    Settings,
)
from labeling.client import LabelStudioClient
from labeling.config import Taxonomy
from labeling.project import bootstrap_project, webhook_url
from labeling.server import LabelStudioServer, free_port
from learner.data import Product, label_of
from learner.synthetic import generate_catalog
from learner.training import TrainingResult
from serving import registry
from serving.keys import Role, create_key
from serving.retrain import RetrainWorker, TrainingInputs, add_seed_labels, default_train
from serving.store import Store
from tests.integration.conftest import Receiver

pytestmark = [pytest.mark.integration, pytest.mark.slow]

N_CORRECTIONS = 150
N_SEED = 800
BATCH = 800
TITLE = "Loop e2e"


@dataclass
class Loop:
    settings: Settings
    store: Store
    receiver: Receiver
    http: httpx.Client
    keys: dict[Role, str]
    project_id: int
    taxonomy: Taxonomy
    truth: dict[str, str]
    fresh: list[Product]


@pytest.fixture(scope="module")
def loop(
    settings: Settings,
    label_studio: LabelStudioServer,
    ls_client: LabelStudioClient,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Loop]:
    state = tmp_path_factory.mktemp("loop-state")
    loop_settings = Settings(
        state_dir=state,
        labelstudio=settings.labelstudio.model_copy(update={"project_title": TITLE}),
        learner=LearnerSettings(device="cpu"),
        serving=ServingSettings(
            port=free_port(),
            model_source="registry",
            model_poll_interval_s=0,  # promotion swaps directly; no polling needed
            outbox_interval_s=0.5,
        ),
        routing=RoutingSettings(),
        retrain=RetrainSettings(
            retrain_every_n_corrections=N_CORRECTIONS,
            poll_interval_s=0.5,
            escalation_log_interval_s=0,
        ),
    )
    catalog = generate_catalog(N_SEED + 2 * BATCH + 100, seed=11, n_categories=5)
    truth = {p.id: label_of(p, 2) for p in catalog}
    seed, fresh = catalog[:N_SEED], catalog[N_SEED:]
    store = Store(loop_settings.database_url)
    store.create_all()
    add_seed_labels(store, seed, level=2)
    first = RetrainWorker(loop_settings, store, None, auto=False)
    run_id = first.trigger("seed").run_id
    first.run_next()
    first.stop()
    record = first.get(run_id)
    assert record is not None
    assert record.status == "promoted", record.error
    taxonomy = Taxonomy.from_paths(sorted(set(truth.values())))
    info = bootstrap_project(
        ls_client,
        taxonomy,
        title=TITLE,
        webhook_url=webhook_url(loop_settings.serving.base_url),
        webhook_secret=loop_settings.labelstudio.webhook_secret.get_secret_value(),
    )
    store.save_project(info.project_id, TITLE, info.webhook_id, taxonomy)
    receiver = Receiver(loop_settings, store)
    receiver.start()
    keys = {role: create_key(store, f"loop-{role.value}", role)[1] for role in Role}
    with httpx.Client(base_url=receiver.url, timeout=120.0) as http:
        yield Loop(loop_settings, store, receiver, http, keys, info.project_id, taxonomy, truth, fresh)
    receiver.stop()
    store.close()


def predict(loop: Loop, products: list[Product]) -> tuple[str, float]:
    versions, escalated = set(), 0
    for start in range(0, len(products), 200):  # requests hold at most serving.max_batch_size items
        part = products[start : start + 200]
        items = [{"id": p.id, "title": p.title, "description": p.description, "brand": p.brand} for p in part]
        answer = loop.http.post(
            "/v1/predict",
            json={"items": items},
            headers={"Authorization": f"Bearer {loop.keys[Role.SERVICE]}"},
        )
        assert answer.status_code == 200, answer.text
        body = answer.json()
        versions.add(str(body["model_version"]))
        escalated += sum(p["decision"] == "escalated" for p in body["predictions"])
    assert len(versions) == 1, versions
    return versions.pop(), escalated / len(products)


def wait_for(condition: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def engineer(loop: Loop) -> dict[str, str]:
    return {"Authorization": f"Bearer {loop.keys[Role.ML_ENGINEER]}"}


def test_corrections_retrain_promote_and_lower_the_escalation_rate(
    loop: Loop, reviewer_client: LabelStudioClient
) -> None:
    v1 = registry.version_label(loop.settings, "1")
    version, first_rate = predict(loop, loop.fresh[:BATCH])
    assert version == v1
    assert first_rate * BATCH > N_CORRECTIONS  # enough escalations to review

    # Escalations become tasks with the model's pre-annotation.
    tasks = wait_for(
        lambda: (lambda ts: ts if len(ts) >= N_CORRECTIONS else None)(
            list(reviewer_client.iter_tasks(loop.project_id))
        ),
        90,
        "the outbox to deliver escalations",
    )
    assert all(t["predictions"] and t["predictions"][0]["model_version"] == v1 for t in tasks)
    # Label Studio's uncertainty sampling serves the lowest prediction score first: audits first.
    seen: list[int] = []

    def settled() -> list[dict[str, Any]] | None:
        current = list(reviewer_client.iter_tasks(loop.project_id))
        seen.append(len(current))
        return current if len(seen) >= 4 and len(set(seen[-4:])) == 1 else None

    tasks = wait_for(settled, 120, "the outbox to deliver the whole batch")
    audits = {t["id"] for t in tasks if {"spot_check", "audit"} & set(t["meta"]["reasons"])}
    assert audits, "some fresh items are drawn into the audit sample"

    # A reviewer works through Label Studio's own queue ("Label All Tasks": GET /api/projects/{id}/next,
    # uncertainty sampling, lowest prediction score first) with the true labels; webhooks bring the
    # corrections back. Audits come first: Label Studio may pick at random among the first few tasks
    # when several accounts annotate, so the last couple of audits may trail.
    served: list[int] = []
    for _ in range(N_CORRECTIONS):
        task = reviewer_client.next_task(loop.project_id)
        assert task is not None, f"Label Studio's queue ran dry after {len(served)} tasks"
        served.append(task["id"])
        item_id = task["data"]["item_id"]
        reviewer_client.create_annotation(task["id"], loop.taxonomy.result_for(loop.truth[item_id]))
    assert set(served[: len(audits) - 2]) <= audits, "audits are served before strategy picks"
    assert audits <= set(served), "every audit got reviewed"

    # The N-th correction triggers a retrain, which is promoted and hot-swapped.
    def finished_run() -> dict[str, Any] | None:
        runs = loop.http.get("/v1/retrain", headers=engineer(loop)).json()
        done = [r for r in runs if r["id"] > 1 and r["status"] in ("promoted", "rejected", "failed")]
        return done[0] if done else None

    run = wait_for(finished_run, 180, "the automatic retrain")
    assert run["reasons"][0].startswith("corrections:"), run
    assert run["status"] == "promoted", run
    assert run["version"] == "2"
    models = loop.http.get("/v1/models", headers=engineer(loop)).json()
    v2 = registry.version_label(loop.settings, "2")
    assert models["champion"] == "2"
    assert models["serving"] == v2

    version, second_rate = predict(loop, loop.fresh[BATCH : 2 * BATCH])
    assert version == v2
    assert second_rate < first_rate, (first_rate, second_rate)
    # Label Studio accepts the new model_version once tasks with its predictions exist.
    with LabelStudioClient.from_settings(loop.settings.labelstudio) as client:
        wait_for(
            lambda: client.get_project(loop.project_id)["model_version"] == v2,
            60,
            "Label Studio's project model_version",
        )

    metrics = loop.http.get(
        "/v1/metrics/escalation", headers={"Authorization": f"Bearer {loop.keys[Role.PRODUCT_OWNER]}"}
    ).json()
    assert metrics["by_version"][v1]["rate"] == pytest.approx(first_rate)
    assert metrics["by_version"][v2]["rate"] == pytest.approx(second_rate)
    # The reviewed spot checks measure the realised accuracy of auto-accepts, with its interval.
    spot = loop.http.get(
        "/v1/metrics/spot-checks", headers={"Authorization": f"Bearer {loop.keys[Role.PRODUCT_OWNER]}"}
    ).json()
    assert spot["reviewed"] > 0
    assert spot["interval"]["low"] <= spot["accuracy"] <= spot["interval"]["high"]
    assert spot["audits_reviewed"] >= len(audits)
    assert "mean error among auto-accepted items" in spot["guarantee"]


def crash(inputs: TrainingInputs) -> TrainingResult:
    raise RuntimeError("simulated crash in training")


def shuffled(inputs: TrainingInputs) -> TrainingResult:
    labels = list(inputs.y_train)
    random.Random(1).shuffle(labels)
    return default_train(replace(inputs, y_train=labels))


@pytest.mark.parametrize(("train_fn", "status"), [(crash, "failed"), (shuffled, "rejected")])
def test_a_crash_or_a_worse_model_leaves_serving_on_the_champion(
    loop: Loop, monkeypatch: pytest.MonkeyPatch, train_fn: Any, status: str
) -> None:
    worker = loop.receiver._server.config.app.state.retrain_worker  # type: ignore[union-attr]
    champion = registry.champion_version(loop.settings)
    monkeypatch.setattr(worker, "train_fn", train_fn)
    answer = loop.http.post("/v1/retrain", json={"reason": status}, headers=engineer(loop))
    assert answer.status_code == 202
    record = worker.wait(answer.json()["run_id"], timeout=120)
    assert record.status == status, record
    assert registry.champion_version(loop.settings) == champion
    version, _ = predict(loop, loop.fresh[2 * BATCH :][:10])
    assert version == registry.version_label(loop.settings, str(champion))


def test_the_retrain_endpoints_need_an_ml_engineer(loop: Loop) -> None:
    merch = {"Authorization": f"Bearer {loop.keys[Role.MERCHANDISER]}"}
    assert loop.http.post("/v1/retrain", headers=merch).status_code == 403
    assert loop.http.post("/v1/retrain").status_code == 401
    assert loop.http.post("/v1/models/1/promote", headers=merch).status_code == 403


def test_an_engineer_rolls_back_and_the_audit_trail_says_who_and_why(loop: Loop) -> None:
    champion = registry.champion_version(loop.settings)
    assert champion is not None
    assert champion != "1"  # the loop above promoted at least one retrain
    headers = engineer(loop)
    answer = loop.http.post(
        "/v1/models/1/rollback", params={"reason": "the new model misroutes toys"}, headers=headers
    )
    assert answer.status_code == 200, answer.text
    assert registry.champion_version(loop.settings) == "1"
    version, _ = predict(loop, loop.fresh[2 * BATCH :][:5])
    assert version == registry.version_label(loop.settings, "1")
    trail = loop.http.get("/v1/audit", params={"kind": "model_event"}, headers=headers)
    assert trail.status_code == 200, trail.text
    events = trail.json()["events"]
    assert {e["kind"] for e in events} == {"model_event"}
    assert "promoted" in [e["action"] for e in events]  # the gate's promotion, earlier in the loop
    last = events[-1]
    assert (last["action"], last["after"], last["before"]) == (
        "rollback",
        registry.version_label(loop.settings, "1"),
        registry.version_label(loop.settings, champion),
    )
    assert last["actor"].startswith("ml_engineer:")
    assert last["details"]["reason"] == "the new model misroutes toys"


PLANTED = ("jane.planted@example.com", "+1 (415) 555-2671", "4111 1111 1111 1111")


def _files_holding(root: Path, needles: tuple[str, ...]) -> list[str]:
    found = []
    for path in root.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            found += [f"{path.name}: {n}" for n in needles if n.encode() in data]
    return found


def test_planted_pii_reaches_no_store_no_task_no_answer_and_no_log(
    loop: Loop,
    label_studio: LabelStudioServer,
    reviewer_client: LabelStudioClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Issue #12.3: an email, a phone and a card number in titles and descriptions are masked before
    anything stores, pushes, featurizes, answers or logs them. Every store is grepped: the app's
    database, Label Studio's task data and its database files, MLflow's database and artifacts, the
    API's answers and the logs."""
    caplog.set_level(logging.INFO)
    email, phone, card = PLANTED
    items = [
        {
            "id": f"pii-{i}",
            "title": f"{base.title} contact {email}",
            "description": f"call {phone} or pay with {card}",
            "brand": base.brand,
            "price": 5000.0,  # high value: escalated to Label Studio
        }
        for i, base in enumerate(loop.fresh[-5:])
    ]
    service = {"Authorization": f"Bearer {loop.keys[Role.SERVICE]}"}
    answer = loop.http.post("/v1/predict", json={"items": items}, headers=service)
    assert answer.status_code == 200, answer.text
    assert all(p["decision"] == "escalated" for p in answer.json()["predictions"])
    ids = {str(item["id"]) for item in items}
    truth = {f"pii-{i}": loop.truth[base.id] for i, base in enumerate(loop.fresh[-5:])}

    def delivered() -> list[dict[str, Any]] | None:
        mine = [t for t in reviewer_client.iter_tasks(loop.project_id) if t["data"]["item_id"] in ids]
        return mine if len(mine) == len(ids) else None

    tasks = wait_for(delivered, 60, "the planted items' tasks")
    assert all("[EMAIL]" in t["data"]["title"] for t in tasks)
    for task in tasks:  # corrections of them, then a retrain: MLflow gets a run and a bundle after them
        label = truth[task["data"]["item_id"]]
        reviewer_client.create_annotation(task["id"], loop.taxonomy.result_for(label))
    run = loop.http.post("/v1/retrain", json={"reason": "pii"}, headers=engineer(loop))
    assert run.status_code == 202
    worker = loop.receiver._server.config.app.state.retrain_worker  # type: ignore[union-attr]
    record = worker.wait(run.json()["run_id"], timeout=180)
    # A failed run logs no parameters or bundle: the scan below would then find nothing to search.
    assert record.status in {"promoted", "rejected"}, record.error
    assert record.mlflow_run_id is not None
    assert record.version is not None  # registered: its bundle is among MLflow's artifacts

    answers = [
        loop.http.get(f"/v1/items/{item_id}", headers=engineer(loop)).text for item_id in sorted(ids)
    ] + [
        loop.http.get("/v1/escalations", headers=engineer(loop)).text,
        answer.text,
        loop.http.get("/metrics").text,  # open by design (README): it must hold no item data
    ]
    leaks = [n for n in PLANTED for text in answers if n in text]
    dump = "\n".join(sqlite3.connect(str(loop.store.engine.url.database)).iterdump())
    leaks += [f"app database: {n}" for n in PLANTED if n in dump]
    leaks += [f"Label Studio task: {n}" for n in PLANTED for t in tasks if n in json.dumps(t)]
    leaks += _files_holding(label_studio.data_dir, PLANTED)
    leaks += _files_holding(loop.settings.state_dir, PLANTED)  # MLflow db + artifacts, bundles, caches
    leaks += [f"log: {n}" for n in PLANTED if n in caplog.text]
    assert leaks == []
