"""Batch scoring of a whole catalog with the served model, through the same routing, store and outbox as
`POST /v1/predict` (`serving.service.predict_and_record`).

The catalog is cut into parts of `part_size` items; each part is scored, recorded in the store in one
transaction (its escalations enqueued for Label Studio in the same transaction) and written as one Parquet
file, `part-00000.parquet`, ...: decision, label, confidence, reasons, model version, prediction id. A
part whose file exists is done, so a stopped run resumes at the first missing part, and a part is never
recorded twice (its file is written only after its rows are committed; a crash in between re-scores
that one part, whose predictions are then stored twice, like a client retrying a request).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from serving.model import LoadedModel, record_version
from serving.schemas import ItemIn
from serving.service import LoopPolicy, outbox_hook, predict_and_record
from serving.settings import AppSettings
from serving.store import Store

SCORE_ACTOR = "hitl-score"
MANIFEST = "manifest.json"


class ScoringError(ValueError):
    """The output folder holds parts of another run (another catalog, part size or model)."""


@dataclass(frozen=True)
class ScoreReport:
    parts: int
    skipped_parts: int  # already done by an earlier run
    items: int  # scored by this run
    escalated: int
    model_version: str


def part_path(out_dir: Path, index: int) -> Path:
    return out_dir / f"part-{index:05d}.parquet"


def _write_part(path: Path, rows: dict[str, list[object]]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    partial = path.with_suffix(".parquet.partial")
    pq.write_table(pa.table(rows), partial)
    partial.replace(path)  # a part file exists only complete


def _check_manifest(out_dir: Path, items: Sequence[ItemIn], part_size: int, version: str) -> None:
    """Resume only the same run: the parts are numbered by position, so they mean something only for the
    same items, part size and model."""
    wanted = {
        "items": len(items),
        "first_id": items[0].id if items else None,
        "last_id": items[-1].id if items else None,
        "part_size": part_size,
        "model_version": version,
    }
    path = out_dir / MANIFEST
    if path.is_file():
        found = json.loads(path.read_text())
        if found != wanted:
            differ = ", ".join(
                f"{k} {found.get(k)!r} != {v!r}" for k, v in wanted.items() if found.get(k) != v
            )
            raise ScoringError(f"{out_dir} holds the parts of another run ({differ}); use a new --out folder")
    else:
        path.write_text(json.dumps(wanted, indent=2))


def score_catalog(
    model: LoadedModel,
    store: Store,
    items: Sequence[ItemIn],
    settings: AppSettings,
    out_dir: Path,
    *,
    part_size: int = 2048,
    on_part: Callable[[int], None] | None = None,
) -> ScoreReport:
    """Score `items` in parts of `part_size`; `on_part(n_items)` after each part (done or skipped)."""
    if part_size < 1:
        raise ValueError(f"part_size must be >= 1, got {part_size}")
    out_dir.mkdir(parents=True, exist_ok=True)
    _check_manifest(out_dir, items, part_size, model.version)
    record_version(store, model)
    loop = LoopPolicy.of(settings.learner)
    hook = outbox_hook(settings.routing.high_value_price)
    parts = skipped = scored_items = escalated = 0
    for index, start in enumerate(range(0, len(items), part_size)):
        chunk = items[start : start + part_size]
        parts += 1
        path = part_path(out_dir, index)
        if path.is_file():
            skipped += 1
        else:
            scored, ids = predict_and_record(
                model, store, chunk, settings.routing, loop, requested_by=SCORE_ACTOR, on_escalated=hook
            )
            decisions = [s.routed.decision.value for s in scored]
            _write_part(
                path,
                {
                    "id": [s.item.id for s in scored],
                    "decision": list(decisions),
                    "label": [s.routed.label for s in scored],
                    "confidence": [float(s.routed.confidence) for s in scored],
                    "reasons": [[r.value for r in s.routed.reasons] for s in scored],
                    "model_version": [model.version] * len(scored),
                    "prediction_id": list(ids),
                },
            )
            scored_items += len(scored)
            escalated += sum(d == "escalated" for d in decisions)
        if on_part is not None:
            on_part(len(chunk))
    return ScoreReport(parts, skipped, scored_items, escalated, model.version)
