"""The retraining loop: corrections -> new model version -> gated promotion -> hot swap.

The loop's policy is `learner.loop`'s, the same one the simulations run; this module is its production
adapter (the store, the embedding cache, MLflow, the promoter).

Labels = seed labels (our own table, written by `hitl up`) + stored corrections, where the latest label
per item wins (a correction overrides a seed label), each with its provenance (`collect_labels`):
- **audits** (seed labels drawn by id hash, and routed items drawn into the audit sample with a
  logged probability) certify the challenger's threshold (`learner.certify`, over the stream of routed
  items the audits came from) and are the gate's paired holdout. Only the `learner.audit.certify_window`
  most recent audits do, over the stream routed since the oldest of them, and they are not trained on,
  so every version is certified only on audits it did not see;
- every other label trains, older audits included.

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

from serving.escalation import RESCORE_ACTOR
from serving.retrain.gate import gate
from serving.retrain.job import RetrainError, RetrainJob
from serving.retrain.labels import (
    CollectedLabels,
    LabeledText,
    StreamItem,
    add_seed_labels,
    collect_labels,
    correction_watermark,
    count_new_corrections,
    seed_count,
)
from serving.retrain.promotion import Promoter, PromotionReport, rescore_open_escalations
from serving.retrain.tables import RetrainRun, RunRecord, SeedLabel, create_tables
from serving.retrain.training import (
    CachedEmbedder,
    Embedder,
    TrainFn,
    TrainingInputs,
    default_train,
    holdout_report,
)
from serving.retrain.worker import RetrainWorker, TriggerResult

__all__ = [
    "RESCORE_ACTOR",
    "CachedEmbedder",
    "CollectedLabels",
    "Embedder",
    "LabeledText",
    "Promoter",
    "PromotionReport",
    "RetrainError",
    "RetrainJob",
    "RetrainRun",
    "RetrainWorker",
    "RunRecord",
    "SeedLabel",
    "StreamItem",
    "TrainFn",
    "TrainingInputs",
    "TriggerResult",
    "add_seed_labels",
    "collect_labels",
    "correction_watermark",
    "count_new_corrections",
    "create_tables",
    "default_train",
    "gate",
    "holdout_report",
    "rescore_open_escalations",
    "seed_count",
]
