"""The outbox of escalations to Label Studio: written with the prediction, delivered in the background.

`enqueue_escalations` only adds rows to the caller's session, so an escalation exists exactly when the
prediction that caused it was committed. `OutboxWorker.run_once` takes due pending rows (highest priority
first), pushes them with `labeling.push.push_escalations` (whose ledger, the store's pushed tasks, stops a
second import of the same item and model version) and marks them delivered with their task id.

One task per item across model versions: a newer version's entry supersedes the item's pending older
ones (status `superseded`, never delivered); delivering it puts the newer prediction on the item's open
task instead of importing a second one; a `close` entry (written when a promotion's re-scoring
auto-accepts the item) deletes the open task, and the store records when and why.

Failures never lose an entry:
- Label Studio down, 5xx, 401/403/404/408/429 -> the entry stays `pending`, `attempts` + 1, and
  `next_attempt_at` moves by an exponential backoff with jitter (`outbox_base_backoff_s` doubling up to
  `outbox_max_backoff_s`); a retry first looks for tasks the failed attempt made after all (a timeout
  after Label Studio committed the import) and adopts them rather than importing the items twice;
- a label outside the project's taxonomy, or an import Label Studio refuses on its own (400/413/422 for
  that single entry) -> `dead`, with `last_error`; it stays in the table for an operator;
- the project not bootstrapped yet -> nothing is attempted, entries stay pending (logged once).

Replicas share the outbox: each due entry is claimed by exactly one pass (`OutboxWorker._claim`, an
UPDATE that succeeds only while the entry is still due; on PostgreSQL the rows are also locked) and
held for `serving.outbox_claim_s`. A pass that outlives its claim can still meet another replica's
delivery of the same entry: the pushed-task ledger and the adoption of lost imports keep that to one
task per item.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from sqlalchemy import (
    JSON,
    ColumnElement,
    DateTime,
    Float,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    and_,
    exists,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Mapped, Session, aliased, mapped_column

from labeling.client import LabelStudioClient
from labeling.config import Taxonomy
from labeling.exceptions import LabelingError, LabelStudioApiError
from labeling.push import Escalation, push_escalations
from learner.pii import describe_error
from serving.settings import AppSettings
from serving.store import Base, PushedTask, Store, changed_one

logger = logging.getLogger(__name__)

Status = Literal["pending", "delivered", "dead", "superseded"]
PENDING: Status = "pending"
DELIVERED: Status = "delivered"
DEAD: Status = "dead"
SUPERSEDED: Status = "superseded"  # a newer model version's entry for the same item replaced it

# Label Studio answers that retrying will not fix (for a single task); everything else is retried.
PERMANENT_STATUSES = frozenset({400, 413, 422})
MAX_ERROR_CHARS = 300


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


class OutboxEntry(Base):
    """One escalation waiting for (or done with) delivery to Label Studio. Timestamps are naive UTC."""

    __tablename__ = "outbox"
    __table_args__ = (
        UniqueConstraint("item_id", "model_version", name="uq_outbox_item_version"),
        Index("ix_outbox_due", "status", "next_attempt_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    item_id: Mapped[str] = mapped_column(String(255))
    model_version: Mapped[str] = mapped_column(String(255))
    priority: Mapped[float] = mapped_column(Float)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)  # `Escalation.model_dump(mode="json")`
    status: Mapped[str] = mapped_column(String(16), default=PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime, default=_now)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=_now)
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime)
    task_id: Mapped[int | None] = mapped_column(Integer)


def enqueue_escalations(session: Session, escalations: Sequence[Escalation], model_version: str) -> int:
    """Add the escalations of one prediction run to `session` (no commit); returns how many are new.

    An (item, model version) already in the outbox, or repeated in `escalations`, is skipped, unless
    another version's entry for the item came after it (the champion was rolled back to this version):
    that entry is made pending again with the new decision, and delivered like a new one. On SQLite
    and PostgreSQL the insert is also `ON CONFLICT DO NOTHING`, so a concurrent transaction enqueueing the
    same item cannot make the caller's commit fail.
    """
    wrong = sorted({e.model_version for e in escalations} - {model_version})
    if wrong:
        raise ValueError(
            f"{len(wrong)} escalation model version(s) differ from {model_version!r}: {wrong[:3]}"
        )
    fresh: dict[str, Escalation] = {}
    for esc in escalations:
        if esc.item_id not in fresh or esc.priority > fresh[esc.item_id].priority:
            fresh[esc.item_id] = esc
    now = _now()
    revived: dict[str, Escalation] = {}
    ids = list(fresh)
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        other = aliased(OutboxEntry)
        followed = exists().where(
            other.item_id == OutboxEntry.item_id,
            other.model_version != OutboxEntry.model_version,
            or_(
                other.created_at > OutboxEntry.created_at,
                and_(other.created_at == OutboxEntry.created_at, other.id > OutboxEntry.id),
            ),
        )
        known = session.execute(
            select(OutboxEntry.item_id, OutboxEntry.id, followed).where(
                OutboxEntry.model_version == model_version, OutboxEntry.item_id.in_(chunk)
            )
        ).all()
        for item_id, entry_id, was_followed in known:
            esc = fresh.pop(item_id)
            if was_followed:
                # This version's entry was followed by another version's (a rollback to it): its task
                # must move back, so the entry is delivered again with the new decision.
                revived[item_id] = esc
                session.execute(
                    update(OutboxEntry)
                    .where(OutboxEntry.id == entry_id)
                    .values(
                        status=PENDING,
                        priority=esc.priority,
                        payload=esc.model_dump(mode="json"),
                        attempts=0,
                        next_attempt_at=now,
                        last_error=None,
                        delivered_at=None,
                        created_at=now,  # the item's newest entry again
                    )
                )
    if not fresh and not revived:
        return 0
    ids = list(fresh) + list(revived)
    for start in range(0, len(ids), 500):
        # One task per item: only the newest decision about an item is delivered.
        session.execute(
            update(OutboxEntry)
            .where(
                OutboxEntry.item_id.in_(ids[start : start + 500]),
                OutboxEntry.status == PENDING,
                OutboxEntry.model_version != model_version,
            )
            .values(status=SUPERSEDED, last_error=f"superseded by model version {model_version}")
        )
    rows = [
        {
            "item_id": esc.item_id,
            "model_version": model_version,
            "priority": esc.priority,
            "payload": esc.model_dump(mode="json"),
            "status": PENDING,
            "attempts": 0,
            "next_attempt_at": now,
            "created_at": now,
        }
        for esc in fresh.values()
    ]
    if not rows:
        return len(revived)
    dialect = session.get_bind().dialect.name
    if dialect in ("sqlite", "postgresql"):
        insert = sqlite.insert if dialect == "sqlite" else postgresql.insert
        for start in range(0, len(rows), 500):
            statement = insert(OutboxEntry).on_conflict_do_nothing(
                index_elements=["item_id", "model_version"]
            )
            session.execute(statement, rows[start : start + 500])
    else:
        session.add_all(OutboxEntry(**row) for row in rows)
    return len(rows) + len(revived)


def backoff_delay(attempts: int, base_s: float, cap_s: float, rng: random.Random) -> float:
    """Seconds to wait after the `attempts`-th failure: "equal jitter" over `min(cap, base * 2^(n-1))`.

    Always within [ceiling / 2, ceiling], so retries spread out without ever retrying immediately.
    """
    ceiling = min(cap_s, base_s * 2.0 ** max(0, attempts - 1))
    return ceiling / 2 + rng.uniform(0.0, ceiling / 2)


@dataclass
class DeliveryReport:
    """What one `run_once` did."""

    attempted: int = 0
    delivered: int = 0
    failed: int = 0  # still pending, retried later
    dead: int = 0
    held: int = 0  # tasks held open for a senior reviewer, or released (`labeling.reviewers`)
    waiting_for_project: bool = False
    errors: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Due:
    id: int
    attempts: int
    escalation: Escalation
    # Claimed by an earlier pass that never marked it (a crash, or a pass outliving its claim): its
    # import may have landed, so it is looked for before importing it again.
    claimed_before: bool = False

    @property
    def retried(self) -> bool:
        return self.attempts > 0 or self.claimed_before


def _short(exc: BaseException) -> str:
    # Our client's errors name the operation and status, never the token; still masked and short.
    return describe_error(exc, MAX_ERROR_CHARS)


def _permanent(exc: BaseException) -> bool:
    return isinstance(exc, LabelStudioApiError) and exc.status in PERMANENT_STATUSES


def _due_at(now: datetime) -> ColumnElement[bool]:
    """Pending entries whose next attempt (or the claim of a pass) has come."""
    return and_(OutboxEntry.status == PENDING, OutboxEntry.next_attempt_at <= now)


def _with_similar(
    fill: Callable[[Sequence[Escalation]], list[Escalation]], entries: list[_Due]
) -> list[_Due]:
    try:
        filled = fill([e.escalation for e in entries])
    except Exception as exc:  # a task without similar items beats a task not delivered
        # No traceback: its frames' messages can quote item text. The masked error names the cause.
        logger.error(
            "outbox: similar labelled items could not be found (%s); pushing without them",
            describe_error(exc),
        )
        return entries
    return [replace(e, escalation=esc) for e, esc in zip(entries, filled, strict=True)]


class OutboxWorker:
    """Delivers due outbox entries; `run_once()` for one pass, `start()`/`stop()` for a background thread.

    `client_factory` builds a Label Studio client per pass (closed afterwards); `clock` and `rng` are
    injectable so tests can check the retry schedule.
    """

    def __init__(
        self,
        store: Store,
        settings: AppSettings,
        client_factory: Callable[[], LabelStudioClient] | None = None,
        *,
        clock: Callable[[], datetime] = _now,
        rng: random.Random | None = None,
        similar: Callable[[Sequence[Escalation]], list[Escalation]] | None = None,
    ) -> None:
        self.store = store
        self.similar = similar  # fills each task's similar labelled items (`serving.similar`)
        self.settings = settings
        self.client_factory = client_factory or (
            lambda: LabelStudioClient.from_settings(settings.labelstudio)
        )
        self.clock = clock
        self.rng = rng or random.Random()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._warned_no_project = False
        self._lease_until: datetime | None = None  # the claim of the current pass

    # ------------------------------------------------------------ one pass
    def run_once(self) -> DeliveryReport:
        with self._lock:
            return self._run_once()

    def _run_once(self) -> DeliveryReport:
        report = DeliveryReport()
        self._apply_senior_holds(report)
        now = self.clock()
        title = self.settings.labelstudio.project_title
        project_id = self.store.project_by_title(title)
        taxonomy = self.store.taxonomy(project_id) if project_id is not None else None
        if project_id is None or taxonomy is None:
            waiting = self._count_due(now)  # counted, not claimed: they go as soon as the project exists
            report.waiting_for_project = waiting > 0
            if waiting and not self._warned_no_project:
                logger.warning(
                    "outbox: %d escalation(s) wait: Label Studio project %r is not bootstrapped yet",
                    waiting,
                    title,
                )
                self._warned_no_project = True
            return report
        self._warned_no_project = False
        due = self._due(now)
        if not due:
            return report

        def fits(entry: _Due) -> bool:  # a close needs no label; a task needs one of the project's
            return entry.escalation.action == "close" or entry.escalation.predicted_label in taxonomy

        deliverable = [d for d in due if fits(d)]
        for entry in due:
            if not fits(entry):
                self._mark_dead(entry, f"label not in the project's {len(taxonomy)} categories", now)
                report.dead += 1
        if not deliverable:
            return report
        if self.similar is not None:
            deliverable = _with_similar(self.similar, deliverable)
        batch_size = self.settings.labelstudio.push_batch_size
        client = self.client_factory()
        try:
            for start in range(0, len(deliverable), batch_size):
                chunk = deliverable[start : start + batch_size]
                if self._stop.is_set():  # shutting down: the rest go on the next start, at once
                    self._release(deliverable[start:])
                    break
                self._deliver(client, project_id, taxonomy, chunk, report, split=True)
        finally:
            client.close()
        if report.failed:
            logger.warning(
                "outbox: %d delivered, %d will be retried (%s)",
                report.delivered,
                report.failed,
                report.errors[-1] if report.errors else "",
            )
        elif report.delivered or report.dead:
            logger.info("outbox: %d delivered, %d dead", report.delivered, report.dead)
        return report

    def _apply_senior_holds(self, report: DeliveryReport) -> None:
        """Keep tasks with only a junior's proposal in the queue for a senior, and let a senior's label
        finish them. State-based, so a pass that fails (Label Studio down) is simply redone."""
        project_id = self.store.project_by_title(self.settings.labelstudio.project_title)
        if project_id is None:
            return
        changes = self.store.senior_holds(project_id)
        if not changes:
            return
        client = self.client_factory()
        try:
            for change in changes:
                if self._stop.is_set():  # recomputed from the store on the next pass
                    break
                try:
                    held = client.hold_task(
                        change.task_id, hold=change.hold, item_id=change.item_id, project_id=project_id
                    )
                except LabelStudioApiError as exc:
                    if exc.status != 404:
                        raise
                    held = None
                # None: the task is gone from Label Studio (or its id now holds another item's task):
                # nothing left to hold
                overlap = 0 if held is None else held
                self.store.record_hold(project_id, change, overlap)
                report.held += 1
        except LabelingError as exc:
            report.errors.append(_short(exc))
            logger.warning(
                "outbox: holding tasks for senior reviewers failed, retried next pass: %s",
                describe_error(exc),
            )
        finally:
            client.close()

    def _count_due(self, now: datetime) -> int:
        with self.store.session() as session:
            return int(session.scalar(select(func.count()).select_from(OutboxEntry).where(_due_at(now))) or 0)

    def _due(self, now: datetime) -> list[_Due]:
        """Claim the due entries: locked rows another replica is claiming are skipped (PostgreSQL's
        `FOR UPDATE SKIP LOCKED`; SQLite serializes writers), and each claimed entry is not due again for
        `serving.outbox_claim_s`, so no two replicas deliver it; a replica that dies mid-delivery leaves
        its entries to the others after that."""
        with self.store.session() as session:
            rows = session.scalars(
                select(OutboxEntry)
                .where(_due_at(now))
                .order_by(OutboxEntry.priority.desc(), OutboxEntry.id)
                .limit(self.settings.serving.outbox_batch_size)
                .with_for_update(skip_locked=True)
            ).all()
            return self._claim(session, list(rows), now)

    def _claim(self, session: Session, rows: list[OutboxEntry], now: datetime) -> list[_Due]:
        """Take `rows` for this pass: each with an UPDATE that only succeeds while the row is still
        due, so of two replicas that read the same rows (SQLite has no row locks: both SELECTs can run
        before either writes) exactly one gets each."""
        lease_until = now + timedelta(seconds=self.settings.serving.outbox_claim_s)
        self._lease_until = lease_until
        taken: list[_Due] = []
        for row in rows:
            won = session.execute(
                update(OutboxEntry)
                .where(OutboxEntry.id == row.id, _due_at(now))
                .values(next_attempt_at=lease_until)
                .execution_options(synchronize_session=False)
            )
            if changed_one(won):
                # A claim moves next_attempt_at past created_at, which an unclaimed entry never has.
                before = row.next_attempt_at > row.created_at
                taken.append(_Due(row.id, row.attempts, Escalation.model_validate(row.payload), before))
        return taken

    def _deliver(
        self,
        client: LabelStudioClient,
        project_id: int,
        taxonomy: Taxonomy,
        chunk: list[_Due],
        report: DeliveryReport,
        *,
        split: bool,
    ) -> None:
        report.attempted += len(chunk)
        try:
            push = push_escalations(
                client,
                self.store,
                project_id,
                taxonomy,
                [d.escalation for d in chunk],
                batch_size=len(chunk),
                senior_review=bool(self.settings.labelstudio.senior_reviewers),
                # A retried entry's earlier import may have landed though its answer was lost (a
                # timeout): find its task instead of importing a second one.
                adopt_existing=any(d.retried for d in chunk),
                should_stop=self._stop.is_set,
            )
        except Exception as exc:  # any failure keeps the entries; only the kind decides retry vs dead
            if not isinstance(exc, LabelingError | OSError | ValueError):
                logger.error("outbox: unexpected %s while pushing %d entries", type(exc).__name__, len(chunk))
            if _permanent(exc) and split and len(chunk) > 1:
                # One bad task refuses the whole import: find it by pushing one at a time.
                report.attempted -= len(chunk)
                for index, entry in enumerate(chunk):
                    if self._stop.is_set():
                        self._release(chunk[index:])
                        break
                    self._deliver(client, project_id, taxonomy, [entry], report, split=False)
                return
            error = _short(exc)
            report.errors.append(error)
            now = self.clock()
            for entry in chunk:
                if _permanent(exc):
                    self._mark_dead(entry, error, now)
                    report.dead += 1
                else:
                    self._mark_retry(entry, error, now)
                    report.failed += 1
            return
        task_ids = dict(push.task_ids)
        if push.stopped:  # a shutdown: what was delivered is recorded, the rest is released
            done = [d for d in chunk if d.escalation.item_id in task_ids]
            self._mark_delivered(done, task_ids)
            self._release([d for d in chunk if d.escalation.item_id not in task_ids])
            report.attempted -= len(chunk) - len(done)
            report.delivered += len(done)
            return
        missing = [d for d in chunk if d.escalation.item_id not in task_ids]
        if missing:  # pushed earlier (e.g. before a crash): the ledger knows their task ids
            task_ids.update(self._ledger_task_ids(missing))
        self._mark_delivered(chunk, task_ids)
        report.delivered += len(chunk)

    # ------------------------------------------------------------ state changes
    def _ledger_task_ids(self, entries: list[_Due]) -> dict[str, int]:
        found: dict[str, int] = {}
        with self.store.session() as session:
            for entry in entries:
                task_id = session.scalars(
                    select(PushedTask.task_id).where(
                        PushedTask.item_id == entry.escalation.item_id,
                        PushedTask.model_version == entry.escalation.model_version,
                    )
                ).first()
                if task_id is not None:
                    found[entry.escalation.item_id] = task_id
        return found

    def _mark_delivered(self, entries: list[_Due], task_ids: dict[str, int]) -> None:
        now = self.clock()
        with self.store.session() as session:
            for entry in entries:
                session.execute(
                    update(OutboxEntry)
                    .where(OutboxEntry.id == entry.id)
                    .values(
                        status=DELIVERED,
                        attempts=entry.attempts + 1,
                        delivered_at=now,
                        task_id=task_ids.get(entry.escalation.item_id),
                        last_error=None,
                    )
                )

    def _release(self, entries: Sequence[_Due]) -> None:
        """Give back this pass's claim on `entries`, untried: due again now, attempts unchanged. Only
        while the claim is still this pass's: past it, another replica may have taken them."""
        if not entries or self._lease_until is None:
            return
        with self.store.session() as session:
            session.execute(
                update(OutboxEntry)
                .where(
                    OutboxEntry.id.in_([e.id for e in entries]),
                    OutboxEntry.status == PENDING,
                    OutboxEntry.next_attempt_at == self._lease_until,
                )
                .values(next_attempt_at=self.clock())
            )

    def _mark_retry(self, entry: _Due, error: str, now: datetime) -> None:
        attempts = entry.attempts + 1
        delay = backoff_delay(
            attempts,
            self.settings.serving.outbox_base_backoff_s,
            self.settings.serving.outbox_max_backoff_s,
            self.rng,
        )
        with self.store.session() as session:
            session.execute(
                update(OutboxEntry)
                .where(OutboxEntry.id == entry.id)
                .values(
                    attempts=attempts,
                    next_attempt_at=now + timedelta(seconds=delay),
                    last_error=error,
                )
            )

    def _mark_dead(self, entry: _Due, error: str, now: datetime) -> None:
        with self.store.session() as session:
            session.execute(
                update(OutboxEntry)
                .where(OutboxEntry.id == entry.id)
                .values(status=DEAD, attempts=entry.attempts + 1, last_error=error[:MAX_ERROR_CHARS])
            )
        logger.warning(
            "outbox: entry %d (item %s) is dead: %s", entry.id, entry.escalation.item_id, error[:120]
        )

    # ------------------------------------------------------------ background thread
    def start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="hitl-outbox", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> bool:
        """Ask the thread to stop (a pass stops between two Label Studio changes) and wait up to
        `timeout` s; False if it is still running then (a Label Studio call that hangs)."""
        self._stop.set()
        thread = self._thread
        if thread is None:
            return True
        thread.join(timeout)
        if thread.is_alive():
            # Kept: a `start` meanwhile must not run a second thread beside it.
            logger.warning("outbox: still running %.0f s after stop (a Label Studio call hangs)", timeout)
            return False
        self._thread = None
        return True

    def _loop(self) -> None:
        interval = self.settings.serving.outbox_interval_s
        while not self._stop.is_set():
            try:
                self.run_once()
            except Exception as exc:  # the loop must survive a database hiccup
                logger.error("outbox pass failed: %s", _short(exc))
            self._stop.wait(interval)


def outbox_counts(store: Store) -> dict[str, int]:
    """Entries per status (for metrics and tests)."""
    with store.session() as session:
        rows = session.execute(select(OutboxEntry.status, func.count()).group_by(OutboxEntry.status)).all()
    counts: dict[str, int] = {PENDING: 0, DELIVERED: 0, DEAD: 0}
    counts.update({status: int(n) for status, n in rows})
    return counts


__all__ = [
    "DeliveryReport",
    "OutboxEntry",
    "OutboxWorker",
    "backoff_delay",
    "enqueue_escalations",
    "outbox_counts",
]
