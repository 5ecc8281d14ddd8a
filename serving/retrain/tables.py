"""The retrain loop's own tables (on `serving.store.Base`), their records and shared constants."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, Boolean, DateTime, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from serving.store import Base, Store

STREAM_CHUNK = 2048  # stream items embedded and scored at a time when certifying
USABLE_ACTIONS = ("created", "updated")
MAX_ERROR_CHARS = 500

QUEUED, RUNNING, PROMOTED, REJECTED, FAILED = "queued", "running", "promoted", "rejected", "failed"
FINISHED_STATUSES = frozenset({PROMOTED, REJECTED, FAILED})


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


class SeedLabel(Base):
    """A labelled item the loop starts from (e.g. `hitl up`'s seed); corrections override it."""

    __tablename__ = "retrain_seed_labels"

    item_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    title: Mapped[str] = mapped_column(Text)
    description: Mapped[str] = mapped_column(Text, default="")
    brand: Mapped[str | None] = mapped_column(Text)
    label: Mapped[str] = mapped_column(Text)
    added_at: Mapped[datetime] = mapped_column(DateTime, default=_now)


class RetrainRun(Base):
    """One training attempt: queued -> running -> promoted | rejected | failed."""

    __tablename__ = "retrain_runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    status: Mapped[str] = mapped_column(String(16), index=True, default=QUEUED)
    stage: Mapped[str] = mapped_column(String(32), default="queued")
    reasons: Mapped[list[str]] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=_now)
    started_at: Mapped[datetime | None] = mapped_column(DateTime)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime)
    correction_watermark: Mapped[int | None] = mapped_column(Integer)
    n_labels: Mapped[int | None] = mapped_column(Integer)
    mlflow_run_id: Mapped[str | None] = mapped_column(String(64))
    version: Mapped[str | None] = mapped_column(String(64))
    promoted: Mapped[bool] = mapped_column(Boolean, default=False)
    gate_reason: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


@dataclass(frozen=True)
class RunRecord:
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
    metrics: dict[str, Any]

    @property
    def finished(self) -> bool:
        return self.status in FINISHED_STATUSES

    @classmethod
    def of(cls, row: RetrainRun) -> RunRecord:
        def aware(value: datetime | None) -> datetime | None:
            return value.replace(tzinfo=UTC) if value is not None else None

        return cls(
            id=row.id,
            status=row.status,
            stage=row.stage,
            reasons=list(row.reasons or []),
            created_at=row.created_at.replace(tzinfo=UTC),
            started_at=aware(row.started_at),
            finished_at=aware(row.finished_at),
            n_labels=row.n_labels,
            mlflow_run_id=row.mlflow_run_id,
            version=row.version,
            promoted=bool(row.promoted),
            gate_reason=row.gate_reason,
            error=row.error,
            metrics=dict(row.metrics or {}),
        )


def create_tables(store: Store) -> None:
    """Our tables live on `serving.store.Base`; `store.create_all()` creates them once imported."""
    Base.metadata.create_all(store.engine)
