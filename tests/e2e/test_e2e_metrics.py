"""Metrics a dashboard needs, from a real gunicorn with 2 workers: per model and version request
counts and latencies (end to end and compute only), batch sizes, in-flight requests, loads and
reloads, readiness, process metrics of every worker; and the Grafana dashboard and alert rules
in deploy/monitoring use only names the service exports."""

from __future__ import annotations

import json
import re
import time

import pytest
import requests
import yaml

from service.front_io import AFTER_RESPONSE_DELAY_S
from service.metrics import ServiceMetrics
from tests.support import REPO
from tests.support.bundles import make_store
from tests.support.http_io import metric_samples, metric_total, settled_metrics
from tests.support.servers import GunicornServer

MONITORING = REPO / "deploy" / "monitoring"
# PromQL words that are not metric names.
PROMQL_WORDS = {
    "sum", "by", "rate", "increase", "histogram_quantile", "min", "max", "time", "le",
    "model", "version", "outcome", "instance", "route", "status", "label", "role",
}  # fmt: skip


@pytest.fixture(scope="module")
def exposition(tmp_path_factory) -> str:
    directory = tmp_path_factory.mktemp("metrics")
    store = make_store(directory, {"alias": "production"}, {})
    server = GunicornServer(store.root, directory / "server.log").start()
    try:
        image = {"image": [[0] * 28] * 28}
        for _ in range(6):
            assert requests.post(server.url + "/predict", json=image, timeout=30).ok
        batch = {"images": [[0] * 784] * 4}
        assert requests.post(server.url + "/predict?version=2", json=batch, timeout=30).ok
        assert (
            requests.post(server.url + "/predict", json={"image": [1]}, timeout=30).status_code
            == 400
        )
        # 6 + 1 + 1 inference requests, each counted just after its answer left.
        settled_metrics(server.url + "/metrics", "convserve_inference_requests_total", 8)
        # The scrapes that waited for them are out of flight too only once each worker has
        # written its count down, AFTER_RESPONSE_DELAY_S later; a scrape answered by one
        # worker meanwhile would still see the other's last one in flight.
        time.sleep(3 * AFTER_RESPONSE_DELAY_S)
        return requests.get(server.url + "/metrics", timeout=10).text
    finally:
        server.stop()


def test_per_model_and_version_requests_and_latencies(exposition):
    total = "convserve_inference_requests_total"
    assert metric_total(exposition, total, model="mnist", version="1", outcome="success") == 6
    assert metric_total(exposition, total, model="mnist", version="2", outcome="success") == 1
    assert metric_total(exposition, total, model="mnist", version="1", outcome="failure") == 1
    for name in (
        "convserve_inference_request_duration_seconds_count",
        "convserve_inference_compute_duration_seconds_count",
    ):
        assert metric_total(exposition, name, model="mnist", version="2") == 1
    assert metric_total(exposition, "convserve_inference_batch_size_sum", model="mnist") == 10


def test_lifecycle_and_process_metrics(exposition):
    assert metric_total(exposition, "convserve_http_requests_in_flight") == 1  # the scrape
    ready = metric_samples(exposition, "convserve_model_ready")
    assert len(ready) == 2 and all(value == 1 for _, value in ready)  # one per worker
    assert metric_total(exposition, "convserve_model_load_duration_seconds_count") >= 1
    assert metric_total(exposition, "convserve_model_last_reload_timestamp_seconds") > 1e9
    loaded = metric_samples(exposition, "convserve_model_loaded_versions")
    assert max(value for _, value in loaded) >= 1
    workers = metric_samples(exposition, "process_resident_memory_bytes")
    roles = sorted(labels["role"] for labels, _ in workers)
    assert roles == ["master", "worker", "worker"]
    assert all(value > 1e6 for _, value in workers)


def exported_names(exposition: str) -> set[str]:
    names = set()
    for line in exposition.splitlines():
        if line.startswith("# TYPE "):
            name, kind = line.split()[2:4]
            names.add(name)
            if kind == "histogram":
                names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
            if kind == "counter" and not name.endswith("_total"):
                names.add(f"{name}_total")
    return names


def metric_names_in(expression: str) -> set[str]:
    without_labels = re.sub(r"\{[^}]*\}", "", expression)
    without_ranges = re.sub(r"\[[^\]]*\]", "", without_labels)
    words = set(re.findall(r"[a-z_][a-z0-9_]*", without_ranges))
    return {word for word in words if word not in PROMQL_WORDS}


def test_the_dashboard_and_alerts_use_only_exported_metrics(exposition):
    # What the server exported, and every family the service defines (a counter nothing has
    # incremented yet has no samples in the multiprocess exposition).
    defined = ServiceMetrics().render()[0].decode()
    exported = exported_names(exposition) | exported_names(defined)
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    expressions = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    rules = yaml.safe_load((MONITORING / "alerts.yaml").read_text())
    alerts = [rule for group in rules["groups"] for rule in group["rules"]]
    assert {rule["alert"] for rule in alerts} >= {
        "ConvserveModelNotReady",
        "ConvserveReloadFailures",
        "ConvserveP99OverBudget",
        "ConvserveErrorRatio",
    }
    for rule in alerts:
        assert rule["labels"]["severity"] and rule["annotations"]["summary"]
        expressions.append(rule["expr"])
    for expression in expressions:
        unknown = metric_names_in(expression) - exported
        assert not unknown, (expression, unknown)
