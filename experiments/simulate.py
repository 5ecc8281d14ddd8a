"""Replay a labelled catalog through the human-in-the-loop: route, review, retrain, measure.

The round loop works on a `LabeledDataset` plus its precomputed embeddings (one row per item), so the
encoder runs once per catalog (through the `EmbeddingCache`) and a simulation only trains heads.

Protocol of one run (one strategy, one seed)::

    test  = group_split(data, test_fraction, seed)       # grouped by normalized title, never reviewed
    stream = the other rows, in catalog (arrival) order   # optionally the first `limit` of them
    labelled = stream[:seed_size]                          # existing labels; the first model
    arrivals = stream[seed_size:], dealt into `rounds` equal incoming batches
    for each round:
        the current model predicts the incoming batch; `serving.routing.route` (the production policy:
        thresholds, high-value price, OOD, spot checks...) decides -> escalation_rate of the round
        escalated items join the review queue (the backlog of escalated, unreviewed items)
        the strategy ranks the queue with the current model; the top `batch` items get the true label
        from a simulated reviewer (wrong with probability `reviewer_noise`)
        retrain on seed + corrections; evaluate on the test split

The loop's policy is `learner.loop`, exactly as production runs it (the same function routes, draws
audits, assigns label roles and builds the training configuration):

- **audits**: `serving.routing.route` draws every incoming item into the audit sample with a logged
  probability (`learner.loop.AuditPolicy`: ``rate`` inside the routing model's confidence band,
  ``rate * outside_factor`` outside it). The rate is fixed once per run so that about
  ``audit_share * batch`` incoming items are drawn per round; seed items are drawn at the same rate.
  Audited items are reviewed first, from the round's budget; the strategy picks the rest.
- **roles**: audits certify (`learner.certify`, temperature included) and are not trained on while
  they do; with ``audit.certify_window`` only the most recent audits certify and older ones train, as
  in production (`learner.loop.split_roles`); every other label trains.
- **stream**: every item routed so far (and the seed) with its stratum, which the certification
  needs to weigh the strata; the candidate model's confidence on them is computed in chunks.

The head sees ``training.features`` inputs (embedding, or embedding + hashed n-grams); centroid
similarity (out-of-distribution routing) and `batch_diverse` distances use the encoder embedding only.

`batch_diverse` (modAL ranked batch) costs O(pool * labelled) per pick; here it sees only the
`candidate_factor * batch` queue items with the smallest margin (most uncertain), and picks its
diverse batch among those.

Each run writes ``<out>/<strategy>/seed<k>.jsonl``: a header line with the configuration and the
fingerprint of the code that ran it (`code_fingerprint`), one line per round, and a final
``{"done": true}`` line. A run whose file ends with that line and whose header matches both is
skipped on re-run (resumable); an unfinished file, or one written by other code, is started over.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from numpy.typing import ArrayLike, NDArray

from hitl.settings import RoutingSettings
from learner.bundle import ModelBundle
from learner.data import LabeledDataset, group_split
from learner.evaluation import macro_f1, risk_coverage_curve
from learner.features import FeatureSpec, HeadInputs
from learner.gate import AuditScores, GateDecision, GatePolicy, audit_scores
from learner.loop import (
    AuditPolicy,
    Provenance,
    certification_stream,
    split_roles,
    strata_of,
)
from learner.strategies import get_strategy, margin
from learner.training import (
    AuditDesign,
    TrainingConfig,
    TrainingResult,
    certify_bundle,
    label_indices,
    train_bundle,
)
from serving.routing import AuditRouting, Decision, RouteInput, centroid_similarity, route

__all__ = [
    "Inputs",
    "RunLogger",
    "SimulationConfig",
    "arrival_clustering",
    "code_fingerprint",
    "looks_sorted",
    "model_inputs",
    "run_file",
    "run_finished",
    "seed_share_at",
    "simulate_run",
    "sources_digest",
    "split_stream",
]

DONE = {"done": True}
RISK_COVERAGE_POINTS = 50


@dataclass(frozen=True)
class SimulationConfig:
    """One simulated run. `training` carries head hyper-parameters, target and delta."""

    strategy: str
    seed: int = 0
    seed_size: int = 200
    batch: int = 200
    rounds: int = 15
    reviewer_noise: float = 0.0
    audit_share: float = 0.4
    test_fraction: float = 0.2
    limit: int | None = None
    candidate_factor: int = 10
    training: TrainingConfig = field(default_factory=TrainingConfig)
    routing: RoutingSettings = field(default_factory=RoutingSettings)
    audit: AuditPolicy = field(default_factory=AuditPolicy)  # its rate is set per run from audit_share
    gate: GatePolicy = field(default_factory=GatePolicy)  # production's gate decides each round's champion
    # As production (`retrain.auto_resolve_on_promotion`): a new champion auto-resolves the open
    # escalations it would auto-accept, so they leave the review queue.
    auto_resolve_on_promotion: bool = True

    def __post_init__(self) -> None:
        get_strategy(self.strategy)  # ValueError listing the valid names
        for name in ("seed_size", "batch", "rounds", "candidate_factor"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 < self.audit_share < 1.0:
            raise ValueError(f"audit_share must be in (0, 1), got {self.audit_share}")
        if round(self.audit_share * self.batch) < 1:
            raise ValueError(f"audit_share * batch must be >= 1 item, got {self.audit_share} * {self.batch}")
        if not 0.0 <= self.reviewer_noise < 1.0:
            raise ValueError(f"reviewer_noise must be in [0, 1), got {self.reviewer_noise}")
        if not 0.0 < self.test_fraction < 1.0:
            raise ValueError(f"test_fraction must be in (0, 1), got {self.test_fraction}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be >= 1, got {self.limit}")

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["training"] = asdict(self.training)
        out["training"]["features"] = self.training.features.to_dict()
        out["routing"] = self.routing.model_dump(mode="json")
        out["audit"] = asdict(self.audit)
        out["gate"] = asdict(self.gate)
        return out


class RunLogger(Protocol):
    """Receives each run's rounds (MLflow in the CLI; nothing in tests)."""

    def start(self, config: SimulationConfig, params: Mapping[str, Any]) -> None: ...

    def round(self, step: int, metrics: Mapping[str, Any]) -> None: ...

    def end(self, *, failed: bool) -> None: ...


# --------------------------------------------------------------------------------------------- files


def run_file(out_dir: Path, strategy: str, seed: int) -> Path:
    return out_dir / strategy / f"seed{seed}.jsonl"


def _read_lines(path: Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for text in path.read_text(encoding="utf-8").splitlines():
        if text.strip():
            rows.append(json.loads(text))
    return rows


def run_finished(path: Path, config: SimulationConfig, extra: Mapping[str, Any] | None = None) -> bool:
    """True when `path` holds a complete run of exactly this configuration."""
    if not path.is_file():
        return False
    try:
        lines = _read_lines(path)
    except (OSError, json.JSONDecodeError):
        return False
    if len(lines) < 2 or lines[-1] != DONE:
        return False
    return bool(lines[0] == _header(config, extra))


def read_rounds(path: Path) -> list[dict[str, Any]]:
    """The round rows of a finished run file (header and done marker removed)."""
    return [row for row in _read_lines(path)[1:] if row != DONE]


# What decides a run's rounds besides its configuration: the loop and the learner, and the app the
# through-API driver talks to. Plots and summaries are left out, so redrawing a figure keeps the runs.
_RUN_CODE = ("learner", "serving", "labeling", "experiments/simulate.py", "experiments/through_api.py")


def sources_digest(root: Path, entries: Sequence[str]) -> str:
    """sha256 (16 hex digits) of the ``*.py`` files under each of `entries` (folders or files,
    relative to `root`), names included, so a renamed or added module changes it too."""
    digest = hashlib.sha256()
    for entry in entries:
        path = root / entry
        files = sorted(path.rglob("*.py")) if path.is_dir() else [path]
        for file in files:
            digest.update(file.relative_to(root).as_posix().encode() + b"\0")
            digest.update(file.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


@functools.cache
def code_fingerprint() -> str:
    """`sources_digest` of the code that decides a run's rounds (`_RUN_CODE`), once a process.

    A run file's header holds it, so a resumed benchmark never reads back runs that earlier code
    wrote: a changed threshold grid left the configuration as it was and the old runs were reused.
    Any edit counts, comments too, which costs a rerun and never a stale number.
    """
    return sources_digest(Path(__file__).resolve().parent.parent, _RUN_CODE)


def _header(config: SimulationConfig, extra: Mapping[str, Any] | None) -> dict[str, Any]:
    # A JSON round-trip so tuples/lists compare equal to what a file holds.
    payload = {**config.to_dict(), **dict(extra or {})}
    return {"config": json.loads(json.dumps(payload)), "code": code_fingerprint()}


# --------------------------------------------------------------------------------------------- the loop


def arrival_clustering(labels: ArrayLike) -> tuple[float, float]:
    """(share of neighbours in file order that share a label, the share a random order would give).

    The simulation streams a catalog in file order (its arrival order). A file sorted or grouped by
    category gives the first share far above the second: the stream then shows one category at a
    time, and past audits say little about the next batch.
    """
    y = np.asarray(labels)
    if y.size < 2:
        return 0.0, 1.0
    _, counts = np.unique(y, return_counts=True)
    return float(np.mean(y[1:] == y[:-1])), float(np.sum((counts / y.size) ** 2))


def looks_sorted(labels: ArrayLike, *, factor: float = 5.0, floor: float = 0.1) -> bool:
    """True when neighbours share a label ``factor`` times more often than chance (and in at least
    ``floor`` of the pairs): the file is probably ordered by category, not by arrival."""
    adjacent, chance = arrival_clustering(labels)
    return adjacent >= floor and adjacent >= factor * chance


def split_stream(
    data: LabeledDataset, *, test_fraction: float, seed: int, limit: int | None = None
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """(stream rows in arrival order, test rows): grouped by normalized title, seeded."""
    split = group_split(data, calibration_fraction=0.0, test_fraction=test_fraction, seed=seed)
    stream = np.sort(np.concatenate([split.train, split.calibration]))
    if limit is not None:
        stream = stream[:limit]
    return stream.astype(np.int64), split.test.astype(np.int64)


def _noisy(
    labels: NDArray[np.int64], noise: float, n_classes: int, rng: np.random.Generator
) -> NDArray[np.int64]:
    """Each label replaced, with probability `noise`, by a uniformly drawn *other* class."""
    out = labels.copy()
    if noise <= 0 or n_classes < 2:
        return out
    flip = rng.random(len(out)) < noise
    shift = rng.integers(1, n_classes, size=int(flip.sum()))
    out[flip] = (out[flip] + shift) % n_classes
    return out


def _route_items(data: LabeledDataset, rows: NDArray[np.int64]) -> list[RouteInput]:
    out = []
    for r in rows:
        price = float(data.prices[r])
        brand = data.brands[r]
        out.append(
            RouteInput(
                item_id=str(data.ids[r]),
                price=price if math.isfinite(price) else None,
                brand=None if brand is None else str(brand),
            )
        )
    return out


@dataclass(frozen=True)
class Inputs:
    """Per catalog row: the encoder embedding (`emb`) and the head input built from it (`x`)."""

    emb: NDArray[np.float32]
    x: HeadInputs  # (n_rows, d): CSR for hybrid features, as the retrain job builds them


def model_inputs(data: LabeledDataset, embeddings: NDArray[np.float32], features: FeatureSpec) -> Inputs:
    """Build the head inputs of every row once (hashing ~25k titles takes seconds, not per round), as
    production's retrain job builds them (`FeatureSpec.sparse_inputs`): the simulated loop then fits
    the head on the same inputs, by the same code path, as a retrain does."""
    emb = np.asarray(embeddings, dtype=np.float32)
    if emb.shape[0] != len(data):
        raise ValueError(f"embeddings have {emb.shape[0]} rows, the dataset {len(data)}")
    return Inputs(emb=emb, x=features.sparse_inputs(emb, [str(t) for t in data.texts]))


def _routed(
    result: TrainingResult,
    inputs: Inputs,
    data: LabeledDataset,
    rows: NDArray[np.int64],
    policy: RoutingSettings,
    audit: AuditPolicy | None,
    strategy: str,
) -> tuple[NDArray[np.bool_], NDArray[np.bool_], NDArray[np.float64], NDArray[np.bool_], NDArray[np.float64]]:
    """(escalated, below_threshold, proba, audited, inclusion) of `rows` under the production routing
    policy; ``audit=None`` routes without audit draws (the test split)."""
    bundle = result.bundle
    proba = bundle.predict_proba(inputs.x[rows])
    centroids = np.asarray(bundle.metadata["class_centroids"], dtype=np.float64)
    similarity = centroid_similarity(inputs.emb[rows], centroids)
    band = float(bundle.metadata.get("audit_band_low", 0.0))
    routed = route(
        proba,
        bundle.labels,
        bundle.thresholds.thresholds,
        _route_items(data, rows),
        policy,
        score=bundle.thresholds.score,
        similarity=similarity,
        audit=None if audit is None else AuditRouting(audit, band),
        strategy=strategy,
    )
    escalated = np.array([r.decision == Decision.ESCALATED for r in routed], dtype=np.bool_)
    audited = np.array([r.audited for r in routed], dtype=np.bool_)
    inclusion = np.array([np.nan if r.audit_probability is None else r.audit_probability for r in routed])
    below = ~bundle.thresholds.accept_mask(proba)
    return escalated, below, proba, audited, inclusion


def _test_metrics(
    result: TrainingResult,
    x: Inputs,
    data: LabeledDataset,
    test: NDArray[np.int64],
    policy: RoutingSettings,
) -> dict[str, Any]:
    """Metrics on the whole test split; a class the head never saw counts as an error."""
    bundle = result.bundle
    escalated, below, proba, _, _ = _routed(result, x, data, test, policy, None, "margin")
    head_labels = np.array(bundle.labels, dtype=object)
    pred_labels = head_labels[np.argmax(proba, axis=1)]
    true_labels = data.labels[test]
    correct = pred_labels == true_labels
    global_index = {c: i for i, c in enumerate(data.classes)}
    pred_global = np.array([global_index[str(p)] for p in pred_labels], dtype=np.int64)
    accepted = ~below
    report = result.test_report
    head_index = {c: i for i, c in enumerate(bundle.labels)}
    y_head = np.array([head_index.get(str(t), -1) for t in true_labels], dtype=np.int64)
    seen = y_head >= 0
    coverage, risk = risk_coverage_curve(proba[seen], y_head[seen], bundle.thresholds.score)
    pick = np.unique(np.linspace(0, len(coverage) - 1, RISK_COVERAGE_POINTS).round().astype(int))
    return {
        "accuracy": float(correct.mean()),
        "macro_f1": macro_f1(data.y[test], pred_global, len(data.classes)),
        "ece": None if report is None else report.ece,
        "coverage_at_target": None if report is None else report.coverage_at_target,
        "auto_accept_coverage": float(accepted.mean()),
        "auto_accept_accuracy": float(correct[accepted].mean()) if accepted.any() else None,
        "test_escalation_rate": float(escalated.mean()),
        "classes_auto_accepted": int(np.isfinite(bundle.thresholds.thresholds).sum()),
        "risk_coverage": {
            "coverage": [round(float(c), 4) for c in coverage[pick]],
            "risk": [round(float(r), 4) for r in risk[pick]],
        },
    }


@dataclass
class _State:
    """What a run has seen: labelled rows with their provenance, and the stream with its strata."""

    labelled: list[int] = field(default_factory=list)
    observed: dict[int, int] = field(default_factory=dict)
    audited: set[int] = field(default_factory=set)
    stream_rows: list[int] = field(default_factory=list)
    stream_pi: list[float] = field(default_factory=list)
    audit_pi: dict[int, float] = field(default_factory=dict)
    # Stream row -> its position in the stream; seed rows all arrive at 0, as production's seed labels
    # share one arrival (`serving.retrain.labels.SEED_ARRIVAL`): none is older than another.
    arrival: dict[int, int] = field(default_factory=dict)

    def extend_stream(self, rows: Iterable[int], inclusion: Iterable[float], *, seed: bool = False) -> None:
        for row, pi in zip(rows, inclusion, strict=True):
            self.arrival[int(row)] = 0 if seed else len(self.stream_rows)
            self.stream_rows.append(int(row))
            self.stream_pi.append(float(pi))


STREAM_CHUNK = 4096


def _roles(data: LabeledDataset, state: _State, window: int) -> tuple[list[int], list[int], int]:
    """(training rows, audit rows, stream cutoff): the retrain job's `learner.loop.split_roles` - audits
    certify (the ``window`` most recent ones, when set; older audits train), the other labels train -
    each role in item-id order, so both drivers fit one model, and the gate pairs the challenger's and
    the champion's audits in the order they were certified in. Stream items before the cutoff (a
    position in the stream) are outside the certifying audits' stream."""
    rows = state.labelled
    provenance = [Provenance.AUDIT.value if r in state.audited else Provenance.CORRECTION.value for r in rows]
    arrivals = [state.arrival[r] for r in rows]
    roles = split_roles(provenance, [data.ids[r] for r in rows], arrivals=arrivals, window=window)
    return (
        [rows[i] for i in roles.train],
        [rows[i] for i in roles.certify],
        0 if roles.cutoff is None else int(roles.cutoff),
    )


def _train(
    data: LabeledDataset,
    inputs: Inputs,
    state: _State,
    test: NDArray[np.int64],
    config: SimulationConfig,
) -> TrainingResult:
    """Train on the training rows and certify on the audits (`_roles`)."""
    train_rows, cal_rows, cutoff = _roles(data, state, config.audit.certify_window)
    _, levels = strata_of([state.audit_pi[r] for r in cal_rows] + state.stream_pi[cutoff:])

    x = inputs.x
    return train_bundle(
        x[train_rows],
        _reviewed(data, state, train_rows),
        x[cal_rows],
        _reviewed(data, state, cal_rows),
        config=config.training,
        encoder_ref="simulation",
        encoder_id="simulation",
        x_test=x[test],
        y_test=[str(label) for label in data.labels[test]],
        design=_design(inputs, state, cal_rows, train_rows, cutoff),
        metadata={"audit_strata": levels},
    )


def _reviewed(data: LabeledDataset, state: _State, rows: Sequence[int]) -> list[str]:
    """The labels `rows` carry as reviewers gave them (`reviewer_noise`): all that production's
    training, certification and gate ever see."""
    return [data.classes[state.observed[r]] for r in rows]


def _select(
    config: SimulationConfig,
    result: TrainingResult,
    inputs: Inputs,
    queue: NDArray[np.int64],
    labelled: list[int],
    rng: np.random.Generator,
    budget: int,
) -> NDArray[np.int64]:
    n = min(budget, len(queue))
    if n == 0:
        return np.empty(0, dtype=np.int64)
    proba = result.bundle.predict_proba(inputs.x[queue])
    x = inputs.emb
    candidates: NDArray[np.int64] = np.arange(len(queue), dtype=np.int64)
    if config.strategy == "batch_diverse":
        cap = config.candidate_factor * config.batch
        if len(queue) > cap:
            candidates = np.argsort(-margin(proba), kind="stable")[:cap].astype(np.int64)
    strategy = get_strategy(config.strategy)
    picked = strategy(
        proba[candidates], n, rng=rng, features=x[queue[candidates]], labeled_features=x[labelled]
    )
    out: NDArray[np.int64] = queue[candidates[picked]]
    return out


def _review_clicks(
    champion: TrainingResult, inputs: Inputs, data: LabeledDataset, picked: NDArray[np.int64]
) -> dict[str, float | None]:
    """How the round's reviewed tasks get solved by a reviewer who takes the first correct candidate the
    task shows (`labeling.push`: the champion's guess pre-selected, its 3 best categories listed):
    ``preselected_share`` = the guess is right (Submit), ``one_click_share`` = right within the top 3
    (one click at most), the rest need the full taxonomy."""
    if not len(picked):
        return {"preselected_share": None, "one_click_share": None}
    proba = champion.bundle.predict_proba(inputs.x[picked])
    top3 = np.argsort(-proba, axis=1)[:, :3]
    labels = np.array(champion.bundle.labels, dtype=object)[top3]
    truth = np.asarray(data.labels[picked], dtype=object)[:, None]
    hits = labels == truth
    return {"preselected_share": float(hits[:, 0].mean()), "one_click_share": float(hits.any(axis=1).mean())}


def audit_rate(config: SimulationConfig, incoming_per_round: int) -> float:
    """The in-band audit rate that draws ~``audit_share * batch`` of a round's incoming items, given that
    ``band_share`` of them lie in the band and the rest are drawn ``outside_factor`` times as often."""
    policy = config.audit
    target = config.audit_share * config.batch
    spread = policy.band_share + policy.outside_factor * (1.0 - policy.band_share)
    return float(min(1.0, target / max(incoming_per_round * spread, 1.0)))


def seed_share_at(rate: float) -> float:
    """The simulations' seed-audit share: the in-band rate, so seed audits join the routed audits'
    stratum (capped below 1, as `AuditSettings.seed_share` must be). Both drivers use it."""
    return min(rate, 0.99)


def simulate_run(
    data: LabeledDataset,
    embeddings: NDArray[np.float32],
    config: SimulationConfig,
    *,
    inputs: Inputs | None = None,
) -> Iterator[dict[str, Any]]:
    """Yield one metrics row per round (round 0 = the seed model), see the module docstring.

    Row keys: round, labels_used (labelled items: seed + corrections), corrections (reviewed items),
    corrections_at_routing (corrections the routing model was trained with), incoming,
    escalation_rate (share of the round's incoming batch escalated by the routing policy, audits
    included), below_threshold_rate (model-only part), stream_auto_accept_accuracy, queue_size,
    audited (audits drawn this round), audits (all audits so far), certifying_audits (the most recent
    ``audit.certify_window`` of them, or all; older ones train), train_seconds, and the test metrics
    of the model trained at the end of the round (accuracy, macro_f1, ece, coverage_at_target = the
    oracle coverage, auto_accept_coverage = the certified coverage, auto_accept_accuracy,
    test_escalation_rate, classes_auto_accepted, risk_coverage, threshold, audit_band_low).

    `inputs` (from `model_inputs` with ``config.training.features``) saves rebuilding them per run.
    """
    x = inputs if inputs is not None else model_inputs(data, embeddings, config.training.features)
    if x.x.shape[0] != len(data):
        raise ValueError(f"inputs have {x.x.shape[0]} rows, the dataset {len(data)}")
    stream, test = split_stream(
        data, test_fraction=config.test_fraction, seed=config.seed, limit=config.limit
    )
    if len(stream) < config.seed_size + config.batch:
        raise ValueError(
            f"the stream has {len(stream)} items; "
            f"seed_size + batch = {config.seed_size + config.batch} needed"
        )
    rng = np.random.default_rng(config.seed)
    noise_rng = np.random.default_rng([config.seed, 7919])
    y = data.y
    arrivals = stream[config.seed_size :]
    chunks = np.array_split(arrivals, config.rounds)
    policy = replace(config.audit, seed=config.seed).with_rate(audit_rate(config, len(chunks[0])))
    state = _State()
    seed_rows = [int(r) for r in stream[: config.seed_size]]
    state.labelled.extend(seed_rows)
    state.observed.update({r: int(y[r]) for r in seed_rows})  # seed labels are taken as correct
    state.extend_stream(seed_rows, [policy.rate] * len(seed_rows), seed=True)
    # Production's rule (`AuditPolicy.seed_audit`: by id hash) at the share the through-API driver sets.
    seed_policy = replace(policy, seed_share=seed_share_at(policy.rate))
    seed_audits = seed_policy.seed_audit([str(data.ids[r]) for r in seed_rows])
    if not seed_audits.any():  # as production's retrain refuses to run without audits
        raise ValueError(
            f"none of the {len(seed_rows)} seed labels was drawn into the audit sample (audit rate "
            f"{policy.rate:.3f}): the first model has nothing to be certified on; raise --seed-size "
            "or --audit-share"
        )
    for r, is_audit in zip(seed_rows, seed_audits, strict=True):
        if is_audit:
            state.audited.add(r)
            state.audit_pi[r] = policy.rate
    queue: NDArray[np.int64] = np.empty(0, dtype=np.int64)
    corrections = 0

    def test_row(result: TrainingResult) -> dict[str, Any]:
        metrics = _test_metrics(result, x, data, test, config.routing)
        metrics["threshold"] = _finite(result.bundle.thresholds.thresholds)
        metrics["audit_band_low"] = float(result.bundle.metadata.get("audit_band_low", 0.0))
        metrics["audits"] = len(state.audited)
        metrics["certifying_audits"] = len(_roles(data, state, config.audit.certify_window)[1])
        metrics["certificate"] = str(result.bundle.thresholds.extra.get("reason", ""))
        return metrics

    result = _train(data, x, state, test, config)
    champion = result
    yield {
        "round": 0,
        "labels_used": len(state.labelled),
        "corrections": 0,
        "train_seconds": result.train_seconds,
        "audit_rate": policy.rate,
        **test_row(result),
    }
    for number, incoming in enumerate(chunks, start=1):
        at_routing = corrections
        audit: NDArray[np.int64] = np.empty(0, dtype=np.int64)
        if len(incoming):
            escalated, below, proba, audited, inclusion = _routed(
                champion, x, data, incoming, config.routing, policy, config.strategy
            )
            auto = ~escalated
            pred = np.array(champion.bundle.labels, dtype=object)[np.argmax(proba, axis=1)]
            auto_correct = pred[auto] == data.labels[incoming][auto]
            state.extend_stream(incoming, inclusion)
            audit = incoming[audited].astype(np.int64)
            for r, p in zip(audit, inclusion[audited], strict=True):
                state.audited.add(int(r))
                state.audit_pi[int(r)] = float(p)
            queue = np.concatenate([queue, incoming[escalated & ~audited]]).astype(np.int64)
            escalation_rate: float | None = float(escalated.mean())
            below_rate: float | None = float(below.mean())
            stream_auto_acc = float(auto_correct.mean()) if auto.any() else None
        else:
            escalation_rate = below_rate = stream_auto_acc = None
        # Audits are reviewed first (they come first in the queue); the strategy spends the rest, ranked
        # by the serving model (production's queue priority comes from the model that routed).
        picked = _select(config, champion, x, queue, state.labelled, rng, max(config.batch - len(audit), 0))
        queue = np.setdiff1d(queue, picked, assume_unique=True).astype(np.int64)
        picked = np.concatenate([audit, picked]).astype(np.int64)
        clicks = _review_clicks(champion, x, data, picked)
        reviewed = _noisy(y[picked], config.reviewer_noise, len(data.classes), noise_rng)
        for r, label in zip(picked, reviewed, strict=True):
            state.labelled.append(int(r))
            state.observed[int(r)] = int(label)
        corrections += len(picked)
        started = time.perf_counter()
        result = _train(data, x, state, test, config)
        decision = _gate(config, result, champion, x, data, state)
        if decision.promote:
            champion = result
            if config.auto_resolve_on_promotion and len(queue):
                still_escalated, _, _, _, _ = _routed(
                    champion, x, data, queue, config.routing, None, config.strategy
                )
                queue = queue[still_escalated]
        yield {
            "round": number,
            "labels_used": len(state.labelled),
            "corrections": corrections,
            "corrections_at_routing": at_routing,
            "incoming": len(incoming),
            "escalation_rate": escalation_rate,
            "below_threshold_rate": below_rate,
            "stream_auto_accept_accuracy": stream_auto_acc,
            "queue_size": len(queue),
            "audited": len(audit),
            **clicks,
            "train_seconds": time.perf_counter() - started,
            "promoted": decision.promote,
            "gate_reason": decision.reason,
            **test_row(champion),
        }


def _design(
    inputs: Inputs, state: _State, audit_rows: Sequence[int], train_rows: Sequence[int], cutoff: int
) -> AuditDesign:
    """The audit design of `audit_rows` over every item routed since the stream position ``cutoff``
    (`_roles`), leaving out the items the models are trained on (`learner.loop.certification_stream`)."""
    rows = state.stream_rows[cutoff:]
    keep = certification_stream(rows, set(train_rows))
    strata, _ = strata_of([state.audit_pi[r] for r in audit_rows] + state.stream_pi[cutoff:])
    stream_strata = strata[len(audit_rows) :]
    stream = np.asarray(rows, dtype=np.int64)[keep]

    def stream_confidence(bundle: ModelBundle) -> NDArray[np.float64]:
        parts = [
            bundle.confidence(bundle.predict_proba(inputs.x[stream[i : i + STREAM_CHUNK]]))
            for i in range(0, len(stream), STREAM_CHUNK)
        ]
        return np.concatenate(parts) if parts else np.empty(0)

    return AuditDesign(
        strata=strata[: len(audit_rows)],
        stream_strata=stream_strata[keep],
        stream_confidence=stream_confidence,
        trained_strata=stream_strata[~keep],
    )


def _gate(
    config: SimulationConfig,
    challenger: TrainingResult,
    champion: TrainingResult,
    inputs: Inputs,
    data: LabeledDataset,
    state: _State,
) -> GateDecision:
    """Production's paired gate on every audit so far: the round's model replaces the champion only
    when it is not significantly worse. The champion is re-certified on the same audits first, so
    both coverages rest on the same evidence."""
    # The challenger's audits, in the order it was certified on them.
    train_rows, rows, cutoff = _roles(data, state, config.audit.certify_window)
    y = _reviewed(data, state, rows)
    pi = np.array([state.audit_pi[r] for r in rows])
    design = _design(inputs, state, rows, train_rows, cutoff)

    def scores(result: TrainingResult, recertify: bool) -> AuditScores:
        bundle = result.bundle
        proba = bundle.predict_proba(inputs.x[rows])
        thresholds, evidence = bundle.thresholds, result.evidence
        if recertify or evidence is None:
            y_idx = label_indices(y, bundle.labels)
            thresholds, evidence = certify_bundle(bundle, proba, y_idx, config=config.training, design=design)
        return audit_scores(proba, bundle.labels, y, thresholds, evidence)

    return config.gate.decide(scores(challenger, False), scores(champion, True), pi)


def _finite(thresholds: NDArray[np.float64]) -> float | None:
    finite = thresholds[np.isfinite(thresholds)]
    return float(finite.min()) if finite.size else None


def run_or_skip(
    data: LabeledDataset,
    embeddings: NDArray[np.float32],
    config: SimulationConfig,
    out_dir: Path,
    *,
    extra: Mapping[str, Any] | None = None,
    logger: RunLogger | None = None,
    on_round: Callable[[dict[str, Any]], None] | None = None,
    inputs: Inputs | None = None,
) -> tuple[list[dict[str, Any]], bool]:
    """Run one (strategy, seed) into its JSONL file, or read it back when already finished.

    Returns (rows, skipped).
    """
    return record_run(
        run_file(out_dir, config.strategy, config.seed),
        config,
        lambda: simulate_run(data, embeddings, config, inputs=inputs),
        extra=extra,
        logger=logger,
        on_round=on_round,
    )


def record_run(
    path: Path,
    config: SimulationConfig,
    run: Callable[[], Iterable[dict[str, Any]]],
    *,
    extra: Mapping[str, Any] | None = None,
    logger: RunLogger | None = None,
    on_round: Callable[[dict[str, Any]], None] | None = None,
) -> tuple[list[dict[str, Any]], bool]:
    """The resumable JSONL file of one run (header, one line per round, `DONE`) and its MLflow run,
    whichever loop yields the rows. A finished file with the same configuration is read back instead
    (skipped = True); an unfinished one is redone from the start."""
    if run_finished(path, config, extra):
        return read_rounds(path), True
    path.parent.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    if logger is not None:
        logger.start(config, {**_flat_params(config), **dict(extra or {})})
    failed = True
    try:
        with path.open("w", encoding="utf-8") as out:
            out.write(json.dumps(_header(config, extra)) + "\n")
            for row in run():
                rows.append(row)
                out.write(json.dumps(row) + "\n")
                out.flush()
                if logger is not None:
                    logger.round(int(row["round"]), row)
                if on_round is not None:
                    on_round(row)
            out.write(json.dumps(DONE) + "\n")
        failed = False
    finally:
        if logger is not None:
            logger.end(failed=failed)
    return rows, False


def _flat_params(config: SimulationConfig) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in config.to_dict().items():
        if isinstance(value, dict):
            out.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            out[key] = value
    return out


def value_at(rows: Sequence[Mapping[str, Any]], x_key: str, y_key: str, x: float) -> float | None:
    """`y_key` of the row whose `x_key` is the largest one <= x (None when no row qualifies)."""
    best: Mapping[str, Any] | None = None
    for row in rows:
        xv = row.get(x_key)
        if xv is not None and row.get(y_key) is not None and xv <= x and (best is None or xv >= best[x_key]):
            best = row
    return None if best is None else float(best[y_key])
