"""The serving database: items, predictions with their routing decision, model versions, corrections
(append-only history), an append-only audit trail, pushed tasks, and bootstrapped projects.

SQLAlchemy 2.x; SQLite by default (`settings.database_url`), PostgreSQL by URL with the same code.
Timestamps are stored as naive UTC. The audit table refuses UPDATE and DELETE twice: in the ORM (a
flush that would change or delete a row raises) and in the database (triggers on SQLite and PostgreSQL).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

from sqlalchemy import (
    DDL,
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Table,
    Text,
    UniqueConstraint,
    and_,
    case,
    create_engine,
    event,
    exists,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, aliased, mapped_column, sessionmaker

from labeling.config import Taxonomy
from labeling.push import Escalation, closed_by_deleting
from labeling.webhooks import EPOCH, CorrectionEvent, DeletionEvent, utc

logger = logging.getLogger(__name__)

# A group commit stops taking waiting writes at this many rows (bounds one transaction's size).
_GROUP_MAX_ROWS = 2048


class Base(DeclarativeBase):
    pass


def store_time(moment: datetime) -> datetime:
    """`moment` as the store keeps times: naive UTC (a naive `moment` is UTC already). A moment whose
    UTC falls outside the calendar (0001-01-01T00:00+01:00) is clamped to the calendar's end."""
    try:
        return utc(moment).replace(tzinfo=None)
    except OverflowError:
        return datetime.min if moment.year == datetime.min.year else datetime.max


def changed_one(result: object) -> bool:
    """Whether a conditional UPDATE changed exactly one row: the claim or the change was this caller's
    (SQLAlchemy's `Result` types do not all declare `rowcount`)."""
    return getattr(result, "rowcount", 0) == 1


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


class Correction(Base):
    """One state of one annotation. Never updated: a new state is a new row."""

    __tablename__ = "corrections"
    __table_args__ = (UniqueConstraint("annotation_id", "updated_at", "action", name="uq_correction_state"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    action: Mapped[str] = mapped_column(String(16))  # created/updated/deleted/cancelled/rejected/proposed
    source: Mapped[str] = mapped_column(String(16))  # webhook/sync
    project_id: Mapped[int | None] = mapped_column(Integer, index=True)
    item_id: Mapped[str | None] = mapped_column(String(255), index=True)
    task_id: Mapped[int | None] = mapped_column(Integer)
    annotation_id: Mapped[int] = mapped_column(Integer, index=True)
    label: Mapped[str | None] = mapped_column(Text)
    raw_label: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)
    reviewer_id: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime | None] = mapped_column(DateTime)
    updated_at: Mapped[datetime] = mapped_column(DateTime)
    lead_time: Mapped[float | None] = mapped_column(Float)
    was_cancelled: Mapped[bool] = mapped_column(Boolean, default=False)
    predicted_label: Mapped[str | None] = mapped_column(Text)
    model_version: Mapped[str | None] = mapped_column(String(255))
    model_score: Mapped[float | None] = mapped_column(Float)
    received_at: Mapped[datetime] = mapped_column(DateTime, default=_now)


# Label Studio's own clock orders the states of an annotation, never their arrival: webhooks can
# arrive out of order, and a sync may fill a gap later. At the same updated_at, a deletion (keyed to
# the state it deletes) and then an update outrank a creation; the row id breaks what remains.
_ACTION_RANK = case(
    (Correction.action == "deleted", 3),
    (Correction.action.in_(("cancelled", "rejected")), 2),
    (Correction.action == "updated", 1),
    else_=0,
)
STATE_ORDER = (Correction.updated_at, _ACTION_RANK, Correction.id)


class PushedTask(Base):
    __tablename__ = "pushed_tasks"
    __table_args__ = (UniqueConstraint("item_id", "model_version", name="uq_pushed_item_version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    item_id: Mapped[str] = mapped_column(String(255))
    model_version: Mapped[str] = mapped_column(String(255))
    project_id: Mapped[int] = mapped_column(Integer)
    task_id: Mapped[int] = mapped_column(Integer)
    priority: Mapped[float] = mapped_column(Float)
    pushed_at: Mapped[datetime] = mapped_column(DateTime, default=_now)
    # Set on every row of the task when it left Label Studio's queue (migration 0004).
    closed_at: Mapped[datetime | None] = mapped_column(DateTime)
    close_reason: Mapped[str | None] = mapped_column(Text)


class LabelingProject(Base):
    """A bootstrapped Label Studio project and the taxonomy its config was generated from."""

    __tablename__ = "labeling_projects"

    project_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    title: Mapped[str] = mapped_column(String(255))
    webhook_id: Mapped[int | None] = mapped_column(Integer)
    taxonomy: Mapped[list[list[str]]] = mapped_column(JSON)
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=_now, onupdate=_now)


class SyncRun(Base):
    __tablename__ = "sync_runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    project_id: Mapped[int] = mapped_column(Integer, ForeignKey("labeling_projects.project_id"))
    finished_at: Mapped[datetime] = mapped_column(DateTime, default=_now)
    recorded: Mapped[int] = mapped_column(Integer)
    deleted: Mapped[int] = mapped_column(Integer)


class Item(Base):
    """The latest content seen for an item id (what a reviewer needs to see)."""

    __tablename__ = "items"

    id: Mapped[str] = mapped_column(String(255), primary_key=True)
    title: Mapped[str] = mapped_column(Text)
    description: Mapped[str] = mapped_column(Text, default="")
    brand: Mapped[str | None] = mapped_column(Text)
    price: Mapped[float | None] = mapped_column(Float)
    category_hint: Mapped[str | None] = mapped_column(Text)
    first_seen_at: Mapped[datetime] = mapped_column(DateTime, default=_now)
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=_now)


class ModelVersion(Base):
    __tablename__ = "model_versions"

    version: Mapped[str] = mapped_column(String(255), primary_key=True)
    source: Mapped[str] = mapped_column(Text)
    encoder_id: Mapped[str] = mapped_column(Text)
    n_labels: Mapped[int] = mapped_column(Integer)
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    first_loaded_at: Mapped[datetime] = mapped_column(DateTime, default=_now)


class Prediction(Base):
    """One prediction of one item by one model version, with the routing decision and its reasons."""

    __tablename__ = "predictions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    item_id: Mapped[str] = mapped_column(String(255), ForeignKey("items.id"), index=True)
    model_version: Mapped[str] = mapped_column(String(255), ForeignKey("model_versions.version"))
    label: Mapped[str] = mapped_column(Text)
    confidence: Mapped[float] = mapped_column(Float)
    threshold: Mapped[float | None] = mapped_column(Float)
    top_k: Mapped[list[list[Any]]] = mapped_column(JSON)
    decision: Mapped[str] = mapped_column(String(16), index=True)
    reasons: Mapped[list[str]] = mapped_column(JSON)
    priority: Mapped[float] = mapped_column(Float)
    # The audit draw's inclusion probability at routing time (None: routed without an audit policy,
    # e.g. re-scored); audited items carry the reason spot_check or audit.
    audit_probability: Mapped[float | None] = mapped_column(Float, nullable=True)
    requested_by: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(DateTime, default=_now)


MODEL_EVENT = "model_event"  # audit kind of a champion move (see `Store.record_model_event`)
TASK_EVENT = "labelstudio_task"  # audit kind of a task leaving Label Studio's queue (`Store.record_closed`)
# ... and of a task held open for a senior reviewer, then released (`Store.record_hold`).
HELD, RELEASED = "held_for_senior", "released_by_senior"


class AuditEvent(Base):
    """Append-only: every model decision and every review, with what changed."""

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    item_id: Mapped[str | None] = mapped_column(String(255), index=True)
    prediction_id: Mapped[int | None] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(32))  # model_decision | review | model_event
    actor: Mapped[str] = mapped_column(String(255))  # model:<version> | reviewer:<id>
    action: Mapped[str] = mapped_column(String(32))  # auto_accepted/escalated/approved/corrected/rejected/...
    before: Mapped[str | None] = mapped_column(Text)
    after: Mapped[str | None] = mapped_column(Text)
    model_version: Mapped[str | None] = mapped_column(String(255))
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=_now)


# The tables themselves, for Core bulk inserts on the prediction write path (no ORM objects per row).
_ITEMS = cast(Table, Item.__table__)
_PREDICTIONS = cast(Table, Prediction.__table__)
_AUDIT = cast(Table, AuditEvent.__table__)


class AppendOnlyError(RuntimeError):
    """Something tried to change or delete an audit row."""


@event.listens_for(Session, "before_flush")
def _refuse_audit_changes(session: Session, _context: object, _instances: object) -> None:
    for obj in (*session.dirty, *session.deleted):
        if isinstance(obj, AuditEvent) and (obj in session.deleted or session.is_modified(obj)):
            raise AppendOnlyError("audit_events is append-only")


# The database itself refuses changes to the audit trail, per dialect (the initial migration runs
# the same statements: serving/db/migrations).
APPEND_ONLY_TRIGGERS: dict[str, tuple[str, ...]] = {
    "sqlite": tuple(
        f"CREATE TRIGGER audit_events_no_{op.lower()} BEFORE {op} ON audit_events "
        "BEGIN SELECT RAISE(ABORT, 'audit_events is append-only'); END"
        for op in ("UPDATE", "DELETE")
    ),
    "postgresql": (
        "CREATE OR REPLACE FUNCTION audit_events_append_only() RETURNS trigger AS $$ "
        "BEGIN RAISE EXCEPTION 'audit_events is append-only'; END; $$ LANGUAGE plpgsql; "
        "CREATE TRIGGER audit_events_append_only BEFORE UPDATE OR DELETE ON audit_events "
        "FOR EACH ROW EXECUTE FUNCTION audit_events_append_only();",
    ),
}
for _dialect, _statements in APPEND_ONLY_TRIGGERS.items():
    for _statement in _statements:
        event.listen(
            AuditEvent.__table__,
            "after_create",
            DDL(_statement).execute_if(dialect=_dialect),  # type: ignore[no-untyped-call]
        )


@dataclass(frozen=True)
class CorrectionRecord:
    action: str
    source: str
    project_id: int | None
    item_id: str | None
    task_id: int | None
    annotation_id: int
    label: str | None
    raw_label: str | None
    error: str | None
    reviewer_id: int | None
    created_at: datetime | None
    updated_at: datetime
    lead_time: float | None
    was_cancelled: bool
    predicted_label: str | None
    model_version: str | None
    model_score: float | None
    received_at: datetime

    @classmethod
    def of(cls, row: Correction) -> CorrectionRecord:
        return cls(
            action=row.action,
            source=row.source,
            project_id=row.project_id,
            item_id=row.item_id,
            task_id=row.task_id,
            annotation_id=row.annotation_id,
            label=row.label,
            raw_label=row.raw_label,
            error=row.error,
            reviewer_id=row.reviewer_id,
            created_at=row.created_at.replace(tzinfo=UTC) if row.created_at else None,
            updated_at=row.updated_at.replace(tzinfo=UTC),
            lead_time=row.lead_time,
            was_cancelled=row.was_cancelled,
            predicted_label=row.predicted_label,
            model_version=row.model_version,
            model_score=row.model_score,
            received_at=row.received_at.replace(tzinfo=UTC),
        )


@dataclass(frozen=True)
class NewPrediction:
    """One routed prediction to store, with the item content it was made on."""

    item_id: str
    title: str
    description: str
    brand: str | None
    price: float | None
    category_hint: str | None
    label: str
    confidence: float
    threshold: float | None
    top_k: list[tuple[str, float]]
    decision: str
    reasons: list[str]
    priority: float
    audit_probability: float | None = None


@dataclass(frozen=True)
class PredictionRecord:
    id: int
    item_id: str
    model_version: str
    label: str
    confidence: float
    threshold: float | None
    top_k: list[tuple[str, float]]
    decision: str
    reasons: list[str]
    priority: float
    requested_by: str | None
    created_at: datetime
    audit_probability: float | None = None

    @classmethod
    def of(cls, row: Prediction) -> PredictionRecord:
        return cls(
            id=row.id,
            item_id=row.item_id,
            model_version=row.model_version,
            label=row.label,
            confidence=row.confidence,
            threshold=row.threshold,
            top_k=[(str(c), float(p)) for c, p in row.top_k],
            decision=row.decision,
            reasons=list(row.reasons),
            priority=row.priority,
            requested_by=row.requested_by,
            created_at=row.created_at.replace(tzinfo=UTC),
            audit_probability=row.audit_probability,
        )


@dataclass(frozen=True)
class AuditRecord:
    id: int
    item_id: str | None
    prediction_id: int | None
    kind: str
    actor: str
    action: str
    before: str | None
    after: str | None
    model_version: str | None
    details: dict[str, Any]
    created_at: datetime

    @classmethod
    def of(cls, row: AuditEvent) -> AuditRecord:
        return cls(
            id=row.id,
            item_id=row.item_id,
            prediction_id=row.prediction_id,
            kind=row.kind,
            actor=row.actor,
            action=row.action,
            before=row.before,
            after=row.after,
            model_version=row.model_version,
            details=dict(row.details or {}),
            created_at=row.created_at.replace(tzinfo=UTC),
        )


@dataclass(frozen=True)
class ItemRecord:
    id: str
    title: str
    description: str
    brand: str | None
    price: float | None
    category_hint: str | None
    first_seen_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class ItemHistory:
    item: ItemRecord
    predictions: list[PredictionRecord] = field(default_factory=list)
    corrections: list[CorrectionRecord] = field(default_factory=list)
    audit: list[AuditRecord] = field(default_factory=list)


@dataclass(frozen=True)
class OpenEscalation:
    prediction: PredictionRecord
    title: str
    brand: str | None
    price: float | None


@dataclass(frozen=True)
class SeniorHold:
    task_id: int
    item_id: str | None
    hold: bool  # True: keep the task open for a senior reviewer; False: let its annotations finish it


# Called inside the transaction that stores the predictions (the outbox enqueues there: nothing is lost).
EscalationHook = Callable[[Session, list[Escalation], str], object]

_REVIEW_ACTION = {"cancelled": "skipped", "rejected": "rejected"}


def review_action(action: str, label: str | None, predicted: str | None) -> str:
    """approved (the reviewer kept the model's label) / corrected / rejected / skipped / deleted."""
    if action in ("created", "updated"):
        return "approved" if predicted is not None and label == predicted else "corrected"
    return _REVIEW_ACTION.get(action, action)


class Store:
    """Implements `labeling.push.PushLedger` and `labeling.sync.CorrectionSink`."""

    def __init__(self, database_url: str, *, echo: bool = False) -> None:
        url = make_url(database_url)
        kwargs: dict[str, object] = {"echo": echo, "future": True}
        if url.get_backend_name() == "sqlite":
            if url.database and url.database != ":memory:":
                Path(url.database).parent.mkdir(parents=True, exist_ok=True)
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
            if url.database and url.database != ":memory:":
                # Enough pooled connections for the request threadpool: beyond the pool every checkout
                # opened (and ran the pragmas on) a fresh connection and closed it again.
                kwargs["pool_size"] = 32
                kwargs["max_overflow"] = 32
        self.engine: Engine = create_engine(url, **kwargs)
        if url.get_backend_name() == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._writer_lock = threading.Lock()
        self._writer: _GroupWriter | None = None  # started by the first prediction write

    def create_all(self) -> None:
        """Bring the schema to the head revision, keeping every row (`serving.db.upgrade`)."""
        from serving.db import upgrade

        upgrade(self.engine)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def close(self) -> None:
        """Drain the writer (every submitted write is committed or failed first), then disconnect."""
        with self._writer_lock:
            writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()
        self.engine.dispose()

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self._sessions.begin() as session:
            yield session

    # ------------------------------------------------------------ corrections
    def record_correction(self, event: CorrectionEvent) -> bool:
        row = Correction(
            action=event.action,
            source=event.source,
            project_id=event.project_id,
            item_id=event.item_id,
            task_id=event.task_id,
            annotation_id=event.annotation_id,
            label=event.label,
            raw_label=event.raw_label,
            error=event.error,
            reviewer_id=event.reviewer_id,
            created_at=store_time(event.created_at),
            updated_at=store_time(event.updated_at),
            lead_time=event.lead_time,
            was_cancelled=event.was_cancelled,
            predicted_label=event.predicted_label,
            model_version=event.model_version,
            model_score=event.model_score,
        )
        return self._insert_once(row)

    def _insert_once(self, row: Correction) -> bool:
        """Insert a correction state and its audit row together; False for a repeated delivery."""
        try:
            with self.session() as session:
                session.add(row)
                session.flush()
                session.add(self._review_audit(session, row))
        except IntegrityError:  # the same (annotation, updated_at, action): a repeated delivery
            return False
        return True

    @staticmethod
    def _review_audit(session: Session, row: Correction) -> AuditEvent:
        predicted, version = row.predicted_label, row.model_version
        if row.item_id is not None and predicted is None:
            last = session.scalars(
                select(Prediction).where(Prediction.item_id == row.item_id).order_by(Prediction.id.desc())
            ).first()
            if last is not None:
                predicted, version = last.label, last.model_version
        action = "deleted" if row.action == "deleted" else review_action(row.action, row.label, predicted)
        return AuditEvent(
            item_id=row.item_id,
            kind="review",
            actor=f"reviewer:{row.reviewer_id}" if row.reviewer_id is not None else "reviewer:unknown",
            action=action,
            before=predicted,
            # A proposal's category is not a label, but the trail shows who proposed what.
            after={"proposed": row.raw_label, "deleted": None}.get(row.action, row.label),
            model_version=version,
            details={
                "annotation_id": row.annotation_id,
                "task_id": row.task_id,
                "source": row.source,
                "correction_action": row.action,
                **({"error": row.error} if row.error else {}),
            },
        )

    def record_deletion(self, event: DeletionEvent) -> int:
        new = 0
        for annotation_id in event.annotation_ids:
            latest = self._latest(annotation_id)
            if latest is not None and latest.action == "deleted":
                continue
            if event.source == "sync" and latest is not None and self._deleted_by_our_close(latest):
                # The sync infers a deletion from a 404. Our own close deleted the task (and Label
                # Studio its annotations with it) in the moment after a reviewer annotated it: the
                # label we hold is that reviewer's, not something they took back.
                logger.warning(
                    "annotation %d: gone with task %s, which a close deleted; its label is kept",
                    annotation_id,
                    latest.task_id,
                )
                continue
            row = Correction(
                action="deleted",
                source=event.source,
                project_id=event.project_id
                if event.project_id is not None
                else (latest.project_id if latest else None),
                item_id=latest.item_id if latest else None,
                task_id=latest.task_id if latest else None,
                annotation_id=annotation_id,
                reviewer_id=latest.reviewer_id if latest else None,
                created_at=latest.created_at if latest else None,
                # The key of a deletion is the last state it deletes: a repeated delivery collides.
                updated_at=latest.updated_at if latest else store_time(EPOCH),
                was_cancelled=False,
                predicted_label=latest.predicted_label if latest else None,
                model_version=latest.model_version if latest else None,
                model_score=latest.model_score if latest else None,
            )
            new += self._insert_once(row)
        return new

    def _deleted_by_our_close(self, latest: Correction) -> bool:
        if latest.task_id is None or latest.item_id is None:
            return False
        with self.session() as session:
            reasons = session.scalars(
                select(PushedTask.close_reason).where(
                    PushedTask.task_id == latest.task_id, PushedTask.item_id == latest.item_id
                )
            ).all()
        return any(closed_by_deleting(reason) for reason in reasons)

    def _latest(self, annotation_id: int) -> Correction | None:
        with self.session() as session:
            return session.scalars(
                select(Correction)
                .where(Correction.annotation_id == annotation_id)
                .order_by(*(key.desc() for key in STATE_ORDER))
            ).first()

    def annotation_versions(self, project_id: int) -> dict[int, datetime]:
        """annotation id -> updated_at of its latest state (`STATE_ORDER`), deleted ones left out."""
        with self.session() as session:
            rows = session.execute(
                select(Correction.annotation_id, Correction.updated_at, Correction.action)
                .where(Correction.project_id == project_id)
                .order_by(*STATE_ORDER)
            ).all()
        latest = {aid: (ts, action) for aid, ts, action in rows}
        return {aid: ts.replace(tzinfo=UTC) for aid, (ts, action) in latest.items() if action != "deleted"}

    def history(self, annotation_id: int) -> list[CorrectionRecord]:
        with self.session() as session:
            rows = session.scalars(
                select(Correction).where(Correction.annotation_id == annotation_id).order_by(*STATE_ORDER)
            ).all()
            return [CorrectionRecord.of(r) for r in rows]

    def corrections(self, *, project_id: int | None = None) -> list[CorrectionRecord]:
        """Every stored state, oldest first by Label Studio's clock (`STATE_ORDER`), not by arrival."""
        query = select(Correction).order_by(*STATE_ORDER)
        if project_id is not None:
            query = query.where(Correction.project_id == project_id)
        with self.session() as session:
            return [CorrectionRecord.of(r) for r in session.scalars(query).all()]

    def current_labels(self, *, project_id: int | None = None) -> dict[str, CorrectionRecord]:
        """item id -> its newest usable correction (created/updated, not later deleted/cancelled/rejected)."""
        latest: dict[int, CorrectionRecord] = {}
        for record in self.corrections(project_id=project_id):
            latest[record.annotation_id] = record
        by_item: dict[str, CorrectionRecord] = {}
        for record in sorted(latest.values(), key=lambda r: (r.updated_at, r.annotation_id)):
            if record.action in ("created", "updated") and record.item_id is not None and record.label:
                by_item[record.item_id] = record
        return by_item

    # ------------------------------------------------------------ predictions
    def register_model_version(
        self, version: str, *, source: str, encoder_id: str, n_labels: int, details: dict[str, Any]
    ) -> None:
        """Remember a served model version (first load wins; later loads of it change nothing)."""
        with self.session() as session:
            values = {
                "version": version,
                "source": source,
                "encoder_id": encoder_id,
                "n_labels": n_labels,
                "details": details,
                "first_loaded_at": _now(),
            }
            if self.dialect in ("sqlite", "postgresql"):
                insert = sqlite.insert if self.dialect == "sqlite" else postgresql.insert
                session.execute(insert(ModelVersion).values(**values).on_conflict_do_nothing())
            elif session.get(ModelVersion, version) is None:
                session.add(ModelVersion(**values))

    def record_predictions(
        self,
        model_version: str,
        rows: Sequence[NewPrediction],
        *,
        requested_by: str | None = None,
        on_escalated: EscalationHook | None = None,
    ) -> list[int]:
        """Store items, predictions and their audit rows (and hand escalations to `on_escalated`) in
        ONE transaction: either all of it is stored or none. Returns the prediction ids in order, once
        they are committed."""
        return self.submit_predictions(
            model_version, rows, requested_by=requested_by, on_escalated=on_escalated
        ).result()

    def submit_predictions(
        self,
        model_version: str,
        rows: Sequence[NewPrediction],
        *,
        requested_by: str | None = None,
        on_escalated: EscalationHook | None = None,
    ) -> Future[list[int]]:
        """`record_predictions` without waiting: a future of the committed prediction ids.

        The write goes to the store's single writer thread, which commits every write waiting at that
        moment in one transaction (group commit): concurrent requests then cost one commit instead of
        one each and never wait on each other's database lock. Each write stays all-or-nothing: when a
        group fails, its writes are retried one transaction each, so one bad write fails only its caller.
        """
        job = _WriteJob(model_version, list(rows), requested_by, on_escalated)
        if not job.rows:
            job.future.set_result([])
            return job.future
        with self._writer_lock:
            if self._writer is None:
                self._writer = _GroupWriter(self)
            self._writer.submit(job)
        return job.future

    def _write_group(self, session: Session, jobs: Sequence[_WriteJob]) -> list[list[int]]:
        """Write `jobs` in `session` (no commit): Core bulk inserts, one statement per table."""
        now = _now()
        self._upsert_items(session, [r for job in jobs for r in job.rows], now)
        params = [
            {
                "item_id": r.item_id,
                "model_version": job.model_version,
                "label": r.label,
                "confidence": r.confidence,
                "threshold": r.threshold,
                "top_k": [[c, p] for c, p in r.top_k],
                "decision": r.decision,
                "reasons": list(r.reasons),
                "priority": r.priority,
                "audit_probability": r.audit_probability,
                "requested_by": job.requested_by,
                "created_at": now,
            }
            for job in jobs
            for r in job.rows
        ]
        inserted = session.execute(
            _PREDICTIONS.insert().returning(_PREDICTIONS.c.id, sort_by_parameter_order=True),
            params,
        )
        flat_ids = [int(i) for i in inserted.scalars().all()]
        if len(flat_ids) != len(params):  # pragma: no cover - a driver that drops RETURNING rows
            raise RuntimeError(f"stored {len(params)} predictions but got {len(flat_ids)} ids back")
        ids: list[list[int]] = []
        audit: list[dict[str, Any]] = []
        offset = 0
        for job in jobs:
            mine = flat_ids[offset : offset + len(job.rows)]
            offset += len(job.rows)
            ids.append(mine)
            audit.extend(
                {
                    "item_id": r.item_id,
                    "prediction_id": pid,
                    "kind": "model_decision",
                    "actor": f"model:{job.model_version}",
                    "action": r.decision,
                    "before": None,
                    "after": r.label,
                    "model_version": job.model_version,
                    "details": {
                        "reasons": list(r.reasons),
                        "confidence": r.confidence,
                        "threshold": r.threshold,
                        "requested_by": job.requested_by,
                    },
                    "created_at": now,
                }
                for r, pid in zip(job.rows, mine, strict=True)
            )
        session.execute(_AUDIT.insert(), audit)
        for job in jobs:
            escalated = [
                Escalation(
                    item_id=r.item_id,
                    title=r.title,
                    description=r.description,
                    brand=r.brand or "",
                    price=r.price,
                    predicted_label=r.label,
                    confidence=min(max(r.confidence, 0.0), 1.0),
                    priority=r.priority,
                    reasons=list(r.reasons),
                    model_version=job.model_version,
                    threshold=r.threshold,
                    candidates=[(str(c), float(p)) for c, p in r.top_k[:3]],
                )
                for r in job.rows
                if r.decision == "escalated"
            ]
            if escalated and job.on_escalated is not None:
                job.on_escalated(session, escalated, job.model_version)
        return ids

    def _upsert_items(self, session: Session, rows: Sequence[NewPrediction], now: datetime) -> None:
        latest: dict[str, dict[str, Any]] = {}
        for r in rows:
            latest[r.item_id] = {
                "id": r.item_id,
                "title": r.title,
                "description": r.description,
                "brand": r.brand,
                "price": r.price,
                "category_hint": r.category_hint,
                "first_seen_at": now,
                "updated_at": now,
            }
        if not latest:
            return
        if self.dialect in ("sqlite", "postgresql"):
            insert = sqlite.insert if self.dialect == "sqlite" else postgresql.insert
            stmt = insert(_ITEMS)
            changed = ("title", "description", "brand", "price", "category_hint", "updated_at")
            upsert = stmt.on_conflict_do_update(
                index_elements=[_ITEMS.c.id], set_={c: getattr(stmt.excluded, c) for c in changed}
            )
            # One statement with a list of parameter sets (executemany): compiled once and cached,
            # where a multi-VALUES statement was compiled anew for every group size.
            session.execute(upsert, list(latest.values()))
            return
        for values in latest.values():  # pragma: no cover - other dialects
            row = session.get(Item, values["id"])
            if row is None:
                session.add(Item(**values))
            else:
                for key, value in values.items():
                    if key != "first_seen_at":
                        setattr(row, key, value)

    def item_history(self, item_id: str) -> ItemHistory | None:
        with self.session() as session:
            item = session.get(Item, item_id)
            if item is None:
                return None
            predictions = session.scalars(
                select(Prediction).where(Prediction.item_id == item_id).order_by(Prediction.id)
            ).all()
            corrections = session.scalars(
                select(Correction).where(Correction.item_id == item_id).order_by(*STATE_ORDER)
            ).all()
            audit = session.scalars(
                select(AuditEvent).where(AuditEvent.item_id == item_id).order_by(AuditEvent.id)
            ).all()
            return ItemHistory(
                item=ItemRecord(
                    id=item.id,
                    title=item.title,
                    description=item.description,
                    brand=item.brand,
                    price=item.price,
                    category_hint=item.category_hint,
                    first_seen_at=item.first_seen_at.replace(tzinfo=UTC),
                    updated_at=item.updated_at.replace(tzinfo=UTC),
                ),
                predictions=[PredictionRecord.of(p) for p in predictions],
                corrections=[CorrectionRecord.of(c) for c in corrections],
                audit=[AuditRecord.of(a) for a in audit],
            )

    def open_escalations(
        self, *, limit: int = 100, offset: int = 0, reason: str | None = None
    ) -> list[OpenEscalation]:
        """Items whose newest prediction was escalated and that no reviewer has labelled since,
        most useful (highest priority) first. A label later deleted, cancelled or rejected is no label:
        the task is back in the reviewers' queue (`current_labels` reads the states the same way)."""
        newest = select(func.max(Prediction.id).label("last_id")).group_by(Prediction.item_id).subquery()
        later = aliased(Correction)
        withdrawn = exists().where(  # a later state of the same annotation that is no label (`STATE_ORDER`)
            later.annotation_id == Correction.annotation_id,
            later.action.not_in(("created", "updated")),
            or_(
                later.updated_at > Correction.updated_at,
                and_(
                    later.updated_at == Correction.updated_at,
                    or_(later.action.in_(("deleted", "cancelled", "rejected")), later.id > Correction.id),
                ),
            ),
        )
        reviewed = exists().where(
            Correction.item_id == Prediction.item_id,
            Correction.action.in_(("created", "updated")),
            Correction.label.is_not(None),
            Correction.received_at >= Prediction.created_at,
            ~withdrawn,
        )
        query = (
            select(Prediction, Item.title, Item.brand, Item.price)
            .join(newest, Prediction.id == newest.c.last_id)
            .join(Item, Item.id == Prediction.item_id)
            .where(Prediction.decision == "escalated", ~reviewed)
            .order_by(Prediction.priority.desc(), Prediction.id)
        )
        if limit <= 0:
            return []
        out: list[OpenEscalation] = []
        with self.session() as session:
            if reason is None:  # the page in SQL: the queue can hold hundreds of thousands of items
                rows = session.execute(query.limit(limit).offset(max(offset, 0))).all()
                return [OpenEscalation(PredictionRecord.of(p), t, b, pr) for p, t, b, pr in rows]
            # Reasons are a JSON list, which no portable SQL can search: filter while reading, and stop
            # as soon as the page is full.
            skipped = 0
            for p, title, brand, price in session.execute(query.execution_options(yield_per=500)):
                if reason not in p.reasons:
                    continue
                if skipped < offset:
                    skipped += 1
                    continue
                out.append(OpenEscalation(PredictionRecord.of(p), title, brand, price))
                if len(out) >= limit:
                    break
        return out

    def waiting_since(
        self, item_ids: Sequence[str], reviewed_at: Mapping[str, datetime]
    ) -> dict[str, datetime]:
        """item id -> when it started waiting for a reviewer: the first of the escalated predictions
        that end its history (after ``reviewed_at``, its last usable review), so a promotion's re-score
        or a caller's repeated request does not make an old escalation look new."""
        out: dict[str, datetime] = {}
        ids = list(item_ids)
        with self.session() as session:
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                query = (
                    select(Prediction.item_id, Prediction.created_at, Prediction.decision)
                    .where(Prediction.item_id.in_(chunk))
                    .order_by(Prediction.item_id, Prediction.id.desc())
                )
                ended: set[str] = set()
                for item_id, created, decision in session.execute(query):
                    if item_id in ended:
                        continue
                    created = created.replace(tzinfo=UTC)
                    since = reviewed_at.get(item_id)
                    if decision != "escalated" or (since is not None and created < since):
                        ended.add(item_id)
                        continue
                    out[item_id] = created
        return out

    def audit_trail(
        self, *, item_id: str | None = None, kind: str | None = None, limit: int = 100, after_id: int = 0
    ) -> list[AuditRecord]:
        query = select(AuditEvent).where(AuditEvent.id > after_id).order_by(AuditEvent.id).limit(limit)
        if item_id is not None:
            query = query.where(AuditEvent.item_id == item_id)
        if kind is not None:
            query = query.where(AuditEvent.kind == kind)
        with self.session() as session:
            return [AuditRecord.of(a) for a in session.scalars(query).all()]

    def record_model_event(
        self,
        *,
        action: str,
        version: str,
        actor: str,
        reason: str | None,
        previous: str | None = None,
        details: dict[str, Any] | None = None,
        at: datetime | None = None,
    ) -> None:
        """One move of the served model (`promoted` by the gate, `manual_promote`, `rollback`) in the
        audit trail: who moved it, from which version to which, and why. Kind `model_event`, no item."""
        with self.session() as session:
            session.add(
                AuditEvent(
                    item_id=None,
                    kind=MODEL_EVENT,
                    actor=actor,
                    action=action,
                    before=previous,
                    after=version,
                    model_version=version,
                    details={"reason": reason, **(details or {})},
                    created_at=store_time(at) if at is not None else _now(),
                )
            )

    def model_events(self) -> list[AuditRecord]:
        """Every recorded move of the served model, oldest first."""
        query = select(AuditEvent).where(AuditEvent.kind == MODEL_EVENT).order_by(AuditEvent.id)
        with self.session() as session:
            return [AuditRecord.of(a) for a in session.scalars(query).all()]

    def count(self, table: type[Base]) -> int:
        with self.session() as session:
            return int(session.scalar(select(func.count()).select_from(table)) or 0)

    def ping(self) -> None:
        """Raise when the database cannot be reached."""
        with self.session() as session:
            session.execute(select(1))

    # ------------------------------------------------------------ pushed tasks
    def pushed_item_ids(self, model_version: str, item_ids: Sequence[str]) -> set[str]:
        """Items whose task last got `model_version`'s decision: pushing it again changes nothing. An
        item pushed for this version and then for another (the champion was rolled back to it) needs it
        again."""
        found: set[str] = set()
        ids = list(dict.fromkeys(item_ids))
        with self.session() as session:
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                rows = session.execute(
                    select(PushedTask.item_id, PushedTask.model_version)
                    .where(PushedTask.item_id.in_(chunk))
                    .order_by(PushedTask.pushed_at, PushedTask.id)
                ).all()
                latest = {item: version for item, version in rows}
                found.update(item for item, version in latest.items() if version == model_version)
        return found

    def record_pushed(
        self, project_id: int, model_version: str, rows: Sequence[tuple[str, int, float]]
    ) -> None:
        """One ledger row per item and version (recording one twice raises `IntegrityError`: two
        deliveries of one decision). A version pushed again after another version's push (the champion
        was rolled back to it) has its row moved to the task it is on now, as the item's newest."""
        now = _now()
        with self.session() as session:
            for item_id, task_id, priority in rows:
                mine = aliased(PushedTask)
                followed = exists().where(
                    PushedTask.item_id == item_id,
                    PushedTask.model_version != model_version,
                    or_(
                        PushedTask.pushed_at > mine.pushed_at,
                        and_(PushedTask.pushed_at == mine.pushed_at, PushedTask.id > mine.id),
                    ),
                )
                row_id = session.scalar(
                    select(mine.id).where(
                        mine.item_id == item_id, mine.model_version == model_version, followed
                    )
                )
                if row_id is not None:
                    session.execute(
                        update(PushedTask)
                        .where(PushedTask.id == row_id)
                        .values(
                            project_id=project_id,
                            task_id=task_id,
                            priority=priority,
                            pushed_at=now,
                            closed_at=None,
                            close_reason=None,
                        )
                    )
                else:
                    session.add(
                        PushedTask(
                            item_id=item_id,
                            model_version=model_version,
                            project_id=project_id,
                            task_id=task_id,
                            priority=priority,
                            pushed_at=now,
                        )
                    )

    def open_task_ids(self, project_id: int, item_ids: Sequence[str]) -> dict[str, int]:
        """The newest task of each item in the project that has not been closed."""
        found: dict[str, int] = {}
        ids = list(dict.fromkeys(item_ids))
        with self.session() as session:
            for start in range(0, len(ids), 500):
                rows = session.execute(
                    select(PushedTask.item_id, PushedTask.task_id)
                    .where(
                        PushedTask.project_id == project_id,
                        PushedTask.item_id.in_(ids[start : start + 500]),
                        PushedTask.closed_at.is_(None),
                    )
                    .order_by(PushedTask.pushed_at, PushedTask.id)
                ).all()
                found.update({item: task for item, task in rows})
        return found

    def record_closed(
        self, project_id: int, model_version: str, rows: Sequence[tuple[str, int, str]]
    ) -> None:
        """Tasks deleted from Label Studio's queue: every ledger row of the item's task is closed with
        the reason, and the audit trail gets one `labelstudio_task` / `task_closed` event per task."""
        now = _now()
        with self.session() as session:
            for item_id, task_id, reason in rows:
                session.execute(
                    update(PushedTask)
                    .where(
                        PushedTask.project_id == project_id,
                        PushedTask.task_id == task_id,
                        # Label Studio on SQLite reuses a deleted task's id for the next import:
                        # the same id may name another item's task now.
                        PushedTask.item_id == item_id,
                    )
                    .values(closed_at=now, close_reason=reason)
                )
                session.add(
                    AuditEvent(
                        item_id=item_id,
                        kind=TASK_EVENT,
                        actor=f"model:{model_version}",
                        action="task_closed",
                        before=str(task_id),
                        after=None,
                        model_version=model_version,
                        details={"project_id": project_id, "task_id": task_id, "reason": reason},
                        created_at=now,
                    )
                )

    # ---------------------------------------------------------- reviewer tiers
    def senior_holds(self, project_id: int) -> list[SeniorHold]:
        """Tasks whose hold for a senior reviewer must change (`labeling.reviewers`): held while their
        live annotations are proposals only; released once one of them is a label (or none is left).

        A task is (task id, item id) within the project: Label Studio 1.23 on SQLite was seen handing out
        the id of a deleted task again (to a task of another project), so a task id alone may name an
        earlier, deleted task.
        """
        with self.session() as session:
            task_ids = session.scalars(
                select(Correction.task_id)
                .where(Correction.project_id == project_id, Correction.action == "proposed")
                .distinct()
            ).all()
            if not task_ids:
                return []
            states = session.scalars(
                select(Correction)
                .where(Correction.project_id == project_id, Correction.task_id.in_(task_ids))
                .order_by(*STATE_ORDER)
            ).all()
        held = self._hold_marks(project_id)
        latest: dict[tuple[int | None, str | None, int], Correction] = {}
        for state in states:
            latest[(state.task_id, state.item_id, state.annotation_id)] = state
        by_task: dict[tuple[int, str | None], list[Correction]] = {}
        for state in latest.values():
            if state.task_id is not None:
                by_task.setdefault((state.task_id, state.item_id), []).append(state)
        changes: list[SeniorHold] = []
        for (task_id, item_id), task_states in sorted(
            by_task.items(), key=lambda kv: (kv[0][0], kv[0][1] or "")
        ):
            labelled = any(s.action in ("created", "updated") for s in task_states)
            hold = not labelled and any(s.action == "proposed" for s in task_states)
            was_held, overlap = held.get((task_id, item_id), (False, 0))
            # Held for one more annotator, and another junior took that place: Label Studio counts the
            # task done and it leaves every queue, the seniors' too. Held again, for one more.
            annotators = {
                s.reviewer_id for s in task_states if s.action in ("proposed", "created", "updated")
            }
            outgrown = hold and was_held and len(annotators) >= overlap
            if hold != was_held or outgrown:
                changes.append(SeniorHold(task_id=task_id, item_id=item_id, hold=hold))
        return changes

    def held_for_senior(self, project_id: int) -> list[int]:
        """Task ids held open for a senior reviewer now (their last hold mark is a hold), oldest first."""
        return [task_id for (task_id, _), (held, _) in self._hold_marks(project_id).items() if held]

    def _hold_marks(self, project_id: int) -> dict[tuple[int, str | None], tuple[bool, int]]:
        """(task id, item id) -> (held, the overlap it was held with), from the last hold mark of each."""
        with self.session() as session:
            marks = session.scalars(
                select(AuditEvent)
                .where(AuditEvent.kind == TASK_EVENT, AuditEvent.action.in_((HELD, RELEASED)))
                .order_by(AuditEvent.id)
            ).all()
            return {
                (int(m.details.get("task_id", -1)), m.item_id): (
                    m.action == HELD,
                    int(m.details.get("overlap") or 0),
                )
                for m in marks
                if m.details.get("project_id") == project_id
            }

    def record_hold(self, project_id: int, change: SeniorHold, overlap: int) -> None:
        """The audit trail's record that a task was held for (or released by) a senior reviewer."""
        with self.session() as session:
            session.add(
                AuditEvent(
                    item_id=change.item_id,
                    kind=TASK_EVENT,
                    actor="hitl:reviewer-tiers",
                    action=HELD if change.hold else RELEASED,
                    before=str(change.task_id),
                    after=None,
                    details={"project_id": project_id, "task_id": change.task_id, "overlap": overlap},
                )
            )

    def pushed_tasks(self, model_version: str | None = None) -> dict[tuple[str, str], int]:
        query = select(PushedTask)
        if model_version is not None:
            query = query.where(PushedTask.model_version == model_version)
        with self.session() as session:
            return {(r.item_id, r.model_version): r.task_id for r in session.scalars(query).all()}

    # ---------------------------------------------------------------- projects
    def save_project(self, project_id: int, title: str, webhook_id: int | None, taxonomy: Taxonomy) -> None:
        """Record the project and the taxonomy its labels are judged by (`webhook_id` None keeps the
        webhook recorded before: a bootstrap records the taxonomy before it knows the webhook)."""
        with self.session() as session:
            row = session.get(LabelingProject, project_id)
            paths = [list(p) for p in taxonomy.paths]
            if row is None:
                session.add(
                    LabelingProject(project_id=project_id, title=title, webhook_id=webhook_id, taxonomy=paths)
                )
            else:
                row.title, row.taxonomy = title, paths
                row.updated_at = _now()  # set even when nothing else changed: `project_by_title` reads it
                if webhook_id is not None:
                    row.webhook_id = webhook_id

    def taxonomy(self, project_id: int) -> Taxonomy | None:
        with self.session() as session:
            row = session.get(LabelingProject, project_id)
            return Taxonomy.from_paths(row.taxonomy) if row is not None else None

    def widen_taxonomy(self, project_id: int, title: str, taxonomy: Taxonomy) -> None:
        """Judge labels by the recorded taxonomy and `taxonomy` together: a bootstrap calls this before
        it changes Label Studio's label config (`labeling.project.bootstrap_project`), since a reviewer
        may choose from either until the change lands, and from the old one if it fails. Its
        `save_project` then narrows it to `taxonomy`. (Two taxonomies where a leaf of one is a parent in
        the other cannot be one: `taxonomy` alone then.)"""
        recorded = self.taxonomy(project_id)
        widened = taxonomy
        if recorded is not None:
            try:
                widened = Taxonomy.from_paths([*recorded.paths, *taxonomy.paths])
            except ValueError:
                logger.warning(
                    "project %d: the old and the new taxonomy cannot be judged by together; the new one "
                    "applies from now",
                    project_id,
                )
        self.save_project(project_id, title, None, widened)

    def project_by_title(self, title: str) -> int | None:
        """The project a bootstrap recorded last under `title`: one deleted in Label Studio and created
        again under the same title leaves its old row (its sync runs point at it), which is not it."""
        with self.session() as session:
            return session.scalars(
                select(LabelingProject.project_id)
                .where(LabelingProject.title == title)
                .order_by(LabelingProject.updated_at.desc(), LabelingProject.project_id.desc())
            ).first()

    def record_sync(self, project_id: int, recorded: int, deleted: int) -> None:
        with self.session() as session:
            session.add(SyncRun(project_id=project_id, recorded=recorded, deleted=deleted))


@dataclass
class _WriteJob:
    """One `record_predictions` call waiting for the writer thread."""

    model_version: str
    rows: list[NewPrediction]
    requested_by: str | None
    on_escalated: EscalationHook | None
    future: Future[list[int]] = field(default_factory=Future)


class _GroupWriter:
    """The store's one prediction-writing thread: takes every waiting job, commits them together.

    Callers block on their job's future, so a response is never sent before its rows are committed,
    and `close` (app shutdown) first finishes every job already submitted: nothing is lost on drain.
    """

    def __init__(self, store: Store) -> None:
        self._store = store
        self._queue: queue.SimpleQueue[_WriteJob | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="store-writer", daemon=True)
        self._thread.start()

    def submit(self, job: _WriteJob) -> None:
        self._queue.put(job)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()

    def _run(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is None:
                break
            jobs, n_rows = [first], len(first.rows)
            while n_rows < _GROUP_MAX_ROWS:
                try:
                    job = self._queue.get_nowait()
                except queue.Empty:
                    break
                if job is None:
                    stopping = True  # finish this group, then stop: nothing submitted is dropped
                    break
                jobs.append(job)
                n_rows += len(job.rows)
            self._commit(jobs)

    def _commit(self, jobs: list[_WriteJob]) -> None:
        # From here on a job cannot be cancelled; one cancelled while it waited is not written.
        jobs = [job for job in jobs if job.future.running() or job.future.set_running_or_notify_cancel()]
        if not jobs:
            return
        try:
            with self._store.session() as session:
                ids = self._store._write_group(session, jobs)
        except BaseException as exc:
            if len(jobs) == 1:
                jobs[0].future.set_exception(exc)
                return
            # The type only: a database error's text carries the SQL parameters (item titles).
            logger.info("%d grouped writes failed (%s); retrying one by one", len(jobs), type(exc).__name__)
            for job in jobs:
                self._commit([job])
            return
        for job, mine in zip(jobs, ids, strict=True):
            job.future.set_result(mine)


def _sqlite_pragmas(dbapi_connection: object, _record: object) -> None:
    cursor = dbapi_connection.cursor()  # type: ignore[attr-defined]
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


__all__ = [
    "AppendOnlyError",
    "AuditEvent",
    "AuditRecord",
    "Correction",
    "CorrectionRecord",
    "EscalationHook",
    "Item",
    "ItemHistory",
    "LabelingProject",
    "ModelVersion",
    "NewPrediction",
    "OpenEscalation",
    "Prediction",
    "PredictionRecord",
    "PushedTask",
    "Store",
]
