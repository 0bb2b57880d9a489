"""Hostile requests against a real server get a JSON 4xx, and the worker that answered lives
on: decompression bombs, forged .npy headers, deeply nested JSON, bodies over the limit sent
without a length, admin routes without the token, path traversal in model names."""

from __future__ import annotations

import io
import socket
import struct
import zlib

import numpy as np
import pytest
import requests

from tests.support.bundles import corrupt_bundle, make_store
from tests.support.servers import GunicornServer


def png_bomb(side: int = 60_000) -> bytes:
    """A valid PNG header claiming side x side grey pixels, with a tiny compressed body."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    rows = zlib.compress(b"\0" * (side + 1) * 16)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")
    )


def npy_forged(shape) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buffer, {"descr": "<f4", "fortran_order": False, "shape": shape}
    )
    return buffer.getvalue()


HOSTILE = {
    "decompression bomb": ("/predict", png_bomb(), "image/png", 413),
    "forged .npy shape": ("/predict", npy_forged((10**12, 28, 28)), "application/x-npy", 413),
    "forged .npy, one image": ("/predict", npy_forged((1, 28, 28)), "application/x-npy", 400),
    "nested JSON": ("/predict", b"[" * 200_000, "application/json", 400),
    "nested V2 JSON": ("/v2/models/mnist/infer", b"[" * 200_000, "application/json", 400),
}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    directory = tmp_path_factory.mktemp("hostile")
    store = make_store(directory, {"alias": "production"}, {})
    corrupt_bundle(store.root, 2)
    server = GunicornServer(store.root, directory / "server.log").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.parametrize("case", HOSTILE.values(), ids=HOSTILE.keys())
def test_hostile_bodies_get_a_json_4xx(server, case):
    path, body, content_type, status = case
    workers = server.worker_pids()
    response = requests.post(
        server.url + path, data=body, headers={"Content-Type": content_type}, timeout=30
    )
    assert response.status_code == status, response.text[:300]
    assert response.headers["Content-Type"] == "application/json"
    assert set(workers) <= set(server.worker_pids())  # no worker died (one may still be booting)


def test_a_chunked_body_over_the_limit_is_413(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(
            b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        )
        chunk = b"0," * 32768
        try:
            for _ in range(200):  # 12.5 MiB, over the 10 MiB limit
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            sock.sendall(b"0\r\n\r\n")
        except OSError:
            pass  # the server may answer and close before the rest is sent
        answer = sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 413")


@pytest.mark.parametrize(
    "path",
    ["/models/..%2F..%2Fetc", "/models/mnist/versions/..%2F1", "/v2/models/..%2Fmnist/infer"],
)
def test_path_traversal_names_nothing(server, path):
    response = requests.request(
        "POST" if path.endswith("infer") else "GET", server.url + path, timeout=30
    )
    assert 400 <= response.status_code < 500
    assert "root:" not in response.text


def test_admin_reload_needs_the_token(server):
    assert requests.post(server.url + "/admin/reload", timeout=30).status_code == 401
    wrong = {"Authorization": "Bearer nope"}
    assert requests.post(server.url + "/admin/reload", headers=wrong, timeout=30).status_code == 403


def test_a_corrupt_version_is_refused_while_the_served_one_answers(server):
    body = {"image": [[0] * 28] * 28}
    pinned = requests.post(server.url + "/predict?version=2", json=body, timeout=30)
    assert pinned.status_code == 409 and "mnist:2" in pinned.text
    served = requests.post(server.url + "/predict", json=body, timeout=30)
    assert served.status_code == 200 and served.json()["model"]["version"] == 1
