"""A served model that produces a non-finite number never answers 200 with it, and any HTTP
method a client invents cannot grow the metrics (label values come from closed sets)."""

from __future__ import annotations

import dataclasses
import json
import logging
import random
import string

import numpy as np
import pytest

from tests.support.apps import build_app
from tests.support.bundles import make_store
from tests.support.http_io import metric_total


@pytest.fixture
def app(tmp_path):
    store = make_store(tmp_path, {"alias": "production"})
    app = build_app(store.root)
    yield app
    app.extensions["convserve"].predictor.stop()


def break_served_model(app) -> None:
    """Fault injection: the served bundle's forward pass starts returning NaN (as weights that
    overflow only on some inputs would); nothing in the public API can make a verified model
    do that on demand."""
    bundle = app.extensions["convserve"].predictor.served.bundle
    healthy = bundle.predict

    def broken(pixels):
        prediction = healthy(pixels)
        return dataclasses.replace(prediction, probabilities=prediction.probabilities * np.nan)

    bundle.predict = broken


BODIES = {
    "/predict": {"image": [[0] * 28] * 28},
    "/v2/models/mnist/infer": {
        "inputs": [{"name": "input", "shape": [1, 784], "datatype": "UINT8", "data": [0] * 784}]
    },
}


@pytest.mark.parametrize("path", BODIES)
def test_non_finite_output_is_a_500_naming_the_version_logged_and_counted(app, path, caplog):
    client = app.test_client()
    assert client.post(path, json=BODIES[path]).status_code == 200
    break_served_model(app)
    with caplog.at_level(logging.ERROR, logger="convserve"):
        response = client.post(path, json=BODIES[path])
    assert response.status_code == 500
    assert response.mimetype == "application/json"
    document = response.get_json()
    message = document["error"] if path.startswith("/v2") else document["error"]["message"]
    assert "mnist:1" in message and "non-finite" in message
    assert b"NaN" not in response.data and b"null" not in response.data
    assert any("mnist:1" in record.getMessage() for record in caplog.records)
    metrics = client.get("/metrics").get_data(as_text=True)
    assert metric_total(metrics, "convserve_model_invalid_outputs_total", version="1") == 1


def test_invented_http_methods_share_one_metrics_label(app):
    client = app.test_client()
    before = len(client.get("/metrics").data)
    rng = random.Random(0)
    for _ in range(5_000):
        method = "".join(rng.choices(string.ascii_uppercase, k=rng.randint(3, 12)))
        path = rng.choice(["/predict", "/healthz", "/models", "/nowhere", "/v2"])
        assert client.open(path, method=method).status_code in (400, 404, 405)
    metrics = client.get("/metrics").get_data(as_text=True)
    assert len(metrics.encode()) - before <= 20_000
    methods = {
        json.loads('"' + line.split('method="', 1)[1].split('"', 1)[0] + '"')
        for line in metrics.splitlines()
        if line.startswith("convserve_http_requests_total{")
    }
    assert methods <= {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "other"}
