"""Prometheus metrics on a per-app `CollectorRegistry` (never the global one: many apps, one process)."""

from __future__ import annotations

from collections.abc import Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["CONTENT_TYPE_LATEST", "ServingMetrics"]

_LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class ServingMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.request_latency = Histogram(
            "hitl_request_duration_seconds",
            "HTTP request latency",
            ["method", "route", "status"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.predictions = Counter(
            "hitl_predictions",
            "Predictions by routing decision and model version",
            ["decision", "model_version"],
            registry=self.registry,
        )
        self.escalations = Counter(
            "hitl_escalations",
            "Escalation reasons (an escalated item counts once per reason)",
            ["reason", "model_version"],
            registry=self.registry,
        )
        self.model_swaps = Counter(
            "hitl_model_swaps", "Models made current", ["model_version"], registry=self.registry
        )
        self.model_ready = Gauge("hitl_model_ready", "1 when a model is loaded", registry=self.registry)

    def observe_decisions(self, model_version: str, decisions: Sequence[tuple[str, Sequence[str]]]) -> None:
        for decision, reasons in decisions:
            self.predictions.labels(decision, model_version).inc()
            if decision == "escalated":
                for reason in reasons:
                    self.escalations.labels(reason, model_version).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
