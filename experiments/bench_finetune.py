"""Benchmark: what a retrain with `learner.finetune.enabled` costs on this CPU, beside the frozen-encoder
default on the same labels, in the same run (issue #13: "minutes per 1k labels and the cost of
re-embedding").

For each catalog and label count, `n` labelled items of the real catalog are stored as seed labels (a
quarter of them audit, `learner.audit.seed_share`) and `--stream` further items as routed, unlabelled
predictions (the stream a retrain certifies its thresholds on). Their base-encoder embeddings are put in
the embedding cache first, as serving puts them there when it predicts them (timed: `base_embed_ms_per_item`).
Then two retrains run through the real `RetrainWorker`, the packaged MiniLM and a sqlite MLflow:

- ``frozen``: the default. Every embedding is a cache hit; the head is trained on them.
- ``finetune``: `learner.finetune` with its default settings. The encoder is tuned on the training
  labels, every training, audit and stream item is re-embedded with it (no cache can hold a new
  encoder's vectors), and the same head is trained on those. Its champion is the frozen run's model, so
  the gate compares the two on the same audits, each on its own encoder.

Reported from each run's MLflow metrics: wall seconds (trigger -> finished), fine-tune seconds and
steps, embedding seconds, training seconds, the audit accuracy (weighted by 1 / inclusion probability)
and the projected escalation rate, and the gate's decision. `split_accuracy` says where a tuned
encoder loses: on a random 75/25 split of the same labelled items, the test accuracy of the fine-tune's
own linear head and of heads fitted afresh on the tuned and on the frozen embeddings (`why`).

    .venv/bin/python -m experiments.bench_finetune [--catalogs bigbasket instacart] [--sizes 1000 3200] \
        [--stream 1000] [--data-dir ../shared/data]

Writes experiments/results/bench_finetune.json and .png.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from experiments.figures import save_with_command
from hitl.settings import LearnerSettings, RetrainSettings, ServingSettings, Settings
from learner.data import Product, catalog_file, catalog_name, item_text, label_of, load_catalog
from learner.settings import FineTuneSettings
from serving.retrain import CachedEmbedder, RetrainWorker, add_seed_labels
from serving.store import NewPrediction, Store

RESULTS = Path(__file__).resolve().parent / "results"


def sample(path: Path, n: int, seed: int = 11) -> list[Product]:
    """`n` items of the catalog with a level-2 category, in a seeded order."""
    products = [p for p in load_catalog(path, strict=False).products if p.category and len(p.category) >= 2]
    if len(products) < n:
        raise SystemExit(f"error: {path} has {len(products)} items with a level-2 category, {n} needed")
    order = np.random.default_rng(seed).permutation(len(products))[:n]
    return [products[i] for i in order]


def settings_for(workdir: Path, *, finetune: bool) -> Settings:
    return Settings(
        state_dir=workdir,
        learner=LearnerSettings(device="cpu", finetune=FineTuneSettings(enabled=finetune)),
        serving=ServingSettings(model_source="registry", model_poll_interval_s=0, outbox_enabled=False),
        retrain=RetrainSettings(retrain_every_n_corrections=0, escalation_log_interval_s=0),
    )


def routed(products: Sequence[Product], version: str) -> list[NewPrediction]:
    return [
        NewPrediction(
            item_id=p.id,
            title=p.title,
            description=p.description,
            brand=p.brand,
            price=None,
            category_hint=None,
            label="unknown",
            confidence=0.5,
            threshold=None,
            top_k=[],
            decision="auto_accepted",
            reasons=[],
            priority=0.5,
            audit_probability=0.08,
        )
        for p in products
    ]


def one_run(settings: Settings, store: Store) -> dict[str, Any]:
    """One retrain in this thread; its wall time and the metrics it logged."""
    worker = RetrainWorker(settings, store, auto=False)
    try:
        started = time.perf_counter()
        run_id = worker.trigger("benchmark").run_id
        worker.run_next()
        wall = time.perf_counter() - started
        record = worker.get(run_id)
    finally:
        worker.stop()
    if record is None or record.status not in {"promoted", "rejected"}:
        raise RuntimeError(f"the retrain failed: {record.error if record else 'no record'}")
    m = record.metrics
    from serving import tracking

    params = tracking.client(settings).get_run(record.mlflow_run_id or "").data.params
    return {
        "status": record.status,
        "gate_reason": record.gate_reason,
        "wall_s": wall,
        "finetune_s": m.get("finetune_time_s", 0.0),
        "finetune_steps": m.get("finetune_steps", 0),
        "embedding_s": m["embedding_time_s"],
        "training_s": m["training_time_s"],
        "n_train": int(m["n_train"]),
        "n_audits": int(m["n_audits"]),
        # Stream items scored: those the model was not trained on (the others are seed items).
        "n_stream_scored": int(params["n_stream"]) - int(params["n_stream_trained_on"]),
        "accuracy": m["accuracy"],
        "projected_escalation_rate": m["projected_escalation_rate"],
        "champion_accuracy": m.get("champion_accuracy"),
    }


def why(products: Sequence[Product], seed: int = 0) -> dict[str, float]:
    """Where the tuned encoder loses, on a random 75/25 split of `products` (test accuracy): the fine-tune's
    own linear head, and a head fitted afresh on the tuned embeddings (as the retrain job fits it,
    hybrid, and on the embeddings alone), each beside the same head on the frozen embeddings."""
    from dataclasses import replace

    from learner.encoder import encoder_from
    from learner.features import FeatureSpec, NgramMemo
    from learner.loop import encoder_finetune, training_config
    from learner.training import fit_head

    texts = [item_text(p) for p in products]
    y = np.asarray([label_of(p, 2) for p in products], dtype=object)
    order = np.random.default_rng(seed).permutation(len(texts))
    train, test = order[: int(0.75 * len(texts))], order[int(0.75 * len(texts)) :]
    learner = LearnerSettings(device="cpu")
    hybrid = training_config(learner)
    spec = FeatureSpec.of(learner.model_copy(update={"features": "embedding"}))
    embedding_only = replace(hybrid, features=spec)
    base = encoder_from(learner)

    def accuracy(embeddings: np.ndarray[Any, Any], config: Any) -> float:
        x = config.features.sparse_inputs(embeddings, texts, NgramMemo(len(texts)))
        head = fit_head(x[train], list(y[train]), config, None)
        predicted = np.asarray(head.classes_, dtype=object)[head.logits(x[test]).argmax(axis=1)]
        return float(np.mean(predicted == y[test]))

    frozen = base.encode(texts)
    tuner = encoder_finetune(learner.model_copy(update={"finetune": FineTuneSettings(enabled=True)}), base)
    if tuner is None:
        raise RuntimeError("FineTuneSettings(enabled=True) built no fine-tune")
    tuner.fit([texts[i] for i in train], list(y[train]))
    tuned = tuner.embed(texts)
    return {
        "frozen_hybrid_head": accuracy(frozen, hybrid),
        "frozen_embedding_head": accuracy(frozen, embedding_only),
        "finetune_own_head": float(np.mean(tuner.predict([texts[i] for i in test]) == y[test])),
        "tuned_hybrid_head": accuracy(tuned, hybrid),
        "tuned_embedding_head": accuracy(tuned, embedding_only),
    }


def bench(catalog: Path, n_labels: int, n_stream: int, workdir: Path) -> dict[str, Any]:
    products = sample(catalog, n_labels + n_stream)
    labelled, stream = products[:n_labels], products[n_labels:]
    frozen_settings = settings_for(workdir, finetune=False)
    store = Store(frozen_settings.database_url)
    store.create_all()
    try:
        add_seed_labels(store, labelled, level=2)
        store.register_model_version("0", source="benchmark", encoder_id="-", n_labels=0, details={})
        store.record_predictions("0", routed(stream, "0"))
        texts = [item_text(p) for p in products]
        warm = CachedEmbedder(frozen_settings)
        try:
            warm.embed(["load the encoder first"])  # its loading is not a cost per item
            started = time.perf_counter()
            warm.embed(texts)
            base_ms = 1000.0 * (time.perf_counter() - started) / len(texts)
        finally:
            warm.close()
        print(f"  {catalog_name(catalog)} {n_labels}: frozen retrain ...", flush=True)
        frozen = one_run(frozen_settings, store)
        print(f"  {catalog_name(catalog)} {n_labels}: fine-tuned retrain ...", flush=True)
        tuned = one_run(settings_for(workdir, finetune=True), store)
    finally:
        store.close()
    tune = FineTuneSettings()
    label_epochs = tuned["finetune_steps"] * tune.batch_size / 1000.0
    reembedded = tuned["n_train"] + tuned["n_audits"] + tuned["n_stream_scored"]
    return {
        "catalog": catalog_name(catalog),
        "n_labels": n_labels,
        "n_stream_items": n_stream,
        "base_embed_ms_per_item": base_ms,
        "frozen": frozen,
        "finetune": tuned,
        "finetune_s_per_1k_label_epochs": tuned["finetune_s"] / label_epochs if label_epochs else None,
        "reembedded_items": reembedded,
        "reembed_ms_per_item": 1000.0 * tuned["embedding_s"] / reembedded,
        "extra_s_per_retrain": tuned["wall_s"] - frozen["wall_s"],
        "split_accuracy": why(labelled),
    }


def plot(results: list[dict[str, Any]], path: Path, command: str) -> None:
    """Seconds per retrain, split by stage, frozen vs fine-tuned, per catalog and label count."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(5.0, 1.6 * len(results)), 4.0))
    names: list[str] = []
    stages: dict[str, list[float]] = {"fine-tune": [], "embedding": [], "training": [], "rest": []}
    for r in results:
        for mode in ("frozen", "finetune"):
            run = r[mode]
            names.append(f"{r['catalog']}\n{r['n_labels']:,}\n{mode}")
            parts = [run["finetune_s"], run["embedding_s"], run["training_s"]]
            for stage, value in zip(("fine-tune", "embedding", "training"), parts, strict=True):
                stages[stage].append(value)
            stages["rest"].append(max(0.0, run["wall_s"] - sum(parts)))
    bottom = np.zeros(len(names))
    for i, (stage, values) in enumerate(stages.items()):
        ax.bar(names, values, bottom=bottom, color=f"C{i}", label=stage)
        bottom += np.asarray(values)
    ax.set_ylabel("seconds per retrain")
    ax.set_title("retrain with a fine-tuned encoder vs the frozen default, CPU")
    ax.tick_params(axis="x", labelsize=7)
    ax.legend(fontsize=8)
    save_with_command(fig, path, command, fontsize=6, dpi=100)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--catalogs", nargs="+", default=["bigbasket", "instacart"])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 3200])
    parser.add_argument("--stream", type=int, default=1000, help="routed, unlabelled items per run")
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/data"))
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if min(args.sizes) < 100 or args.stream < 0:
        parser.error("--sizes must be >= 100 and --stream >= 0")
    paths = [catalog_file(args.data_dir, name) for name in args.catalogs]
    for path in paths:
        if not path.is_file():
            parser.error(f"no catalog at {path}")
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    results = []
    for path in paths:
        for size in args.sizes:
            with tempfile.TemporaryDirectory(prefix=f"bench-finetune-{size}-") as tmp:
                results.append(bench(path, size, args.stream, Path(tmp)))
            r = results[-1]
            print(
                f"{r['catalog']}, {size} labels: frozen {r['frozen']['wall_s']:.1f} s, fine-tuned "
                f"{r['finetune']['wall_s']:.1f} s (tune {r['finetune']['finetune_s']:.1f} s, re-embed "
                f"{r['finetune']['embedding_s']:.1f} s); audit accuracy {r['frozen']['accuracy']:.3f} -> "
                f"{r['finetune']['accuracy']:.3f}",
                flush=True,
            )
    args.out.mkdir(parents=True, exist_ok=True)
    command = " ".join(
        ["python -m experiments.bench_finetune", *(argv if argv is not None else sys.argv[1:])]
    )
    payload = {
        "benchmark": "retrain cost with learner.finetune.enabled vs the frozen-encoder default",
        "device": "cpu",
        "machine": f"{platform.machine()}, {os.cpu_count()} cores (shared)",
        "created_at": datetime.now(UTC).isoformat(),
        "command": command,
        "finetune": FineTuneSettings().model_dump(exclude={"enabled"}),
        "results": results,
    }
    (args.out / "bench_finetune.json").write_text(json.dumps(payload, indent=2))
    plot(results, args.out / "bench_finetune.png", command)
    print(f"wrote {args.out / 'bench_finetune.json'} and .png")


if __name__ == "__main__":
    main()
