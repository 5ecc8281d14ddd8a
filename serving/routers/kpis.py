"""The dashboard's figures as JSON (product_owner, ml_engineer, admin; key header or dashboard session).

- `GET /v1/metrics/dashboard`: every figure at once (what the page draws);
- `GET /v1/metrics/escalation-summary`: escalation rate overall, over time and per model version, by reason;
- `GET /v1/metrics/spot-checks`: realised accuracy of auto-accepts, exact interval, against the target;
- `GET /v1/metrics/queue`: open review queue size and age;
- `GET /v1/metrics/reviews`: reviews (approved / corrected) per day and Label Studio handling time;
- `GET /v1/metrics/throughput`: predictions and reviews per hour over the last `dashboard.window_s`;
- `GET /v1/metrics/cost`: estimated cost per item;
- `GET /v1/metrics/segments`: escalation and correction rates per category, price band and brand, with
  bias flags;
- `GET /v1/metrics/model-timeline`: model versions served, promoted, rejected (with the reason), rolled back.

Definitions live in `serving.kpis`. `/v1/metrics/escalation` (per-window, in `serving.routers.retrain`)
is left as it is.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.concurrency import run_in_threadpool

from serving import kpis
from serving.deps import SettingsDep, StoreDep, not_stored
from serving.security import Principal
from serving.sessions import require_dashboard_roles

router = APIRouter(prefix="/v1/metrics", tags=["metrics"], dependencies=[Depends(not_stored)])

ViewerDep = Annotated[Principal, Depends(require_dashboard_roles())]


@router.get("/dashboard", response_model=kpis.DashboardKpis)
async def dashboard(store: StoreDep, settings: SettingsDep, _: ViewerDep) -> kpis.DashboardKpis:
    return await run_in_threadpool(kpis.dashboard, store, settings)


@router.get("/escalation-summary", response_model=kpis.EscalationKpis)
async def escalation_summary(store: StoreDep, settings: SettingsDep, _: ViewerDep) -> kpis.EscalationKpis:
    return await run_in_threadpool(kpis.escalation, store, settings.dashboard)


@router.get("/spot-checks", response_model=kpis.SpotCheckKpis)
async def spot_checks(store: StoreDep, settings: SettingsDep, _: ViewerDep) -> kpis.SpotCheckKpis:
    return await run_in_threadpool(kpis.spot_checks, store, settings.learner)


@router.get("/queue", response_model=kpis.QueueKpis)
async def queue(store: StoreDep, _: ViewerDep) -> kpis.QueueKpis:
    return await run_in_threadpool(kpis.queue, store)


@router.get("/reviews", response_model=kpis.ReviewKpis)
async def reviews(store: StoreDep, _: ViewerDep) -> kpis.ReviewKpis:
    return await run_in_threadpool(kpis.reviews, store)


@router.get("/throughput", response_model=kpis.ThroughputKpis)
async def throughput(store: StoreDep, settings: SettingsDep, _: ViewerDep) -> kpis.ThroughputKpis:
    return await run_in_threadpool(kpis.throughput, store, settings.dashboard)


@router.get("/cost", response_model=kpis.CostKpis)
async def cost(store: StoreDep, settings: SettingsDep, _: ViewerDep) -> kpis.CostKpis:
    def compute() -> kpis.CostKpis:
        return kpis.cost(store, settings.dashboard, kpis.escalation(store, settings.dashboard).rate)

    return await run_in_threadpool(compute)


@router.get("/segments", response_model=kpis.SegmentKpis)
async def segments(store: StoreDep, settings: SettingsDep, _: ViewerDep) -> kpis.SegmentKpis:
    return await run_in_threadpool(kpis.segments, store, settings.dashboard)


@router.get("/model-timeline", response_model=list[kpis.TimelineEvent])
async def model_timeline(store: StoreDep, settings: SettingsDep, _: ViewerDep) -> list[kpis.TimelineEvent]:
    return await run_in_threadpool(kpis.timeline, store, settings)
