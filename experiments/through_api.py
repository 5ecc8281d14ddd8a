"""`hitl simulate --through-api`: the simulated loop driven through the real serving app and webhook path.

Same protocol, splits, strategies, reviewer and metrics as `experiments.simulate` (imported from there),
but every step of the loop is production code behind its HTTP API:

    state   = a throwaway dir per run: SQLite store, MLflow sqlite tracking + registry, models; its
              embedding cache is the caller's (a symlink), so texts embedded once are never re-encoded
    seed    = the first `seed_size` stream items become seed labels (`serving.retrain.add_seed_labels`)
              and a `RetrainWorker` trains + promotes the first champion, exactly as `hitl up` does
    serve   = `serving.app.create_app(settings)` under uvicorn on a free loopback port (a thread);
              the outbox is off (no Label Studio runs here), the webhook endpoint checks a fresh secret
    each round:
        POST /v1/predict (service key, <= serving.max_batch_size items per request) -> decisions;
        escalated items join the review queue; items the API no longer lists as open
        (`GET /v1/escalations`, e.g. auto-resolved after a promotion) leave it;
        the strategy ranks the queue with the champion's probabilities; the top `batch` get the
        simulated reviewer's label, each POSTed as a Label Studio ANNOTATION_CREATED webhook;
        POST /v1/retrain (ml_engineer key), poll GET /v1/retrain/{id} until promoted / rejected /
        failed: production's gate decides whether the champion moves (the app hot-swaps);
        measure the champion on the test split in-process (measurement, not the loop)

Rows carry the in-process keys plus `retrain_status`, `retrain_version`, `gate_reason` (production's
gate, or the error of a failed retrain), `champion_version` (registry version measured on the test
split), `champion_features` (the feature kind production trained it with), `serving_version` (the
model label that answered the round's predictions), `auto_resolved` (queued escalations the API
closed since the last round, e.g. re-scored after a promotion), `spot_checked` and `retrain_seconds`
(trigger to finished run). `audited` counts the items the API drew into the audit sample (reasons
`spot_check` / `audit`): they are reviewed first, as Label Studio's queue serves them first, and the
strategy spends the rest of the budget. The app's audit rate is the in-process run's
(`experiments.simulate.audit_rate`), so both loops draw about as many audits.

The header says ``"through_api": true``, so a finished run is skipped on re-run (resumable) and an
in-process run of the same config is never mistaken for it. An unfinished run starts over with a fresh
state dir. The header's ``training`` section is the in-process head config; the API's retrains use
production's (`learner.loop.training_config` over the same `learner` settings).
"""

from __future__ import annotations

import math
import secrets
import shutil
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from numpy.typing import NDArray
from pydantic import SecretStr

from experiments.simulate import (
    Inputs,
    RunLogger,
    SimulationConfig,
    _noisy,
    _select,
    _test_metrics,
    audit_rate,
    model_inputs,
    record_run,
    run_file,
    seed_share_at,
    split_stream,
)
from hitl.settings import Settings
from learner.data import LabeledDataset, Product
from learner.training import TrainingResult

__all__ = [
    "ThroughApiError",
    "run_or_skip_through_api",
    "run_settings",
    "simulate_through_api",
]

# The simulated Label Studio project: its taxonomy is what the webhook endpoint checks labels against.
# Its title differs from settings.labelstudio.project_title on purpose, so the app never tries to reach a
# Label Studio (model_version updates, reconciliation) that does not run here.
PROJECT_ID = 1
PROJECT_TITLE = "simulation (no Label Studio)"
REVIEWER_ID = 1
FINISHED = ("promoted", "rejected", "failed")
POLL_S = 0.2
EXTRA = {"through_api": True}


class ThroughApiError(RuntimeError):
    """The API answered something the simulation cannot continue from (the message says what)."""


# ------------------------------------------------------------------------------------------ settings


def run_settings(
    settings: Settings, config: SimulationConfig, state_dir: Path, port: int, *, rate: float | None = None
) -> Settings:
    """The app's settings for one run: the caller's learner/retrain choices, a private state dir.

    Retrains are triggered explicitly (every-N trigger off) so each round ends with exactly one; the
    champion changes only through the retrain's promotion (polling off). `rate` is the audit rate
    (default: the configured one).
    """
    rate = settings.learner.audit.rate if rate is None else rate
    learner = settings.learner.model_copy(
        update={
            "target_accuracy": config.training.target_accuracy,
            "delta": config.training.delta,
            "guarantee": config.training.guarantee,
            "strategy": config.strategy,
            "audit": settings.learner.audit.model_copy(
                update={"rate": rate, "seed_share": seed_share_at(rate), "seed": config.seed}
            ),
        }
    )
    return settings.model_copy(
        update={
            "state_dir": state_dir,
            "learner": learner,
            "mlflow": settings.mlflow.model_copy(update={"tracking_uri": None}),
            "labelstudio": settings.labelstudio.model_copy(
                update={
                    "webhook_secret": SecretStr(secrets.token_urlsafe(24)),
                    "sync_interval_s": 0.0,
                    "project_title": "simulation: no Label Studio project",
                }
            ),
            "serving": settings.serving.model_copy(
                update={
                    "host": "127.0.0.1",
                    "port": port,
                    "public_url": None,
                    "database_url": None,
                    "model_source": "registry",
                    "bundle_path": None,
                    "model_poll_interval_s": 0.0,
                    "outbox_enabled": False,
                }
            ),
            "routing": config.routing,
            "retrain": settings.retrain.model_copy(
                update={
                    "enabled": True,
                    "retrain_every_n_corrections": 0,
                    "poll_interval_s": POLL_S,
                    "escalation_log_interval_s": 0.0,
                }
            ),
        }
    )


def _free_port() -> int:
    from labeling.server import free_port

    return free_port()


# ------------------------------------------------------------------------------------------ the server


class _Server:
    """The app under uvicorn in a daemon thread (how the integration tests run it)."""

    def __init__(self, app: Any, host: str, port: int) -> None:
        import uvicorn

        self._server = uvicorn.Server(
            uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on")
        )
        self._thread = threading.Thread(target=self._server.run, name="simulation-api", daemon=True)

    def start(self, timeout: float = 120.0) -> None:
        self._thread.start()
        deadline = time.monotonic() + timeout  # the lifespan loads the champion (encoder included)
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise ThroughApiError(f"the serving app did not start within {timeout:.0f} s")
            time.sleep(0.05)

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(60)


# ------------------------------------------------------------------------------------------ helpers


@dataclass
class _Api:
    http: httpx.Client
    service: dict[str, str]
    engineer: dict[str, str]
    webhook: dict[str, str]

    def call(self, method: str, path: str, *, headers: Mapping[str, str], **kwargs: Any) -> Any:
        answer = self.http.request(method, path, headers=dict(headers), **kwargs)
        if answer.status_code >= 300:
            raise ThroughApiError(f"{method} {path} -> HTTP {answer.status_code}: {answer.text[:300]}")
        return answer.json()


def _item(product: Product, max_text: int) -> dict[str, Any]:
    return {
        "id": product.id,
        "title": product.title[:max_text],
        "description": product.description[:max_text],  # the API refuses longer texts (422)
        "brand": product.brand,
        "price": product.price,  # `Product` already refused negative / non-finite prices
    }


def _annotation(
    annotation_id: int, item_id: str, label: str, prediction: Mapping[str, Any], taxonomy: Any
) -> dict[str, Any]:
    """An ANNOTATION_CREATED payload in Label Studio's shape (see `labeling.webhooks`)."""
    now = datetime.now(UTC).isoformat()
    return {
        "action": "ANNOTATION_CREATED",
        "annotation": {
            "id": annotation_id,
            "task": annotation_id,
            "project": PROJECT_ID,
            "result": taxonomy.result_for(label),
            "completed_by": REVIEWER_ID,
            "updated_by": REVIEWER_ID,
            "created_at": now,
            "updated_at": now,
            "lead_time": 1.0,
            "was_cancelled": False,
            "prediction": {
                "model_version": prediction["model_version"],
                "score": prediction["confidence"],
                "result": taxonomy.result_for(prediction["category"]),
            },
        },
        "task": {
            "id": annotation_id,
            "data": {"item_id": item_id},
            "meta": {"item_id": item_id, "model_version": prediction["model_version"]},
        },
        "project": {"id": PROJECT_ID},
    }


def _champion(
    settings: Settings,
    embeddings: NDArray[np.float32],
    test: NDArray[np.int64],
    data: LabeledDataset,
    encoder_id: str,
    inputs_cache: dict[Any, Inputs],
) -> tuple[str, TrainingResult, Inputs]:
    """The registry's champion as a `TrainingResult` (what `simulate`'s helpers take), with its test
    report, and every row's head inputs under the champion's own feature spec."""
    from learner.bundle import ModelBundle
    from serving import registry
    from serving.retrain import holdout_report

    version = registry.champion_version(settings)
    if version is None:
        raise ThroughApiError("the registry has no champion")
    bundle = ModelBundle.load(registry.download(settings, version), device="cpu")
    if bundle.encoder_id != encoder_id:
        raise ThroughApiError(
            f"champion v{version} was trained on encoder {bundle.encoder_id!r}, the simulation's "
            f"embeddings come from {encoder_id!r}: use the same learner.encoder settings"
        )
    spec = bundle.features
    if spec not in inputs_cache:  # hybrid n-grams of the whole catalog: built once per spec
        inputs_cache[spec] = model_inputs(data, embeddings, spec)
    inputs = inputs_cache[spec]
    report, _ = holdout_report(
        bundle.predict_proba(inputs.x[test]),
        bundle.labels,
        [str(label) for label in data.labels[test]],
        bundle.thresholds,
        settings.learner.target_accuracy,
    )
    result = TrainingResult(
        bundle=bundle,
        ece_before=math.nan,
        ece_after=math.nan,
        n_train=0,
        n_calibration=0,
        dropped_calibration=0,
        train_seconds=0.0,
        test_report=report,
    )
    return version, result, inputs


def _open_ids(api: _Api) -> set[str]:
    out: set[str] = set()
    offset, page = 0, 1000
    while True:
        body = api.call(
            "GET", "/v1/escalations", headers=api.engineer, params={"limit": page, "offset": offset}
        )
        out.update(str(e["item_id"]) for e in body["escalations"])
        if body["count"] < page:
            return out
        offset += page


def _retrain(api: _Api, reason: str, timeout: float) -> dict[str, Any]:
    run_id = api.call("POST", "/v1/retrain", headers=api.engineer, json={"reason": reason})["run_id"]
    deadline = time.monotonic() + timeout
    while True:
        run: dict[str, Any] = api.call("GET", f"/v1/retrain/{run_id}", headers=api.engineer)
        if run["status"] in FINISHED:
            return run
        if time.monotonic() > deadline:
            raise ThroughApiError(f"retrain run {run_id} not finished after {timeout:.0f} s ({run['stage']})")
        time.sleep(POLL_S)


# ------------------------------------------------------------------------------------------ the loop


def simulate_through_api(
    data: LabeledDataset,
    embeddings: NDArray[np.float32],
    products: Mapping[str, Product],
    config: SimulationConfig,
    settings: Settings,
    *,
    encoder_id: str,
    state_dir: Path,
    shared_cache: Path | None = None,
    retrain_timeout_s: float = 3600.0,
) -> Iterator[dict[str, Any]]:
    """Yield one metrics row per round (round 0 = the seed champion); see the module docstring.

    `products` maps every dataset id to its catalog record (what is POSTed); `embeddings` are
    `data.texts` under the encoder `encoder_id`, which must be the one `settings.learner` configures
    (the champion is measured on them). `state_dir` is wiped and recreated.
    """
    from labeling.client import WEBHOOK_PATH
    from labeling.config import Taxonomy
    from labeling.webhooks import SECRET_HEADER
    from serving.app import create_app
    from serving.keys import Role, create_key
    from serving.retrain import RetrainWorker, add_seed_labels
    from serving.store import Store

    x = np.asarray(embeddings, dtype=np.float32)
    if x.shape[0] != len(data):
        raise ValueError(f"embeddings have {x.shape[0]} rows, the dataset {len(data)}")
    stream, test = split_stream(
        data, test_fraction=config.test_fraction, seed=config.seed, limit=config.limit
    )
    if len(stream) < config.seed_size + config.batch:
        raise ValueError(
            f"the stream has {len(stream)} items; "
            f"seed_size + batch = {config.seed_size + config.batch} needed"
        )
    missing = [str(i) for i in data.ids[stream] if str(i) not in products]
    if missing:
        raise ValueError(f"{len(missing)} stream items have no catalog record, e.g. {missing[:3]}")
    if state_dir.exists():
        shutil.rmtree(state_dir)
    state_dir.mkdir(parents=True)
    if shared_cache is not None:  # predicted and seed texts are cache hits: no re-encoding per run
        shared_cache.mkdir(parents=True, exist_ok=True)
        (state_dir / "cache").symlink_to(shared_cache.resolve(), target_is_directory=True)
    rng = np.random.default_rng(config.seed)
    noise_rng = np.random.default_rng([config.seed, 7919])
    labelled: list[int] = [int(r) for r in stream[: config.seed_size]]
    chunks = np.array_split(stream[config.seed_size :], config.rounds)
    rate = audit_rate(config, len(chunks[0]))
    app_settings = run_settings(settings, config, state_dir, _free_port(), rate=rate)

    store = Store(app_settings.database_url)
    server: _Server | None = None
    try:
        store.create_all()
        add_seed_labels(
            store, [products[str(data.ids[r])] for r in labelled], level=settings.learner.label_level
        )
        first = RetrainWorker(app_settings, store, None, auto=False)
        try:
            run_id = first.trigger("seed").run_id
            first.run_next()
            record = first.get(run_id)
        finally:
            first.stop()
        if record is None or record.status != "promoted":
            raise ThroughApiError(f"the seed model was not promoted: {record.error if record else 'no run'}")
        taxonomy = Taxonomy.from_paths(data.classes)
        store.save_project(PROJECT_ID, PROJECT_TITLE, None, taxonomy)
        service = create_key(store, "simulation-service", Role.SERVICE)[1]
        engineer = create_key(store, "simulation-ml-engineer", Role.ML_ENGINEER)[1]
        inputs_cache: dict[Any, Inputs] = {}
        version, champion, inputs = _champion(app_settings, x, test, data, encoder_id, inputs_cache)
        yield {
            "round": 0,
            "labels_used": len(labelled),
            "corrections": 0,
            "train_seconds": float(record.metrics.get("training_time_s", math.nan)),
            "retrain_status": record.status,
            "champion_version": version,
            "champion_features": champion.bundle.features.kind,
            **_test_metrics(champion, inputs, data, test, config.routing),
        }

        server = _Server(create_app(app_settings, store=store), "127.0.0.1", app_settings.serving.port)
        server.start()
        secret = app_settings.labelstudio.webhook_secret.get_secret_value()
        max_batch = app_settings.serving.max_batch_size
        max_text = app_settings.serving.max_text_length
        queue: NDArray[np.int64] = np.empty(0, dtype=np.int64)
        last: dict[str, dict[str, Any]] = {}  # item id -> its newest prediction (for the payload)
        corrections = 0
        with httpx.Client(base_url=app_settings.serving.base_url, timeout=600.0) as http:
            api = _Api(
                http,
                service={"Authorization": f"Bearer {service}"},
                engineer={"Authorization": f"Bearer {engineer}"},
                webhook={SECRET_HEADER: secret},
            )
            for number, incoming in enumerate(chunks, start=1):
                at_routing = corrections
                decided: list[dict[str, Any]] = []
                serving_version = None
                for start in range(0, len(incoming), max_batch):
                    part = incoming[start : start + max_batch]
                    body = api.call(
                        "POST",
                        "/v1/predict",
                        headers=api.service,
                        json={"items": [_item(products[str(data.ids[r])], max_text) for r in part]},
                    )
                    serving_version = body["model_version"]
                    decided.extend(body["predictions"])
                escalated = np.array([p["decision"] == "escalated" for p in decided], dtype=np.bool_)
                below = np.array([("below_threshold" in p["reasons"]) for p in decided], dtype=np.bool_)
                truth = data.labels[incoming] if len(incoming) else np.empty(0, dtype=object)
                correct = np.array([p["category"] for p in decided], dtype=object) == truth
                for p in decided:
                    last[str(p["id"])] = p
                audited = np.array(
                    [bool({"spot_check", "audit"}.intersection(p["reasons"])) for p in decided],
                    dtype=np.bool_,
                )
                queue = np.concatenate([queue, incoming[escalated & ~audited]]).astype(np.int64)
                # The API's open escalations are the queue's truth: a promotion may auto-resolve some.
                still_open = _open_ids(api)
                keep = np.array([str(data.ids[r]) in still_open for r in queue], dtype=np.bool_)
                auto_resolved = int((~keep).sum())
                queue = queue[keep]
                # Audits first (Label Studio's queue serves them first), then the strategy's picks.
                audit = incoming[audited].astype(np.int64)
                picked = _select(
                    config, champion, inputs, queue, labelled, rng, max(config.batch - len(audit), 0)
                )
                queue = np.setdiff1d(queue, picked, assume_unique=True).astype(np.int64)
                picked = np.concatenate([audit, picked]).astype(np.int64)
                reviewed = _noisy(data.y[picked], config.reviewer_noise, len(data.classes), noise_rng)
                for r, label in zip(picked, reviewed, strict=True):
                    corrections += 1
                    item_id = str(data.ids[r])
                    payload = _annotation(
                        corrections, item_id, data.classes[int(label)], last[item_id], taxonomy
                    )
                    outcome = api.call("POST", WEBHOOK_PATH, headers=api.webhook, json=payload)
                    if outcome.get("status") != "stored":
                        raise ThroughApiError(f"webhook for annotation {corrections}: {outcome}")
                    labelled.append(int(r))
                started = time.perf_counter()
                run = _retrain(api, f"simulation round {number}", retrain_timeout_s)
                retrain_seconds = time.perf_counter() - started
                version, champion, inputs = _champion(app_settings, x, test, data, encoder_id, inputs_cache)
                yield {
                    "round": number,
                    "labels_used": len(labelled),
                    "corrections": corrections,
                    "corrections_at_routing": at_routing,
                    "incoming": len(incoming),
                    "escalation_rate": float(escalated.mean()) if len(incoming) else None,
                    "below_threshold_rate": float(below.mean()) if len(incoming) else None,
                    "stream_auto_accept_accuracy": (
                        float(correct[~escalated].mean()) if (~escalated).any() else None
                    ),
                    "queue_size": len(queue),
                    "audited": len(audit),
                    "spot_checked": sum("spot_check" in p["reasons"] for p in decided),
                    "auto_resolved": auto_resolved,
                    "train_seconds": float(run["metrics"].get("training_time_s", math.nan)),
                    "retrain_seconds": retrain_seconds,
                    "retrain_status": run["status"],
                    "retrain_version": run["version"],
                    "gate_reason": run["gate_reason"] or run["error"],
                    "serving_version": serving_version,
                    "champion_version": version,
                    "champion_features": champion.bundle.features.kind,
                    **_test_metrics(champion, inputs, data, test, config.routing),
                }
    finally:
        if server is not None:
            server.stop()
        store.close()


def run_or_skip_through_api(
    data: LabeledDataset,
    embeddings: NDArray[np.float32],
    products: Mapping[str, Product],
    config: SimulationConfig,
    settings: Settings,
    out_dir: Path,
    *,
    encoder_id: str,
    extra: Mapping[str, Any] | None = None,
    logger: RunLogger | None = None,
    on_round: Callable[[dict[str, Any]], None] | None = None,
) -> tuple[list[dict[str, Any]], bool]:
    """`simulate.run_or_skip` for the API-driven loop: ``<out>/runs/<strategy>/seed<k>.jsonl`` (rows,
    skipped); the app's state lives in ``<out>/api-state/<strategy>/seed<k>`` (kept for inspection)."""
    return record_run(
        run_file(out_dir / "runs", config.strategy, config.seed),
        config,
        lambda: simulate_through_api(
            data,
            embeddings,
            products,
            config,
            settings,
            encoder_id=encoder_id,
            state_dir=out_dir / "api-state" / config.strategy / f"seed{config.seed}",
            shared_cache=settings.cache_dir,
        ),
        extra={**dict(extra or {}), **EXTRA},
        logger=logger,
        on_round=on_round,
    )
