"""The retraining loop: corrections -> new model version -> gated promotion -> hot swap.

The loop's policy is `learner.loop`'s, the same one the simulations run; this module is its production
adapter (the store, the embedding cache, MLflow, the promoter).

Labels = seed labels (our own table, written by `hitl up`) + stored corrections, where the latest label
per item wins (a correction overrides a seed label), each with its provenance (`collect_labels`):
- **audits** (seed labels drawn by id hash, and routed items drawn into the audit sample with a
  logged probability) certify the challenger's threshold (`learner.certify`, over the stream of routed
  items the audits came from) and are the gate's paired holdout. They are never trained on, so every
  version is certified only on audits it did not see;
- every other label trains.

One run = collect -> embed (the shared embedding cache) -> train head + temperature -> certify on the
audits -> score challenger AND champion on the same audits -> log to MLflow and register a version ->
paired gate (`learner.gate`) -> promote (alias, hot swap, Label Studio model_version, re-score open
escalations) -> PNG artifacts. Any exception before the promotion leaves the champion untouched; the
MLflow run ends FAILED and our run row says why.

`RetrainWorker` owns ONE thread: runs execute one at a time; triggers that arrive while a run is queued
or running coalesce into one follow-up run (the queue is a table, so runs and their outcome survive a
restart and can be read by the API). The thread also counts new corrections for the every-N trigger and
periodically logs escalation rates to MLflow. Nothing here runs inside a request.
"""

from __future__ import annotations

import logging
import math
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray
from sqlalchemy import JSON, Boolean, DateTime, Integer, String, Text, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Mapped, mapped_column

from hitl.settings import Settings
from learner import loop
from learner.bundle import ModelBundle
from learner.cache import EmbeddingCache
from learner.data import Product, item_text
from learner.encoder import HFEncoder, TextEncoder
from learner.evaluation import EvaluationReport, evaluate
from learner.gate import AuditScores, GateDecision, audit_scores, paired_gate
from learner.loop import AuditPolicy, Provenance
from learner.training import AuditDesign, TrainingConfig, TrainingResult, train_bundle
from serving.model import LoadedModel, ModelHolder
from serving.store import AuditEvent, Base, Correction, Item, Prediction, Store
from serving.tracking import EscalationWindow

logger = logging.getLogger(__name__)

RESCORE_ACTOR = "retrain:rescore"
STREAM_CHUNK = 2048  # stream items embedded and scored at a time when certifying
USABLE_ACTIONS = ("created", "updated")
MAX_ERROR_CHARS = 500

QUEUED, RUNNING, SUCCEEDED, REJECTED, FAILED = "queued", "running", "promoted", "rejected", "failed"
FINISHED_STATUSES = frozenset({SUCCEEDED, REJECTED, FAILED})


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


# ------------------------------------------------------------------------------------------------ tables


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


# ------------------------------------------------------------------------------------------ data + splits


@dataclass(frozen=True)
class LabeledText:
    item_id: str
    text: str
    label: str
    source: str  # seed | correction
    provenance: str = Provenance.SEED.value  # learner.loop.Provenance
    inclusion: float | None = None  # the audit draw's probability, for audits


@dataclass(frozen=True)
class StreamItem:
    """An item the audits were drawn from (seed or routed), with its inclusion probability."""

    item_id: str
    text: str
    inclusion: float


def add_seed_labels(store: Store, products: Sequence[Product], *, level: int) -> int:
    """Store labelled products as seed labels (idempotent: a known item id keeps its row)."""
    from learner.data import label_of

    rows = [
        {
            "item_id": p.id,
            "title": p.title,
            "description": p.description,
            "brand": p.brand,
            "label": label_of(p, level),
            "added_at": _now(),
        }
        for p in products
        if p.category
    ]
    if not rows:
        return 0
    before = seed_count(store)
    with store.session() as session:
        dialect = session.get_bind().dialect.name
        insert = sqlite.insert if dialect == "sqlite" else postgresql.insert
        for start in range(0, len(rows), 500):
            session.execute(insert(SeedLabel).on_conflict_do_nothing(), rows[start : start + 500])
    return seed_count(store) - before


def seed_count(store: Store) -> int:
    with store.session() as session:
        return int(session.scalar(select(func.count()).select_from(SeedLabel)) or 0)


def correction_watermark(store: Store) -> int:
    with store.session() as session:
        return int(session.scalar(select(func.max(Correction.id))) or 0)


def count_new_corrections(store: Store, after_id: int) -> int:
    """Usable correction states (created/updated with a label) stored after correction id `after_id`."""
    with store.session() as session:
        return int(
            session.scalar(
                select(func.count())
                .select_from(Correction)
                .where(
                    Correction.id > after_id,
                    Correction.action.in_(USABLE_ACTIONS),
                    Correction.label.is_not(None),
                )
            )
            or 0
        )


@dataclass(frozen=True)
class FirstRouting:
    """An item's first routed prediction: when, and whether (with what probability) it was audited."""

    created_at: datetime
    inclusion: float | None
    audited: bool


def first_routings(store: Store) -> dict[str, FirstRouting]:
    """item id -> its first routed prediction (re-scores excluded): the audit draw happens there."""
    from serving.routing import AUDIT_REASONS

    query = (
        select(Prediction.item_id, Prediction.created_at, Prediction.audit_probability, Prediction.reasons)
        .where((Prediction.requested_by.is_(None)) | (Prediction.requested_by != RESCORE_ACTOR))
        .order_by(Prediction.id)
    )
    out: dict[str, FirstRouting] = {}
    with store.session() as session:
        for item_id, created, inclusion, reasons in session.execute(query).all():
            if item_id not in out:
                audited = inclusion is not None and bool(AUDIT_REASONS.intersection(reasons or []))
                out[item_id] = FirstRouting(created, inclusion, audited)
    return out


def _texts(store: Store, ids: Sequence[str]) -> dict[str, str]:
    texts: dict[str, str] = {}
    with store.session() as session:
        for start in range(0, len(ids), 500):
            chunk = list(ids[start : start + 500])
            query = select(Item.id, Item.title, Item.description, Item.brand).where(Item.id.in_(chunk))
            for item_id, title, description, brand in session.execute(query).all():
                product = Product(id=item_id, title=title, description=description, brand=brand)
                texts[item_id] = item_text(product)
    return texts


@dataclass(frozen=True)
class CollectedLabels:
    labels: list[LabeledText]  # sorted by item id
    stream: list[StreamItem]
    watermark: int
    audit_cutoff: datetime | None  # routed audits and stream items from here on wait for a later run
    unreviewed_audits: int


def collect_labels(store: Store, policy: AuditPolicy | None = None) -> CollectedLabels:
    """Seed labels + current corrections (latest per item wins), each with its provenance, and the
    stream the audits were drawn from.

    Seed labels drawn by `AuditPolicy.seed_audit` are seed audits (inclusion ``seed_share``); a
    corrected item whose first routing drew it into the audit is an audit (its logged probability).
    An audit nobody has reviewed yet would bias the sample if it were simply left out (reviewers
    might skip the hard ones), so the stream is cut at the first routed audit still unreviewed:
    routed items from that moment on, and the audits among them, wait for a later run.
    """
    policy = policy or AuditPolicy()
    watermark = correction_watermark(store)
    by_item: dict[str, LabeledText] = {}
    with store.session() as session:  # plain rows, not ORM objects: 20k seed rows load in ~0.1 s
        columns = (SeedLabel.item_id, SeedLabel.title, SeedLabel.description, SeedLabel.brand)
        seeds = session.execute(select(*columns, SeedLabel.label)).all()
    seed_ids = [row[0] for row in seeds]
    seed_audit = policy.seed_audit(seed_ids)
    for (item_id, title, description, brand, label), is_audit in zip(seeds, seed_audit, strict=True):
        product = Product(id=item_id, title=title, description=description, brand=brand)
        by_item[item_id] = LabeledText(
            item_id,
            item_text(product),
            label,
            "seed",
            Provenance.SEED_AUDIT.value if is_audit else Provenance.SEED.value,
            policy.seed_share if is_audit else None,
        )
    current = store.current_labels()
    routings = first_routings(store)
    pending = [r.created_at for i, r in routings.items() if r.audited and i not in current]
    cutoff = min(pending) if pending else None
    texts = _texts(store, list(set(current) | set(routings)))
    for item_id, record in current.items():
        if record.label is None:
            continue
        text = texts.get(item_id) or (by_item[item_id].text if item_id in by_item else None)
        if text is None:  # reviewed in Label Studio but never predicted here: no text to learn from
            continue
        routing = routings.get(item_id)
        if routing is not None and routing.audited:
            if cutoff is not None and routing.created_at >= cutoff:
                continue  # an audit after the cutoff: neither trained on nor certifying, yet
            provenance, inclusion = Provenance.AUDIT.value, routing.inclusion
        else:
            provenance, inclusion = Provenance.CORRECTION.value, None
        by_item[item_id] = LabeledText(item_id, text, record.label, "correction", provenance, inclusion)
    stream = [StreamItem(i, by_item[i].text, policy.seed_share) for i in seed_ids if i in by_item]
    seed_set = set(seed_ids)
    for item_id, routing in routings.items():
        if routing.inclusion is None or item_id in seed_set or item_id not in texts:
            continue
        if cutoff is None or routing.created_at < cutoff:
            stream.append(StreamItem(item_id, texts[item_id], routing.inclusion))
    return CollectedLabels(
        sorted(by_item.values(), key=lambda r: r.item_id), stream, watermark, cutoff, len(pending)
    )


# ------------------------------------------------------------------------------------------------- gate


def gate(
    challenger: AuditScores,
    champion: AuditScores | None,
    inclusion: NDArray[np.float64],
    settings: Settings,
) -> GateDecision:
    """`learner.gate.paired_gate` on the audits, with the margins and level from `retrain` settings."""
    if champion is None:
        return GateDecision(True, "no champion to beat")
    if not len(inclusion):
        return GateDecision(True, "no reviewed audits yet to compare on: the challenger is certified on none")
    retrain = settings.retrain
    return paired_gate(
        challenger.correct,
        champion.correct,
        challenger.accepted,
        champion.accepted,
        inclusion,
        accuracy_margin=retrain.accuracy_tolerance,
        coverage_margin=retrain.coverage_tolerance,
        alpha=retrain.gate_alpha,
    )


# --------------------------------------------------------------------------------------------- embedding


class Embedder(Protocol):
    """Texts -> embeddings of one encoder (through the shared cache)."""

    @property
    def encoder_id(self) -> str: ...

    @property
    def encoder_ref(self) -> str: ...

    def embed(self, texts: Sequence[str]) -> NDArray[np.float32]: ...


class CachedEmbedder:
    """The configured encoder behind the embedding cache serving uses (so predicted items are hits)."""

    def __init__(
        self, settings: Settings, *, encoder_factory: Callable[[str], TextEncoder] | None = None
    ) -> None:
        self.settings = settings
        self._factory = encoder_factory
        self._cache: EmbeddingCache | None = None
        self._lock = threading.Lock()

    @property
    def encoder_ref(self) -> str:
        return self.settings.learner.encoder

    def _get(self) -> EmbeddingCache:
        with self._lock:
            if self._cache is None:
                learner = self.settings.learner
                encoder: TextEncoder = (
                    self._factory(learner.encoder)
                    if self._factory is not None
                    else HFEncoder(
                        learner.encoder,
                        device=learner.device,
                        batch_size=learner.encode_batch_size,
                        max_length=learner.max_length,
                    )
                )
                self._cache = EmbeddingCache(self.settings.cache_dir, encoder)
            return self._cache

    @property
    def encoder_id(self) -> str:
        return self._get().encoder_id

    def embed(self, texts: Sequence[str]) -> NDArray[np.float32]:
        return self._get().embed(list(texts))

    def close(self) -> None:
        if self._cache is not None:
            self._cache.close()
            self._cache = None


# ---------------------------------------------------------------------------------------------- training


@dataclass(frozen=True)
class TrainingInputs:
    x_train: NDArray[np.float32]
    y_train: list[str]
    x_calibration: NDArray[np.float32]
    y_calibration: list[str]
    config: TrainingConfig
    encoder_ref: str
    encoder_id: str
    design: AuditDesign | None = None  # how the calibration items (the audits) were drawn


TrainFn = Callable[[TrainingInputs], TrainingResult]


def default_train(inputs: TrainingInputs) -> TrainingResult:
    """The frozen-encoder head (`learner.training.train_bundle`)."""
    return train_bundle(
        inputs.x_train,
        inputs.y_train,
        inputs.x_calibration,
        inputs.y_calibration,
        config=inputs.config,
        encoder_ref=inputs.encoder_ref,
        encoder_id=inputs.encoder_id,
        design=inputs.design,
    )


def training_config(settings: Settings) -> TrainingConfig:
    return loop.training_config(settings.learner)


def holdout_report(
    model_proba: NDArray[np.float64],
    labels: Sequence[str],
    y: Sequence[str],
    result_thresholds: Any,
    target: float,
) -> tuple[EvaluationReport | None, NDArray[np.int64]]:
    """Evaluate on the holdout rows whose label the model knows; (None, empty) when there is none."""
    index = {c: i for i, c in enumerate(labels)}
    y_idx = np.array([index.get(label, -1) for label in y], dtype=np.int64)
    known = y_idx >= 0
    if not known.any():
        return None, y_idx[known]
    return evaluate(model_proba[known], y_idx[known], result_thresholds, target), y_idx[known]


# ------------------------------------------------------------------------------------------- promotion


@dataclass(frozen=True)
class PromotionReport:
    version: str
    swapped: bool
    labelstudio_updated: bool
    auto_resolved: int
    reprioritized: int


class Promoter:
    """Moves the served alias and does everything a new champion implies."""

    def __init__(self, settings: Settings, store: Store, holder: ModelHolder | None) -> None:
        self.settings = settings
        self.store = store
        self.holder = holder
        # Label Studio refuses a model_version no task has predictions of yet (400): retried by the
        # worker until the outbox has pushed escalations of the new version.
        self.pending_labelstudio: str | None = None

    def retry_labelstudio(self) -> bool:
        pending = self.pending_labelstudio
        return pending is not None and self._update_labelstudio(pending)

    def promote(self, version: str, *, reason: str, actor: str, action: str = "promoted") -> PromotionReport:
        """Make `version` the champion. `action` names the move in the audit trail: `promoted` (the
        gate), `manual_promote` or `rollback` (an engineer)."""
        from serving import registry, tracking

        try:
            previous = registry.champion_version(self.settings)
        except Exception:  # no champion yet, or the registry hiccuped: the move itself decides
            previous = None
        registry.set_alias(self.settings, version)
        try:
            tracking.set_version_tags(
                self.settings,
                version,
                {
                    "hitl.promoted_at": datetime.now(UTC).isoformat(),
                    "hitl.promoted_by": actor,
                    "hitl.promotion_reason": reason,
                },
            )
        except Exception as exc:  # tags are informative only
            logger.warning("could not tag version %s: %s", version, type(exc).__name__)
        label = registry.version_label(self.settings, version)
        self.store.record_model_event(
            action=action,
            version=label,
            actor=actor,
            reason=reason,
            previous=None if previous is None else registry.version_label(self.settings, previous),
        )
        swapped = False
        model: LoadedModel | None = None
        if self.holder is not None:
            swapped = self.holder.refresh()
            current = self.holder.current
            model = current if current is not None and current.version == label else None
        ls_updated = self._update_labelstudio(label)
        resolved = reprioritized = 0
        if model is not None:
            try:
                resolved, reprioritized = rescore_open_escalations(
                    self.store,
                    model,
                    self.settings,
                    auto_resolve=self.settings.retrain.auto_resolve_on_promotion,
                )
            except Exception as exc:
                logger.error("re-scoring open escalations failed: %s: %s", type(exc).__name__, exc)
        logger.info(
            "promoted %s (%s): swapped=%s, Label Studio=%s, auto-resolved %d, re-prioritized %d",
            label,
            reason,
            swapped,
            ls_updated,
            resolved,
            reprioritized,
        )
        return PromotionReport(version, swapped, ls_updated, resolved, reprioritized)

    def _update_labelstudio(self, label: str) -> bool:
        project_id = self.store.project_by_title(self.settings.labelstudio.project_title)
        if project_id is None:
            return False
        from labeling.client import LabelStudioClient

        try:
            with LabelStudioClient.from_settings(self.settings.labelstudio) as client:
                client.set_model_version(project_id, label)
        except Exception as exc:  # Label Studio down, or no task of this version yet: retried later
            if self.pending_labelstudio != label:
                logger.warning("could not set Label Studio's model_version yet: %s", str(exc)[:300])
            self.pending_labelstudio = label
            return False
        self.pending_labelstudio = None
        return True


def rescore_open_escalations(
    store: Store, model: LoadedModel, settings: Settings, *, auto_resolve: bool
) -> tuple[int, int]:
    """Re-score every open escalation with `model`: auto-resolve those now auto-accepted (when
    `auto_resolve`), re-prioritise the rest. Recorded as new predictions + audit rows; returns the counts."""
    from learner.loop import AUDIT_PRIORITY
    from serving.routing import AUDIT_REASONS
    from serving.schemas import ItemIn
    from serving.service import LoopPolicy, score_items

    opens = store.open_escalations(limit=1_000_000)
    if not opens:
        return 0, 0
    ids = [o.prediction.item_id for o in opens]
    details: dict[str, Item] = {}
    with store.session() as session:
        for start in range(0, len(ids), 500):
            for item in session.scalars(select(Item).where(Item.id.in_(ids[start : start + 500]))).all():
                details[item.id] = item
    items = []
    previous = []
    for o in opens:
        found = details.get(o.prediction.item_id)
        if found is None:
            continue
        items.append(
            ItemIn(
                id=found.id,
                title=found.title,
                description=found.description or "",
                brand=found.brand,
                price=found.price,
                category_hint=found.category_hint,
            )
        )
        previous.append(o.prediction)
    resolved = reprioritized = 0
    now = _now()
    for start in range(0, len(items), 256):
        chunk = items[start : start + 256]
        loop_policy = replace(LoopPolicy.of(settings.learner), draw_audits=False)
        scored = score_items(model, chunk, settings.routing, loop_policy)
        with store.session() as session:
            for s, old in zip(scored, previous[start : start + 256], strict=True):
                # An audited item stays in review whatever the new model says: auto-resolving it would
                # drop it from the audit sample because of its confidence, and bias what it measures.
                audited = bool(AUDIT_REASONS.intersection(old.reasons))
                accepted = s.routed.decision.value == "auto_accepted" and not audited
                resolve = accepted and auto_resolve
                reasons = (
                    [r.value for r in s.routed.reasons]
                    if (not accepted or resolve) and not audited
                    else list(old.reasons)
                )
                prediction = Prediction(
                    item_id=s.item.id,
                    model_version=model.version,
                    label=s.routed.label,
                    confidence=s.routed.confidence,
                    threshold=s.routed.threshold,
                    top_k=[[c, p] for c, p in s.routed.top_k],
                    decision="auto_accepted" if resolve else "escalated",
                    reasons=reasons,
                    priority=AUDIT_PRIORITY if audited else s.routed.priority,
                    audit_probability=old.audit_probability,
                    requested_by=RESCORE_ACTOR,
                    created_at=now,
                )
                session.add(prediction)
                session.flush()
                session.add(
                    AuditEvent(
                        item_id=s.item.id,
                        prediction_id=prediction.id,
                        kind="model_decision",
                        actor=f"model:{model.version}",
                        action="auto_resolved" if resolve else "reprioritized",
                        before=old.label,
                        after=s.routed.label,
                        model_version=model.version,
                        details={
                            "trigger": "rescored_after_promotion",
                            "previous_prediction_id": old.id,
                            "previous_model_version": old.model_version,
                            "previous_priority": old.priority,
                            "confidence": s.routed.confidence,
                            "threshold": s.routed.threshold,
                            "priority": s.routed.priority,
                        },
                        created_at=now,
                    )
                )
                if resolve:
                    resolved += 1
                else:
                    reprioritized += 1
    return resolved, reprioritized


# ----------------------------------------------------------------------------------------- escalation rate


def escalation_windows(
    store: Store, *, window_s: int, since: datetime | None = None, model_version: str | None = None
) -> list[EscalationWindow]:
    """Escalated / predicted per model version and time window, by reason (re-scores excluded)."""
    query = select(
        Prediction.model_version, Prediction.decision, Prediction.reasons, Prediction.created_at
    ).where((Prediction.requested_by.is_(None)) | (Prediction.requested_by != RESCORE_ACTOR))
    if since is not None:
        query = query.where(Prediction.created_at >= since.astimezone(UTC).replace(tzinfo=None))
    if model_version is not None:
        query = query.where(Prediction.model_version == model_version)
    buckets: dict[tuple[str, float], list[Any]] = {}
    with store.session() as session:
        for version, decision, reasons, created in session.execute(query).all():
            epoch = created.replace(tzinfo=UTC).timestamp()
            start = math.floor(epoch / window_s) * window_s
            bucket = buckets.setdefault((version, float(start)), [0, 0, {}])
            bucket[0] += 1
            if decision == "escalated":
                bucket[1] += 1
                for reason in reasons or []:
                    bucket[2][reason] = bucket[2].get(reason, 0) + 1
    return [
        EscalationWindow(version, start, window_s, n, e, dict(sorted(r.items())))
        for (version, start), (n, e, r) in sorted(buckets.items(), key=lambda kv: (kv[0][1], kv[0][0]))
    ]


# ------------------------------------------------------------------------------------------------- job


@dataclass
class RetrainJob:
    """One training run, start to finish (see the module docstring)."""

    settings: Settings
    store: Store
    embedder: Embedder
    promoter: Promoter
    train_fn: TrainFn = default_train
    on_stage: Callable[[str], None] = field(default=lambda _stage: None)
    mlflow_run_id: str | None = None  # set as soon as the MLflow run exists (failed runs have one too)

    def run(self, trigger: str) -> dict[str, Any]:
        """Returns the run's outcome fields; raises on failure (after ending the MLflow run FAILED)."""
        from serving import tracking

        settings = self.settings
        self.on_stage("collecting")
        collected = collect_labels(self.store, AuditPolicy.of(settings.learner.audit))
        labels = collected.labels
        roles = loop.split_roles([r.provenance for r in labels])
        train = [labels[i] for i in roles.train]
        audits = [labels[i] for i in roles.certify]
        outcome: dict[str, Any] = {"correction_watermark": collected.watermark, "n_labels": len(labels)}
        config = training_config(settings)
        n_seed = sum(r.source == "seed" for r in labels)
        params = {
            "trigger": trigger,
            "n_labels": len(labels),
            "n_seed_labels": n_seed,
            "n_correction_labels": len(labels) - n_seed,
            "n_train": len(train),
            "n_audits": len(audits),
            "n_stream": len(collected.stream),
            "unreviewed_audits": collected.unreviewed_audits,
            "accuracy_tolerance": settings.retrain.accuracy_tolerance,
            "coverage_tolerance": settings.retrain.coverage_tolerance,
            "gate_alpha": settings.retrain.gate_alpha,
            "encoder": self.embedder.encoder_ref,
            "mode": "frozen-encoder",
            **{f"head.{k}": v for k, v in settings.learner.head.model_dump().items()},
            **{f"audit.{k}": v for k, v in settings.learner.audit.model_dump().items()},
            "target_accuracy": config.target_accuracy,
            "delta": config.delta,
            "guarantee": config.guarantee,
            "guarantee_statement": loop.describe_guarantee(
                config.guarantee, config.target_accuracy, config.delta
            ),
            "seed": config.seed,
            "device": config.device,
        }
        run_id = tracking.start_run(
            settings, run_name=f"retrain-{datetime.now(UTC):%Y%m%dT%H%M%S}", trigger=trigger, params=params
        )
        outcome["mlflow_run_id"] = run_id
        self.mlflow_run_id = run_id
        try:
            return self._run(run_id, train, audits, collected.stream, config, outcome, trigger)
        except BaseException as exc:
            try:
                tracking.end_run(settings, run_id, failed=True, error=f"{type(exc).__name__}: {exc}")
            except Exception as inner:
                logger.error("could not mark MLflow run %s FAILED: %s", run_id, type(inner).__name__)
            raise

    def _run(
        self,
        run_id: str,
        train: list[LabeledText],
        audits: list[LabeledText],
        stream: list[StreamItem],
        config: TrainingConfig,
        outcome: dict[str, Any],
        trigger: str,
    ) -> dict[str, Any]:
        from serving import registry, tracking

        settings = self.settings
        if len(train) < settings.retrain.min_labels:
            raise RetrainError(
                f"only {len(train)} training labels; at least {settings.retrain.min_labels} needed"
            )
        if not audits:
            raise RetrainError(
                "no reviewed audits to certify on: audits are seed labels (learner.audit.seed_share) "
                "and routed items drawn for review"
            )
        started = time.perf_counter()
        self.on_stage("embedding")
        encoder_id = self.embedder.encoder_id

        def embed(texts: Sequence[str]) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
            """(encoder embeddings, head inputs as `config.features` builds them)."""
            if not texts:
                empty = np.empty((0, 0), dtype=np.float32)
                return empty, empty
            embeddings = self.embedder.embed(list(texts))
            return embeddings, config.features.model_inputs(embeddings, list(texts))

        e_train, x_train = embed([r.text for r in train])
        e_audit, x_audit = embed([r.text for r in audits])
        stream_texts = [s.text for s in stream]
        audit_pi = np.array([r.inclusion for r in audits], dtype=np.float64)
        strata, levels = loop.strata_of(np.concatenate([audit_pi, [s.inclusion for s in stream]]))

        def stream_confidence(bundle: ModelBundle) -> NDArray[np.float64]:
            parts = []
            for start in range(0, len(stream_texts), STREAM_CHUNK):
                _, x = embed(stream_texts[start : start + STREAM_CHUNK])
                parts.append(bundle.predict_proba(x).max(axis=1))
            return np.concatenate(parts) if parts else np.empty(0)

        embed_seconds = time.perf_counter() - started
        self.on_stage("training")
        started_train = time.perf_counter()
        result = self.train_fn(
            TrainingInputs(
                x_train=x_train,
                y_train=[r.label for r in train],
                x_calibration=x_audit,
                y_calibration=[r.label for r in audits],
                config=config,
                encoder_ref=self.embedder.encoder_ref,
                encoder_id=encoder_id,
                design=AuditDesign(
                    strata=strata[: len(audits)],
                    stream_strata=strata[len(audits) :],
                    stream_confidence=stream_confidence,
                ),
            )
        )
        train_seconds = time.perf_counter() - started_train
        bundle = result.bundle
        from serving.routing import class_centroids

        # Encoder space, as serving compares them (`LoadedModel.features` -> embeddings).
        bundle.metadata["class_centroids"] = class_centroids(e_train, [r.label for r in train], bundle.labels)
        bundle.metadata.update(
            {"trigger": trigger, "n_labels": len(train), "mlflow_run_id": run_id, "audit_strata": levels}
        )

        self.on_stage("evaluating")
        y_audit = [r.label for r in audits]
        proba_audit = bundle.predict_proba(x_audit)
        challenger = audit_scores(proba_audit, bundle.labels, y_audit, bundle.thresholds)
        weights = 1.0 / audit_pi
        champion_version = registry.champion_version(settings)
        champion: AuditScores | None = None
        champion_note = ""
        if champion_version is not None:
            champion, champion_note = self._champion_scores(
                champion_version, encoder_id, e_audit, [r.text for r in audits], y_audit
            )
        certificate = bundle.thresholds.extra
        metrics: dict[str, Any] = {
            "n_labels": len(train) + len(audits),
            "n_train": len(train),
            "n_audits": len(audits),
            "n_stream": len(stream),
            "n_classes": len(bundle.labels),
            "training_time_s": train_seconds,
            "embedding_time_s": embed_seconds,
            "temperature": bundle.temperature,
            "ece_calibration_before": result.ece_before,
            "ece_calibration_after": result.ece_after,
            "threshold": float(np.min(bundle.thresholds.thresholds)),
            "audit_band_low": float(bundle.metadata.get("audit_band_low", 0.0)),
            # Weighted by 1 / inclusion probability: estimates over the stream, not over the audits.
            "accuracy": float((weights * challenger.correct).sum() / weights.sum()),
            "auto_accept_coverage": float(certificate.get("stream_accepted_share", 0.0)),
            "projected_escalation_rate": 1.0 - float(certificate.get("stream_accepted_share", 0.0)),
            "certified_error_bound": certificate.get("error_bound"),
        }
        if champion is not None:
            metrics.update(
                {
                    "champion_accuracy": float((weights * champion.correct).sum() / weights.sum()),
                    "champion_audit_coverage": float((weights * champion.accepted).sum() / weights.sum()),
                }
            )
        tracking.log_metrics(settings, run_id, metrics)
        outcome["metrics"] = tracking.finite_metrics(metrics)

        if champion_note and champion is None:
            decision = GateDecision(False, champion_note)
        else:
            decision = gate(challenger, champion, audit_pi, settings)
        for test in decision.tests:
            tracking.log_metrics(
                settings,
                run_id,
                {f"gate_{test.metric.replace(' ', '_')}_p_value": test.p_value},
            )

        self.on_stage("registering")
        bundle_dir = settings.models_dir / "retrain" / run_id
        if bundle_dir.exists():
            shutil.rmtree(bundle_dir)
        bundle.save(bundle_dir)
        version = tracking.log_model_version(
            settings,
            run_id,
            bundle_dir,
            tags={
                "hitl.gate": "passed" if decision.promote else "rejected",
                "hitl.gate_reason": decision.reason,
                "hitl.guarantee": loop.describe_guarantee(
                    config.guarantee, config.target_accuracy, config.delta
                ),
            },
        )
        outcome.update({"version": version, "gate_reason": decision.reason, "promoted": False})
        tracking.log_params(settings, run_id, {"registered_version": version})

        if decision.promote:
            self.on_stage("promoting")
            report = self.promoter.promote(
                version, reason=f"gate: {decision.reason}", actor=f"retrain:{trigger}"
            )
            outcome["promoted"] = True
            tracking.log_metrics(
                settings,
                run_id,
                {"auto_resolved": report.auto_resolved, "reprioritized": report.reprioritized},
            )
        else:
            registry.set_alias(settings, version, settings.retrain.challenger_alias)
            logger.info("version %s stays a challenger: %s", version, decision.reason)
        tracking.client(settings).set_tag(run_id, "hitl.gate_reason", decision.reason[:5000])

        self.on_stage("artifacts")
        try:
            index = {c: i for i, c in enumerate(bundle.labels)}
            known = np.array([label in index for label in y_audit], dtype=bool)
            if known.any():
                y_idx = np.array([index[label] for label in np.asarray(y_audit, dtype=object)[known]])
                tracking.log_evaluation_figures(
                    settings, run_id, proba_audit[known], y_idx, bundle.labels, config.target_accuracy
                )
        except Exception as exc:  # plots are informative; never fail a promoted run for them
            logger.warning("could not log evaluation plots: %s", type(exc).__name__)
        tracking.end_run(settings, run_id)
        return outcome

    def _champion_scores(
        self,
        version: str,
        encoder_id: str,
        e_audit: NDArray[np.float32],
        texts: list[str],
        y_audit: Sequence[str],
    ) -> tuple[AuditScores | None, str]:
        from serving import registry

        folder = registry.download(self.settings, version)
        champion = ModelBundle.load(folder, device="cpu")
        if champion.encoder_id != encoder_id:
            return None, (
                f"champion v{version} uses encoder {champion.encoder_id!r}, not {encoder_id!r}: "
                "not comparable on these audits; promote manually"
            )
        # The champion's own feature spec: it may predate hybrid features (or use other n-grams).
        proba = champion.predict_proba(champion.model_inputs(e_audit, texts))
        return audit_scores(proba, champion.labels, y_audit, champion.thresholds), ""


class RetrainError(RuntimeError):
    """A run that cannot train (too few labels, ...): recorded as failed, champion untouched."""


# ------------------------------------------------------------------------------------------------ worker


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
    train_fn : the training function (tests inject failing or deliberately bad ones)
    auto : count new corrections and trigger every `retrain.retrain_every_n_corrections`
    """

    def __init__(
        self,
        settings: Settings,
        store: Store,
        holder: ModelHolder | None = None,
        *,
        embedder: Embedder | None = None,
        train_fn: TrainFn = default_train,
        auto: bool = True,
    ) -> None:
        self.settings = settings
        self.store = store
        self.holder = holder
        self._own_embedder = embedder is None
        self.embedder: Embedder = embedder or CachedEmbedder(settings)
        self.promoter = Promoter(settings, store, holder)
        self.train_fn = train_fn
        self.auto = auto
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_escalation_log = time.monotonic()

    # --------------------------------------------------------------------------------- triggers
    def trigger(self, reason: str) -> TriggerResult:
        """Queue a run, or fold `reason` into the run already waiting; never blocks on training."""
        reason = reason[:200]
        with self._lock, self.store.session() as session:
            queued = session.scalars(
                select(RetrainRun).where(RetrainRun.status == QUEUED).order_by(RetrainRun.id)
            ).first()
            if queued is not None:
                queued.reasons = [*queued.reasons, reason]
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
        with self.store.session() as session:  # runs a crash left 'running' can never finish
            for row in session.scalars(select(RetrainRun).where(RetrainRun.status == RUNNING)).all():
                row.status, row.error, row.finished_at = FAILED, "interrupted (the server stopped)", _now()
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="retrain-worker", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 60.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        if self._own_embedder and isinstance(self.embedder, CachedEmbedder):
            self.embedder.close()

    def _loop(self) -> None:
        interval = self.settings.retrain.poll_interval_s
        while not self._stop.is_set():
            try:
                if not self.run_next():
                    self.promoter.retry_labelstudio()
                    self._maybe_auto_trigger()
                    self._maybe_log_escalation()
            except Exception as exc:  # keep the worker alive; the run row says what failed
                logger.error("retrain worker: %s: %s", type(exc).__name__, exc)
            if self._wake.wait(interval):
                self._wake.clear()

    def _claim(self) -> tuple[int, list[str]] | None:
        with self._lock, self.store.session() as session:
            row = session.scalars(
                select(RetrainRun).where(RetrainRun.status == QUEUED).order_by(RetrainRun.id)
            ).first()
            if row is None:
                return None
            row.status, row.stage, row.started_at = RUNNING, "starting", _now()
            row.correction_watermark = correction_watermark(self.store)
            return row.id, list(row.reasons)

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
        )
        try:
            outcome = job.run(trigger)
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"[:MAX_ERROR_CHARS]
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
            status=SUCCEEDED if outcome.get("promoted") else REJECTED,
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
            last = session.scalar(select(func.max(RetrainRun.correction_watermark)))
        new = count_new_corrections(self.store, int(last or 0))
        if new >= n:
            self.trigger(f"corrections:{new}")

    def _maybe_log_escalation(self) -> None:
        every = self.settings.retrain.escalation_log_interval_s
        if every > 0 and time.monotonic() - self._last_escalation_log >= every:
            self._log_escalation()

    def _log_escalation(self) -> None:
        from serving import tracking

        self._last_escalation_log = time.monotonic()
        window = self.settings.retrain.escalation_window_s
        since = datetime.now(UTC) - timedelta(seconds=window * 24)
        try:
            windows = escalation_windows(self.store, window_s=window, since=since)
            if windows:
                tracking.log_escalation_windows(self.settings, windows)
        except Exception as exc:
            logger.warning("could not log escalation rates: %s", type(exc).__name__)

    @property
    def busy(self) -> bool:
        with self.store.session() as session:
            return (
                session.scalars(select(RetrainRun.id).where(RetrainRun.status.in_((QUEUED, RUNNING)))).first()
                is not None
            )


def create_tables(store: Store) -> None:
    """Our tables live on `serving.store.Base`; `store.create_all()` creates them once imported."""
    Base.metadata.create_all(store.engine)


__all__ = [
    "CachedEmbedder",
    "GateDecision",
    "LabeledText",
    "Promoter",
    "RetrainError",
    "RetrainJob",
    "RetrainRun",
    "RetrainWorker",
    "RunRecord",
    "SeedLabel",
    "TriggerResult",
    "add_seed_labels",
    "collect_labels",
    "escalation_windows",
    "first_routings",
    "gate",
]
