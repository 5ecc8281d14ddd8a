"""Benchmark: correction received -> new champion serving, with 2k and 20k labels, frozen-encoder head, CPU.

What is timed (wall clock, per repetition): a correction is stored (as the webhook stores it) -> the
retrain worker notices it (every-N trigger with N = 1, polling every 0.2 s) -> collects the labels, reads
their embeddings, trains the head + temperature + thresholds, evaluates challenger and champion on the
holdout, logs the run and registers the model in MLflow (sqlite), passes the gate, moves the alias ->
the serving `ModelHolder` has swapped to the new version. Plots are logged after the swap and are not
in the latency. The first timed run after the worker starts is reported apart (`cold_latency_s`): its
n-gram memo is empty, so it hashes every title; `median_latency_s` is over the later runs, what a
correction costs while the worker runs. `head` times, on the same labels, the two steps that dominated
a retrain, as they were (one dense matrix) and as they are (CSR, with an empty and a full memo).
Each size runs with the default (the head fitted from zero) and, in the same run, with each other
`--warm-start-iterations` value (`learner.head.warm_start_iterations`: the head starts from the
champion's).

Embeddings are synthetic (384-d Gaussian clusters, one per category of the synthetic catalog), or, with
`--catalog`, a real catalog's items with their real MiniLM embeddings from the embedding cache; either
way served from memory like cache hits: the encoder is frozen and every labelled item was embedded when it was
predicted, so a retrain never runs the encoder for them. The gate tolerances are relaxed (the benchmark
measures the promoted path, not the gate).

    .venv/bin/python -m experiments.bench_retrain [--sizes 2000 20000] [--repeats 4] \
        [--warm-start-iterations 0 10] [--catalog ../shared/data/bigbasket/products.jsonl]

Writes experiments/results/bench_retrain.json and .png.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from experiments.bench_loop import cached_embeddings
from experiments.figures import save_with_command
from hitl.settings import HeadSettings, LearnerSettings, RetrainSettings, ServingSettings, Settings
from labeling.webhooks import CorrectionEvent
from learner.data import Product, item_text, label_of, load_catalog
from learner.features import NgramMemo
from learner.loop import training_config
from learner.synthetic import generate_catalog
from learner.training import fit_head
from serving.model import ModelHolder
from serving.retrain import RetrainWorker, add_seed_labels
from serving.store import NewPrediction, Store

DIM = 384
RESULTS = Path(__file__).resolve().parent / "results"


class SyntheticEncoder:
    """Text -> a fixed vector (looked up like a cache hit): synthetic clusters, or real cached embeddings."""

    encoder_id = "synthetic-clusters-384"
    encoder_ref = "synthetic"
    dim = DIM

    def __init__(self, vectors: dict[str, NDArray[np.float32]], encoder_id: str | None = None) -> None:
        self.vectors = vectors
        if encoder_id is not None:
            self.encoder_id = encoder_id
        self._fallback = np.zeros(DIM, dtype=np.float32)
        self._fallback[0] = 1.0

    def encode(self, texts: Sequence[str]) -> NDArray[np.float32]:
        return np.stack([self.vectors.get(t, self._fallback) for t in texts]).astype(np.float32)

    def embed(self, texts: Sequence[str]) -> NDArray[np.float32]:
        return self.encode(texts)


def synthetic_vectors(
    texts: Sequence[str], labels: Sequence[str], seed: int = 0
) -> dict[str, NDArray[np.float32]]:
    rng = np.random.default_rng(seed)
    classes = sorted(set(labels))
    centres = rng.standard_normal((len(classes), DIM))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    index = {c: i for i, c in enumerate(classes)}
    out: dict[str, NDArray[np.float32]] = {}
    for text, label in zip(texts, labels, strict=True):
        v = 0.5 * centres[index[label]] + rng.standard_normal(DIM) / np.sqrt(DIM)
        out[text] = (v / np.linalg.norm(v)).astype(np.float32)
    return out


def real_items(path: Path, n: int, seed: int = 7) -> tuple[list[Product], SyntheticEncoder]:
    """`n` labelled items of a real catalog (seeded order) and their cached MiniLM embeddings.

    The embeddings come from the project's embedding cache (computed once, as serving computes them
    when an item is predicted), so a retrain never runs the encoder, exactly as in production.
    """
    products = [p for p in load_catalog(path, strict=False).products if p.category and len(p.category) >= 2]
    if len(products) < n:
        raise SystemExit(f"error: {path} has {len(products)} items with a level-2 category, {n} needed")
    order = np.random.default_rng(seed).permutation(len(products))[:n]
    chosen = [products[i] for i in order]
    texts = [item_text(p) for p in chosen]
    vectors, encoder_id = cached_embeddings(Settings(), texts)
    table = dict(zip(texts, vectors, strict=True))
    return chosen, SyntheticEncoder(table, encoder_id=encoder_id)


def bench_size(
    n_labels: int,
    repeats: int,
    workdir: Path,
    catalog_path: Path | None = None,
    warm_start_iterations: int = 0,
) -> dict[str, Any]:
    if catalog_path is None:
        catalog = generate_catalog(n_labels + repeats, seed=7)
        texts = [item_text(p) for p in catalog]
        labels = [label_of(p, 2) for p in catalog]
        encoder = SyntheticEncoder(synthetic_vectors(texts, labels))
    else:
        catalog, encoder = real_items(catalog_path, n_labels + repeats)
        labels = [label_of(p, 2) for p in catalog]
    settings = Settings(
        state_dir=workdir,
        learner=LearnerSettings(
            device="cpu", encoder="synthetic", head=HeadSettings(warm_start_iterations=warm_start_iterations)
        ),
        serving=ServingSettings(model_source="registry", model_poll_interval_s=0, outbox_enabled=False),
        retrain=RetrainSettings(
            retrain_every_n_corrections=1,
            poll_interval_s=0.2,
            escalation_log_interval_s=0,
            accuracy_tolerance=0.5,
            coverage_tolerance=0.5,
        ),
    )
    store = Store(settings.database_url)
    store.create_all()
    seed, extra = catalog[:n_labels], catalog[n_labels:]
    add_seed_labels(store, seed, level=2)
    first = RetrainWorker(settings, store, None, embedder=encoder, auto=False)
    first.trigger("seed")
    first.run_next()
    holder = ModelHolder(settings, encoder_factory=lambda _ref: encoder)
    holder.refresh()
    if holder.current is None:
        raise RuntimeError(f"the first model did not load: {holder.last_error}")
    holder.on_swap.append(
        lambda m: store.register_model_version(
            m.version, source=m.source, encoder_id=m.bundle.encoder_id, n_labels=len(m.labels), details={}
        )
    )
    store.register_model_version(
        holder.current.version, source="registry", encoder_id=encoder.encoder_id, n_labels=0, details={}
    )
    worker = RetrainWorker(settings, store, holder, embedder=encoder, auto=True)
    worker.start()
    latencies: list[float] = []
    runs: list[dict[str, Any]] = []
    try:
        for i, product in enumerate(extra):
            # The first run after the worker starts hashes every title (its n-gram memo is empty);
            # the later ones are what a correction costs while the worker runs.
            memo = "cold" if i == 0 else "warm"
            before = holder.current.version if holder.current else None
            store.record_predictions(
                before or "none",
                [
                    NewPrediction(
                        item_id=product.id,
                        title=product.title,
                        description=product.description,
                        brand=product.brand,
                        price=None,
                        category_hint=None,
                        label=labels[n_labels + i],
                        confidence=0.4,
                        threshold=None,
                        top_k=[],
                        decision="escalated",
                        reasons=["below_threshold"],
                        priority=0.6,
                    )
                ],
            )
            now = datetime.now(UTC)
            started = time.perf_counter()
            store.record_correction(
                CorrectionEvent(
                    action="created",
                    annotation_id=10_000 + i,
                    task_id=10_000 + i,
                    project_id=None,
                    item_id=product.id,
                    label=labels[n_labels + i],
                    raw_label=labels[n_labels + i],
                    reviewer_id=1,
                    created_at=now,
                    updated_at=now,
                    lead_time=1.0,
                    was_cancelled=False,
                    predicted_label=None,
                    model_version=before,
                    model_score=None,
                    source="webhook",
                )
            )
            deadline = started + 600
            while (holder.current.version if holder.current else None) == before:
                if time.perf_counter() > deadline:
                    raise TimeoutError(f"no new champion after 600 s at {n_labels} labels")
                time.sleep(0.01)
            latencies.append(time.perf_counter() - started)
            record = worker.runs(1)[0]
            while not record.finished:
                time.sleep(0.1)
                record = worker.runs(1)[0]
            runs.append(
                {
                    "version": record.version,
                    "status": record.status,
                    "latency_s": latencies[-1],
                    "training_time_s": record.metrics.get("training_time_s"),
                    "accuracy": record.metrics.get("accuracy"),
                    "n_labels": record.metrics.get("n_labels"),
                    "ngram_memo": memo,
                }
            )
            print(
                f"  {n_labels} labels, run {i + 1} ({memo} memo): {latencies[-1]:.2f} s ({record.status})",
                flush=True,
            )
    finally:
        worker.stop()
        holder.close()
        store.close()
    warm = [r["latency_s"] for r in runs if r["ngram_memo"] == "warm"]
    return {
        "n_labels": n_labels,
        "data": "synthetic" if catalog_path is None else catalog_path.parent.name,
        "median_latency_s": statistics.median(warm),
        "warm_start_iterations": warm_start_iterations,
        "cold_latency_s": runs[0]["latency_s"],
        "runs": runs,
        "head": head_costs([item_text(p) for p in seed], labels[:n_labels], encoder, Settings().learner)
        if warm_start_iterations == 0
        else None,
    }


def head_costs(
    texts: Sequence[str], labels: Sequence[str], encoder: SyntheticEncoder, learner: LearnerSettings
) -> dict[str, Any]:
    """The two steps that dominate a retrain, both ways, on the same labels: head inputs as one dense
    matrix and L-BFGS on it (before), and as CSR, with an empty and with a full n-gram memo, and
    L-BFGS on the CSR (now). The fitted objectives are printed side by side: the same model."""
    config = training_config(learner)
    features = config.features
    embeddings = encoder.embed(texts)
    out: dict[str, Any] = {}
    started = time.perf_counter()
    dense = features.model_inputs(embeddings, list(texts))
    out["dense_inputs_s"] = time.perf_counter() - started
    started = time.perf_counter()
    dense_head = fit_head(dense, labels, config)
    out["dense_fit_s"] = time.perf_counter() - started
    del dense
    memo = NgramMemo(len(texts))
    for key in ("sparse_inputs_cold_s", "sparse_inputs_warm_s"):
        started = time.perf_counter()
        sparse = features.sparse_inputs(embeddings, list(texts), memo)
        out[key] = time.perf_counter() - started
    started = time.perf_counter()
    sparse_head = fit_head(sparse, labels, config)
    out["sparse_fit_s"] = time.perf_counter() - started
    out["dense_loss"], out["sparse_loss"] = dense_head.loss_, sparse_head.loss_
    print(
        "  head: dense inputs {dense_inputs_s:.2f} s + fit {dense_fit_s:.2f} s; CSR inputs "
        "{sparse_inputs_cold_s:.2f} s cold / {sparse_inputs_warm_s:.2f} s warm + fit {sparse_fit_s:.2f} s; "
        "objective {dense_loss:.6f} vs {sparse_loss:.6f}".format(**out),
        flush=True,
    )
    return out


def plot(results: list[dict[str, Any]], path: Path, command: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(results)), 3.8))
    sizes = [
        f"{r['data']}\n{r['n_labels']:,}\n"
        + (f"warm {r['warm_start_iterations']}" if r["warm_start_iterations"] else "default")
        for r in results
    ]
    ax.bar(sizes, [r["median_latency_s"] for r in results], color="C0", alpha=0.7, label="median")
    for i, r in enumerate(results):
        warm = [x["latency_s"] for x in r["runs"] if x.get("ngram_memo") != "cold"]
        ax.scatter(
            [i] * len(warm),
            warm,
            color="black",
            s=12,
            zorder=3,
            label="while the worker runs (memo full)" if i == 0 else None,
        )
        ax.scatter(
            [i],
            [r["cold_latency_s"]],
            color="C1",
            marker="x",
            s=24,
            zorder=3,
            label="first run after a restart" if i == 0 else None,
        )
    ax.axhline(10.0, color="C3", linestyle="--", linewidth=1, label="target 10 s")
    ax.set_xlabel("labels")
    ax.set_ylabel("correction -> new champion serving (s)")
    ax.set_title("retrain latency, frozen-encoder head, CPU")
    ax.legend(fontsize=8)
    save_with_command(fig, path, command, fontsize=6, dpi=100)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 20000])
    parser.add_argument("--repeats", type=int, default=4, help="timed runs per size (the first one cold)")
    parser.add_argument(
        "--catalog",
        type=Path,
        action="append",
        default=[],
        help="also run on this real catalog's items (JSONL) with their cached embeddings",
    )
    parser.add_argument(
        "--warm-start-iterations",
        type=int,
        nargs="+",
        default=[0, 10],
        help="learner.head.warm_start_iterations values to run (0 = the default, a cold fit)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.repeats < 2:
        parser.error("--repeats must be >= 2 (the first run is the cold one)")
    for path in args.catalog:
        if not path.is_file():
            parser.error(f"--catalog {path}: no such file")
    logging.basicConfig(level=logging.WARNING)
    results = []
    for catalog_path in [None, *args.catalog]:
        for size in args.sizes:
            for warm in args.warm_start_iterations:
                with tempfile.TemporaryDirectory(prefix=f"bench-retrain-{size}-") as tmp:
                    results.append(bench_size(size, args.repeats, Path(tmp), catalog_path, warm))
                print(
                    f"{results[-1]['data']}, {size} labels, warm_start_iterations {warm}: "
                    f"median {results[-1]['median_latency_s']:.2f} s",
                    flush=True,
                )
    args.out.mkdir(parents=True, exist_ok=True)
    command = " ".join(["python -m experiments.bench_retrain", *(argv if argv is not None else sys.argv[1:])])
    payload = {
        "benchmark": "correction received -> new champion serving",
        "device": "cpu",
        "machine": f"{platform.machine()}, {os.cpu_count()} cores (shared)",
        "created_at": datetime.now(UTC).isoformat(),
        "command": command,
        "learner": Settings().learner.model_dump(
            include={"features", "ngram_dims", "sublinear_tf", "brand_token", "head"}
        ),
        "results": results,
    }
    (args.out / "bench_retrain.json").write_text(json.dumps(payload, indent=2))
    plot(results, args.out / "bench_retrain.png", command)
    print(f"wrote {args.out / 'bench_retrain.json'} and .png")


if __name__ == "__main__":
    main()
