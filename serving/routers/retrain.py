"""Retraining, model versions and the escalation-rate metric.

- `POST /v1/retrain` (ml_engineer): queue a run (or fold into the waiting one); 202 with its id. Training
  happens in the retrain worker's thread, never in the request.
- `GET /v1/retrain`, `GET /v1/retrain/{id}` (ml_engineer, product_owner): recent runs / one run.
- `GET /v1/models` (ml_engineer, product_owner): registered versions, the champion and gate outcomes.
- `POST /v1/models/{version}/promote|rollback` (ml_engineer): move the champion alias by hand (hot swap,
  Label Studio model_version, re-score open escalations).
- `GET /v1/metrics/escalation` (product_owner, ml_engineer): escalated / predicted per model version and
  time window, by reason.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, cast

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, status
from fastapi.concurrency import run_in_threadpool
from pydantic import AfterValidator, BaseModel, Field

from learner.data import check_text
from learner.pii import describe_error, mask_pii
from serving.deps import ModelVersionQuery, RowIdPath, SettingsDep, StoreDep, not_stored
from serving.escalation import EscalationWindow, escalation_windows, per_version
from serving.retrain import RetrainWorker, RunRecord
from serving.security import Principal, Role, require_roles

router = APIRouter(prefix="/v1", tags=["retrain"])

EngineerDep = Annotated[Principal, Depends(require_roles(Role.ML_ENGINEER))]
ReaderDep = Annotated[Principal, Depends(require_roles(Role.ML_ENGINEER, Role.PRODUCT_OWNER))]


def _storable_reason(value: str) -> str:
    """Free text that reaches the audit trail, MLflow tags and logs: refused when no database can store
    it (a NUL), personal data masked on the way in."""
    return mask_pii(check_text(value, "reason"))


ReasonQuery = Annotated[
    str | None,
    Query(min_length=1, max_length=500, description="why (kept in the audit trail; personal data masked)"),
    AfterValidator(lambda value: None if value is None else _storable_reason(value)),
]

# MLflow's own spelling of a version: digits, no leading zero. "03" would be audited as a version that
# does not exist and queue a Label Studio update that can never succeed; 20 digits sent MLflow into
# minutes of retries.
VersionPath = Annotated[
    str,
    Path(pattern=r"^[1-9][0-9]{0,8}$", description="a registered version: 1 to 999999999, no leading zero"),
]


class RetrainRequest(BaseModel):
    reason: Annotated[str, AfterValidator(_storable_reason)] = Field(
        "api", min_length=1, max_length=200, description="why (kept in the audit trail; personal data masked)"
    )


class TriggerOut(BaseModel):
    run_id: int
    status: str


class RunOut(BaseModel):
    id: int
    status: str
    stage: str
    reasons: list[str]
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    n_labels: int | None
    mlflow_run_id: str | None
    version: str | None
    promoted: bool
    gate_reason: str | None
    error: str | None
    metrics: dict[str, float]

    @classmethod
    def of(cls, record: RunRecord) -> RunOut:
        return cls(**{k: getattr(record, k) for k in cls.model_fields})


class ModelVersionOut(BaseModel):
    version: str
    aliases: list[str]
    run_id: str | None
    created_at: datetime | None
    gate: str | None
    gate_reason: str | None
    promoted_by: str | None
    encoder_id: str | None = Field(None, description="the encoder the version was trained on")
    encoder: str | None = Field(
        None, description="its name, or 'fine-tuned from <base> ...' for an encoder stored in the bundle"
    )


class ModelsOut(BaseModel):
    registered_model: str
    champion: str | None
    serving: str | None
    versions: list[ModelVersionOut]


class PromotionOut(BaseModel):
    version: str
    swapped: bool
    labelstudio_updated: bool
    auto_resolved: int
    reprioritized: int


class EscalationRateWindowOut(BaseModel):
    model_version: str
    window_start: datetime
    window_s: int
    predicted: int
    escalated: int
    rate: float
    by_reason: dict[str, int]


class EscalationRateOut(BaseModel):
    window_s: int
    windows: list[EscalationRateWindowOut]
    by_version: dict[str, EscalationRateWindowOut]


def _worker(request: Request) -> RetrainWorker:
    worker = getattr(request.app.state, "retrain_worker", None)
    if worker is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, detail="retraining is disabled")
    return cast(RetrainWorker, worker)


@router.post("/retrain", status_code=status.HTTP_202_ACCEPTED, response_model=TriggerOut)
async def retrain(request: Request, principal: EngineerDep, body: RetrainRequest | None = None) -> TriggerOut:
    """Queue a retrain (coalesced with one already waiting)."""
    worker = _worker(request)
    reason = f"api:{principal.name}:{(body or RetrainRequest()).reason}"
    result = await run_in_threadpool(worker.trigger, reason)
    return TriggerOut(run_id=result.run_id, status=result.status)


@router.get("/retrain", response_model=list[RunOut])
async def runs(
    request: Request, _: ReaderDep, limit: Annotated[int, Query(ge=1, le=200)] = 20
) -> list[RunOut]:
    worker = _worker(request)
    return [RunOut.of(r) for r in await run_in_threadpool(worker.runs, limit)]


@router.get("/retrain/{run_id}", response_model=RunOut)
async def run(request: Request, run_id: RowIdPath, _: ReaderDep) -> RunOut:
    record = await run_in_threadpool(_worker(request).get, run_id)
    if record is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no retrain run {run_id}")
    return RunOut.of(record)


def _versions(request: Request) -> ModelsOut:
    from serving import registry

    settings = request.app.state.settings
    name = settings.mlflow.registered_model
    found, by_alias = registry.registered_versions(settings)
    aliases: dict[str, list[str]] = {}
    for alias, aliased in sorted(by_alias.items()):
        aliases.setdefault(str(aliased), []).append(alias)
    out = []
    for mv in sorted(found, key=lambda v: int(v.version), reverse=True):
        tags = dict(mv.tags or {})
        out.append(
            ModelVersionOut(
                version=str(mv.version),
                aliases=aliases.get(str(mv.version), []),
                run_id=mv.run_id,
                created_at=datetime.fromtimestamp(mv.creation_timestamp / 1000, UTC)
                if mv.creation_timestamp
                else None,
                gate=tags.get("hitl.gate"),
                gate_reason=tags.get("hitl.gate_reason"),
                promoted_by=tags.get("hitl.promoted_by"),
                encoder_id=tags.get("hitl.encoder_id"),
                encoder=tags.get("hitl.encoder"),
            )
        )
    current = request.app.state.model.current
    return ModelsOut(
        registered_model=name,
        champion=registry.champion_version(settings),
        serving=None if current is None else current.version,
        versions=out,
    )


@router.get("/models", response_model=ModelsOut)
async def models(request: Request, _: ReaderDep) -> ModelsOut:
    return await run_in_threadpool(_versions, request)


async def _move_champion(
    request: Request, version: str, principal: Principal, action: str, reason: str | None
) -> PromotionOut:
    worker = _worker(request)
    settings = request.app.state.settings

    def move() -> PromotionOut:
        from serving import registry, tracking

        try:
            tracking.client(settings).get_model_version(settings.mlflow.registered_model, version)
        except Exception as exc:
            if registry.is_absent(exc):
                raise HTTPException(
                    status.HTTP_404_NOT_FOUND, detail=f"no registered version {version!r}"
                ) from exc
            raise registry.RegistryUnavailableError(
                f"the model registry did not answer: {describe_error(exc)}"
            ) from exc
        report = worker.promoter.promote(
            version,
            reason=reason or action.replace("_", " "),
            actor=f"{principal.role.value}:{principal.name}",
            action=action,
        )
        return PromotionOut(
            version=report.version,
            swapped=report.swapped,
            labelstudio_updated=report.labelstudio_updated,
            auto_resolved=report.auto_resolved,
            reprioritized=report.reprioritized,
        )

    return await run_in_threadpool(move)


@router.post("/models/{version}/promote", response_model=PromotionOut)
async def promote(
    request: Request, version: VersionPath, principal: EngineerDep, reason: ReasonQuery = None
) -> PromotionOut:
    """Make `version` the champion (bypasses the gate: an engineer's decision, recorded on the version
    and in the audit trail with who and why)."""
    return await _move_champion(request, version, principal, "manual_promote", reason)


@router.post("/models/{version}/rollback", response_model=PromotionOut)
async def rollback(
    request: Request, version: VersionPath, principal: EngineerDep, reason: ReasonQuery = None
) -> PromotionOut:
    """Point the champion back at an earlier `version` (audited with who and why)."""
    return await _move_champion(request, version, principal, "rollback", reason)


def _rate_out(window: EscalationWindow) -> EscalationRateWindowOut:
    return EscalationRateWindowOut(
        model_version=window.model_version,
        window_start=datetime.fromtimestamp(window.window_start).astimezone(),
        window_s=window.window_s,
        predicted=window.predicted,
        escalated=window.escalated,
        rate=window.rate,
        by_reason=window.by_reason,
    )


@router.get("/metrics/escalation", response_model=EscalationRateOut, dependencies=[Depends(not_stored)])
async def escalation(
    store: StoreDep,
    settings: SettingsDep,
    _: ReaderDep,
    window_s: Annotated[int | None, Query(ge=60, le=30 * 86400)] = None,
    since: datetime | None = None,
    model_version: ModelVersionQuery = None,
) -> EscalationRateOut:
    """Escalated / predicted per model version and time window (re-scores after a promotion excluded)."""
    window = window_s or settings.dashboard.window_s
    windows = await run_in_threadpool(
        escalation_windows, store, window_s=window, since=since, model_version=model_version
    )
    by_version = {version: _rate_out(w) for version, w in per_version(windows).items()}
    return EscalationRateOut(window_s=window, windows=[_rate_out(w) for w in windows], by_version=by_version)
