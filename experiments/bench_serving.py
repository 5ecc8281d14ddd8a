"""Serving benchmark: the real app under uvicorn on loopback vs the raw encoder, in ONE run.

Measures
- raw encoder throughput: `HFEncoder.encode` on the batch path's own texts, in its 32-item chunks
  (the ceiling);
- batch path: `POST /v1/predict` with 32 fresh (uncached) items per request, one keep-alive client
  -> predictions/s and per-request p50/p99. Each chunk is encoded raw right before it is sent, and
  the ratio is total raw time over total request time (paired, so background load cancels out);
- single cached: `--clients` concurrent keep-alive clients sending one already-embedded item each
  -> p50/p99 latency, requests/s;
- the server's peak RSS and CPU seconds, and the load generator's CPU seconds.

The server runs in its own process (``uvicorn``, one worker, as `hitl serve` runs it) and the load
generator is one asyncio loop over raw HTTP/1.1 keep-alive sockets with pre-serialized requests, so
the client neither shares the server's GIL nor costs much CPU on a small machine; its CPU time is
reported so a reader can judge how much of the machine it took. Every response is checked afterwards
(status 200, one integer prediction id per item) and the stored predictions are counted.

Usage: ``python -m experiments.bench_serving [--n 256] [--single-requests 480] [--out experiments/results]``.
Writes ``bench_serving.json`` and ``bench_serving.png`` and prints whether each target is met.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from experiments.figures import save_with_command

BATCH = 32
SWEEP_CLIENTS = (8, 50, 200)
TARGET_SWEEP_VS_PEAK = 0.8
TARGET_SWEEP_P99_MS = 1000.0
TARGET_BATCH_RATIO = 0.8
TARGET_SINGLE_P99_MS = 50.0


class BenchError(RuntimeError):
    """The benchmark could not run (server did not start, a request failed)."""


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def _request(port: int, key: str, body: dict[str, Any]) -> bytes:
    payload = json.dumps(body).encode()
    head = (
        f"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
    )
    return head.encode() + payload


async def _exchange_with_headers(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> tuple[int, dict[str, str], bytes]:
    """Send one request on a keep-alive connection: (status, lower-cased headers, body)."""
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name:
            headers[name.strip().lower()] = value.strip()
    return status, headers, await reader.readexactly(int(headers.get("content-length", 0)))


async def _exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> tuple[int, bytes]:
    status, _, body = await _exchange_with_headers(reader, writer, request)
    return status, body


async def _sweep_point(port: int, requests: list[bytes], clients: int, seconds: float) -> dict[str, Any]:
    """``clients`` keep-alive clients send single-item requests for ``seconds``; a client told 503
    waits its Retry-After (as a well-behaved client does) before the next one."""
    served: list[float] = []
    counts = {"refused": 0, "refused_without_retry_after": 0, "errors": 0}
    stop_at = time.perf_counter() + seconds

    async def client(worker: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        i = worker
        try:
            while time.perf_counter() < stop_at:
                t0 = time.perf_counter()
                status, headers, _ = await _exchange_with_headers(reader, writer, requests[i % len(requests)])
                i += clients
                if status == 200:
                    served.append(time.perf_counter() - t0)
                elif status == 503:
                    counts["refused"] += 1
                    retry = headers.get("retry-after")
                    if retry is None:
                        counts["refused_without_retry_after"] += 1
                    else:
                        await asyncio.sleep(max(0.0, min(float(retry), stop_at - time.perf_counter())))
                else:
                    counts["errors"] += 1
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(client(w) for w in range(clients)))
    wall = time.perf_counter() - started
    return {
        "clients": clients,
        "served": len(served),
        "served_per_s": len(served) / wall,
        "accepted_p50_ms": 1000 * _percentile(served, 50),
        "accepted_p99_ms": 1000 * _percentile(served, 99),
        **counts,
        "wall_s": wall,
    }


def _sweep(port: int, requests: list[bytes], seconds: float) -> list[dict[str, Any]]:
    return [asyncio.run(_sweep_point(port, requests, clients, seconds)) for clients in SWEEP_CLIENTS]


async def _drive(
    port: int, requests: list[list[bytes]]
) -> tuple[list[float], list[tuple[int, bytes]], float]:
    """One keep-alive connection per inner list, all at once; (latencies, responses, wall seconds)."""
    latencies: list[float] = []
    answers: list[tuple[int, bytes]] = []

    async def client(mine: list[bytes]) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for request in mine:
                t0 = time.perf_counter()
                answer = await _exchange(reader, writer, request)
                latencies.append(time.perf_counter() - t0)
                answers.append(answer)
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(client(r) for r in requests))
    return latencies, answers, time.perf_counter() - started


async def _paired(
    port: int, chunks: list[list[str]], requests: list[bytes], encode: Callable[[list[str]], object]
) -> tuple[list[float], list[tuple[int, bytes]], float, float]:
    """Per chunk: encode it raw, then send its request on one keep-alive connection.

    Returns (request latencies, responses, raw encoding seconds, client CPU seconds of the requests).
    """
    latencies: list[float] = []
    answers: list[tuple[int, bytes]] = []
    raw_s = client_cpu = 0.0
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for chunk, request in zip(chunks, requests, strict=True):
            t0 = time.perf_counter()
            encode(chunk)
            raw_s += time.perf_counter() - t0
            cpu0, t0 = time.process_time(), time.perf_counter()
            answers.append(await _exchange(reader, writer, request))
            latencies.append(time.perf_counter() - t0)
            client_cpu += time.process_time() - cpu0
    finally:
        writer.close()
    return latencies, answers, raw_s, client_cpu


def _check(answers: list[tuple[int, bytes]], items_per_request: int) -> int:
    """Count the failed answers (non-200, or not one integer prediction id per item)."""
    bad = 0
    for status, body in answers:
        if status != 200:
            bad += 1
            continue
        predictions = json.loads(body)["predictions"]
        ids = [p.get("prediction_id") for p in predictions]
        bad += len(ids) != items_per_request or not all(isinstance(i, int) for i in ids)
    return bad


def _proc_stats(pid: int) -> tuple[float, float, float]:
    """(peak RSS in MB, user CPU s, system CPU s) of a live process, from /proc (Linux); NaN elsewhere."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        hwm_kb = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:"))
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")
        return hwm_kb / 1024, int(fields[11]) / ticks, int(fields[12]) / ticks
    except (OSError, StopIteration, ValueError, IndexError):
        return float("nan"), float("nan"), float("nan")


def _cpu(pid: int) -> NDArray[np.float64]:
    """(user, system) CPU seconds of a live process."""
    return np.asarray(_proc_stats(pid)[1:])


def _serve(config_path: Path) -> None:
    """The server process: the real app, built from the settings the parent wrote."""
    import uvicorn

    from hitl.settings import Settings
    from serving.app import create_app

    settings = Settings.model_validate_json(config_path.read_text())
    uvicorn.run(
        create_app(settings),
        host="127.0.0.1",
        port=settings.serving.port,
        log_level="warning",
        lifespan="on",
    )


def _start_server(settings: Any, config: Path) -> subprocess.Popen[bytes]:
    """The real app in its own process, from the repository root wherever the benchmark started."""
    config.write_text(settings.model_dump_json())
    return subprocess.Popen(
        [sys.executable, "-m", "experiments.bench_serving", "--serve", str(config)],
        cwd=Path(__file__).resolve().parents[1],
    )


def _wait_ready(port: int, proc: subprocess.Popen[bytes], timeout_s: float = 180.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"the server exited with status {proc.returncode} before it was ready")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise BenchError(f"the server was not ready after {timeout_s:.0f} s")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=256, help="fresh items for the throughput runs")
    parser.add_argument("--single-requests", type=int, default=480, help="cached single-item requests")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--sweep-seconds", type=float, default=6.0, help="per point of the concurrency sweep")
    parser.add_argument("--out", type=Path, default=Path("experiments/results"))
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)  # internal: the server process
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.serve is not None:
        _serve(args.serve)
        return {}
    if args.n < BATCH or args.clients < 1 or args.single_requests < args.clients:
        parser.error(f"need --n >= {BATCH}, --clients >= 1 and --single-requests >= --clients")

    from hitl.settings import LabelStudioSettings, ServingSettings, Settings
    from labeling.server import free_port
    from learner.data import item_text
    from learner.encoder import HFEncoder
    from learner.settings import PACKAGED_ENCODER
    from learner.synthetic import generate_catalog
    from learner.synthetic_bundle import train_synthetic_bundle
    from serving.keys import create_key
    from serving.security import Role
    from serving.store import Prediction, Store

    load_start = os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    encoder = HFEncoder(PACKAGED_ENCODER, device="cpu", batch_size=BATCH)
    bundle_dir = train_synthetic_bundle(encoder, work / "cache", work / "bundle")

    # Fresh texts nobody embedded yet. The raw encoder gets exactly the texts the server will get, in
    # the same 32-item chunks: same lengths, same padding, so the ratio compares like with like.
    fresh = generate_catalog(args.n, seed=12345, n_categories=5)
    served_items = [
        {"id": f"b-{i}", "title": p.title, "description": p.description, "brand": p.brand}
        for i, p in enumerate(fresh)
    ]
    chunks = [[item_text(p) for p in fresh[s : s + BATCH]] for s in range(0, args.n - BATCH + 1, BATCH)]

    encoder.encode(chunks[0])  # warm-up (first call allocates), not counted
    started = time.perf_counter()
    for chunk in chunks:
        encoder.encode(chunk)
    raw_alone = len(chunks) * BATCH / (time.perf_counter() - started)

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
    server = _start_server(settings, work / "settings.json")
    try:
        _wait_ready(port, server)
        # Warm-up: one request of each shape on items outside the measured sets.
        warm = [{"id": f"w-{i}", "title": f"warm up item {i}", "brand": "x"} for i in range(BATCH)]
        asyncio.run(_drive(port, [[_request(port, key, {"items": warm})]]))

        batches = [
            _request(port, key, {"items": served_items[s : s + BATCH]})
            for s in range(0, len(served_items) - BATCH + 1, BATCH)
        ]
        # Paired: each chunk is encoded raw, then sent to the server, so a shared machine's load
        # drifts hit both sides alike (two raw runs a minute apart differed by 2.7x on a shared box).
        server_cpu0 = _cpu(server.pid)
        batch_latency, batch_answers, raw_s, batch_client_cpu = asyncio.run(
            _paired(port, chunks, batches, encoder.encode)
        )
        batch_server_cpu = _cpu(server.pid) - server_cpu0
        batch_s = sum(batch_latency)
        batch_tps = len(batches) * BATCH / batch_s
        raw_tps = len(chunks) * BATCH / raw_s

        # Single items whose embedding is cached (the batch run above embedded them).
        per_client = args.single_requests // args.clients
        singles = [
            [
                _request(port, key, {"items": [served_items[(w * per_client + i) % len(served_items)]]})
                for i in range(per_client)
            ]
            for w in range(args.clients)
        ]
        cpu0, server_cpu0 = time.process_time(), _cpu(server.pid)
        latencies, single_answers, single_s = asyncio.run(_drive(port, singles))
        single_client_cpu = time.process_time() - cpu0
        single_server_cpu = _cpu(server.pid) - server_cpu0
        peak_rss_mb = _proc_stats(server.pid)[0]
        # Backpressure: single cached items from 8, 50 and 200 clients, default max_in_flight ...
        single_requests = [_request(port, key, {"items": [item]}) for item in served_items]
        sweep_bounded = _sweep(port, single_requests, args.sweep_seconds)
    finally:
        server.terminate()  # SIGTERM: uvicorn runs the lifespan shutdown (the store drains)
        server.wait(60)
    # ... and the same sweep, same run, on a server without the bound (the comparison).
    unbounded = settings.model_copy(
        update={"serving": settings.serving.model_copy(update={"max_in_flight": 0})}
    )
    server = _start_server(unbounded, work / "settings-unbounded.json")
    try:
        _wait_ready(port, server)
        sweep_unbounded = _sweep(port, single_requests, args.sweep_seconds)
    finally:
        server.terminate()
        server.wait(60)
    stored = store.count(Prediction)
    store.close()
    shutil.rmtree(work, ignore_errors=True)
    expected = (
        BATCH
        + len(batch_answers) * BATCH
        + len(single_answers)
        + sum(p["served"] for p in sweep_bounded + sweep_unbounded)
    )
    peak = max(p["served_per_s"] for p in sweep_bounded)
    at_most = next(p for p in sweep_bounded if p["clients"] == max(SWEEP_CLIENTS))
    sweep = {
        "max_in_flight": settings.serving.max_in_flight,
        "retry_after_s": settings.serving.overload_retry_after_s,
        "seconds_per_point": args.sweep_seconds,
        "points": sweep_bounded,
        "unbounded_points": sweep_unbounded,
        "peak_served_per_s": peak,
        "served_at_max_clients_vs_peak": at_most["served_per_s"] / peak,
        "accepted_p99_ms_at_max_clients": at_most["accepted_p99_ms"],
        "every_refusal_503_with_retry_after": all(
            p["refused_without_retry_after"] == 0 and p["errors"] == 0 for p in sweep_bounded
        ),
    }

    result: dict[str, Any] = {
        "command": "python -m experiments.bench_serving " + " ".join(argv or sys.argv[1:]),
        "cpu_count": os.cpu_count(),
        # A shared machine's other work shows up here; OpenMP's spin-waiting suffers most from it.
        "load_average_1min": [load_start, os.getloadavg()[0]],
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "n_fresh_items": args.n,
        "raw_encoder_items_per_s": raw_tps,
        "raw_encoder_alone_items_per_s": raw_alone,
        "batch32_requests": len(batch_answers),
        "batch32_errors": _check(batch_answers, BATCH),
        "batch32_predictions_per_s": batch_tps,
        "batch32_vs_raw_encoder": batch_tps / raw_tps,
        "batch32_request_p50_ms": 1000 * _percentile(batch_latency, 50),
        "batch32_request_p99_ms": 1000 * _percentile(batch_latency, 99),
        "batch32_server_cpu_s": float(batch_server_cpu.sum()),
        "batch32_server_user_sys_cpu_s": batch_server_cpu.tolist(),
        "batch32_client_cpu_s": batch_client_cpu,
        "batch32_wall_s": batch_s,
        "single_cached_clients": args.clients,
        "single_cached_requests": len(single_answers),
        "single_cached_errors": _check(single_answers, 1),
        "single_cached_requests_per_s": len(single_answers) / single_s,
        "single_cached_p50_ms": 1000 * _percentile(latencies, 50),
        "single_cached_p99_ms": 1000 * _percentile(latencies, 99),
        "single_cached_max_ms": 1000 * max(latencies),
        "single_cached_server_cpu_s": float(single_server_cpu.sum()),
        "single_cached_server_user_sys_cpu_s": single_server_cpu.tolist(),
        "single_cached_client_cpu_s": single_client_cpu,
        "single_cached_wall_s": single_s,
        "server_peak_rss_mb": peak_rss_mb,
        "predictions_stored": stored,
        "predictions_expected": expected,
        "concurrency_sweep": sweep,
        "targets": {
            "batch32_vs_raw_encoder": f">= {TARGET_BATCH_RATIO}",
            "single_cached_p99_ms": f"< {TARGET_SINGLE_P99_MS:g}",
            "concurrency_sweep.served_at_max_clients_vs_peak": f">= {TARGET_SWEEP_VS_PEAK}",
            "concurrency_sweep.accepted_p99_ms_at_max_clients": f"< {TARGET_SWEEP_P99_MS:g}",
        },
    }
    result["targets_met"] = {
        "batch32_vs_raw_encoder": result["batch32_vs_raw_encoder"] >= TARGET_BATCH_RATIO,
        "single_cached_p99_ms": result["single_cached_p99_ms"] < TARGET_SINGLE_P99_MS,
        "concurrency_sweep": sweep["served_at_max_clients_vs_peak"] >= TARGET_SWEEP_VS_PEAK
        and sweep["accepted_p99_ms_at_max_clients"] < TARGET_SWEEP_P99_MS
        and sweep["every_refusal_503_with_retry_after"],
        "no_errors_nothing_lost": result["batch32_errors"] == 0
        and result["single_cached_errors"] == 0
        and stored == expected,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_serving.json").write_text(json.dumps(result, indent=2) + "\n")
    _plot(result, latencies, args.out / "bench_serving.png")
    print(json.dumps(result, indent=2))
    for name, met in result["targets_met"].items():
        print(f"{name}: {'MET' if met else 'NOT MET'}")
    return result


def _plot(result: dict[str, Any], latencies: list[float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right, sweep_ax) = plt.subplots(1, 3, figsize=(15, 4.2))
    names = ["raw encoder", f"POST /v1/predict\n(batch {BATCH})"]
    values = [result["raw_encoder_items_per_s"], result["batch32_predictions_per_s"]]
    left.bar(names, values, color=["grey", "tab:blue"])
    left.axhline(TARGET_BATCH_RATIO * values[0], color="g", linestyle=":", label="0.8x target")
    left.set_ylabel("items / s")
    left.set_title(f"throughput (ratio {result['batch32_vs_raw_encoder']:.2f})")
    left.legend()
    right.hist(np.asarray(latencies) * 1000, bins=50, color="tab:blue")
    right.axvline(result["single_cached_p50_ms"], color="k", linestyle="--", label="p50")
    right.axvline(result["single_cached_p99_ms"], color="r", linestyle="--", label="p99")
    right.axvline(TARGET_SINGLE_P99_MS, color="g", linestyle=":", label="50 ms target")
    right.set_xlabel("ms")
    right.set_title(f"single cached item, {result['single_cached_clients']} clients")
    right.legend()
    sweep = result["concurrency_sweep"]
    latency_ax = sweep_ax.twinx()
    for key, label, style in (
        ("points", f"max_in_flight {sweep['max_in_flight']}", "-"),
        ("unbounded_points", "unbounded", "--"),
    ):
        clients = [p["clients"] for p in sweep[key]]
        sweep_ax.plot(
            clients, [p["served_per_s"] for p in sweep[key]], "o" + style, color="tab:blue", label=label
        )
        latency_ax.plot(clients, [p["accepted_p99_ms"] for p in sweep[key]], "s" + style, color="tab:red")
    sweep_ax.set(xscale="log", xlabel="clients", ylabel="served requests / s (blue)")
    latency_ax.set_ylabel("p99 of accepted, ms (red)")
    sweep_ax.set_title(f"backpressure (200 clients: {sweep['served_at_max_clients_vs_peak']:.2f}x peak)")
    sweep_ax.legend(fontsize=8)
    save_with_command(fig, path, result["command"], dpi=100, footer=0.0)


if __name__ == "__main__":
    main()
