"""The model timeline: retrain runs, champion moves, when each version first served."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import func, select

from serving.kpis.common import aware, mlflow_ui_url
from serving.kpis.schemas import EventKind, TimelineEvent
from serving.retrain import RetrainRun
from serving.settings import AppSettings
from serving.store import ModelVersion, Prediction, Store


def _registry_version(label: str, registered_model: str) -> str | None:
    prefix = f"{registered_model}:v"
    return label[len(prefix) :] if label.startswith(prefix) else None


def timeline(store: Store, settings: AppSettings) -> list[TimelineEvent]:
    ui = mlflow_ui_url(settings)
    name = settings.mlflow.registered_model
    events: list[TimelineEvent] = []
    with store.session() as session:
        runs = session.execute(
            select(
                RetrainRun.id,
                RetrainRun.status,
                RetrainRun.finished_at,
                RetrainRun.version,
                RetrainRun.gate_reason,
                RetrainRun.error,
                RetrainRun.mlflow_run_id,
            )
            .where(RetrainRun.status.in_(("promoted", "rejected", "failed")))
            .order_by(RetrainRun.id)
        ).all()
        first_served = session.execute(
            select(Prediction.model_version, func.min(Prediction.created_at)).group_by(
                Prediction.model_version
            )
        ).all()
        loaded = dict(session.execute(select(ModelVersion.version, ModelVersion.first_loaded_at)).all())
    for run_id, status, finished, run_version, gate_reason, error, mlflow_run_id in runs:
        label = f"{name}:v{run_version}" if run_version else "(not registered)"
        events.append(
            TimelineEvent(
                at=aware(finished) if finished is not None else datetime.fromtimestamp(0, UTC),
                kind=status,
                model_version=label,
                reason=gate_reason if status != "failed" else error,
                run_id=run_id,
                mlflow_run_id=mlflow_run_id,
                mlflow_url=f"{ui}/#/runs/{mlflow_run_id}" if mlflow_run_id else None,
            )
        )
    gate_promoted = {e.model_version for e in events if e.kind == "promoted"}
    for move in store.model_events():  # champion moves recorded by the promoter (audit trail)
        version = move.after or move.model_version or "(unknown)"
        if move.action == "promoted" and version in gate_promoted:
            continue  # the retrain run above already shows it, with the gate's reason
        kind: EventKind = "rolled_back" if move.action == "rollback" else "promoted"
        given = move.details.get("reason")
        registry_version = _registry_version(version, name)
        events.append(
            TimelineEvent(
                at=aware(move.created_at),
                kind=kind,
                model_version=version,
                reason=f"{move.action.replace('_', ' ')} by {move.actor}"
                + (f": {given}" if given and given != move.action.replace("_", " ") else ""),
                mlflow_url=f"{ui}/#/models/{name}/versions/{registry_version}" if registry_version else None,
            )
        )
    seen: set[str] = set()
    for version, created in first_served:
        seen.add(version)
        registry_version = _registry_version(version, name)
        events.append(
            TimelineEvent(
                at=aware(created),
                kind="served",
                model_version=version,
                mlflow_url=f"{ui}/#/models/{name}/versions/{registry_version}" if registry_version else None,
            )
        )
    for version, first_loaded in loaded.items():  # loaded but not (yet) used for a prediction
        if version not in seen:
            events.append(TimelineEvent(at=aware(first_loaded), kind="served", model_version=version))
    return sorted(events, key=lambda e: (e.at, e.kind, e.model_version))
