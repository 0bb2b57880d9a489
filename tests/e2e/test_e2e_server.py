"""A real gunicorn server (2 sync workers) spoken to over HTTP with requests: every body type,
the V2 routes (JSON and binary), errors, and metrics merged across both workers."""

from __future__ import annotations

import io
import json
import threading
import time

import numpy as np
import pytest
import requests

from tests.support.apps import expected_probabilities
from tests.support.http_io import (
    metric_samples,
    metric_total,
    png_bytes,
    settled_metrics,
    stable_metric,
)
from tests.support.mnist import synthetic_digit

pytestmark = pytest.mark.slow


def test_health_and_readiness(server):
    assert requests.get(server.url + "/healthz", timeout=10).json() == {"status": "ok"}
    ready = requests.get(server.url + "/readyz", timeout=10).json()
    assert ready["model"] == {"name": "mnist", "version": 1}


def test_multipart_image_upload(server, e2e_store):
    files = [
        ("image", ("one.png", png_bytes(synthetic_digit(1)), "image/png")),
        ("image", ("two.png", png_bytes(synthetic_digit(5), invert=True, size=140), "image/png")),
    ]
    response = requests.post(server.url + "/predict?explain=1", files=files, timeout=10)
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert len(predictions) == 2
    # Each answer is the network's own on the 28x28 image the service made of the upload.
    for prediction in predictions:
        seen = np.array(prediction["input_pixels"]).reshape(28, 28)
        assert seen.max() > 100  # the ink survived (dark-on-light was inverted)
        np.testing.assert_allclose(
            prediction["probabilities"],
            expected_probabilities(e2e_store, 1, seen)[0],
            rtol=1e-4,
            atol=1e-6,
        )


def test_json_and_npy_bodies_agree(server, e2e_store):
    batch = np.stack([synthetic_digit(2), synthetic_digit(3)])
    by_json = requests.post(
        server.url + "/predict", json={"images": batch.tolist()}, timeout=10
    ).json()
    buffer = io.BytesIO()
    np.save(buffer, batch, allow_pickle=False)
    by_npy = requests.post(
        server.url + "/predict",
        data=buffer.getvalue(),
        headers={"Content-Type": "application/x-npy"},
        timeout=10,
    ).json()
    assert by_json == by_npy
    got = np.array([p["probabilities"] for p in by_json["predictions"]])
    np.testing.assert_allclose(
        got, expected_probabilities(e2e_store, 1, batch), rtol=1e-5, atol=1e-6
    )


def test_pinned_version_and_explain(server):
    response = requests.post(
        server.url + "/predict?version=2&explain=1",
        json={"image": synthetic_digit().tolist()},
        timeout=10,
    )
    document = response.json()
    assert document["model"]["version"] == 2
    assert len(document["predictions"][0]["input_pixels"]) == 784
    assert document["predictions"][0]["input_png"].startswith("data:image/png;base64,")


def test_client_errors_are_json_4xx(server):
    cases = [
        (dict(data=b"{oops", headers={"Content-Type": "application/json"}), 400),
        (dict(data=b"hello", headers={"Content-Type": "text/plain"}), 415),
        (dict(json={"images": [synthetic_digit().tolist()] * 17}), 413),  # MAX_BATCH is 16
    ]
    for kwargs, status in cases:
        response = requests.post(server.url + "/predict", timeout=10, **kwargs)
        assert response.status_code == status
        assert set(response.json()["error"]) == {"code", "message"}
    missing = requests.get(server.url + "/no/such/thing", timeout=10)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    assert missing.headers["X-Request-ID"]


def chunks(data: bytes, size: int = 1000):
    """A generator body: requests sends it with Transfer-Encoding: chunked (no length)."""
    for start in range(0, len(data), size):
        yield data[start : start + size]


def test_chunked_body_is_read_whole(server):
    body = json.dumps({"image": synthetic_digit(6).tolist()}).encode()
    headers = {"Content-Type": "application/json"}
    chunked = requests.post(server.url + "/predict", data=chunks(body), headers=headers, timeout=10)
    plain = requests.post(server.url + "/predict", data=body, headers=headers, timeout=10)
    assert chunked.status_code == 200, chunked.text
    assert chunked.json() == plain.json()


@pytest.mark.parametrize("path", ["/predict", "/v2/models/mnist/infer"])
def test_chunked_body_over_max_content_length_is_413(server, path):
    # No Content-Length to refuse up front: the server must count while reading (10 MiB limit).
    body = b" " * (10 * 1024 * 1024 + 4096)
    response = requests.post(
        server.url + path,
        data=chunks(body, 256 * 1024),
        headers={"Content-Type": "application/json"},
        timeout=30,
    )
    assert response.status_code == 413
    error = response.json()["error"]
    message = error if path.startswith("/v2") else error["message"]
    assert "MAX_CONTENT_LENGTH" in message


def test_v2_metadata_and_json_infer(server, e2e_store):
    metadata = requests.get(server.url + "/v2/models/mnist", timeout=10).json()
    assert metadata["inputs"][0]["shape"] == [-1, 28, 28]
    pixels = synthetic_digit(4)
    document = {
        "id": "e2e",
        "inputs": [
            {
                "name": "input",
                "shape": [1, 784],
                "datatype": "UINT8",
                "data": pixels.reshape(-1).tolist(),
            }
        ],
    }
    answer = requests.post(server.url + "/v2/models/mnist/infer", json=document, timeout=10).json()
    assert answer["id"] == "e2e" and answer["model_version"] == "1"
    np.testing.assert_allclose(
        answer["outputs"][0]["data"],
        expected_probabilities(e2e_store, 1, pixels)[0],
        rtol=1e-5,
        atol=1e-6,
    )


def test_v2_binary_infer(server, e2e_store):
    batch = np.stack([synthetic_digit(6), synthetic_digit(7)]).astype("<f4")
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": [2, 1, 28, 28],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": batch.nbytes},
                }
            ],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    response = requests.post(
        server.url + "/v2/models/mnist/versions/2/infer",
        data=header + batch.tobytes(),
        headers={"Inference-Header-Content-Length": str(len(header))},
        timeout=10,
    )
    assert response.status_code == 200, response.text
    size = int(response.headers["Inference-Header-Content-Length"])
    answer = json.loads(response.content[:size])
    assert answer["model_version"] == "2"
    probabilities = np.frombuffer(response.content[size : size + 80], dtype="<f4").reshape(2, 10)
    np.testing.assert_allclose(
        probabilities, expected_probabilities(e2e_store, 2, batch), rtol=1e-5, atol=1e-6
    )
    labels = np.frombuffer(response.content[size + 80 :], dtype="<i8")
    assert labels.tolist() == probabilities.argmax(axis=1).tolist()


def test_v2_errors_use_the_v2_shape(server):
    response = requests.post(server.url + "/v2/models/mnist/infer", json={"inputs": []}, timeout=10)
    assert response.status_code == 400
    assert isinstance(response.json()["error"], str)


def test_metrics_merge_both_workers(server):
    """Requests spread over both workers (checked in the access log) are all counted, whichever
    worker answers the scrape; each worker reports the version it serves."""
    url = server.url + "/predict"
    body = {"image": synthetic_digit().tolist()}
    before = stable_metric(  # the earlier tests' requests written
        server.url + "/metrics", "convserve_http_requests_total", route="/predict", status="200"
    )
    sent, failures = [], []
    lock = threading.Lock()
    deadline = time.monotonic() + 30

    def send(count: int) -> None:
        for _ in range(count):
            if time.monotonic() > deadline:
                return
            status = requests.post(url, json=body, timeout=10).status_code
            with lock:
                (sent if status == 200 else failures).append(status)

    pids_seen: set[int] = set()
    for _ in range(10):  # rounds of concurrent requests until both workers have answered
        threads = [threading.Thread(target=send, args=(10,)) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        pids_seen = {line["pid"] for line in server.access_lines() if line["path"] == "/predict"}
        if len(pids_seen) >= 2 or time.monotonic() > deadline:
            break
    assert failures == []
    assert pids_seen == set(server.worker_pids())

    settled_metrics(
        server.url + "/metrics",
        "convserve_http_requests_total",
        before + len(sent),
        route="/predict",
        status="200",
    )
    for _ in range(4):  # several scrapes: whichever worker answers reports the same totals
        text = requests.get(server.url + "/metrics", timeout=10).text
        total = metric_total(text, "convserve_http_requests_total", route="/predict", status="200")
        assert total - before == len(sent)
        served = metric_samples(text, "convserve_served_model_version")
        assert sorted(int(labels["pid"]) for labels, _ in served) == server.worker_pids()
        assert {value for _, value in served} == {1.0}
        assert metric_total(text, "convserve_predictions_total") >= len(sent)
        assert metric_total(
            text, "convserve_http_request_duration_seconds_count", route="/predict"
        ) >= len(sent)
