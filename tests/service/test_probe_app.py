"""benchmarks/probe_app.py: its probe routes answer exactly what /predict answers, so
serve_breakdown.py prices parts of the same work; and the service itself has no such routes."""

from __future__ import annotations

import json

import pytest

from benchmarks.probe_app import create_app as create_probe_app
from tests.support.apps import TEST_SETTINGS
from tests.support.mnist import synthetic_digit


@pytest.fixture
def probe_client(store_root):
    app = create_probe_app({**TEST_SETTINGS, "MODEL_STORE": str(store_root)})
    yield app.test_client()
    app.extensions["convserve"].predictor.stop()


@pytest.mark.parametrize("route", ["/_probe/http", "/_probe/no-forward", "/_probe/first-layer"])
def test_probe_routes_answer_what_predict_answers(probe_client, route):
    for seed in (1, 2):  # a second body replaces the cached answer
        body = json.dumps({"image": synthetic_digit(seed).tolist()})
        headers = {"Content-Type": "application/json"}
        expected = probe_client.post("/predict", data=body, headers=headers)
        for _ in range(2):  # the first call fills the cache, the second reads it
            answer = probe_client.post(route, data=body, headers=headers)
            assert answer.status_code == 200
            assert answer.get_json() == expected.get_json()


def test_the_service_has_no_probe_routes(client):
    body = {"image": synthetic_digit(1).tolist()}
    for route in ("/_probe/http", "/_probe/no-forward", "/_probe/first-layer"):
        assert client.post(route, json=body).status_code == 404
