"""One request cannot take a worker's memory or time: a real `convserve serve` (gunicorn, one
worker so its peak RSS is the request's) answered big legal images within 100 MiB of peak RSS
growth, and refuses, before doing the work, a request over its pixel budget or a JSON body
holding more values than MAX_BATCH images, keeping the same worker alive.

Peak RSS is the worker's VmHWM from /proc, a high-water mark: growth is measured from its value
after warm-up requests of every kind.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from tests.support.bundles import make_store
from tests.support.servers import GunicornServer

MIB = 1024 * 1024
BUDGET = 100 * MIB
LEGAL_SIDES = (4096, 2048)  # 8.4 MP: MAX_IMAGE_PIXELS by default


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def rgba_drawing(size: tuple[int, int]) -> bytes:
    """Transparent, with one opaque dark block: a drawing on a transparent canvas."""
    width, height = size
    pixels = np.zeros((height, width, 4), dtype=np.uint8)
    pixels[height // 3 : 2 * height // 3, width // 2 - 60 : width // 2 + 60] = (0, 0, 0, 255)
    return png(Image.fromarray(pixels, "RGBA"))


def grey16_drawing(size: tuple[int, int]) -> bytes:
    """16-bit grey paper with a dark bar."""
    width, height = size
    pixels = np.full((height, width), 60000, dtype="<u2")
    pixels[height // 3 : 2 * height // 3, width // 2 - 60 : width // 2 + 60] = 1000
    return png(Image.frombytes("I;16", size, pixels.tobytes()))


def vm_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    directory = tmp_path_factory.mktemp("limits")
    store = make_store(directory, {"alias": "production"})
    server = GunicornServer(store.root, directory / "server.log", WORKERS="1").start()
    try:
        warm_up(server)
        yield server
    finally:
        server.stop()


def warm_up(server) -> None:
    """Every way in once, so lazy imports and first allocations are not charged to a test."""
    small = grey16_drawing((64, 64))
    png_headers = {"Content-Type": "image/png"}
    response = requests.post(server.url + "/predict", data=small, headers=png_headers, timeout=30)
    assert response.status_code == 200, response.text[:300]
    response = requests.post(server.url + "/predict", json={"image": [[0] * 28] * 28}, timeout=30)
    assert response.status_code == 200, response.text[:300]
    files = [("file", ("a.png", small, "image/png"))] * 2
    assert requests.post(server.url + "/predict", files=files, timeout=30).status_code == 200


def worker(server) -> int:
    (pid,) = server.worker_pids()
    return pid


@pytest.mark.parametrize("make", [rgba_drawing, grey16_drawing], ids=["rgba", "grey16"])
def test_a_legal_big_image_grows_the_worker_by_at_most_100_mib(server, make):
    body = make(LEGAL_SIDES)
    pid = worker(server)
    before = vm_kib(pid, "VmHWM") * 1024
    response = requests.post(
        server.url + "/predict", data=body, headers={"Content-Type": "image/png"}, timeout=60
    )
    assert response.status_code == 200, response.text[:300]
    assert vm_kib(pid, "VmHWM") * 1024 - before <= BUDGET
    assert worker(server) == pid


def test_a_batch_of_big_images_within_the_request_budget_holds_one_at_a_time(server):
    image = grey16_drawing(LEGAL_SIDES)
    files = [("file", (f"{i}.png", image, "image/png")) for i in range(7)]  # 59 of 67 MP
    pid = worker(server)
    before = vm_kib(pid, "VmHWM") * 1024
    response = requests.post(server.url + "/predict", files=files, timeout=60)
    assert response.status_code == 200, response.text[:300]
    assert len(response.json()["predictions"]) == 7
    assert vm_kib(pid, "VmHWM") * 1024 - before <= BUDGET


def test_a_json_body_of_too_many_values_is_refused_before_parsing(server):
    body = b'{"images": [' + b",".join([b"[" + b"0," * 783 + b"0]"] * 3300) + b"]}"
    assert len(body) < 10 * MIB  # within MAX_CONTENT_LENGTH: the body itself is legal
    pid = worker(server)
    before_peak, before_rss = vm_kib(pid, "VmHWM"), vm_kib(pid, "VmRSS")
    for path in ("/predict", "/v2/models/mnist/infer"):
        response = requests.post(
            server.url + path, data=body, headers={"Content-Type": "application/json"}, timeout=60
        )
        assert response.status_code == 413, response.text[:300]
        assert "MAX_BATCH" in response.text
    assert (vm_kib(pid, "VmHWM") - before_peak) * 1024 <= BUDGET
    assert (vm_kib(pid, "VmRSS") - before_rss) * 1024 <= 25 * MIB  # nothing big is kept


def test_a_request_over_its_pixel_budget_is_refused_before_decoding(server):
    image = grey16_drawing(LEGAL_SIDES)  # each image is legal on its own
    files = [("file", (f"{i}.png", image, "image/png")) for i in range(9)]  # 9 x 8.4 MP
    pid = worker(server)
    response = requests.post(server.url + "/predict", files=files, timeout=60)
    assert response.status_code == 413
    assert "MAX_REQUEST_PIXELS" in response.json()["error"]["message"]
    assert worker(server) == pid


def test_images_over_the_per_image_limit_are_refused_from_the_header(server):
    # The case: 256 16-bit PNGs of 5000x2600.
    image = grey16_drawing((5000, 2600))
    files = [("file", (f"{i}.png", image, "image/png")) for i in range(256)]
    pid = worker(server)
    response = requests.post(server.url + "/predict", files=files, timeout=60)
    assert response.status_code == 413
    assert "MAX_IMAGE_PIXELS" in response.json()["error"]["message"]
    assert worker(server) == pid
