"""One retrain run, start to finish: collect -> embed -> train + certify -> gate -> register -> promote."""

from __future__ import annotations

import logging
import math
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from learner import loop
from learner.bundle import BUNDLE_REF_PREFIX, ModelBundle
from learner.features import HeadInputs, NgramMemo
from learner.finetune import TUNED_ENCODER_DIR, TunedEncoder, tune_encoder
from learner.gate import AuditScores, GateDecision, audit_scores
from learner.loop import AuditPolicy, training_config
from learner.pii import describe_error
from learner.training import AuditDesign, TrainingConfig, certify_bundle, label_indices
from serving.retrain.gate import gate
from serving.retrain.labels import (
    LabeledText,
    StreamItem,
    collect_labels,
)
from serving.retrain.promotion import Promoter
from serving.retrain.tables import (
    STREAM_CHUNK,
)
from serving.retrain.training import (
    CachedEmbedder,
    Embedder,
    EmbedderPool,
    EncoderEmbedder,
    EncoderUnavailableError,
    TrainFn,
    TrainingInputs,
    default_train,
)
from serving.settings import AppSettings
from serving.store import Store

logger = logging.getLogger(__name__)

CERTIFY_FROM = "certify_from"  # bundle metadata: where its certifying audits started (`certify_from`)
PROGRESS_EVERY_S = 2.0  # how often a long stage writes its progress to the run's row


def staging_dir(settings: AppSettings, mlflow_run_id: str = "") -> Path:
    """Where a run writes its bundle (and a tuned encoder) before MLflow logs it, removed after; with
    no run id, the folder holding every run's."""
    return settings.models_dir / "retrain" / mlflow_run_id


@dataclass
class RetrainJob:
    """One training run, start to finish (see the module docstring)."""

    settings: AppSettings
    store: Store
    embedder: Embedder
    promoter: Promoter
    train_fn: TrainFn = default_train
    on_stage: Callable[[str], None] = field(default=lambda _stage: None)
    # Run-row fields as soon as they exist (the MLflow run id, the registered version): a run that
    # fails later still names what it left in MLflow.
    on_record: Callable[..., None] = field(default=lambda **_values: None)
    # The worker's, kept between runs: one correction must not re-hash every title. None = one of
    # `retrain.ngram_memo_texts` for this job alone.
    ngram_memo: NgramMemo | None = None
    # The embedder of a bundle trained on another encoder than this run's (a fine-tuned champion, or
    # one from before `learner.encoder` changed); None = its encoder behind the shared cache.
    embedder_for: Callable[[ModelBundle], Embedder] | None = None
    # The worker's stop flag: a fine-tune (minutes on a CPU) ends at its next step when it is set, so
    # a shutdown records the run as failed and removes its staging instead of being killed mid-run.
    should_stop: Callable[[], bool] = field(default=lambda: False)
    _loaded: dict[str, ModelBundle] = field(default_factory=dict, init=False, repr=False)
    mlflow_run_id: str | None = None  # set as soon as the MLflow run exists (failed runs have one too)

    def __post_init__(self) -> None:
        self._progress_at = 0.0
        memo = self.ngram_memo  # not `or`: an empty memo has length 0
        self._memo = memo if memo is not None else NgramMemo(self.settings.retrain.ngram_memo_texts)

    def run(self, trigger: str) -> dict[str, Any]:
        """Returns the run's outcome fields; raises on failure (after ending the MLflow run FAILED)."""
        from serving import registry, tracking

        settings = self.settings
        self.on_stage("collecting")
        # One champion for the whole run: its certifying window is this run's floor, and the gate
        # re-certifies it on this run's audits (a promotion by hand meanwhile waits for the next run).
        champion_version = registry.champion_version(settings)
        floor = None if champion_version is None else certify_from(self._champion(champion_version))
        collected = collect_labels(self.store, AuditPolicy.of(settings.learner.audit), floor=floor)
        labels = collected.labels
        window = settings.learner.audit.certify_window
        roles = loop.split_roles(
            [r.provenance for r in labels],
            [r.item_id for r in labels],
            arrivals=[r.arrival for r in labels],
            window=window,
            floor=floor,
        )
        train = [labels[i] for i in roles.train]
        audits = [labels[i] for i in roles.certify]
        # The certifying audits were drawn from the stream routed since the oldest of them.
        cutoff = roles.cutoff
        stream = collected.stream if cutoff is None else [s for s in collected.stream if s.arrival >= cutoff]
        fresh = loop.certification_stream([s.item_id for s in stream], {r.item_id for r in train})
        outcome: dict[str, Any] = {"correction_watermark": collected.watermark, "n_labels": len(labels)}
        config = training_config(settings.learner)
        n_seed = sum(r.source == "seed" for r in labels)
        params = {
            "trigger": trigger,
            "n_labels": len(labels),
            "n_seed_labels": n_seed,
            "n_correction_labels": len(labels) - n_seed,
            "n_train": len(train),
            "n_audits": len(audits),
            "n_audits_retired": sum(r.provenance in loop.AUDIT_PROVENANCES for r in train),
            "n_stream": len(stream),
            "n_stream_trained_on": int((~fresh).sum()),
            "unreviewed_audits": collected.unreviewed_audits,
            "accuracy_tolerance": settings.retrain.accuracy_tolerance,
            "coverage_tolerance": settings.retrain.coverage_tolerance,
            "gate_alpha": settings.retrain.gate_alpha,
            "encoder": self.embedder.encoder_ref,
            "mode": "fine-tuned" if settings.learner.finetune.enabled else "frozen-encoder",
            **(
                {f"finetune.{k}": v for k, v in settings.learner.finetune.model_dump().items()}
                if settings.learner.finetune.enabled
                else {}
            ),
            **{f"head.{k}": v for k, v in settings.learner.head.model_dump().items()},
            **{f"audit.{k}": v for k, v in settings.learner.audit.model_dump().items()},
            "target_accuracy": config.target_accuracy,
            "delta": config.delta,
            "guarantee": config.guarantee,
            "acceptance_score": config.acceptance_score,
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
        staging = staging_dir(settings, run_id)
        pool = EmbedderPool([self.embedder], load=self.embedder_for or self._cached_embedder)
        try:
            # Inside the try: a store that cannot record the run id must not leave the run RUNNING.
            self.on_record(mlflow_run_id=run_id)
            return self._run(
                run_id,
                _Split(train, audits, stream, fresh, roles.cutoff, champion_version),
                config,
                outcome,
                trigger,
                staging,
                pool,
            )
        except BaseException as exc:
            try:
                tracking.end_run(settings, run_id, failed=True, error=describe_error(exc))
            except Exception as inner:
                logger.error("could not mark MLflow run %s FAILED: %s", run_id, type(inner).__name__)
            raise
        finally:
            pool.close()
            # Staging only: MLflow keeps the registered copy and serving downloads its own, so a third
            # copy per retrain (with a tuned encoder, ~90 MB) would only fill the disk.
            shutil.rmtree(staging, ignore_errors=True)

    def _fine_tune_step(self, step: int, total: int, loss: float) -> None:
        """Progress on the run's row (at most every 2 s), and the way out when the worker stops."""
        if self.should_stop():
            raise RetrainError(f"stopped at fine-tuning step {step}/{total}: the retrain worker shut down")
        now = time.monotonic()
        if step == total or now - self._progress_at >= PROGRESS_EVERY_S:
            self._progress_at = now
            self.on_stage(f"fine-tuning {step}/{total}")

    def _cached_embedder(self, bundle: ModelBundle) -> Embedder:
        return CachedEmbedder(self.settings, ref=bundle.resolve_encoder_ref())

    def _run(
        self,
        run_id: str,
        split: _Split,
        config: TrainingConfig,
        outcome: dict[str, Any],
        trigger: str,
        staging: Path,
        pool: EmbedderPool,
    ) -> dict[str, Any]:
        from serving import registry, tracking

        settings = self.settings
        train, audits, stream, fresh = split.train, split.audits, split.stream, split.fresh
        if len(train) < settings.retrain.min_labels:
            raise RetrainError(
                f"only {len(train)} training labels; at least {settings.retrain.min_labels} needed"
            )
        if not audits:
            raise RetrainError(
                "no reviewed audits to certify on: audits are seed labels (learner.audit.seed_share) "
                "and routed items drawn for review; those the champion trained on never certify again, "
                "and an unreviewed routed audit holds back every later one"
            )
        tuned: TunedEncoder | None = None
        embedder: Embedder = self.embedder
        if settings.learner.finetune.enabled:
            # Tuned on the training labels only: the certifying audits stay unseen by the encoder too.
            self.on_stage("fine-tuning")
            tuned = tune_encoder(
                settings.learner,
                [r.text for r in train],
                [r.label for r in train],
                staging / TUNED_ENCODER_DIR,
                on_step=self._fine_tune_step,
            )
            embedder = EncoderEmbedder(tuned.encoder, f"{BUNDLE_REF_PREFIX}{TUNED_ENCODER_DIR}")
            pool.add(embedder)
            logger.info(
                "retrain: encoder fine-tuned in %.1f s (%d steps, loss %.3f -> %.3f)",
                tuned.seconds,
                tuned.steps,
                tuned.initial_loss,
                tuned.final_loss,
            )
        started = time.perf_counter()
        self.on_stage("embedding")
        encoder_id = embedder.encoder_id

        def embed(name: str, texts: Sequence[str]) -> tuple[NDArray[np.float32], HeadInputs]:
            """(encoder embeddings, head inputs as `config.features` builds them)."""
            embeddings = pool.embed(encoder_id, name, texts)
            if not texts:
                return embeddings, embeddings
            return embeddings, config.features.sparse_inputs(embeddings, list(texts), self._memo)

        e_train, x_train = embed("train", [r.text for r in train])
        audit_texts = [r.text for r in audits]
        _, x_audit = embed("audits", audit_texts)
        # Only the items the model was not trained on are scored (`learner.loop.certification_stream`).
        stream_texts = [s.text for s, keep in zip(stream, fresh, strict=True) if keep]
        pool.embed(encoder_id, "stream", stream_texts)  # here, so embedding_time_s counts it
        audit_pi = np.array([r.inclusion for r in audits], dtype=np.float64)
        strata, levels = loop.strata_of(np.concatenate([audit_pi, [s.inclusion for s in stream]]))

        scored: dict[int, tuple[ModelBundle, NDArray[np.float64]]] = {}

        def stream_confidence(bundle: ModelBundle) -> NDArray[np.float64]:
            """`bundle`'s confidence on the stream, under its own encoder and feature spec (the
            champion may predate today's); embedded once per encoder, scored once per bundle, head
            inputs built a chunk at a time to bound memory."""
            if id(bundle) in scored:  # the bundle is kept in the value, so its id is not reused
                return scored[id(bundle)][1]
            e_stream = pool.embed(bundle.encoder_id, "stream", stream_texts, bundle)
            parts = []
            for start in range(0, len(stream_texts), STREAM_CHUNK):
                chunk = stream_texts[start : start + STREAM_CHUNK]
                e_chunk = e_stream[start : start + STREAM_CHUNK]
                x = bundle.features.sparse_inputs(e_chunk, chunk, self._memo)
                parts.append(bundle.confidence(bundle.predict_proba(x)))
            confidence = np.concatenate(parts) if parts else np.empty(0)
            scored[id(bundle)] = (bundle, confidence)
            return confidence

        design = AuditDesign(
            strata=strata[: len(audits)],
            stream_strata=strata[len(audits) :][fresh],
            stream_confidence=stream_confidence,
            trained_strata=strata[len(audits) :][~fresh],
        )
        embed_seconds = time.perf_counter() - started
        init = None
        if config.warm_start_iterations > 0 and split.champion_version is not None:
            loaded = self._champion(split.champion_version)
            init = loaded if loaded.encoder_id == encoder_id else None
        self.on_stage("training")
        started_train = time.perf_counter()
        result = self.train_fn(
            TrainingInputs(
                x_train=x_train,
                y_train=[r.label for r in train],
                x_calibration=x_audit,
                y_calibration=[r.label for r in audits],
                config=config,
                encoder_ref=embedder.encoder_ref,
                encoder_id=encoder_id,
                design=design,
                init=init,
            )
        )
        train_seconds = time.perf_counter() - started_train
        bundle = result.bundle
        from learner.training import class_centroids

        # Encoder space, as serving compares them (`LoadedModel.features` -> embeddings).
        bundle.metadata["class_centroids"] = class_centroids(e_train, [r.label for r in train], bundle.labels)
        bundle.metadata.update(
            {
                "trigger": trigger,
                "n_labels": len(train),
                "mlflow_run_id": run_id,
                "audit_strata": levels,
                # Part of the encoder's id, not of its folder: what a loader needs to reproduce it.
                "encoder_max_length": settings.learner.max_length,
                # Audits routed before this trained it: the next run's floor (`certify_from`).
                CERTIFY_FROM: split.cutoff,
            }
        )
        if tuned is not None:
            bundle.metadata["finetune"] = tuned.summary()

        self.on_stage("evaluating")
        y_audit = [r.label for r in audits]
        proba_audit = bundle.predict_proba(x_audit)
        if result.evidence is None:
            raise RetrainError("the training function returned no certification evidence")
        challenger = audit_scores(proba_audit, bundle.labels, y_audit, bundle.thresholds, result.evidence)
        weights = 1.0 / audit_pi
        champion_version = split.champion_version
        champion: AuditScores | None = None
        champion_note = ""
        if champion_version is not None:
            champion, champion_note = self._champion_scores(
                champion_version, pool, audit_texts, y_audit, config, design
            )
        certificate = bundle.thresholds.extra
        metrics: dict[str, Any] = {
            "n_labels": len(train) + len(audits),
            "n_train": len(train),
            "n_audits": len(audits),
            "n_stream": len(stream),
            "n_classes": len(bundle.labels),
            "training_time_s": train_seconds,
            "warm_started": float(bool(bundle.metadata.get("warm_started"))),
            "embedding_time_s": embed_seconds,
            **(
                {
                    "finetune_time_s": tuned.seconds,
                    "finetune_steps": tuned.steps,
                    "finetune_initial_loss": tuned.initial_loss,
                    "finetune_final_loss": tuned.final_loss,
                }
                if tuned is not None
                else {}
            ),
            "temperature": bundle.temperature,
            "ece_calibration_before": result.ece_before,
            "ece_calibration_after": result.ece_after,
            "threshold": float(np.min(bundle.thresholds.thresholds)),
            "audit_band_low": float(bundle.metadata.get("audit_band_low", 0.0)),
            # Weighted by 1 / inclusion probability: estimates over the stream, not over the audits.
            "accuracy": float((weights * challenger.correct).sum() / weights.sum()),
            "auto_accept_coverage": float(certificate.get("stream_accepted_share", 0.0)),
            # What the new thresholds and the audit draw escalate of the stream (rules not counted).
            "projected_escalation_rate": AuditPolicy.of(settings.learner.audit).escalation_share(
                result.evidence.stream_confidence,
                float(bundle.metadata.get("audit_band_low", 0.0)),
                float(certificate.get("stream_accepted_share", 0.0)),
            ),
            # high_probability: an upper confidence bound; expected: the conformal estimate it selects on.
            (
                "certified_error_bound"
                if settings.learner.guarantee == "high_probability"
                else "certified_error_estimate"
            ): certificate.get("error_bound"),
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
            decision = gate(challenger, champion, audit_pi, settings.retrain)
        decision = _unless_moved(decision, champion_version, registry.champion_version(settings))
        for test in decision.tests:
            tracking.log_metrics(
                settings,
                run_id,
                {f"gate_{test.metric.replace(' ', '_')}_p_value": test.p_value},
            )

        self.on_stage("registering")
        # A tuned encoder is already in `staging` (bundle:encoder): the bundle is written around it.
        bundle.save(staging)
        version = tracking.log_model_version(
            settings,
            run_id,
            staging,
            tags={
                "hitl.gate": "passed" if decision.promote else "rejected",
                "hitl.gate_reason": decision.reason,
                "hitl.guarantee": loop.describe_guarantee(
                    config.guarantee, config.target_accuracy, config.delta
                ),
                "hitl.encoder_id": encoder_id,
                "hitl.encoder": (
                    f"fine-tuned from {tuned.base_ref} ({tuned.base_id}), stored in the bundle"
                    if tuned is not None
                    else embedder.encoder_ref
                ),
            },
        )
        outcome.update({"version": version, "gate_reason": decision.reason, "promoted": False})
        self.on_record(version=version)
        tracking.log_params(settings, run_id, {"registered_version": version})

        # Once the alias has moved, the run's outcome is decided: what follows is bookkeeping, and a
        # failing MLflow call there must not mark a promoted run FAILED (best effort, logged).
        if decision.promote:
            # Registering takes seconds to minutes (a tuned encoder): an engineer's promotion or
            # rollback in that time must not be overridden by this run.
            decision = _unless_moved(decision, champion_version, registry.champion_version(settings))
            if not decision.promote:
                outcome["gate_reason"] = decision.reason
                _best_effort(
                    "tag the version as not promoted",
                    tracking.set_version_tags,
                    settings,
                    version,
                    {"hitl.gate": "rejected", "hitl.gate_reason": decision.reason[:5000]},
                )
        if decision.promote:
            self.on_stage("promoting")
            report = self.promoter.promote(
                version, reason=f"gate: {decision.reason}", actor=f"retrain:{trigger}"
            )
            outcome["promoted"] = True
            _best_effort(
                "log the re-scoring counts",
                tracking.log_metrics,
                settings,
                run_id,
                {"auto_resolved": report.auto_resolved, "reprioritized": report.reprioritized},
            )
        else:
            _best_effort(
                "set the challenger alias",
                registry.set_alias,
                settings,
                version,
                settings.retrain.challenger_alias,
            )
            logger.info("version %s stays a challenger: %s", version, decision.reason)
        _best_effort(
            "tag the gate's reason",
            lambda: tracking.client(settings).set_tag(run_id, "hitl.gate_reason", decision.reason[:5000]),
        )

        _best_effort("record the artifacts stage", self.on_stage, "artifacts")
        try:
            index = {c: i for i, c in enumerate(bundle.labels)}
            known = np.array([label in index for label in y_audit], dtype=bool)
            if known.any():
                y_idx = np.array([index[label] for label in np.asarray(y_audit, dtype=object)[known]])
                tracking.log_evaluation_figures(
                    settings,
                    run_id,
                    proba_audit[known],
                    y_idx,
                    bundle.labels,
                    config.target_accuracy,
                    bundle.thresholds.score,
                )
        except Exception as exc:  # plots are informative; never fail a promoted run for them
            logger.warning("could not log evaluation plots: %s", type(exc).__name__)
        _best_effort("end the MLflow run", tracking.end_run, settings, run_id)
        return outcome

    def _champion_scores(
        self,
        version: str,
        pool: EmbedderPool,
        texts: list[str],
        y_audit: Sequence[str],
        config: TrainingConfig,
        design: AuditDesign,
    ) -> tuple[AuditScores | None, str]:
        """The champion on today's audits, RE-CERTIFIED on them (it trained only on audits older than
        these: a run's window never starts before its champion's, `certify_from`): its coverage then
        rests on the same evidence as the challenger's, not on the audits it had when it was promoted.
        It is scored on its own encoder's embeddings (a fine-tuned champion's is in its bundle) and
        its own feature spec."""
        champion = self._champion(version)
        try:
            e_audit = pool.embed(champion.encoder_id, "audits", texts, champion)
            # Before the gate reads it, so an unloadable encoder is a note here, not a failed run.
            design.stream_confidence(champion)
        except EncoderUnavailableError as exc:
            return None, f"champion v{version}: {exc}; not comparable on these audits; promote manually"
        # The champion's own feature spec: it may predate hybrid features (or use other n-grams).
        proba = champion.predict_proba(champion.features.sparse_inputs(e_audit, texts, self._memo))
        y_idx = label_indices(y_audit, champion.labels)
        thresholds, evidence = certify_bundle(champion, proba, y_idx, config=config, design=design)
        return audit_scores(proba, champion.labels, y_audit, thresholds, evidence), ""

    def _champion(self, version: str) -> ModelBundle:
        """Registered `version`, loaded once per run (the warm start and the gate may both need it)."""
        from serving import registry

        if version not in self._loaded:
            self._loaded[version] = ModelBundle.load(registry.download(self.settings, version), device="cpu")
        return self._loaded[version]


@dataclass(frozen=True)
class _Split:
    """What one run trains and certifies on, and against which champion."""

    train: list[LabeledText]
    audits: list[LabeledText]
    stream: list[StreamItem]
    fresh: NDArray[np.bool_]  # which stream items the challenger was not trained on
    cutoff: float | None  # its certifying audits' first arrival (None: every audit certifies)
    champion_version: str | None


def certify_from(bundle: ModelBundle) -> float | None:
    """The arrival from which `bundle`'s certifying audits started; it trained on the audits before.
    None for a bundle that certified on every audit, or one from before this was recorded."""
    value = bundle.metadata.get(CERTIFY_FROM)
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


def _unless_moved(decision: GateDecision, gated_against: str | None, champion: str | None) -> GateDecision:
    """`decision`, or a refusal when the champion is no longer the one the challenger was gated against
    (an engineer promoted or rolled back meanwhile)."""
    if not decision.promote or champion == gated_against:
        return decision
    was = "none" if gated_against is None else f"v{gated_against}"
    return GateDecision(
        False,
        f"the champion moved during this run ({was} -> v{champion}), and this challenger was "
        f"gated against {was}: not promoted (promote it by hand, or let the next run decide)",
        decision.tests,
    )


def _best_effort(what: str, call: Callable[..., Any], *args: Any) -> None:
    """`call(*args)`, logging (masked) instead of raising: for the bookkeeping after a run's outcome."""
    try:
        call(*args)
    except Exception as exc:
        logger.warning("retrain: could not %s: %s", what, describe_error(exc))


class RetrainError(RuntimeError):
    """A run that cannot train (too few labels, ...): recorded as failed, champion untouched."""
