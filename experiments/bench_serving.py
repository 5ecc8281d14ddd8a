"""Serving benchmark: the real app under uvicorn on loopback vs the raw encoder, in ONE run.

Measures
- raw encoder throughput: `HFEncoder.encode` on fresh texts, batch 32 (the ceiling);
- batch path: `POST /v1/predict` with 32 fresh (uncached) items per request -> predictions/s;
- single cached: 16 concurrent clients sending one already-embedded item each -> p50/p99 latency, req/s;
- peak RSS of the process (server + clients share it).

Usage: ``python -m experiments.bench_serving [--n 512] [--out experiments/results]``.
Writes ``bench_serving.json`` and ``bench_serving.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=512, help="fresh items for the throughput runs")
    parser.add_argument("--single-requests", type=int, default=800, help="cached single-item requests")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--out", type=Path, default=Path("experiments/results"))
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import httpx
    import uvicorn

    from experiments.fixtures import train_small_bundle
    from hitl.settings import LabelStudioSettings, ServingSettings, Settings
    from labeling.server import free_port
    from learner.data import item_text
    from learner.encoder import PACKAGED_ENCODER, HFEncoder
    from learner.synthetic import generate_catalog
    from serving.app import create_app
    from serving.keys import create_key
    from serving.model import ModelHolder
    from serving.security import Role
    from serving.store import Store

    work = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    encoder = HFEncoder(PACKAGED_ENCODER, device="cpu", batch_size=32)
    bundle_dir = train_small_bundle(encoder, work / "cache", work / "bundle")

    # Fresh texts nobody embedded yet: one set for the raw encoder, one for the served batch path.
    fresh = generate_catalog(2 * args.n, seed=12345, n_categories=5)
    raw_texts = [item_text(p) for p in fresh[: args.n]]
    served_items = [
        {"id": f"b-{i}", "title": p.title, "description": p.description, "brand": p.brand}
        for i, p in enumerate(fresh[args.n :])
    ]
    started = time.perf_counter()
    encoder.encode(raw_texts)
    raw_s = time.perf_counter() - started
    raw_tps = args.n / raw_s

    port = free_port()
    settings = Settings(
        state_dir=work,
        serving=ServingSettings(
            port=port, bundle_path=bundle_dir, model_poll_interval_s=0, outbox_enabled=False
        ),
        labelstudio=LabelStudioSettings(sync_interval_s=0),
    )
    store = Store(settings.database_url)
    store.create_all()
    _, key = create_key(store, "bench", Role.SERVICE)
    headers = {"Authorization": f"Bearer {key}"}
    holder = ModelHolder(settings, encoder_factory=lambda _ref: encoder)
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(settings, store=store, model=holder),
            host="127.0.0.1",
            port=port,
            log_level="warning",
            lifespan="on",
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    url = f"http://127.0.0.1:{port}"

    batch_latency: list[float] = []
    with httpx.Client(base_url=url, timeout=120, headers=headers) as http:
        started = time.perf_counter()
        for start in range(0, len(served_items), 32):
            t0 = time.perf_counter()
            answer = http.post("/v1/predict", json={"items": served_items[start : start + 32]})
            answer.raise_for_status()
            batch_latency.append(time.perf_counter() - t0)
        batch_s = time.perf_counter() - started
    batch_tps = len(served_items) / batch_s

    # Single items whose embedding is cached (the batch run above embedded them).
    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()
    per_client = args.single_requests // args.clients

    def client(worker: int) -> None:
        nonlocal errors
        with httpx.Client(base_url=url, timeout=60, headers=headers) as http:
            for i in range(per_client):
                item = served_items[(worker * per_client + i) % len(served_items)]
                t0 = time.perf_counter()
                answer = http.post("/v1/predict", json={"items": [item]})
                elapsed = time.perf_counter() - t0
                with lock:
                    latencies.append(elapsed)
                    errors += answer.status_code != 200

    threads = [threading.Thread(target=client, args=(w,)) for w in range(args.clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    single_s = time.perf_counter() - started
    server.should_exit = True
    thread.join(10)
    holder.close()
    store.close()

    result = {
        "cpu_count": os.cpu_count(),
        "n_fresh_items": args.n,
        "raw_encoder_items_per_s": raw_tps,
        "batch32_predictions_per_s": batch_tps,
        "batch32_vs_raw_encoder": batch_tps / raw_tps,
        "batch32_request_p50_ms": 1000 * _percentile(batch_latency, 50),
        "batch32_request_p99_ms": 1000 * _percentile(batch_latency, 99),
        "single_cached_clients": args.clients,
        "single_cached_requests": len(latencies),
        "single_cached_errors": errors,
        "single_cached_requests_per_s": len(latencies) / single_s,
        "single_cached_p50_ms": 1000 * _percentile(latencies, 50),
        "single_cached_p99_ms": 1000 * _percentile(latencies, 99),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "targets": {"batch32_vs_raw_encoder": ">= 0.8", "single_cached_p99_ms": "< 50"},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_serving.json").write_text(json.dumps(result, indent=2) + "\n")
    _plot(result, latencies, args.out / "bench_serving.png")
    print(json.dumps(result, indent=2))
    return result


def _plot(result: dict[str, Any], latencies: list[float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    names = ["raw encoder", "POST /v1/predict\n(batch 32)"]
    values = [result["raw_encoder_items_per_s"], result["batch32_predictions_per_s"]]
    left.bar(names, values, color=["grey", "tab:blue"])
    left.set_ylabel("items / s")
    left.set_title(f"throughput (ratio {result['batch32_vs_raw_encoder']:.2f})")
    right.hist(np.asarray(latencies) * 1000, bins=50, color="tab:blue")
    right.axvline(result["single_cached_p50_ms"], color="k", linestyle="--", label="p50")
    right.axvline(result["single_cached_p99_ms"], color="r", linestyle="--", label="p99")
    right.axvline(50, color="g", linestyle=":", label="50 ms target")
    right.set_xlabel("ms")
    right.set_title(f"single cached item, {result['single_cached_clients']} clients")
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
