"""Batch scoring of a whole catalog with the served model, through the same routing, store and outbox as
`POST /v1/predict` (`serving.service`).

Scoring (encoder, head, routing: the CPU-heavy part) is pluggable: `LocalScorer` runs it in this
process; `RayScorer` runs them on Ray Data actors (a local cluster, or an existing one by
address), each holding the model. Recording is always here, in this process: the store and the outbox
see one writer whatever the engine.

A catalog file streams: `catalog_outline` reads it once to check every record and count them (nothing
kept but the ids, to refuse a duplicate), `catalog_items` reads it again item by item, and the parts are
cut as the items come, so memory holds a part at a time (a Ray window at a time with `RayScorer`), not
the catalog. Items need no category: scoring is for the ones without.

The catalog is cut into parts of `part_size` items; each part is scored, recorded in the store in one
transaction (its escalations enqueued for Label Studio in the same transaction) and written as one Parquet
file, `part-00000.parquet`, ...: decision, label, confidence, reasons, model version, prediction id. A
part whose file exists is done, so a stopped run resumes at the first missing part. Its file is written
only after its rows are committed, so a part is recorded once, except when a run dies between the two:
that part is then scored and stored again, like a client retrying a request.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any, Protocol

from pydantic import ValidationError

from labeling.settings import LabelStudioSettings
from learner.data import Product, describe_invalid, iter_catalog
from learner.exceptions import CatalogError, RecordProblem
from learner.files import replaced_atomically
from serving.leader import FileLeaderLock
from serving.model import LoadedModel, ModelHolder, record_version
from serving.schemas import ItemIn
from serving.service import LoopPolicy, Scored, new_predictions, outbox_hook, score_items
from serving.settings import AppSettings, MlflowSettings
from serving.store import Store

SCORE_ACTOR = "hitl-score"
MANIFEST = "manifest.json"


class ScoringError(ValueError):
    """The output folder holds parts of another run (another catalog, part size or model), or the
    catalog changed between its two readings."""


@dataclass(frozen=True)
class CatalogOutline:
    """What the items of a run are, before they are scored: how many, the first id and the last, and a
    digest of each part of `part_size` items, so that a part read again is checked before it is scored
    and a resumed run's manifest names its content, not only its length."""

    count: int
    first_id: str | None
    last_id: str | None
    part_size: int
    part_digests: tuple[str, ...]

    @property
    def digest(self) -> str:
        return hashlib.blake2b("".join(self.part_digests).encode(), digest_size=16).hexdigest()

    @classmethod
    def of(cls, items: Iterable[ItemIn], part_size: int) -> CatalogOutline:
        if part_size < 1:
            raise ValueError(f"part_size must be >= 1, got {part_size}")
        count, first, last, digests = 0, None, None, []
        for part in _parts(items, part_size):
            count += len(part)
            first, last = first if first is not None else part[0].id, part[-1].id
            digests.append(part_digest(part))
        return cls(count, first, last, part_size, tuple(digests))


def part_digest(items: Sequence[ItemIn]) -> str:
    """A digest of a part's items, in order (each item as the API's JSON)."""
    hasher = hashlib.blake2b(digest_size=16)
    for item in items:
        hasher.update(hashlib.blake2b(item.model_dump_json().encode(), digest_size=16).digest())
    return hasher.hexdigest()


def item_of(product: Product) -> ItemIn:
    """A catalog record as the API takes it (its category, if any, is not an input)."""
    return ItemIn(
        id=product.id,
        title=product.title,
        description=product.description or "",
        brand=product.brand,
        price=product.price,
    )


def catalog_outline(path: Path, part_size: int) -> CatalogOutline:
    """Read the catalog once: every record checked as a catalog record and as an API item (an id over
    255 characters is a catalog id, not an item id); kept: the ids (to refuse a duplicate) and a digest
    per part. Raises `CatalogError` listing every bad record with its line (exact repeats are skipped,
    as `load_catalog` does), and what `learner.data.iter_catalog` raises for an unreadable file."""
    problems: list[RecordProblem] = []
    outline = CatalogOutline.of(_items(path, problems.append), part_size)
    if problems:
        raise CatalogError(str(path), problems)
    return outline


def catalog_items(path: Path) -> Iterator[ItemIn]:
    """The catalog's items, read one at a time (after `catalog_outline` has checked them)."""

    def changed(problem: RecordProblem) -> None:
        raise ScoringError(f"{path} changed while it was scored: {problem}")

    return _items(path, changed)


def _items(path: Path, bad: Callable[[RecordProblem], None]) -> Iterator[ItemIn]:
    """The catalog's records as API items; each bad one goes to `bad` (exact repeats are skipped)."""
    for entry in iter_catalog(path, require_category=False):
        if entry.product is None:
            if not entry.repeat:
                bad(RecordProblem(entry.line, entry.problem or ""))
            continue
        try:
            item = item_of(entry.product)
        except ValidationError as exc:
            bad(RecordProblem(entry.line, describe_invalid(exc)))
            continue
        yield item


def _parts(items: Iterable[ItemIn], size: int) -> Iterator[list[ItemIn]]:
    iterator = iter(items)
    while part := list(islice(iterator, size)):
        yield part


class Scorer(Protocol):
    """Parts of items in; for each part, in order, one `Scored` per item, in order. Streaming the parts
    lets an engine keep its workers (and their loaded model) across parts."""

    def stream(self, parts: Iterable[Sequence[ItemIn]]) -> Iterator[list[Scored]]: ...


class LocalScorer:
    """Scores in this process, with the loaded model."""

    def __init__(self, model: LoadedModel, settings: AppSettings) -> None:
        self.model, self.settings = model, settings

    def __call__(self, items: Sequence[ItemIn]) -> list[Scored]:
        return score_items(self.model, items, self.settings.routing, LoopPolicy.of(self.settings.learner))

    def stream(self, parts: Iterable[Sequence[ItemIn]]) -> Iterator[list[Scored]]:
        for part in parts:
            yield self(part)


class _RayScoreActor:
    """One Ray actor: the model loaded once from the bundle it was given (through Ray's object store, so
    a remote cluster needs no shared folder), then batch after batch of items."""

    def __init__(self, settings: AppSettings, bundle_dir_bytes: bytes, version: str) -> None:
        import io
        import shutil
        import tarfile
        import tempfile

        folder = Path(tempfile.mkdtemp(prefix="hitl-score-bundle-"))
        with tarfile.open(fileobj=io.BytesIO(bundle_dir_bytes)) as archive:
            archive.extractall(folder, filter="data")
        try:
            model = ModelHolder(settings).build(folder, version, f"ray:{version}")
        finally:
            # Loaded into memory: the unpacked copy (with a tuned encoder, ~90 MB) is not needed again.
            shutil.rmtree(folder, ignore_errors=True)
        self.score = LocalScorer(model, settings)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        import numpy as np

        scored = self.score([ItemIn.model_validate_json(raw) for raw in batch["item"]])
        out = np.empty(len(scored), dtype=object)
        out[:] = scored
        return {"part": batch["part"], "pos": batch["pos"], "scored": out}


def _bundle_bytes(model: LoadedModel) -> bytes:
    import io
    import tarfile
    import tempfile

    with tempfile.TemporaryDirectory(prefix="hitl-score-") as tmp:
        folder = model.bundle.save(Path(tmp) / "bundle")
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as archive:
            archive.add(folder, arcname=".")
        return buffer.getvalue()


def settings_for_actors(settings: AppSettings) -> AppSettings:
    """`settings` without what a scoring actor never uses and must not carry: the Label Studio
    credentials and webhook secret, the ML backend's password and the MLflow URI (which may hold
    credentials). Ray pickles an actor's arguments into its object store and, on a remote cluster,
    sends them over the network. The database URL stays: an embedding cache may live there."""
    serving = settings.serving.model_copy(
        update={"ml_backend_password": type(settings.serving).model_fields["ml_backend_password"].default}
    )
    return settings.model_copy(
        update={"labelstudio": LabelStudioSettings(), "mlflow": MlflowSettings(), "serving": serving}
    )


class RayScorer:
    """Scores on Ray Data: `concurrency` actors, `batch_size` items per batch. `address` None starts a
    local cluster (this machine's CPUs); "auto" or "ray://host:10001" joins an existing one."""

    def __init__(
        self,
        model: LoadedModel,
        settings: AppSettings,
        *,
        address: str | None = None,
        concurrency: int = 2,
        batch_size: int = 256,
        window_items: int = 100_000,
    ) -> None:
        import ray

        if min(concurrency, batch_size, window_items) < 1:
            raise ValueError(
                "concurrency, batch_size and window_items must be >= 1, got "
                f"{concurrency}, {batch_size}, {window_items}"
            )
        self.window_items = window_items
        self._started = not ray.is_initialized()
        if self._started:
            ray.init(
                address=address,
                include_dashboard=False,
                log_to_driver=False,
                configure_logging=False,
                num_cpus=(os.cpu_count() or 1) if address is None else None,
            )
        self.concurrency, self.batch_size = concurrency, batch_size
        self._args = {
            "settings": settings_for_actors(settings),
            "bundle_dir_bytes": _bundle_bytes(model),
            "version": model.version,
        }

    def stream(self, parts: Iterable[Sequence[ItemIn]]) -> Iterator[list[Scored]]:
        """The parts in windows of about `window_items` items, one Ray Data pipeline per window: memory
        holds a window, not the catalog, and the actors (and their model) start once per window."""
        window: list[Sequence[ItemIn]] = []
        size = 0
        for part in parts:
            window.append(part)
            size += len(part)
            if size >= self.window_items:
                yield from self._pipeline(window)
                window, size = [], 0
        if window:
            yield from self._pipeline(window)

    def _pipeline(self, parts: Sequence[Sequence[ItemIn]]) -> Iterator[list[Scored]]:
        """One Ray Data pipeline over `parts`, results in order (`preserve_order`); each part is handed
        back as soon as all its items are in."""
        import ray.data

        if not parts:
            return
        context = ray.data.DataContext.get_current()
        context.execution_options.preserve_order = True
        rows = [
            {"part": p, "pos": i, "item": item.model_dump_json()}
            for p, part in enumerate(parts)
            for i, item in enumerate(part)
        ]
        dataset = ray.data.from_items(rows).map_batches(
            _RayScoreActor,
            fn_constructor_kwargs=self._args,
            batch_size=self.batch_size,
            concurrency=self.concurrency,
        )
        current: list[Scored] = []
        index = 0
        for row in dataset.iter_rows():
            part, pos = int(row["part"]), int(row["pos"])
            if part != index or pos != len(current):
                raise ScoringError(f"Ray returned item {pos} of part {part} out of order")
            current.append(row["scored"])
            while index < len(parts) and len(current) == len(parts[index]):
                yield current
                current, index = [], index + 1
        if index != len(parts):
            raise ScoringError(f"Ray returned {index} of {len(parts)} parts")

    def close(self) -> None:
        import ray

        if self._started and ray.is_initialized():
            ray.shutdown()


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

    with replaced_atomically(path) as partial:  # a part file exists only complete
        pq.write_table(pa.table(rows), partial)


def started_with(out_dir: Path) -> str | None:
    """The model version a scoring run in `out_dir` started with (its manifest), or None."""
    try:
        found = json.loads((out_dir / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    version = found.get("model_version") if isinstance(found, dict) else None
    return version if isinstance(version, str) else None


def _changed(what: str) -> ScoringError:
    return ScoringError(
        f"the catalog changed while it was scored: {what} from its first reading (the parts before "
        "matched it and are recorded); score the catalog again into a new --out folder"
    )


def _check_manifest(out_dir: Path, outline: CatalogOutline, part_size: int, version: str) -> None:
    """Resume only the same run: the parts are numbered by position, so they mean something only for the
    same items (their digest), part size and model. (A manifest written before digests were kept is
    compared on the rest.)"""
    wanted = {
        "items": outline.count,
        "first_id": outline.first_id,
        "last_id": outline.last_id,
        "part_size": part_size,
        "model_version": version,
        "digest": outline.digest,
    }
    path = out_dir / MANIFEST
    if path.is_file():
        try:
            found = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:  # ValueError: not JSON, not UTF-8
            raise ScoringError(
                f"{path} is not a manifest of `hitl score` ({exc}); use a new --out folder"
            ) from None
        if not isinstance(found, dict):
            raise ScoringError(f"{path} is not a manifest of `hitl score`; use a new --out folder")
        if "digest" not in found:
            wanted.pop("digest")
        if found != wanted:
            differ = ", ".join(
                f"{k} {found.get(k)!r} != {v!r}" for k, v in wanted.items() if found.get(k) != v
            )
            raise ScoringError(f"{out_dir} holds the parts of another run ({differ}); use a new --out folder")
    else:  # whole or not at all: a half-written manifest would refuse this folder for good
        with replaced_atomically(path) as tmp:
            tmp.write_text(json.dumps(wanted, indent=2))


def score_catalog(
    model: LoadedModel,
    store: Store,
    items: Iterable[ItemIn],
    settings: AppSettings,
    out_dir: Path,
    *,
    outline: CatalogOutline | None = None,
    part_size: int = 2048,
    scorer: Scorer | None = None,
    on_part: Callable[[int], None] | None = None,
) -> ScoreReport:
    """Score `items` in parts of `part_size` with `scorer` (default: in this process) and record them;
    `on_part(n_items)` after each part (done or skipped). `items` may stream (`catalog_items`); then
    `outline` (`catalog_outline`) says what they are before they are read, and a part that turns out
    different (the file changed between the readings) raises `ScoringError` before it is scored."""
    if outline is None:
        if not isinstance(items, Sequence):
            raise TypeError("score_catalog: streamed items need their outline (catalog_outline)")
        outline = CatalogOutline.of(items, part_size)
    if outline.part_size != part_size:
        raise ValueError(f"the outline was cut in parts of {outline.part_size} items, not {part_size}")
    out_dir.mkdir(parents=True, exist_ok=True)
    with _only_run(out_dir):
        return _score_parts(model, store, items, settings, out_dir, outline, part_size, scorer, on_part)


@contextmanager
def _only_run(out_dir: Path) -> Iterator[None]:
    """Hold `out_dir` for this run: two runs into one folder would both score and record every part."""
    lock = FileLeaderLock(out_dir / ".lock")
    if not lock.try_acquire():
        raise ScoringError(
            f"another `hitl score` is writing into {out_dir}; wait for it, or use another --out"
        )
    try:
        yield
    finally:
        lock.release()


def _score_parts(
    model: LoadedModel,
    store: Store,
    items: Iterable[ItemIn],
    settings: AppSettings,
    out_dir: Path,
    outline: CatalogOutline,
    part_size: int,
    scorer: Scorer | None,
    on_part: Callable[[int], None] | None,
) -> ScoreReport:
    _check_manifest(out_dir, outline, part_size, model.version)
    record_version(store, model)
    scorer = scorer or LocalScorer(model, settings)
    hook = outbox_hook(settings.routing.high_value_price)
    n_parts = len(outline.part_digests)
    todo = [i for i in range(n_parts) if not part_path(out_dir, i).is_file()]
    if on_part is not None:  # the parts an earlier run finished count as progress at once
        for i in sorted(set(range(n_parts)).difference(todo)):
            on_part(min(part_size, outline.count - i * part_size))

    def parts_to_do() -> Iterator[list[ItemIn]]:
        # Each part is checked against the first reading before it is scored, so a catalog that
        # changed between the readings records nothing that was not in the first.
        wanted, parts = set(todo), 0
        for index, part in enumerate(_parts(items, part_size)):
            parts += 1
            if index >= n_parts or part_digest(part) != outline.part_digests[index]:
                raise _changed(f"part {index} (from item {index * part_size + 1}) differs")
            if index in wanted:
                yield part
        if parts != n_parts:
            raise _changed(f"it has {parts} parts of {part_size} items, not {n_parts}")

    scored_items = escalated = 0
    for index, scored in zip(todo, scorer.stream(parts_to_do()), strict=True):
        ids = store.record_predictions(
            model.version, new_predictions(scored), requested_by=SCORE_ACTOR, on_escalated=hook
        )
        decisions = [s.routed.decision.value for s in scored]
        _write_part(
            part_path(out_dir, index),
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
            on_part(len(scored))
    return ScoreReport(n_parts, n_parts - len(todo), scored_items, escalated, model.version)
