"""What the tests send over HTTP (PNG and .npy bodies) and how they read the answers (the
error document's shape, Prometheus samples)."""

from __future__ import annotations

import io
import time

import numpy as np
import requests
from PIL import Image


def png_bytes(pixels: np.ndarray, *, invert: bool = False, size: int | None = None) -> bytes:
    """``pixels`` (MNIST convention) as a PNG; ``invert`` gives dark ink on white paper,
    ``size`` resizes to size x size."""
    image = Image.fromarray(np.ascontiguousarray(255 - pixels if invert else pixels, np.uint8))
    if size is not None:
        image = image.resize((size, size))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def npy_bytes(array: np.ndarray, allow_pickle: bool = False) -> bytes:
    """``array`` as the bytes of a .npy file (``allow_pickle`` for object arrays)."""
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=allow_pickle)
    return buffer.getvalue()


def error_of(response) -> dict:
    """The ``{"code", "message"}`` of a Flask test client's error answer, checking its shape
    (JSON, one ``error`` key, a non-empty message) on the way."""
    assert response.mimetype == "application/json", response.data[:200]
    document = response.get_json()
    assert set(document) == {"error"}, document
    assert set(document["error"]) == {"code", "message"}, document
    assert isinstance(document["error"]["message"], str) and document["error"]["message"]
    return document["error"]


def metric_samples(text: str, name: str) -> list[tuple[dict, float]]:
    """(labels, value) of every sample of ``name`` in a Prometheus text exposition."""
    samples = []
    for line in text.splitlines():
        if not (line.startswith(name + "{") or line.startswith(name + " ")):
            continue
        head, value = line.rsplit(" ", 1)
        labels = {}
        if "{" in head:
            for pair in head[head.index("{") + 1 : -1].split(","):
                key, _, raw = pair.partition("=")
                labels[key] = raw.strip('"')
        samples.append((labels, float(value)))
    return samples


def metric_total(text: str, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels``."""
    return sum(
        value
        for sample_labels, value in metric_samples(text, name)
        if all(sample_labels.get(k) == v for k, v in labels.items())
    )


def settled_metrics(url: str, name: str, expected: float, timeout: float = 5.0, **labels) -> str:
    """The exposition at ``url`` (a /metrics URL) once ``metric_total(name, **labels)`` has
    reached ``expected``, or the last one read after ``timeout`` seconds. The server writes
    a request's metrics after its answer has left (service/front_io.py:
    AFTER_RESPONSE_DELAY_S later), so a scrape sent the instant an answer arrives is early."""
    deadline = time.monotonic() + timeout
    while True:
        text = requests.get(url, timeout=10).text
        if metric_total(text, name, **labels) >= expected or time.monotonic() > deadline:
            return text
        time.sleep(0.05)


def stable_metric(url: str, name: str, pause: float = 0.3, timeout: float = 10.0, **labels):
    """``metric_total(name, **labels)`` at ``url`` (a /metrics URL) once two scrapes ``pause``
    seconds apart agree: what earlier requests left to be written (service/front_io.py:
    AFTER_RESPONSE_DELAY_S after their answers) is in."""
    deadline = time.monotonic() + timeout
    value = metric_total(requests.get(url, timeout=10).text, name, **labels)
    while True:
        time.sleep(pause)
        again = metric_total(requests.get(url, timeout=10).text, name, **labels)
        if again == value or time.monotonic() > deadline:
            return again
        value = again
