"""SIGTERM loses no request: clients posting big batches on fresh connections while the master
is told to stop. Every request whose connection the kernel had accepted before SIGTERM (queued
in the backlog included) is answered; readiness fails first, for DRAIN_SECONDS, while the
server keeps answering; only then are new connections refused.

Raw sockets, so each request's connect time is known exactly: ``connect()`` returns once the
kernel has queued the connection, before any worker accepts it.
"""

from __future__ import annotations

import io
import signal
import socket
import threading
import time

import numpy as np
import pytest
import requests

from tests.support.bundles import make_store
from tests.support.servers import GunicornServer

DRAIN_SECONDS = 2.0
CLIENTS = 8
BATCH = 256


def npy_request(port: int) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.zeros((BATCH, 28, 28), dtype=np.uint8), allow_pickle=False)
    body = buffer.getvalue()
    head = (
        f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/x-npy\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


def one_request(port: int, request: bytes) -> tuple[float | None, str]:
    """(when the connection was established, or None if refused; "200", another status line,
    or what went wrong)."""
    with socket.socket() as sock:
        sock.settimeout(30)
        try:
            sock.connect(("127.0.0.1", port))
        except OSError:
            return None, "refused"
        connected = time.monotonic()
        try:
            sock.sendall(request)
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        except OSError as exc:
            return connected, f"{type(exc).__name__}: {exc}"
    status = answer.split(b"\r\n", 1)[0].decode(errors="replace")
    return connected, "200" if status.startswith("HTTP/1.1 200") else status or "empty answer"


def client_loop(port: int, stop: threading.Event, outcomes: list) -> None:
    request = npy_request(port)
    for _ in range(10_000):  # bounded; ends when the server is gone or the test says so
        if stop.is_set():
            return
        connected, outcome = one_request(port, request)
        outcomes.append((connected, outcome))
        if connected is None:
            time.sleep(0.05)


def watch_readiness(url: str, stop: threading.Event, seen: list) -> None:
    for _ in range(2_000):
        if stop.is_set():
            return
        try:
            seen.append((time.monotonic(), requests.get(url + "/readyz", timeout=2).status_code))
        except requests.RequestException:
            seen.append((time.monotonic(), None))
        time.sleep(0.05)


@pytest.fixture
def server(tmp_path):
    store = make_store(tmp_path, {"alias": "production"})
    server = GunicornServer(
        store.root, tmp_path / "server.log", DRAIN_SECONDS=str(DRAIN_SECONDS), WORKERS="2"
    )
    server.start()
    yield server
    server.stop()


def test_sigterm_answers_every_accepted_connection(server):
    stop = threading.Event()
    outcomes: list = []
    readiness: list = []
    threads = [
        threading.Thread(target=client_loop, args=(server.port, stop, outcomes))
        for _ in range(CLIENTS)
    ]
    threads.append(threading.Thread(target=watch_readiness, args=(server.url, stop, readiness)))
    for thread in threads:
        thread.start()
    try:
        time.sleep(1.5)  # the clients are busy: connections queue up behind the workers
        assert any(outcome == "200" for _, outcome in outcomes), outcomes[:5]
        sigterm_at = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=40) == 0
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=40)
    accepted_before = [
        outcome for connected, outcome in outcomes if connected and connected < sigterm_at
    ]
    assert accepted_before and all(outcome == "200" for outcome in accepted_before), [
        outcome for outcome in accepted_before if outcome != "200"
    ]
    # While draining, connections are still taken and answered.
    during_drain = [
        outcome
        for connected, outcome in outcomes
        if connected and sigterm_at + 0.2 < connected < sigterm_at + DRAIN_SECONDS - 0.5
    ]
    assert during_drain and all(outcome == "200" for outcome in during_drain), during_drain
    # Readiness said no as soon as the drain began, before the listener closed.
    not_ready = [at for at, status in readiness if at > sigterm_at and status == 503]
    assert not_ready and min(not_ready) < sigterm_at + DRAIN_SECONDS / 2
    assert "DRAIN_SECONDS" in server.log_text()
