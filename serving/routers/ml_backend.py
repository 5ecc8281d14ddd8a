"""Label Studio's ML-backend protocol, so a project can use our model from its "Model" settings.

Label Studio 1.23 (`ml/api_connector.py`) calls, relative to the URL it was given
(`ml_backend_url(settings.serving.base_url)` = `<base>/ml-backend`):

- `GET  health`  -> any 2xx JSON; `{"status": "UP", "model_class": ...}` here;
- `POST setup`   `{project: "<id>.<created ts>", schema, hostname, access_token, extra_params}`
                 -> `{"model_version": ...}` (an error puts the connection in the ERROR state);
- `POST predict` `{tasks: [{id, data, ...}], project, label_config, params}`
                 -> `{"results": [{"result": [...], "score": ..., "model_version": ...}, ...]}`, one per
                 task and in the same order (a length mismatch makes Label Studio retry one by one);
- `POST webhook` `{"action": "START_TRAINING", "project": {...}}` from the "Start training" button, plus
                 every project event from the webhook Label Studio creates for the backend.

Authentication: Label Studio's model settings offer "Basic auth" (`auth_method="BASIC_AUTH"`,
`basic_auth_user`, `basic_auth_pass`) and send it on health/setup/predict/train calls. Every endpoint
here requires `settings.serving.ml_backend_user` / `ml_backend_password` (constant-time compare) unless
`ml_backend_auth` is false. The webhook Label Studio creates automatically for a new ML backend carries no
credentials and is answered 401: harmless, corrections arrive through our own webhook
(`/v1/webhooks/label-studio`, with its shared secret).

The access token in `setup` and the project object in `webhook` are secrets: never logged.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
from collections.abc import Callable
from typing import Any, cast

from fastapi import APIRouter, Depends, HTTPException, Request, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from labeling.client import MLBackendSpec
from labeling.config import Taxonomy
from labeling.webhooks import MAX_ID
from learner.data import drop_unstorable
from serving.deps import SettingsDep, StoreDep, get_settings
from serving.predictor import ItemText, LabelGuess, Predictor, PredictorHolder
from serving.security import check_throttle, record_failure
from serving.settings import ServingSettings
from serving.store import Store

logger = logging.getLogger(__name__)

ML_BACKEND_PREFIX = "/ml-backend"
MODEL_CLASS = "hitl.ProductCategoryClassifier"
TRAINING_ACTION = "START_TRAINING"
ANNOTATION_ACTIONS = frozenset({"ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATION_DELETED"})
REALM = "hitl-ml-backend"


def ml_backend_url(base_url: str) -> str:
    """The URL to register in Label Studio (`POST /api/ml {"url": ...}`)."""
    return base_url.rstrip("/") + ML_BACKEND_PREFIX


def ml_backend_spec(serving: ServingSettings) -> MLBackendSpec:
    """How the project's Label Studio connects to this API's ML backend (basic auth when it is on)."""
    if not serving.ml_backend_auth:
        return MLBackendSpec(url=ml_backend_url(serving.base_url))
    return MLBackendSpec(
        url=ml_backend_url(serving.base_url),
        user=serving.ml_backend_user,
        password=serving.ml_backend_password.get_secret_value(),
    )


# ---------------------------------------------------------------- auth
def require_ml_backend_auth(request: Request) -> None:
    """HTTP basic auth with the configured credentials; both compared in constant time."""
    settings = get_settings(request)
    if not settings.serving.ml_backend_auth:
        return
    check_throttle(request, "ml-backend")  # a per-address limit on failed attempts, as for API keys
    header = request.headers.get("Authorization")
    user, password = _basic_credentials(header)
    expected_user = settings.serving.ml_backend_user.encode()
    expected_password = settings.serving.ml_backend_password.get_secret_value().encode()
    user_ok = hmac.compare_digest(user, expected_user)
    password_ok = hmac.compare_digest(password, expected_password)
    if not (user_ok and password_ok):
        # Only a wrong password is a guess. The webhook Label Studio adds for a new ML backend sends
        # none, once per project event: counted, it locked every local client out within a minute.
        if header:
            record_failure(request, "ml-backend")
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            detail="ML-backend credentials missing or wrong",
            headers={"WWW-Authenticate": f'Basic realm="{REALM}"'},
        )


def _basic_credentials(header: str | None) -> tuple[bytes, bytes]:
    scheme, _, encoded = (header or "").partition(" ")
    if scheme.lower() != "basic" or not encoded:
        return b"", b""
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        return b"", b""
    user, sep, password = decoded.partition(b":")
    return (user, password) if sep else (b"", b"")


router = APIRouter(
    prefix=ML_BACKEND_PREFIX, tags=["ml-backend"], dependencies=[Depends(require_ml_backend_auth)]
)


# ---------------------------------------------------------------- request bodies
class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class SetupRequest(_Body):
    project: str | None = None  # "<id>.<created timestamp>"


class TaskIn(_Body):
    id: int | None = None
    data: dict[str, Any] = Field(default_factory=dict)


class TasksPredictRequest(_Body):
    tasks: list[TaskIn]
    project: str | None = None


class WebhookEvent(_Body):
    action: str = Field(min_length=1)


# ---------------------------------------------------------------- helpers
def _predictor(request: Request) -> Predictor:
    holder = cast(PredictorHolder | None, getattr(request.app.state, "model_holder", None))
    model = holder.current() if holder is not None else None
    if model is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, detail="no model is loaded yet")
    return model


def _project_id(project: str | None) -> int | None:
    # Label Studio sends "<id>.<timestamp>"; anything else (other digits than ASCII, an id no store
    # column holds) is no project of ours.
    head = (project or "").split(".", 1)[0]
    if not head.isascii() or not head.isdigit() or len(head) > len(str(MAX_ID)):
        return None
    project_id = int(head)
    return project_id if 1 <= project_id <= MAX_ID else None


def _taxonomy(store: Store, project: str | None, title: str) -> Taxonomy:
    project_id = _project_id(project)
    taxonomy = store.taxonomy(project_id) if project_id is not None else None
    if taxonomy is None:
        known = store.project_by_title(title)
        taxonomy = store.taxonomy(known) if known is not None else None
    if taxonomy is None:
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            detail=f"Label Studio project {project_id} is not bootstrapped here; its categories are unknown",
        )
    return taxonomy


def _text(value: Any, limit: int) -> str:
    return drop_unstorable("" if value is None else str(value))[:limit]


def _price(value: Any) -> float | None:
    if value is None or value == "":
        return None
    try:
        return float(str(value).replace(",", "").strip())
    except ValueError:
        return None


def _item(task: TaskIn, limit: int) -> ItemText:
    data = task.data
    return ItemText(
        title=_text(data.get("title"), limit),
        description=_text(data.get("description"), limit),
        brand=_text(data.get("brand"), limit),
        price=_price(data.get("price")),
    )


def _predict_all(model: Predictor, items: list[ItemText], batch_size: int) -> list[LabelGuess]:
    out: list[LabelGuess] = []
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        predictions = model.predict_items(chunk)
        if len(predictions) != len(chunk):
            raise RuntimeError(f"the model returned {len(predictions)} predictions for {len(chunk)} items")
        out.extend(predictions)
    return out


def _predict_titled(model: Predictor, items: list[ItemText], batch_size: int) -> list[LabelGuess | None]:
    """Predictions for the items with a usable title; None (no prediction) in the place of the others."""
    titled = [i for i, item in enumerate(items) if item.has_title]
    predicted = dict(zip(titled, _predict_all(model, [items[i] for i in titled], batch_size), strict=True))
    return [predicted.get(i) for i in range(len(items))]


def _result(taxonomy: Taxonomy, prediction: LabelGuess | None, version: str) -> dict[str, Any]:
    # No prediction (a task without a title), or a label the project cannot show (taxonomy changed since
    # training): an empty pre-annotation, so results stay one per task.
    if prediction is None:
        return {"result": [], "score": 0.0, "model_version": version}
    result = taxonomy.result_for(prediction.label) if prediction.label in taxonomy else []
    return {"result": result, "score": round(float(prediction.confidence), 6), "model_version": version}


# ---------------------------------------------------------------- endpoints
@router.get("/health")
def health(request: Request) -> dict[str, Any]:
    holder = cast(PredictorHolder | None, getattr(request.app.state, "model_holder", None))
    model = holder.current() if holder is not None else None
    return {
        "status": "UP",
        "model_class": MODEL_CLASS,
        "model_version": model.model_version if model is not None else None,
    }


@router.post("/setup")
def setup(body: SetupRequest, request: Request) -> dict[str, str]:
    model = _predictor(request)
    logger.info("ml-backend setup from project %s -> %s", _project_id(body.project), model.model_version)
    return {"model_version": model.model_version}


@router.post("/predict")
async def predict(
    body: TasksPredictRequest, request: Request, store: StoreDep, settings: SettingsDep
) -> dict[str, Any]:
    model = _predictor(request)
    taxonomy = await run_in_threadpool(_taxonomy, store, body.project, settings.labelstudio.project_title)
    items = [_item(task, settings.serving.max_text_length) for task in body.tasks]
    predictions = await run_in_threadpool(_predict_titled, model, items, settings.serving.max_batch_size)
    version = model.model_version
    logger.info("ml-backend predicted %d task(s) with %s", len(items), version)
    return {
        "results": [_result(taxonomy, p, version) for p in predictions],
        "model_version": version,
    }


@router.post("/webhook")
async def webhook(request: Request) -> JSONResponse:
    try:
        event = WebhookEvent.model_validate_json(await request.body())
    except ValidationError as exc:
        detail = [
            {"loc": [str(p) for p in e["loc"]], "msg": e["msg"], "type": e["type"]} for e in exc.errors()
        ]
        return JSONResponse(status_code=422, content={"detail": detail})
    if event.action == TRAINING_ACTION:
        trigger = cast(Callable[[str], None] | None, getattr(request.app.state, "retrain_trigger", None))
        if trigger is None:
            logger.info("ml-backend: training requested; no retrain trigger is configured")
            return JSONResponse(
                status_code=202,
                content={"status": "accepted", "note": "no retrain trigger is configured; nothing started"},
            )
        try:
            await run_in_threadpool(trigger, "label-studio")
        except Exception as exc:
            logger.error("ml-backend: the retrain trigger failed: %s", type(exc).__name__)
            return JSONResponse(status_code=503, content={"detail": "the retrain trigger failed"})
        logger.info("ml-backend: training requested from Label Studio; handed to the retrain trigger")
        return JSONResponse(status_code=202, content={"status": "accepted", "note": "retraining requested"})
    if event.action in ANNOTATION_ACTIONS:
        # Corrections are stored from our own webhook (with its secret) and by the periodic sync.
        return JSONResponse(status_code=200, content={"status": "acknowledged"})
    return JSONResponse(status_code=200, content={"status": "ignored"})


__all__ = [
    "ML_BACKEND_PREFIX",
    "ml_backend_url",
    "require_ml_backend_auth",
    "router",
]
