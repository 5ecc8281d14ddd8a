"""Labels with their provenance, and the stream the audits were drawn from (`collect_labels`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.dialects import postgresql, sqlite

from learner.data import Product, item_text
from learner.loop import AuditPolicy, Provenance
from serving.escalation import first_routings
from serving.retrain.tables import (
    USABLE_ACTIONS,
    SeedLabel,
    _now,
)
from serving.store import Correction, Item, Store

# Seed labels and seed stream items arrive before anything routed (`learner.loop.split_roles`).
SEED_ARRIVAL = float("-inf")


@dataclass(frozen=True)
class LabeledText:
    item_id: str
    text: str
    label: str
    source: str  # seed | correction
    provenance: str = Provenance.SEED.value  # learner.loop.Provenance
    inclusion: float | None = None  # the audit draw's probability, for audits
    arrival: float = SEED_ARRIVAL  # its first routing's prediction id (routing order); seed labels first


@dataclass(frozen=True)
class StreamItem:
    """An item the audits were drawn from (seed or routed), with its inclusion probability."""

    item_id: str
    text: str
    inclusion: float
    arrival: float = SEED_ARRIVAL


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


def collect_labels(
    store: Store, policy: AuditPolicy | None = None, *, floor: float | None = None
) -> CollectedLabels:
    """Seed labels + current corrections (latest per item wins), each with its provenance, and the
    stream the audits were drawn from.

    Seed labels drawn by `AuditPolicy.seed_audit` are seed audits (inclusion ``seed_share``); a
    corrected item whose first routing drew it into the audit is an audit (its logged probability).
    An audit nobody has reviewed yet would bias the sample if it were simply left out (reviewers
    might skip the hard ones), so the stream is cut at the first routed audit still unreviewed:
    routed items from that moment on, and the audits among them, wait for a later run. An audit
    routed before ``floor`` (the champion's `learner.loop.split_roles` floor) never certifies again,
    so unreviewed it holds nothing back: it only leaves the training labels.
    """
    policy = policy or AuditPolicy()
    watermark = correction_watermark(store)
    by_item: dict[str, LabeledText] = {}
    with store.session() as session:  # plain rows, not ORM objects: 20k seed rows load in ~0.1 s
        columns = (SeedLabel.item_id, SeedLabel.title, SeedLabel.description, SeedLabel.brand)
        seeds = session.execute(select(*columns, SeedLabel.label)).all()
    seed_ids = [row[0] for row in seeds]
    seed_audit = policy.seed_audit(seed_ids)
    seed_audits = {i for i, drawn in zip(seed_ids, seed_audit, strict=True) if drawn}
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
    seed_set = set(seed_ids)
    # A seed item routed again (the same id) is no stream item: the seed stands for it in the stream, so
    # an audit draw at its routing cannot certify as a stream audit.
    audited = {i for i, r in routings.items() if r.audited and i not in seed_set}
    waiting = [routings[i] for i in audited if i not in current]
    pending = [r.created_at for r in waiting if floor is None or r.arrival >= floor]
    cutoff = min(pending) if pending else None
    texts = _texts(store, list(set(current) | set(routings)))
    for item_id, record in current.items():
        if record.label is None:
            continue
        text = texts.get(item_id) or (by_item[item_id].text if item_id in by_item else None)
        if text is None:  # reviewed in Label Studio but never predicted here: no text to learn from
            continue
        routing = routings.get(item_id)
        arrival = SEED_ARRIVAL if routing is None else routing.arrival
        inclusion: float | None
        if item_id in seed_audits:
            # Drawn by its id, it stays a seed audit, now with the reviewed label. Were a correction to
            # take it out, the seed audits left would be those no model escalated, the easy ones.
            provenance, inclusion, arrival = Provenance.SEED_AUDIT.value, policy.seed_share, SEED_ARRIVAL
        elif routing is not None and item_id in audited:
            if cutoff is not None and routing.created_at >= cutoff:
                continue  # an audit after the cutoff: neither trained on nor certifying, yet
            provenance, inclusion = Provenance.AUDIT.value, routing.inclusion
        else:
            provenance, inclusion = Provenance.CORRECTION.value, None
        by_item[item_id] = LabeledText(
            item_id, text, record.label, "correction", provenance, inclusion, arrival
        )
    stream = [StreamItem(i, by_item[i].text, policy.seed_share) for i in seed_ids if i in by_item]
    for item_id, routing in routings.items():
        if routing.inclusion is None or item_id in seed_set or item_id not in texts:
            continue
        if cutoff is None or routing.created_at < cutoff:
            stream.append(StreamItem(item_id, texts[item_id], routing.inclusion, routing.arrival))
    return CollectedLabels(
        sorted(by_item.values(), key=lambda r: r.item_id), stream, watermark, cutoff, len(waiting)
    )
