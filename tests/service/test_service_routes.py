"""The routes around /predict: index, health, readiness, models, OpenAPI, metrics, and the
cross-cutting behaviour (request ids, access logs, JSON errors for unknown routes)."""

import json
import logging
import re

import pytest

from tests.support.apps import build_app
from tests.support.bundles import corrupt_bundle
from tests.support.http_io import error_of
from tests.support.mnist import synthetic_digit


def predict(client, query=""):
    return client.post(
        "/predict" + query,
        data=json.dumps({"image": synthetic_digit().tolist()}),
        content_type="application/json",
    )


# ------------------------------------------------------------------------------ health


def test_healthz_is_alive_whatever_the_model(client, tmp_path):
    assert client.get("/healthz").get_json() == {"status": "ok"}
    not_ready = build_app(tmp_path / "empty").test_client()
    assert not_ready.get("/healthz").status_code == 200


def test_readyz_names_the_served_model(client):
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.get_json() == {
        "status": "ready",
        "model": {"name": "mnist", "version": 1},
        "models": {"mnist": 1},
    }


def test_readyz_is_503_without_a_verified_model(tmp_path, bundle_files):
    from training.store import ModelStore

    root = tmp_path / "store"
    ModelStore(root).publish(bundle_files["v1"], "mnist", alias="production")
    corrupt_bundle(root, 1)
    response = build_app(root).test_client().get("/readyz")
    assert response.status_code == 503
    error = error_of(response)
    assert error["code"] == "not_ready"
    assert "mnist:1" in error["message"]  # why: the refused version is named


def test_readyz_is_503_when_the_alias_is_missing(store_root):
    response = build_app(store_root, MODEL_ALIAS="nightly").test_client().get("/readyz")
    assert response.status_code == 503
    assert "nightly" in error_of(response)["message"]


def test_alias_latest_serves_the_highest_version(store_root):
    response = build_app(store_root, MODEL_ALIAS="latest").test_client().get("/readyz")
    assert response.get_json()["model"]["version"] == 2


# ------------------------------------------------------------------------------ models


def test_models_lists_versions_aliases_and_serving_state(client):
    document = client.get("/models").get_json()
    assert document["models"] == [
        {"name": "mnist", "versions": [1, 2], "aliases": {"production": 1}, "served_version": 1}
    ]
    serving = document["serving"]
    assert serving["name"] == "mnist" and serving["alias"] == "production"
    assert serving["served_version"] == 1
    assert serving["last_reload_error"] is None


def test_model_detail_has_manifest_summaries(client):
    document = client.get("/models/mnist").get_json()
    assert document["name"] == "mnist"
    assert document["aliases"] == {"production": 1}
    first, second = document["versions"]
    assert first["version"] == 1 and first["served"] is True
    assert first["aliases"] == ["production"]
    assert first["metrics"] == {"test_accuracy": 0.5}
    assert first["architecture"] == "simpleconvnet"
    assert second["version"] == 2 and second["served"] is False
    assert document["serving"]["served_version"] == 1


def test_model_detail_reports_a_broken_manifest_instead_of_failing(client, store_root):
    (store_root / "mnist" / "2" / "manifest.json").write_text("{broken")
    response = client.get("/models/mnist")
    assert response.status_code == 200
    rows = response.get_json()["versions"]
    assert "error" in rows[1] and "mnist:2" in rows[1]["error"]


def test_version_detail_is_the_manifest(client):
    document = client.get("/models/mnist/versions/1").get_json()
    assert document["version"] == 1
    assert document["aliases"] == ["production"]
    assert document["served"] is True
    manifest = document["manifest"]
    assert len(manifest["sha256"]) == 64
    assert manifest["metrics"]["test_accuracy"] == 0.5
    assert manifest["class_labels"] == list(range(10))


@pytest.mark.parametrize(
    ("path", "code"),
    [
        ("/models/fashion", "model_not_found"),
        ("/models/mnist/versions/7", "version_not_found"),
        ("/models/mnist/versions/seven", "not_found"),
        ("/models/fashion/versions/1", "model_not_found"),
        ("/no/such/route", "not_found"),
    ],
)
def test_unknown_models_versions_and_routes_are_404_json(client, path, code):
    response = client.get(path)
    assert response.status_code == 404
    assert error_of(response)["code"] == code


def test_invalid_model_name_is_400(client):
    response = client.get("/models/UPPER")
    assert response.status_code == 400
    assert error_of(response)["code"] == "invalid_name"


# ------------------------------------------------------------------------------ index, openapi


def test_index_lists_every_route(client):
    document = client.get("/api").get_json()
    assert document["openapi"] == "/openapi.json"
    listed = {(route["method"], route["path"]) for route in document["routes"]}
    assert ("POST", "/predict") in listed
    assert ("POST", "/v2/models/{name}/infer") in listed


def test_openapi_documents_exactly_the_registered_routes(app, client):
    from service.openapi import flask_rule_to_openapi

    document = client.get("/openapi.json").get_json()
    assert document["openapi"].startswith("3.")
    documented = {
        (method.upper(), path)
        for path, operations in document["paths"].items()
        for method in operations
    }
    registered = {
        (method, flask_rule_to_openapi(rule.rule))
        for rule in app.url_map.iter_rules()
        if rule.endpoint != "static"
        for method in rule.methods - {"HEAD", "OPTIONS"}
    }
    assert documented == registered
    # Every $ref points at a defined schema.
    text = json.dumps(document)
    for name in re.findall(r'"#/components/schemas/([A-Za-z0-9]+)"', text):
        assert name in document["components"]["schemas"]


# ------------------------------------------------------------------------------ metrics


def sample(text: str, name: str, **labels) -> float:
    """The value of one sample in a Prometheus text exposition (0 if absent)."""
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{key}="{value}"' in line for key, value in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_metrics_count_requests_latency_predictions_and_served_version(client):
    predict(client)
    predict(client)
    client.get("/no/such/route")
    text = client.get("/metrics").data.decode()
    assert (
        sample(
            text,
            "convserve_http_requests_total",
            route="/predict",
            method="POST",
            status="200",
        )
        == 2
    )
    assert sample(text, "convserve_http_requests_total", route="<unmatched>", status="404") == 1
    assert sample(text, "convserve_http_request_duration_seconds_count", route="/predict") == 2
    label_total = sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("convserve_predictions_total{")
    )
    assert label_total == 2
    assert sample(text, "convserve_served_model_version", model="mnist") == 1
    assert sample(text, "convserve_model_reloads_total", model="mnist", outcome="success") == 1


def test_two_apps_in_one_process_keep_separate_metrics(store_root):
    first, second = build_app(store_root), build_app(store_root)
    predict(first.test_client())
    text = second.test_client().get("/metrics").data.decode()
    assert sample(text, "convserve_http_requests_total", route="/predict") == 0


# ------------------------------------------------------------------------------ request ids, logs


def test_request_id_is_echoed_or_generated(client):
    echoed = client.get("/healthz", headers={"X-Request-ID": "abc-123"})
    assert echoed.headers["X-Request-ID"] == "abc-123"
    generated = client.get("/healthz")
    assert re.fullmatch(r"[0-9a-f]{32}", generated.headers["X-Request-ID"])
    unsafe = client.get("/healthz", headers={"X-Request-ID": "x" * 500})
    assert unsafe.headers["X-Request-ID"] != "x" * 500


def test_one_json_access_line_per_request(client, capsys):
    capsys.readouterr()
    predict(client, "?version=2")
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    access = [line for line in lines if line.get("event") == "access"]
    assert len(access) == 1
    (line,) = access
    assert line["method"] == "POST" and line["path"] == "/predict"
    assert line["status"] == 200 and line["model_version"] == 2
    assert isinstance(line["duration_ms"], float) and line["duration_ms"] >= 0
    assert re.fullmatch(r"[0-9a-f]{32}", line["request_id"])


def test_log_level_warning_silences_access_lines(store_root, capsys):
    app = build_app(store_root, LOG_LEVEL="warning")
    capsys.readouterr()
    app.test_client().get("/healthz")
    assert '"access"' not in capsys.readouterr().err
    logging.getLogger("convserve").setLevel(logging.INFO)  # leave the shared logger as found


def test_unexpected_errors_are_500_json_without_a_trace(app, client, capsys):
    def explode():
        raise RuntimeError("secret internals")

    app.add_url_rule("/explode", "explode", explode)
    response = client.get("/explode", headers={"X-Request-ID": "trace-me"})
    assert response.status_code == 500
    error = error_of(response)
    assert error["code"] == "internal"
    assert "secret" not in response.get_data(as_text=True)
    logged = capsys.readouterr().err
    assert "trace-me" in logged and "RuntimeError" in logged  # the operator can find it
