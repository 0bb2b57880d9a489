"""Prometheus metrics for the service, in prometheus-client's multiprocess mode under gunicorn.

Under gunicorn every worker is its own process; ``PROMETHEUS_MULTIPROC_DIR`` (set by
``service/gunicorn.conf.py`` before any worker starts) makes each metric update a write to a
per-process mmap file, and ``/metrics`` merges the files of all workers, so whichever worker
answers the scrape reports the whole server. Without that variable (the Flask test client, a
script) the metrics live in this process only.

Each app gets its own registry, so building several apps in one process (the tests) never
collides. Per request the hot path makes three small updates (request count, latency, one
count per predicted label), using label children cached in dicts.
"""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    values,
)
from prometheus_client.multiprocess import MultiProcessCollector

from service.dataplane import InferenceHooks
from service.predictor import ReloadHooks

# Latency buckets around the targets (p99 <= 10 ms for one image) with room for batches.
LATENCY_BUCKETS_S = (
    0.0005,
    0.001,
    0.002,
    0.003,
    0.005,
    0.0075,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)


def multiprocess_enabled() -> bool:
    """True when prometheus-client writes values to mmap files (decided when it was imported,
    from PROMETHEUS_MULTIPROC_DIR)."""
    return bool(getattr(values.ValueClass, "_multiprocess", False))


# Label values come from closed sets, so no client can grow the exposition: a request with a
# method outside this set is counted as "other" (unknown paths share the route "<unmatched>").
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class ServiceMetrics(ReloadHooks, InferenceHooks):
    """The service's metrics and their exposition. Doubles as the predictor's reload hooks and
    the data plane's inference hooks."""

    def __init__(self):
        self.registry = CollectorRegistry(auto_describe=True)
        self.multiprocess = multiprocess_enabled()
        self.requests = Counter(
            "convserve_http_requests_total",
            "HTTP requests answered, by route template, method and status code.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "convserve_http_request_duration_seconds",
            "Time from request start to response, by route template.",
            ["route"],
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self.predictions = Counter(
            "convserve_predictions_total",
            "Predictions returned, by predicted label.",
            ["model", "label"],
            registry=self.registry,
        )
        self.served_version = Gauge(
            "convserve_served_model_version",
            "The model version each worker process serves.",
            ["model"],
            # One series per live worker: during a reload the workers may briefly differ.
            multiprocess_mode="liveall",
            registry=self.registry,
        )
        self.reloads = Counter(
            "convserve_model_reloads_total",
            "Loads of a new version to serve, by outcome (success, failure).",
            ["model", "outcome"],
            registry=self.registry,
        )
        self.invalid_outputs = Counter(
            "convserve_model_invalid_outputs_total",
            "Requests refused because the model produced non-finite probabilities.",
            ["model", "version"],
            registry=self.registry,
        )
        # Label children cached: .labels() costs a lock and a tuple build per call.
        self._request_children: dict[tuple, object] = {}
        self._latency_children: dict[str, object] = {}
        self._prediction_children: dict[tuple, object] = {}

    # ------------------------------------------------------------------ hot path
    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        if method not in KNOWN_METHODS:
            method = "other"
        key = (route, method, status)
        counter = self._request_children.get(key)
        if counter is None:
            counter = self._request_children[key] = self.requests.labels(route, method, status)
        counter.inc()
        histogram = self._latency_children.get(route)
        if histogram is None:
            histogram = self._latency_children[route] = self.latency.labels(route)
        histogram.observe(seconds)

    def count_predictions(self, model: str, labels) -> None:
        """One increment per distinct predicted label (a batch of 100 is not 100 updates)."""
        if len(labels) == 1:
            counts = {labels[0]: 1}
        else:
            counts = {}
            for label in labels:
                counts[label] = counts.get(label, 0) + 1
        for label, count in counts.items():
            key = (model, label)
            counter = self._prediction_children.get(key)
            if counter is None:
                counter = self._prediction_children[key] = self.predictions.labels(
                    model, str(label)
                )
            counter.inc(count)

    def count_invalid_output(self, name: str, version: int) -> None:
        self.invalid_outputs.labels(name, str(version)).inc()

    # ------------------------------------------------------------------ reload hooks
    def reload_finished(self, name: str, *, succeeded: bool) -> None:
        self.reloads.labels(name, "success" if succeeded else "failure").inc()

    def served_version_changed(self, name: str, version: int) -> None:
        self.served_version.labels(name).set(version)

    # ------------------------------------------------------------------ exposition
    def render(self) -> tuple[bytes, str]:
        """The text exposition of every worker's metrics (or this process's), and its content
        type."""
        if self.multiprocess:
            registry = CollectorRegistry()
            MultiProcessCollector(registry)
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
