"""Scale-out benchmark (issue #16): 1 vs 2 serving replicas, local vs Ray scoring of bigbasket, ONE run.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python -m experiments.bench_scale [--seconds 20] [--train-limit 6000]

- **replicas**: `hitl serve --workers N` (N = 1, then 2) on a bundle trained on bigbasket, one SQLite
  store each; 16 keep-alive clients send 8-item `POST /v1/predict` requests of bigbasket titles for
  `--seconds` -> predictions/s. The titles' embeddings are in the project's cache (as in production,
  where most traffic repeats items), so this measures the serving path, not the encoder.
- **scoring**: `hitl score --engine local` and `--engine ray` (2 actors, a local cluster) over the
  whole bigbasket catalog -> items/s, wall time, peak resident memory of the `hitl score` process
  (Ray: the driver), and whether both gave the same decisions.
- **memory**: `hitl score --engine local` over bigbasket and over bigbasket repeated 4 times (ids
  suffixed, same texts, so embeddings are cache hits) -> peak resident memory by catalog size: a
  catalog streams from its file, so memory should not grow with it.
- **sizing**: the per-core encoder rate from `experiments/results/bench_serving.json` (cold items,
  the cost that dominates a first backfill), and what 10M items take at it.

Writes ``experiments/results/bench_scale.json`` and ``bench_scale.png``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from experiments.bench_serving import _request, _sweep_point, _wait_ready
from experiments.figures import save_with_command
from labeling.server import free_port

REPO = Path(__file__).resolve().parents[1]
HITL = Path(sys.executable).with_name("hitl")
CATALOG = REPO.parent / "shared" / "data" / "bigbasket" / "products.jsonl"
COMMAND = "OMP_WAIT_POLICY=PASSIVE .venv/bin/python -m experiments.bench_scale"
CLIENTS, ITEMS_PER_REQUEST = 16, 8


def _env(state: Path, bundle: Path, **extra: str) -> dict[str, str]:
    env = os.environ | {
        "HITL_STATE_DIR": str(state),
        "HITL_SERVING__MODEL_SOURCE": "bundle",
        "HITL_SERVING__BUNDLE_PATH": str(bundle),
        "HITL_SERVING__OUTBOX_ENABLED": "false",
        "HITL_SERVING__MAX_IN_FLIGHT": "0",
        "HITL_LABELSTUDIO__SYNC_INTERVAL_S": "0",
        "HITL_RETRAIN__ENABLED": "false",
        "HITL_LEARNER__DEVICE": "cpu",
        "HF_HUB_OFFLINE": "1",
        "OMP_WAIT_POLICY": "PASSIVE",
        **extra,
    }
    env.pop("HITL_CONFIG", None)
    return env


def _link_cache(state: Path) -> None:
    """The project's embedding cache in a throwaway state dir: every run here reads the same one."""
    state.mkdir(parents=True, exist_ok=True)
    cache = REPO / ".hitl" / "cache"
    if cache.is_dir() and not (state / "cache").exists():
        (state / "cache").symlink_to(cache)


def _run(cmd: list[str], env: dict[str, str], timeout: float = 3600) -> str:
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise SystemExit(
            f"{' '.join(cmd[:3])} failed ({done.returncode}):\n{(done.stdout + done.stderr)[-3000:]}"
        )
    return done.stdout


def _run_peak(cmd: list[str], env: dict[str, str]) -> float:
    """Run `cmd` as `_run` does; returns its peak resident memory in MB (wait4's ru_maxrss: the
    process itself, not its children)."""
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        if process.returncode != 0:
            log.seek(0)
            tail = log.read().decode(errors="replace")[-3000:]
            raise SystemExit(f"{' '.join(cmd[:3])} failed ({process.returncode}):\n{tail}")
    return usage.ru_maxrss / 1024  # KiB on Linux


def _repeated_catalog(workdir: Path, times: int) -> Path:
    """bigbasket `times` over, each copy's ids suffixed (same texts: the cached embeddings are hits)."""
    path = workdir / f"bigbasket-x{times}.jsonl"
    with CATALOG.open() as source, path.open("w") as out:
        lines = [json.loads(line) for line in source if line.strip()]
        for copy in range(times):
            for record in lines:
                out.write(json.dumps({**record, "id": f"{record['id']}~{copy}"}) + "\n")
    return path


def _titles() -> list[dict[str, Any]]:
    with CATALOG.open() as f:
        rows = [json.loads(line) for line in f]
    # Title, description and brand: the model's text, so the cached embeddings are hits.
    return [
        {
            "id": str(r["id"]),
            "title": r["title"],
            "description": r.get("description") or "",
            "brand": r.get("brand"),
        }
        for r in rows
    ]


def _key(env: dict[str, str]) -> str:
    return _run([str(HITL), "keys", "create", "--role", "service", "--name", "bench-scale"], env).strip()


def replicas(
    bundle: Path, workdir: Path, workers: int, seconds: float, items: list[dict[str, Any]]
) -> dict[str, Any]:

    state = workdir / f"serve-{workers}"
    _link_cache(state)
    port = free_port()
    env = _env(state, bundle)
    _run([str(HITL), "db", "upgrade"], env)
    key = _key(env)
    server = subprocess.Popen(
        [str(HITL), "serve", "--bundle", str(bundle), "--port", str(port), "--workers", str(workers)],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        _wait_ready(port, server, timeout_s=300)
        # Every worker warm (the model and its cache loaded) before the clock starts.
        warm = [_request(port, key, {"items": items[i : i + ITEMS_PER_REQUEST]}) for i in range(0, 256, 8)]
        asyncio.run(_sweep_point(port, warm, CLIENTS, 5.0))
        requests = [
            _request(port, key, {"items": items[i : i + ITEMS_PER_REQUEST]})
            for i in range(256, len(items) - ITEMS_PER_REQUEST, ITEMS_PER_REQUEST)
        ]
        point = asyncio.run(_sweep_point(port, requests, CLIENTS, seconds))
    finally:
        os.killpg(server.pid, 15)
        server.wait(60)
    return {
        "workers": workers,
        "clients": CLIENTS,
        "items_per_request": ITEMS_PER_REQUEST,
        "requests_per_s": point["served_per_s"],
        "predictions_per_s": point["served_per_s"] * ITEMS_PER_REQUEST,
        "p50_ms": point["accepted_p50_ms"],
        "p99_ms": point["accepted_p99_ms"],
        "errors": point["errors"] + point["refused"],
    }


def scoring(bundle: Path, workdir: Path, engine: str, catalog: Path = CATALOG) -> dict[str, Any]:
    import pyarrow.parquet as pq

    name = f"{engine}-{catalog.stem}"
    state, out = workdir / f"score-{name}", workdir / f"scored-{name}"
    _link_cache(state)
    env = _env(state, bundle)
    cmd = [str(HITL), "score", "--catalog", str(catalog), "--out", str(out), "--engine", engine]
    started = time.perf_counter()
    peak = _run_peak(cmd + (["--ray-actors", "2"] if engine == "ray" else []), env)
    wall = time.perf_counter() - started
    rows = pq.read_table(sorted(out.glob("part-*.parquet")), columns=["id", "decision", "label"]).to_pylist()
    return {
        "engine": engine,
        "items": len(rows),
        "wall_s": wall,
        "items_per_s": len(rows) / wall,
        "peak_rss_mb": peak,
        "decisions": [(r["id"], r["decision"], r["label"]) for r in rows],
    }


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right, memory) = plt.subplots(1, 3, figsize=(15, 4))
    reps = result["replicas"]
    left.bar([f"{r['workers']} replica{'s' if r['workers'] > 1 else ''}" for r in reps],
             [r["predictions_per_s"] for r in reps])  # fmt: skip
    left.set_title(f"POST /v1/predict, {CLIENTS} clients (predictions/s)")
    sc = result["scoring"]
    right.bar([s["engine"] for s in sc], [s["items_per_s"] for s in sc])
    right.set_title(f"hitl score, bigbasket {sc[0]['items']} items (items/s)")
    mem = result["score_memory"]
    memory.plot([m["items"] for m in mem], [m["peak_rss_mb"] for m in mem], "o-")
    memory.set_ylim(0, max(m["peak_rss_mb"] for m in mem) * 1.3)
    memory.set_xlabel("catalog items")
    memory.set_title("hitl score --engine local: peak memory (MB)")
    save_with_command(fig, path, f"{COMMAND}   cpu_count={result['cpu_count']}", footer=0.05)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--train-limit", type=int, default=6000)
    parser.add_argument("--out", type=Path, default=REPO / "experiments" / "results")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="hitl-bench-scale-") as tmp:
        workdir = Path(tmp)
        train_state = workdir / "train"
        _link_cache(train_state)
        bundle = workdir / "bundle"
        env = _env(train_state, bundle)
        _run([str(HITL), "learner", "train", "--catalog", str(CATALOG), "--out", str(bundle),
              "--limit", str(args.train_limit)], env)  # fmt: skip
        items = _titles()
        reps = [replicas(bundle, workdir, n, args.seconds, items) for n in (1, 2)]
        scored = [scoring(bundle, workdir, engine) for engine in ("local", "ray")]
        larger = scoring(bundle, workdir, "local", _repeated_catalog(workdir, 4))
    same = scored[0]["decisions"] == scored[1]["decisions"]
    serving = json.loads((REPO / "experiments" / "results" / "bench_serving.json").read_text())
    per_core = float(serving["raw_encoder_items_per_s"]) / int(serving["cpu_count"])
    result = {
        "command": COMMAND,
        "cpu_count": os.cpu_count(),
        "replicas": reps,
        "predictions_per_s_1_replica": reps[0]["predictions_per_s"],
        "predictions_per_s_2_replicas": reps[1]["predictions_per_s"],
        "scoring": [{k: v for k, v in s.items() if k != "decisions"} for s in scored],
        "score_local_items_per_s": scored[0]["items_per_s"],
        "score_ray_items_per_s": scored[1]["items_per_s"],
        "ray_same_decisions_as_local": same,
        "score_memory": [{"items": s["items"], "peak_rss_mb": s["peak_rss_mb"]} for s in (scored[0], larger)],
        "score_peak_rss_growth_4x": larger["peak_rss_mb"] / scored[0]["peak_rss_mb"],
        "encoder_items_per_s_per_core": per_core,
        "hours_for_10m_items_per_core_cold": 10_000_000 / per_core / 3600,
        "gpu": None,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_scale.json").write_text(json.dumps(result, indent=2))
    plot(result, args.out / "bench_scale.png")
    print(json.dumps({k: v for k, v in result.items() if k not in ("replicas", "scoring")}, indent=1))


if __name__ == "__main__":
    main()
