"""Prometheus metrics for the service, in prometheus-client's multiprocess mode under gunicorn.

Under gunicorn every worker is its own process; ``PROMETHEUS_MULTIPROC_DIR`` (set by
``service/gunicorn.conf.py`` before any worker starts) makes each metric update a write to a
per-process mmap file, and ``/metrics`` merges the files of all workers, so whichever worker
answers the scrape reports the whole server. Without that variable (the Flask test client, a
script) the metrics live in this process only.

Names follow Prometheus' conventions and Triton's split of an inference request: per model and
version, the requests (by outcome), the end-to-end latency of the HTTP request and the
inference-only latency (the forward pass), the batch size; per model, loads and their
duration, the last successful reload, the versions loaded; per server, requests in flight; per
worker process, CPU, memory, descriptors (service/process_metrics.py). Label values come from
closed sets (route templates, model names and versions in the store, seven HTTP methods and
"other"), so no client can grow the exposition. deploy/monitoring/ has a Grafana dashboard and
alert rules built on these names.

Each app gets its own registry, so building several apps in one process (the tests) never
collides. Label children are cached in dicts: ``.labels()`` costs a lock and a tuple per call.
"""

from __future__ import annotations

import bisect
import math
import time

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
    values,
)
from prometheus_client.multiprocess import MultiProcessCollector

from service.dataplane import InferenceHooks
from service.predictor import ReloadHooks
from service.process_metrics import WorkerProcessCollector
from training.ood import CONFIDENCE_BOUNDS, OOD_SCORE_BOUNDS

# Latency buckets around the targets (p99 <= 10 ms for one image) with room for batches.
LATENCY_BUCKETS_S = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1)
LATENCY_BUCKETS_S += (0.25, 0.5, 1.0, 2.5, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
LOAD_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

# Label values come from closed sets, so no client can grow the exposition: a request with a
# method outside this set is counted as "other" (unknown paths share the route "<unmatched>").
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def multiprocess_enabled() -> bool:
    """True when prometheus-client writes values to mmap files (decided when it was imported,
    from PROMETHEUS_MULTIPROC_DIR)."""
    return bool(getattr(values.ValueClass, "_multiprocess", False))


class _Cached:
    """A metric's label children, made once per label tuple."""

    def __init__(self, metric):
        self.metric = metric
        self.children: dict[tuple, object] = {}

    def __call__(self, *labels):
        child = self.children.get(labels)
        if child is None:
            child = self.children[labels] = self.metric.labels(*labels)
        return child


class PendingWrites:
    """Per-request metric updates kept in this process until ``write``, then applied with one
    write per metric child. In multiprocess mode every prometheus-client update is a locked
    write to an mmap file plus a getpid() system call, and one /predict makes fifteen; the
    server writes them once the answer has left, and under load once for many requests
    (service/front_io.py: ``AfterResponse``)."""

    def __init__(self):
        self.counts: dict = {}  # Counter child -> amount
        self.observations: dict = {}  # Histogram child -> _Observations

    def count(self, child, amount: float = 1.0) -> None:
        self.counts[child] = self.counts.get(child, 0.0) + amount

    def observe(self, child, value: float) -> None:
        observations = self.observations.get(child)
        if observations is None:
            observations = self.observations[child] = _Observations(child)
        observations.add(value)

    def write(self) -> None:
        counts, self.counts = self.counts, {}
        observations, self.observations = self.observations, {}
        for child, amount in counts.items():
            child.inc(amount)
        for pending in observations.values():
            pending.write()


class _Observations:
    """Observations of one histogram child not written yet: their sum and per-bucket counts,
    bucketed as ``Histogram.observe`` does (first upper bound >= the value)."""

    __slots__ = ("child", "bounds", "total", "counts")

    def __init__(self, child):
        # prometheus-client keeps a child's bounds, sum and bucket values in these attributes
        # (tests/service/test_front_io.py checks the result against observe()).
        self.child = child
        self.bounds = child._upper_bounds
        self.total = 0.0
        self.counts = [0] * len(self.bounds)

    def add(self, value: float) -> None:
        self.total += value
        self.counts[bisect.bisect_left(self.bounds, value)] += 1

    def write(self) -> None:
        self.child._sum.inc(self.total)
        for bucket, count in zip(self.child._buckets, self.counts, strict=True):
            if count:
                bucket.inc(count)


class ServiceMetrics(ReloadHooks, InferenceHooks):
    """The service's metrics and their exposition. Doubles as the predictors' reload hooks and
    the data plane's inference hooks."""

    def __init__(self):
        self.registry = CollectorRegistry(auto_describe=True)
        self.multiprocess = multiprocess_enabled()
        self.pending = PendingWrites()
        self.requests_in_flight = 0  # in this process; the gauge holds what was last written
        self.in_flight_written = 0
        self._define_http_metrics()
        self._define_model_metrics()
        self._define_prediction_metrics()
        self._define_lifecycle_metrics()
        if not self.multiprocess:
            ProcessCollector(registry=self.registry)  # this process (multiprocess: per worker)

    def _metric(self, kind, name: str, documentation: str, labels: list[str], **options):
        return _Cached(kind(name, documentation, labels, registry=self.registry, **options))

    def _define_http_metrics(self) -> None:
        self.requests = self._metric(
            Counter,
            "convserve_http_requests_total",
            "HTTP requests answered, by route template, method and status code.",
            ["route", "method", "status"],
        )
        self.latency = self._metric(
            Histogram,
            "convserve_http_request_duration_seconds",
            "Time from request start to response, by route template.",
            ["route"],
            buckets=LATENCY_BUCKETS_S,
        )
        self.in_flight = Gauge(
            "convserve_http_requests_in_flight",
            "Requests being answered right now, all workers together.",
            multiprocess_mode="livesum",
            registry=self.registry,
        )

    def _define_model_metrics(self) -> None:
        self.inference_requests = self._metric(
            Counter,
            "convserve_inference_requests_total",
            "Inference requests (/predict, V1, V2) by model, version and outcome "
            "(success: 2xx; failure: anything else once the model was chosen).",
            ["model", "version", "outcome"],
        )
        self.request_latency = self._metric(
            Histogram,
            "convserve_inference_request_duration_seconds",
            "End-to-end time of an inference request (parsing, validation, forward pass, "
            "answer), by model and version.",
            ["model", "version"],
            buckets=LATENCY_BUCKETS_S,
        )
        self.compute_latency = self._metric(
            Histogram,
            "convserve_inference_compute_duration_seconds",
            "Time of the forward pass alone, by model and version.",
            ["model", "version"],
            buckets=LATENCY_BUCKETS_S,
        )
        self.batch_size = self._metric(
            Histogram,
            "convserve_inference_batch_size",
            "Images per inference request, by model.",
            ["model"],
            buckets=BATCH_BUCKETS,
        )

    def _define_prediction_metrics(self) -> None:
        self.predictions = self._metric(
            Counter,
            "convserve_predictions_total",
            "Predictions returned, by model and predicted label.",
            ["model", "label"],
        )
        # The drift view: live traffic against the validation distributions each bundle
        # records (metadata "distributions", same bounds).
        self.confidence = self._metric(
            Histogram,
            "convserve_prediction_confidence",
            "Probability of the predicted class (calibrated), by model and version.",
            ["model", "version"],
            buckets=CONFIDENCE_BOUNDS,
        )
        self.ood_score = self._metric(
            Histogram,
            "convserve_prediction_ood_score",
            "Out-of-distribution score in units of the version's threshold (> 1: not a "
            "digit), by model and version; versions without a detector report none.",
            ["model", "version"],
            buckets=OOD_SCORE_BOUNDS,
        )
        self.not_a_digit = self._metric(
            Counter,
            "convserve_predictions_not_a_digit_total",
            "Predictions flagged not_a_digit, by model and version.",
            ["model", "version"],
        )
        self.invalid_outputs = self._metric(
            Counter,
            "convserve_model_invalid_outputs_total",
            "Requests refused because the model produced non-finite probabilities.",
            ["model", "version"],
        )

    def _define_lifecycle_metrics(self) -> None:
        self.served_version = self._metric(
            Gauge,
            "convserve_served_model_version",
            "The version of each model each worker process serves.",
            ["model"],
            multiprocess_mode="liveall",  # during a reload the workers may briefly differ
        )
        self.ready = self._metric(
            Gauge,
            "convserve_model_ready",
            "1 when the worker has a verified version of the model to serve, else 0.",
            ["model"],
            multiprocess_mode="liveall",
        )
        self.loaded_versions = self._metric(
            Gauge,
            "convserve_model_loaded_versions",
            "Versions of each model loaded in each worker (the served one and pinned ones).",
            ["model"],
            multiprocess_mode="liveall",
        )
        self.reloads = self._metric(
            Counter,
            "convserve_model_reloads_total",
            "Loads of a new version to serve, by outcome (success, failure).",
            ["model", "outcome"],
        )
        self.load_duration = self._metric(
            Histogram,
            "convserve_model_load_duration_seconds",
            "Time to load, verify and warm up one version, by model.",
            ["model"],
            buckets=LOAD_BUCKETS_S,
        )
        self.last_reload = self._metric(
            Gauge,
            "convserve_model_last_reload_timestamp_seconds",
            "Unix time of the last successful swap to a new version, by model (latest worker).",
            ["model"],
            multiprocess_mode="livemax",
        )

    # ------------------------------------------------------------------ per request
    # Per-request updates go to ``pending``; ``write_pending`` applies them (after the answer).
    def request_started(self) -> None:
        self.requests_in_flight += 1
        if self.requests_in_flight > self.in_flight_written:  # an idle worker got busy: now
            self.in_flight_written = self.requests_in_flight
            self.in_flight.set(self.in_flight_written)

    def request_finished(self) -> None:
        self.requests_in_flight -= 1

    def write_pending(self) -> None:
        """Apply the in-flight count and the per-request updates kept so far, in that order:
        a scrape that sees a request counted sees it out of flight too."""
        if self.in_flight_written != self.requests_in_flight:
            self.in_flight_written = self.requests_in_flight
            self.in_flight.set(self.in_flight_written)
        self.pending.write()

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        if method not in KNOWN_METHODS:
            method = "other"
        self.pending.count(self.requests(route, method, status))
        self.pending.observe(self.latency(route), seconds)

    def observe_inference_request(
        self, model: str, version: int, status: int, seconds: float
    ) -> None:
        """An inference request for ``model:version`` was answered with ``status``."""
        version_label = str(version)
        outcome = "success" if status < 400 else "failure"
        self.pending.count(self.inference_requests(model, version_label, outcome))
        self.pending.observe(self.request_latency(model, version_label), seconds)

    # ------------------------------------------------------------------ inference hooks
    def inference_done(self, name: str, version: int, batch: int, seconds: float) -> None:
        self.pending.observe(self.compute_latency(name, str(version)), seconds)
        self.pending.observe(self.batch_size(name), batch)

    def count_predictions(self, model: str, labels) -> None:
        for label in labels:
            self.pending.count(self.predictions(model, str(label)))

    def observe_predictions(self, result) -> None:
        model, version = result.model.name, str(result.model.version)
        confidence = self.confidence(model, version)
        for value in result.confidences().tolist():
            self.pending.observe(confidence, value)
        if result.ood_available:
            scores = self.ood_score(model, version)
            for value in result.ood_score.tolist():
                self.pending.observe(scores, value)
            flagged = int(result.not_a_digit.sum())
            if flagged:
                self.pending.count(self.not_a_digit(model, version), flagged)

    def count_invalid_output(self, name: str, version: int) -> None:
        self.invalid_outputs(name, str(version)).inc()

    # ------------------------------------------------------------------ reload hooks
    def reload_finished(self, name: str, *, succeeded: bool) -> None:
        self.reloads(name, "success" if succeeded else "failure").inc()
        if succeeded:
            self.last_reload(name).set(time.time())

    def served_version_changed(self, name: str, version: int) -> None:
        self.served_version(name).set(version)

    def version_loaded(self, name: str, version: int, seconds: float) -> None:
        self.load_duration(name).observe(seconds)

    def loaded_versions_changed(self, name: str, count: int, *, serving: bool) -> None:
        self.loaded_versions(name).set(count)
        self.ready(name).set(1 if serving else 0)

    # ------------------------------------------------------------------ exposition
    def render(self) -> tuple[bytes, str]:
        """The text exposition of every worker's metrics (or this process's), and its content
        type."""
        self.write_pending()
        if self.multiprocess:
            registry = CollectorRegistry()
            MultiProcessCollector(registry)
            registry.register(WorkerProcessCollector())
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    # ------------------------------------------------------------------ the drift view
    def live_distributions(self, model: str, version: int) -> dict:
        """What ``model:version`` answered since the server started, all workers together in
        multiprocess mode: ``{"confidence": h, "ood_score": h}``, each ``h`` in the form of a
        bundle's ``distributions`` (``{"le": bounds, "counts": per bucket plus the overflow,
        "total"}``) or None when nothing was observed (no prediction, or no detector)."""
        self.write_pending()
        if self.multiprocess:
            registry = CollectorRegistry()
            MultiProcessCollector(registry)
        else:
            registry = self.registry
        wanted = {"model": model, "version": str(version)}
        buckets: dict[str, dict[float, float]] = {"confidence": {}, "ood_score": {}}
        for family in registry.collect():
            name = family.name.removeprefix("convserve_prediction_")
            if family.type != "histogram" or name not in buckets:
                continue
            for sample in family.samples:
                labels = sample.labels
                if sample.name.endswith("_bucket") and all(
                    labels.get(key) == value for key, value in wanted.items()
                ):
                    bound = float(labels["le"])  # "+Inf" included
                    buckets[name][bound] = buckets[name].get(bound, 0.0) + sample.value
        return {name: _from_cumulative(found) for name, found in buckets.items()}


def _from_cumulative(buckets: dict[float, float]) -> dict | None:
    """Prometheus' cumulative buckets ({le: count at or below}, +Inf included) -> {"le",
    "counts", "total"} with per-bucket counts; None when there are none."""
    if not buckets or math.inf not in buckets:
        return None
    bounds = sorted(bound for bound in buckets if bound != math.inf)
    cumulative = [buckets[bound] for bound in bounds] + [buckets[math.inf]]
    below = [0.0, *cumulative[:-1]]
    counts = [round(high - low) for low, high in zip(below, cumulative, strict=True)]
    return {"le": bounds, "counts": counts, "total": round(cumulative[-1])}
