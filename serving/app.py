"""The serving application factory. Nothing is created at import time."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from labeling.client import LabelStudioClient
from labeling.exceptions import LabelingError, WebhookAuthError, WebhookPayloadError
from labeling.reviewers import ReviewerTiers, senior_check, tiers_from
from labeling.settings import LabelStudioSettings
from labeling.sync import PeriodicSync, sync_project
from learner.pii import describe_error
from serving.limits import BodyLimitMiddleware, BodyLimits, InFlightLimitMiddleware
from serving.model import LoadedModel, ModelHolder, ModelLoadError, ModelNotReadyError, record_version
from serving.outbox import OutboxWorker
from serving.prometheus import ServingMetrics
from serving.registry import RegistryUnavailableError, import_mlflow
from serving.routers import audit, escalations, health, items, keys, ml_backend, predict, webhooks
from serving.routers import dashboard as dashboard_router
from serving.routers import kpis as kpis_router
from serving.routers import retrain as retrain_router
from serving.security import AuthThrottle, KeyCache, route_of
from serving.service import BackendHolder
from serving.settings import AppSettings, ServingSettings
from serving.similar import SimilarLabelled
from serving.store import Store

logger = logging.getLogger(__name__)
access_logger = logging.getLogger("serving.access")


def sync_known_project(
    labelstudio: LabelStudioSettings, store: Store, tiers: ReviewerTiers | None = None
) -> None:
    """One reconciliation pass over the configured project (a no-op until it was bootstrapped)."""
    project_id = store.project_by_title(labelstudio.project_title)
    taxonomy = store.taxonomy(project_id) if project_id is not None else None
    if project_id is None or taxonomy is None:
        return
    with LabelStudioClient.from_settings(labelstudio) as client:
        report = sync_project(client, store, project_id, taxonomy, is_senior=senior_check(tiers))
    store.record_sync(project_id, report.recorded, report.deleted)
    if report.recorded or report.deleted:
        logger.info("sync: %d recorded, %d deleted", report.recorded, report.deleted)


def _error(error: Any) -> dict[str, Any]:
    """One validation error as strict JSON: loc, msg and type. Never the input: it may be a title
    holding an email address, or a string no JSON encoder can write (a lone surrogate, a NaN)."""
    return {
        "loc": [p if isinstance(p, int | str) else str(p) for p in error.get("loc", ())],
        "msg": str(error.get("msg", "")).encode("utf-8", "replace").decode("utf-8"),
        "type": str(error.get("type", "value_error")),
    }


# Methods a client can send are any token: the metrics label and the access log get the standard ones
# as they are and "OTHER" for the rest, so made-up methods cannot grow /metrics without bound.
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def method_of(scope: Scope) -> str:
    method = str(scope.get("method", ""))
    return method if method in KNOWN_METHODS else "OTHER"


class LatencyMiddleware:
    """Records every HTTP request's duration by method, route template and status (plain ASGI: cheap),
    and logs it to ``serving.access`` (`hitl serve` turns uvicorn's own access log off: it logs raw
    paths and query strings)."""

    def __init__(self, app: ASGIApp, metrics: ServingMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status_code = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status_code
            if message["type"] == "http.response.start":
                status_code = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            elapsed = time.perf_counter() - started
            route, method = route_of(scope), method_of(scope)
            self.metrics.request_latency.labels(method, route, str(status_code)).observe(elapsed)
            # The access log: the route template, never the raw path or query (ids, reasons).
            access_logger.info("%s %s %d %.1f ms", method, route, status_code, elapsed * 1000)


class InternalErrorGuard:
    """The last line of defence: an unexpected error becomes a plain 500 and the server keeps the
    connection. Starlette's own handler answers and then re-raises, so uvicorn logs a traceback (which
    can quote request data) and resets the keep-alive connection: the next, valid request on it fails.
    Here the error is logged by type only and never re-raised."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            await self.app(scope, receive, send)
        except Exception as exc:
            logger.error("unhandled %s in %s %s", type(exc).__name__, method_of(scope), route_of(scope))
            try:
                await JSONResponse(status_code=500, content={"detail": "internal error"})(
                    scope, receive, send
                )
            except Exception:  # the status line was already sent: nothing more can be said
                return


def body_limits(serving: ServingSettings) -> BodyLimits:
    """Per-route body limits (`serving.limits`): the login form, the ML backend, everything else."""
    form = dashboard_router.MAX_FORM_BYTES
    return BodyLimits(
        default=serving.max_body_bytes,
        by_prefix=(
            ("/login", form),
            ("/logout", form),
            (ml_backend.ML_BACKEND_PREFIX, serving.max_ml_backend_body_bytes),
        ),
    )


def _register_version(store: Store, metrics: ServingMetrics) -> Any:
    def callback(model: LoadedModel) -> None:
        record_version(store, model)
        metrics.model_swaps.labels(model.version).inc()

    return callback


def create_app(
    settings: AppSettings, *, store: Store | None = None, model: ModelHolder | None = None
) -> FastAPI:
    """Build the app. The lifespan opens the store, loads the model (and starts watching its source),
    starts the outbox worker and the periodic Label Studio sync, and closes them all.

    `store` and `model` may be passed in (tests, benchmarks); the app then leaves closing them to the caller.

    Raises
    ------
    ValueError
        `AppSettings.check_exposure`: dev mode's public placeholder secrets on a non-loopback address.
    """
    settings.check_exposure()
    metrics = ServingMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        own_store, own_model = store is None, model is None
        active = store or Store(settings.database_url)
        await run_in_threadpool(active.create_all)
        holder = model or ModelHolder(settings)
        holder.on_swap.append(_register_version(active, metrics))
        if holder.current is not None:  # loaded before the app started: record its version now
            _register_version(active, metrics)(holder.current)
        app.state.settings = settings
        app.state.store = active
        app.state.key_cache = KeyCache(settings.serving.key_cache_ttl_s)
        app.state.auth_throttle = AuthThrottle(
            settings.serving.auth_max_failures, settings.serving.auth_failure_window_s
        )
        app.state.model = holder
        app.state.model_holder = BackendHolder(holder)  # the ML-backend router's view of it
        app.state.metrics = metrics
        tiers = tiers_from(settings.labelstudio)
        app.state.reviewer_tiers = tiers
        # Before any thread that may use MLflow starts (model watcher, retrain worker, requests to
        # /v1/models): ~1 s once per process.
        await run_in_threadpool(import_mlflow)
        if holder.current is None:
            try:
                await run_in_threadpool(holder.refresh)
            except ModelLoadError as exc:
                if holder.source == "bundle":  # a configured local bundle that cannot load is fatal
                    raise
                logger.error("no model yet: %s", describe_error(exc))
        holder.start()
        worker = None
        if settings.serving.outbox_enabled:
            worker = OutboxWorker(active, settings, similar=SimilarLabelled(active).fill)
            worker.start()
        periodic: PeriodicSync | None = None
        if settings.labelstudio.sync_interval_s > 0:
            periodic = PeriodicSync(
                lambda: sync_known_project(settings.labelstudio, active, tiers),
                settings.labelstudio.sync_interval_s,
            )
            periodic.start()
        retrainer = None  # the retraining loop (serving.retrain): one worker thread, coalescing triggers
        if settings.retrain.enabled:
            from serving.retrain import RetrainWorker

            retrainer = RetrainWorker(settings, active, holder, auto=holder.source == "registry")
            retrainer.start()
            app.state.retrain_worker = retrainer
            app.state.retrain_trigger = retrainer.trigger
        try:
            yield
        finally:
            # The outbox first: it stops between two Label Studio changes, and what the retrain worker
            # still enqueues while it finishes its run waits, durable, for the next start.
            running = [
                name
                for name, stopped in (
                    ("outbox", worker is None or worker.stop()),
                    ("sync", periodic is None or periodic.stop()),
                    ("retrain", retrainer is None or retrainer.stop()),
                )
                if not stopped
            ]
            # Threads that outlived their wait (daemons: the process ends them); an in-process host
            # such as a test harness reads this to know that something still runs.
            app.state.workers_still_running = running
            holder.on_swap.clear()
            if own_model:
                holder.close()
            else:
                holder.stop()
            if own_store:
                active.close()

    app = FastAPI(
        title="hitl serving",
        version="0.1.0",
        description="Product category predictions with calibrated auto-accept and human review.",
        lifespan=lifespan,
    )
    app.add_middleware(BodyLimitMiddleware, limits=body_limits(settings.serving))
    app.add_middleware(
        InFlightLimitMiddleware,
        limit=settings.serving.max_in_flight,
        paths=("/v1/predict", f"{ml_backend.ML_BACKEND_PREFIX}/predict"),
        retry_after_s=settings.serving.overload_retry_after_s,
    )
    app.add_middleware(LatencyMiddleware, metrics=metrics)
    app.add_middleware(InternalErrorGuard)  # added last = outermost: it sees what the others raise
    app.include_router(health.router)
    app.include_router(predict.router)
    app.include_router(items.router)
    app.include_router(escalations.router)
    app.include_router(audit.router)
    app.include_router(keys.router)
    app.include_router(webhooks.router)
    app.include_router(ml_backend.router)
    app.include_router(retrain_router.router)
    app.include_router(kpis_router.router)
    app.include_router(dashboard_router.router)
    app.mount("/static", StaticFiles(packages=[("serving", "static")]), name="static")

    @app.get("/v1/health", include_in_schema=False)
    def health_v1() -> dict[str, str]:
        return {"status": "ok"}

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(status_code=422, content={"detail": [_error(e) for e in exc.errors()]})

    @app.exception_handler(ModelNotReadyError)
    async def _not_ready(_: Request, exc: ModelNotReadyError) -> JSONResponse:
        return JSONResponse(
            status_code=503, content={"detail": "no model is loaded yet"}, headers={"Retry-After": "5"}
        )

    @app.exception_handler(WebhookAuthError)
    async def _unauthorized(_: Request, exc: WebhookAuthError) -> JSONResponse:
        return JSONResponse(status_code=401, content={"detail": str(exc)})

    @app.exception_handler(WebhookPayloadError)
    async def _malformed(_: Request, exc: WebhookPayloadError) -> JSONResponse:
        detail = [{"loc": e["loc"].split("."), "msg": e["msg"], "type": e["type"]} for e in exc.errors]
        return JSONResponse(status_code=422, content={"detail": detail})

    @app.exception_handler(RegistryUnavailableError)
    async def _registry_down(_: Request, exc: RegistryUnavailableError) -> JSONResponse:
        return JSONResponse(
            status_code=503,
            content={"detail": "the model registry (MLflow) is unreachable; retry shortly"},
            headers={"Retry-After": "10"},
        )

    @app.exception_handler(LabelingError)
    async def _labeling(_: Request, exc: LabelingError) -> JSONResponse:
        return JSONResponse(status_code=502, content={"detail": str(exc)})

    return app
