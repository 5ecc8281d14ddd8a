"""Liveness, readiness and Prometheus metrics (unauthenticated, for orchestrators and scrapers)."""

from __future__ import annotations

from fastapi import APIRouter, Response, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from serving.deps import MetricsDep, ModelHolderDep, StoreDep
from serving.prometheus import CONTENT_TYPE_LATEST
from serving.schemas import HealthOut, ReadyOut

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=HealthOut)
def healthz() -> HealthOut:
    """The process answers."""
    return HealthOut(status="ok")


@router.get(
    "/readyz",
    response_model=ReadyOut,
    responses={status.HTTP_503_SERVICE_UNAVAILABLE: {"model": ReadyOut, "description": "not ready"}},
)
async def readyz(store: StoreDep, holder: ModelHolderDep) -> JSONResponse:
    """Ready when the database answers and a model is loaded."""
    try:
        await run_in_threadpool(store.ping)
        database = True
    except Exception:  # any driver error means "not ready", never a 500
        database = False
    model = holder.current
    ready = database and model is not None
    body = ReadyOut(
        status="ready" if ready else "not_ready",
        database=database,
        model_loaded=model is not None,
        model_version=None if model is None else model.version,
        # Unauthenticated: say what is missing, never why (an error can name hosts and paths; the
        # server log has it, masked).
        detail=None if ready else ("no model loaded yet" if database else "database unreachable"),
    )
    return JSONResponse(status_code=200 if ready else 503, content=body.model_dump(mode="json"))


@router.get("/metrics", response_class=Response, responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
def metrics(metrics: MetricsDep, holder: ModelHolderDep) -> Response:
    """Prometheus exposition: request latency, predictions and escalations by reason and model version."""
    metrics.model_ready.set(1 if holder.current is not None else 0)
    return Response(content=metrics.render(), media_type=CONTENT_TYPE_LATEST)
