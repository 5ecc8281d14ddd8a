"""The retrain worker: one thread, runs one at a time, triggers coalesce, the queue is a table."""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, select, update

from learner.bundle import ModelBundle
from learner.features import NgramMemo
from learner.pii import describe_error
from serving.escalation import escalation_windows, window_start
from serving.leader import LeaderLock, leader_lock
from serving.model import ModelHolder
from serving.retrain.job import RetrainJob, staging_dir
from serving.retrain.labels import (
    correction_watermark,
    count_new_corrections,
)
from serving.retrain.promotion import Promoter
from serving.retrain.tables import (
    FAILED,
    MAX_ERROR_CHARS,
    PROMOTED,
    QUEUED,
    REJECTED,
    RUNNING,
    RetrainRun,
    RunRecord,
    _now,
)
from serving.retrain.training import (
    CachedEmbedder,
    Embedder,
    TrainFn,
    default_train,
)
from serving.settings import AppSettings
from serving.store import Store, changed_one

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TriggerResult:
    run_id: int
    status: str  # queued | coalesced


class RetrainWorker:
    """One thread that runs retrains one at a time, coalescing triggers; see the module docstring.

    Parameters
    ----------
    settings, store : the app's
    holder : the serving model holder (hot swap right after a promotion); None outside the app
    embedder : texts -> embeddings (default: the configured encoder through the shared cache)
    embedder_for : the embedder of a champion trained on another encoder (default: its encoder,
        from its bundle or by name, through the shared cache)
    train_fn : the training function (tests inject failing or deliberately bad ones)
    auto : count new corrections and trigger every `retrain.retrain_every_n_corrections`
    """

    def __init__(
        self,
        settings: AppSettings,
        store: Store,
        holder: ModelHolder | None = None,
        *,
        embedder: Embedder | None = None,
        embedder_for: Callable[[ModelBundle], Embedder] | None = None,
        train_fn: TrainFn = default_train,
        auto: bool = True,
        leader: LeaderLock | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.holder = holder
        self._own_embedder = embedder is None
        self.embedder: Embedder = embedder or CachedEmbedder(settings)
        self.embedder_for = embedder_for
        self.ngram_memo = NgramMemo(settings.retrain.ngram_memo_texts)
        self.promoter = Promoter(settings, store, holder)
        self.train_fn = train_fn
        self.auto = auto
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_escalation_log = time.monotonic()
        self._escalation_logged_until = datetime.min.replace(tzinfo=UTC)  # closed windows logged before it
        # Among replicas sharing the database, only the holder of this lock runs queued retrains.
        self.leader = leader or leader_lock(store.engine, "retrain", settings.state_dir)

    # --------------------------------------------------------------------------------- triggers
    def trigger(self, reason: str) -> TriggerResult:
        """Queue a run, or fold `reason` into the run already waiting; never blocks on training."""
        reason = reason[:200]
        with self._lock, self.store.session() as session:
            queued = session.scalars(
                select(RetrainRun).where(RetrainRun.status == QUEUED).order_by(RetrainRun.id)
            ).first()
            # Conditional: another replica's leader may claim that run between this read and this
            # write, and a reason folded into a run already running would be lost.
            if queued is not None and changed_one(
                session.execute(
                    update(RetrainRun)
                    .where(RetrainRun.id == queued.id, RetrainRun.status == QUEUED)
                    .values(reasons=[*queued.reasons, reason])
                    .execution_options(synchronize_session=False)
                )
            ):
                result = TriggerResult(queued.id, "coalesced")
            else:
                row = RetrainRun(status=QUEUED, stage="queued", reasons=[reason], created_at=_now())
                session.add(row)
                session.flush()
                result = TriggerResult(row.id, "queued")
        self._wake.set()
        logger.info("retrain trigger %r -> run %d (%s)", reason, result.run_id, result.status)
        return result

    def __call__(self, reason: str) -> None:
        """`app.state.retrain_trigger`: the ML-backend's START_TRAINING calls this."""
        self.trigger(reason)

    def get(self, run_id: int) -> RunRecord | None:
        with self.store.session() as session:
            row = session.get(RetrainRun, run_id)
            return RunRecord.of(row) if row is not None else None

    def runs(self, limit: int = 20) -> list[RunRecord]:
        with self.store.session() as session:
            rows = session.scalars(select(RetrainRun).order_by(RetrainRun.id.desc()).limit(limit)).all()
            return [RunRecord.of(r) for r in rows]

    def wait(self, run_id: int, timeout: float = 120.0) -> RunRecord:
        """Block until the run finished (tests, CLI in-process); raises TimeoutError."""
        deadline = time.monotonic() + timeout
        while True:
            record = self.get(run_id)
            if record is not None and record.finished:
                return record
            if time.monotonic() > deadline:
                raise TimeoutError(f"retrain run {run_id} not finished after {timeout:.0f} s")
            time.sleep(0.05)

    # --------------------------------------------------------------------------------- the thread
    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="retrain-worker", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 60.0) -> bool:
        """Ask the thread to stop and wait up to `timeout` s; False if it is still running then.

        A run stops at its next step (`RetrainJob.should_stop`). A thread that outlives the wait keeps
        the leadership and the embedder it is using, and gives them up itself when it ends: releasing
        the lock under a running retrain would let another replica start a second one."""
        self._stop.set()
        self._wake.set()
        thread = self._thread
        if thread is None:
            self._give_up()
            return True
        thread.join(timeout)
        if thread.is_alive():
            logger.warning("retrain worker: still running %.0f s after stop; it ends after its step", timeout)
            return False
        self._thread = None
        return True

    def _give_up(self) -> None:
        """Leadership and the worker's own embedder, released by whoever ends the worker."""
        self.leader.release()
        if self._own_embedder and isinstance(self.embedder, CachedEmbedder):
            self.embedder.close()

    def _loop(self) -> None:
        interval = self.settings.retrain.poll_interval_s
        try:
            while not self._stop.is_set():
                try:
                    if self._lead() and not self.run_next():
                        self.promoter.retry_labelstudio()
                        self.promoter.retry_rescore()
                        self._maybe_auto_trigger()
                        self._maybe_log_escalation()
                except Exception as exc:  # keep the worker alive; the run row says what failed
                    logger.error("retrain worker: %s", describe_error(exc))
                if self._wake.wait(interval):
                    self._wake.clear()
        finally:
            self._give_up()

    def _lead(self) -> bool:
        """True while this replica is the retrain leader; taking the lead fails the runs a previous
        leader left 'running' (they can never finish)."""
        if self.leader.held:
            return True
        if not self.leader.try_acquire():
            return False
        orphaned: list[str] = []
        try:
            with self.store.session() as session:
                for row in session.scalars(select(RetrainRun).where(RetrainRun.status == RUNNING)).all():
                    row.status, row.error, row.finished_at = (
                        FAILED,
                        "interrupted (the server stopped)",
                        _now(),
                    )
                    if row.mlflow_run_id:
                        orphaned.append(row.mlflow_run_id)
        except Exception:
            # Leading without this cleanup would leave those runs "running" (and `hitl retrain` waiting)
            # for as long as this replica leads: let go, and take the lead with the cleanup next time.
            self.leader.release()
            raise
        for mlflow_run_id in orphaned:  # else they stay RUNNING in MLflow forever
            self._end_orphan(mlflow_run_id)
            # A killed run leaves its staged bundle (with a tuned encoder, ~90 MB) behind.
            shutil.rmtree(staging_dir(self.settings, mlflow_run_id), ignore_errors=True)
        self._resume_labelstudio_version()
        logger.info("this replica runs the retrain worker (leader)")
        return True

    def _resume_labelstudio_version(self) -> None:
        """A new leader makes sure Label Studio shows the champion's version: a promotion whose update
        of it failed was retried only by the process that made it (a restart, or a promotion by hand
        on another replica, left Label Studio on the old version)."""
        from serving import registry

        try:
            champion = registry.champion_version(self.settings)
        except Exception as exc:  # the registry is down: the next promotion sets it
            logger.warning("could not read the champion to update Label Studio: %s", describe_error(exc))
            return
        if champion is not None and self.promoter.pending_labelstudio is None:
            self.promoter.pending_labelstudio = registry.version_label(self.settings, champion)

    def _end_orphan(self, mlflow_run_id: str) -> None:
        from serving import tracking

        try:
            tracking.end_run(
                self.settings, mlflow_run_id, failed=True, error="interrupted (the server stopped)"
            )
        except Exception as exc:  # MLflow down: the row says FAILED already; MLflow is informative
            logger.warning("could not end MLflow run %s: %s", mlflow_run_id, describe_error(exc))

    def _claim(self) -> tuple[int, list[str]] | None:
        with self._lock, self.store.session() as session:
            row = session.scalars(
                select(RetrainRun).where(RetrainRun.status == QUEUED).order_by(RetrainRun.id)
            ).first()
            if row is None:
                return None
            done = session.execute(
                update(RetrainRun)
                .where(RetrainRun.id == row.id, RetrainRun.status == QUEUED)
                .values(
                    status=RUNNING,
                    stage="starting",
                    started_at=_now(),
                    correction_watermark=correction_watermark(self.store),
                )
                .execution_options(synchronize_session=False)
            )
            if not changed_one(done):  # claimed by another leader between the read and the update
                return None
            reasons = session.scalar(select(RetrainRun.reasons).where(RetrainRun.id == row.id))
            return row.id, list(reasons or [])

    def _update(self, run_id: int, **values: Any) -> None:
        with self.store.session() as session:
            row = session.get(RetrainRun, run_id)
            if row is not None:
                for key, value in values.items():
                    setattr(row, key, value)

    def run_next(self) -> bool:
        """Run the oldest queued run, if any (in the calling thread); True when one ran."""
        claimed = self._claim()
        if claimed is None:
            return False
        run_id, reasons = claimed
        trigger = ", ".join(dict.fromkeys(reasons)) or "manual"
        job = RetrainJob(
            self.settings,
            self.store,
            self.embedder,
            self.promoter,
            self.train_fn,
            on_stage=lambda stage: self._update(run_id, stage=stage),
            on_record=lambda **values: self._update(run_id, **values),
            ngram_memo=self.ngram_memo,
            embedder_for=self.embedder_for,
            should_stop=self._stop.is_set,
        )
        try:
            outcome = job.run(trigger)
        except Exception as exc:
            error = describe_error(exc, MAX_ERROR_CHARS)
            logger.error("retrain run %d failed: %s", run_id, error)
            self._update(
                run_id,
                status=FAILED,
                stage="failed",
                error=error,
                finished_at=_now(),
                mlflow_run_id=job.mlflow_run_id,
            )
            return True
        self._update(
            run_id,
            status=PROMOTED if outcome.get("promoted") else REJECTED,
            stage="done",
            finished_at=_now(),
            n_labels=outcome.get("n_labels"),
            mlflow_run_id=outcome.get("mlflow_run_id"),
            version=outcome.get("version"),
            promoted=bool(outcome.get("promoted")),
            gate_reason=outcome.get("gate_reason"),
            metrics=outcome.get("metrics", {}),
            correction_watermark=outcome.get("correction_watermark"),
        )
        self._log_escalation()
        return True

    def _maybe_auto_trigger(self) -> None:
        n = self.settings.retrain.retrain_every_n_corrections
        if not self.auto or n <= 0:
            return
        with self.store.session() as session:
            if session.scalars(select(RetrainRun.id).where(RetrainRun.status == QUEUED)).first() is not None:
                return
            # A failed run (MLflow down, a crash) did not use up its corrections: they count again, but
            # only once `retry_failed_after_s` has passed since the last failure, so a cause that lasts
            # is retried now and then, not in a loop.
            last = session.scalar(
                select(func.max(RetrainRun.correction_watermark)).where(RetrainRun.status != FAILED)
            )
            failed_at = session.scalar(
                select(func.max(RetrainRun.finished_at)).where(
                    RetrainRun.status == FAILED, RetrainRun.correction_watermark > int(last or 0)
                )
            )
        new = count_new_corrections(self.store, int(last or 0))
        if new < n:
            return
        if failed_at is None:
            self.trigger(f"corrections:{new}")
        elif (_now() - failed_at).total_seconds() >= self.settings.retrain.retry_failed_after_s:
            self.trigger(f"corrections:{new} (retry after a failed run)")

    def _maybe_log_escalation(self) -> None:
        every = self.settings.retrain.escalation_log_interval_s
        if every > 0 and time.monotonic() - self._last_escalation_log >= every:
            self._log_escalation()

    def _log_escalation(self) -> None:
        from serving import tracking

        self._last_escalation_log = time.monotonic()
        window = self.settings.dashboard.window_s
        # Only windows that have closed, each once: MLflow keeps every value logged at a step and shows
        # the largest as the latest, so an open window's partial rates would stand for its final one.
        until = window_start(datetime.now(UTC), window).replace(tzinfo=UTC)
        since = max(until - timedelta(seconds=window * 24), self._escalation_logged_until)
        try:
            windows = escalation_windows(self.store, window_s=window, since=since, until=until)
            if windows:
                tracking.log_escalation_windows(self.settings, windows)
            self._escalation_logged_until = until
        except Exception as exc:
            logger.warning("could not log escalation rates: %s", type(exc).__name__)

    @property
    def busy(self) -> bool:
        with self.store.session() as session:
            return (
                session.scalars(select(RetrainRun.id).where(RetrainRun.status.in_((QUEUED, RUNNING)))).first()
                is not None
            )
