"""The HTTP front (service/front.py) on a real gunicorn with the service's own config: keep-alive,
slow clients that cost no worker and time out, and new connections answered by whichever worker
is free. Raw sockets, so each test knows exactly which connection carries what.

The assertions are about order and which worker answered, not about speed: where a bound on
time is needed it is several times what the answer takes, and far below what a blocked worker
would cost (the old sync workers stopped answering until gunicorn's 30 s timeout).
"""

from __future__ import annotations

import json
import select
import socket
import threading
import time

import pytest
import requests

from tests.support.bundles import make_store
from tests.support.mnist import synthetic_digit
from tests.support.servers import GunicornServer

pytestmark = pytest.mark.slow

HEADER_TIMEOUT = 3.0
BODY_TIMEOUT = 3.0
PREDICT_BODY = json.dumps({"image": synthetic_digit(7).tolist()}).encode()
JSON = {"Content-Type": "application/json"}


def start_busy_server(directory, **env: str) -> GunicornServer:
    """The service with busy_app's test routes on a fresh store in ``directory``, started with
    the service's gunicorn config and ``env``."""
    store = make_store(directory, {"alias": "production"})
    server = GunicornServer(
        store.root, directory / "server.log", app="tests.e2e.busy_app:create_app()", **env
    )
    return server.start()


@pytest.fixture(scope="module")
def front(tmp_path_factory):
    directory = tmp_path_factory.mktemp("front")
    server = start_busy_server(
        directory,
        WORKERS="2",
        HEADER_TIMEOUT=str(HEADER_TIMEOUT),
        BODY_TIMEOUT=str(BODY_TIMEOUT),
        BUSY_MARKER=str(directory / "busy.pid"),
    )
    server.busy_marker = directory / "busy.pid"
    yield server
    assert server.stop() == 0, server.log_text()[-3000:]


def connect(server, timeout: float = 10.0) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def request_bytes(method: str, path: str, body: bytes = b"", **headers: str) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
    if body or method == "POST":
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    lines += [f"{name.replace('_', '-')}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def read_response(sock: socket.socket) -> tuple[int, dict, bytes]:
    """(status, headers with lower-case names, body) of one response with a Content-Length."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before a whole response: {data[:200]!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed in the middle of a body")
        body += chunk
    assert len(body) == length, "more bytes than one response"
    return int(status_line.split()[1]), headers, body


def exchange(sock, method: str, path: str, body: bytes = b"", **headers) -> tuple[int, dict, dict]:
    sock.sendall(request_bytes(method, path, body, **headers))
    status, response_headers, response_body = read_response(sock)
    return status, response_headers, json.loads(response_body)


def closed_by_server(sock: socket.socket, timeout: float) -> bool:
    sock.settimeout(timeout)
    try:
        return sock.recv(1) == b""
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


def test_keep_alive_serves_several_requests_on_one_connection(front):
    with connect(front) as sock:
        status, headers, body = exchange(sock, "GET", "/_test/pid")
        assert status == 200 and headers.get("connection", "").lower() != "close"
        pid = body["pid"]
        status, _, prediction = exchange(sock, "POST", "/predict", PREDICT_BODY)
        assert status == 200 and len(prediction["predictions"]) == 1
        assert exchange(sock, "GET", "/healthz")[2] == {"status": "ok"}
        assert exchange(sock, "GET", "/_test/pid")[2]["pid"] == pid  # the same connection
        # A client's "Connection: close" is honoured: answered, then closed by the server.
        status, headers, _ = exchange(sock, "GET", "/healthz", Connection="close")
        assert status == 200 and headers["connection"].lower() == "close"
        assert closed_by_server(sock, timeout=5)


def test_the_answer_leaves_before_the_apps_teardown(front):
    # /_test/held-teardown's teardown holds its worker until `release` exists (20 s at most):
    # the answer arrives meanwhile, and the connection serves again once the teardown is done.
    release = front.busy_marker.with_name("release")
    release.unlink(missing_ok=True)
    with connect(front, timeout=5.0) as sock:
        status, _, _ = exchange(sock, "GET", "/_test/held-teardown")
        assert status == 200
        release.write_text("")
        status, _, _ = exchange(sock, "GET", "/healthz")
        assert status == 200


def test_a_teardown_that_fails_after_the_answer_closes_only_its_connection(front):
    with connect(front) as sock:
        status, _, body = exchange(sock, "GET", "/_test/failing-teardown")
        assert status == 200  # the answer had left: only closing is left to do
        assert closed_by_server(sock, timeout=5)
    assert body["pid"] in front.worker_pids()  # the worker lives on, and serves
    with connect(front) as sock:
        assert exchange(sock, "GET", "/healthz")[0] == 200
    assert "a teardown function failed" in front.log_text()


def test_workers_garbage_collect_only_what_they_made(front):
    """The preloaded app, model and libraries are frozen out of the workers' collections
    (gunicorn.conf.py pre_fork): a full collection would walk all of them, tens of ms."""
    with connect(front) as sock:
        counts = exchange(sock, "GET", "/_test/gc")[2]
    assert counts["frozen"] > 20_000, counts  # numpy, Flask and the app alone are more
    assert counts["tracked"] < counts["frozen"] / 2, counts


def test_concurrent_predictions_share_forward_passes_and_answer_as_alone(front):
    """Dynamic batching (service/batching.py): under 16 concurrent clients the workers merge
    forward passes, and every answer is the one the same image gets alone."""
    bodies = [json.dumps({"image": synthetic_digit(seed).tolist()}).encode() for seed in range(8)]
    alone = [predict_once(front, body) for body in bodies]
    before = batching_counts(front)
    answers: list[tuple[int, dict]] = []

    def client(number: int) -> None:
        with requests.Session() as session:
            for turn in range(25):
                index = (number + turn) % len(bodies)
                answer = session.post(
                    front.url + "/predict", data=bodies[index], headers=JSON, timeout=30
                )
                answers.append((index, answer.json()))

    threads = [threading.Thread(target=client, args=(number,)) for number in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert len(answers) == 16 * 25
    for index, answer in answers:
        ours, expected = answer["predictions"][0], alone[index]["predictions"][0]
        assert ours["label"] == expected["label"]
        for got, want in zip(ours["probabilities"], expected["probabilities"], strict=True):
            assert got == pytest.approx(want, abs=1e-6)
    after = batching_counts(front)
    merged = sum(
        (after[pid]["images"] - before.get(pid, {}).get("images", 0))
        - (after[pid]["passes"] - before.get(pid, {}).get("passes", 0))
        for pid in after
    )
    assert merged > 0, (before, after)  # some pass took more than one request's image


def test_dynamic_batching_can_be_turned_off(tmp_path):
    server = start_busy_server(tmp_path, WORKERS="1", DYNAMIC_BATCHING="off")
    try:
        assert requests.get(server.url + "/_test/batching", timeout=10).json()["batching"] is None
        assert predict_once(server, PREDICT_BODY)["predictions"][0]["label"] in range(10)
    finally:
        assert server.stop() == 0, server.log_text()[-3000:]


def predict_once(server, body: bytes) -> dict:
    answer = requests.post(server.url + "/predict", data=body, headers=JSON, timeout=10)
    assert answer.status_code == 200, answer.text
    return answer.json()


def batching_counts(server) -> dict:
    """{worker pid: {"passes", "images"}} of every worker (by asking on new connections)."""
    counts: dict = {}
    for _ in range(60):
        found = requests.get(server.url + "/_test/batching", timeout=10).json()
        counts[found["pid"]] = found["batching"]
        if len(counts) == 2:
            break
    assert counts and all(counts.values()), counts  # null: batching is off
    return counts


def test_requests_session_reuses_its_connection(front):
    with requests.Session() as session:
        pids = {session.get(front.url + "/_test/pid", timeout=10).json()["pid"] for _ in range(5)}
        for _ in range(3):
            assert session.post(
                front.url + "/predict", data=PREDICT_BODY, headers=JSON, timeout=10
            ).ok
        pids.add(session.get(front.url + "/_test/pid", timeout=10).json()["pid"])
    assert len(pids) == 1  # one pooled connection, so one worker throughout


class SlowClient(threading.Thread):
    """Sends ``head`` then ``tail`` one byte every ``interval`` seconds, stopping at ``stop``;
    records what the server answered (if anything) and whether it closed the connection."""

    def __init__(self, server, head: bytes, tail: bytes, interval: float, stop: threading.Event):
        super().__init__(daemon=True)
        self.sock = connect(server)
        self.head, self.tail, self.interval, self.stop = head, tail, interval, stop
        self.answer = b""

    def run(self):
        try:
            self.sock.sendall(self.head)
            for byte in self.tail:
                # Like a client that watches for an early answer: stop sending once one comes.
                if self.stop.is_set() or select.select([self.sock], [], [], self.interval)[0]:
                    break
                self.sock.sendall(bytes([byte]))
            self.sock.settimeout(10)
            while chunk := self.sock.recv(65536):
                self.answer += chunk
        except OSError:
            pass  # reset by the server
        finally:
            self.sock.close()


def test_slow_clients_cost_no_worker_and_time_out(front):
    stop = threading.Event()
    # 16 clients dribbling their headers and 2 their bodies, more than the 2 workers.
    headers_tail = b"X-Slow: " + b"a" * 200 + b"\r\n\r\n"
    slow_headers = [
        SlowClient(front, b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n", headers_tail, 0.2, stop)
        for _ in range(16)
    ]
    body_head = request_bytes("POST", "/predict", PREDICT_BODY)
    split = body_head.index(b"\r\n\r\n") + 4 + 10
    slow_bodies = [
        SlowClient(front, body_head[:split], body_head[split:], 0.01, stop) for _ in range(2)
    ]
    clients = slow_headers + slow_bodies
    for client in clients:
        client.start()
    try:
        time.sleep(0.5)  # every slow connection accepted and dribbling
        slowest = 0.0
        with requests.Session() as session:
            for index in range(20):
                started = time.monotonic()
                if index % 2:
                    answer = session.post(
                        front.url + "/predict", data=PREDICT_BODY, headers=JSON, timeout=10
                    )
                else:
                    answer = requests.get(front.url + "/healthz", timeout=10)  # new connection
                slowest = max(slowest, time.monotonic() - started)
                assert answer.status_code == 200, answer.text
        # The sync workers answered nothing here until their 30 s timeout.
        assert slowest < 2.0, slowest
    finally:
        for client in clients:
            client.join(timeout=HEADER_TIMEOUT + BODY_TIMEOUT + 15)
        stop.set()
    # Past their deadline the server answered 408 and closed, headers and bodies alike.
    for client in clients:
        assert not client.is_alive()
        assert client.answer.startswith(b"HTTP/1.1 408"), client.answer[:200]
    for client in clients:  # late headers (the front's answer) and late bodies (the app's)
        body = client.answer.partition(b"\r\n\r\n")[2]
        assert json.loads(body)["error"]["code"] == "request_timeout", client.answer[:300]


def worker_of_each(server, count: int) -> dict[int, list[socket.socket]]:
    """``count`` kept-alive connections opened one after another: pid -> its connections."""
    by_pid: dict[int, list[socket.socket]] = {}
    for _ in range(count):
        sock = connect(server)
        by_pid.setdefault(exchange(sock, "GET", "/_test/pid")[2]["pid"], []).append(sock)
    return by_pid


def test_connections_spread_evenly_over_the_workers(front):
    by_pid = worker_of_each(front, 6)
    try:
        assert sorted(len(socks) for socks in by_pid.values()) == [3, 3], by_pid.keys()
    finally:
        for socks in by_pid.values():
            for sock in socks:
                sock.close()


def test_a_free_worker_answers_while_the_other_is_busy(front):
    front.busy_marker.unlink(missing_ok=True)
    # 5 kept-alive connections: 3 on one worker, 2 on the other. The busy request goes to the
    # worker with 2, so the free one holds more connections: it must take new ones anyway.
    by_pid = worker_of_each(front, 5)
    try:
        assert len(by_pid) == 2, by_pid.keys()
        busy_pid, free_pid = sorted(by_pid, key=lambda pid: len(by_pid[pid]))
        busy_sock = by_pid[busy_pid][0]
        busy_sock.sendall(request_bytes("POST", "/_test/busy?seconds=4"))
        for _ in range(200):  # bounded wait for the worker to start its long request
            if front.busy_marker.exists() and front.busy_marker.read_text():
                break
            time.sleep(0.02)
        assert int(front.busy_marker.read_text()) == busy_pid
        for _ in range(3):
            with connect(front) as sock:  # new connections
                assert exchange(sock, "GET", "/_test/pid")[2]["pid"] == free_pid
            # ... and a kept-alive one on the free worker
            assert exchange(by_pid[free_pid][0], "GET", "/_test/pid")[2]["pid"] == free_pid
        # All of that was answered while the busy worker still held its request.
        busy_sock.settimeout(0)
        with pytest.raises(BlockingIOError):
            busy_sock.recv(1)
        busy_sock.settimeout(15)
        status, _, body = read_response(busy_sock)
        assert status == 200 and json.loads(body)["pid"] == busy_pid
    finally:
        for socks in by_pid.values():
            for sock in socks:
                sock.close()


def test_connections_of_one_worker_take_turns(front):
    """Eight kept-alive connections asking as fast as they can: each gets a share of the
    answers (gunicorn's own gevent worker served a few of them over and over)."""
    stop = threading.Event()
    counts = [0] * 8

    def ask(index: int) -> None:
        with connect(front) as sock:
            request = request_bytes("GET", "/healthz")
            for _ in range(100_000):
                if stop.is_set():
                    return
                sock.sendall(request)
                assert read_response(sock)[0] == 200
                counts[index] += 1

    threads = [threading.Thread(target=ask, args=(index,), daemon=True) for index in range(8)]
    for thread in threads:
        thread.start()
    time.sleep(2.0)
    stop.set()
    for thread in threads:
        thread.join(timeout=15)
    assert min(counts) > 0.2 * max(counts), counts


def test_a_worker_serves_waiting_requests_in_arrival_order(front):
    """Requests that arrive on kept-alive connections while their worker is busy are served in
    the order they arrived once it is free (libev alone would serve them last-first)."""
    front.busy_marker.unlink(missing_ok=True)
    by_pid = worker_of_each(front, 10)
    try:
        pid, socks = max(by_pid.items(), key=lambda item: len(item[1]))
        assert len(socks) >= 4, {pid: len(socks) for pid, socks in by_pid.items()}
        busy, *waiting = socks[:4]
        busy.sendall(request_bytes("POST", "/_test/busy?seconds=1.5"))
        for _ in range(200):  # bounded wait for the worker to start its long request
            if front.busy_marker.exists() and front.busy_marker.read_text():
                break
            time.sleep(0.02)
        assert int(front.busy_marker.read_text()) == pid
        for sock in reversed(waiting):  # arrival order: the opposite of the sockets' order
            sock.sendall(request_bytes("GET", "/_test/pid"))
            time.sleep(0.05)
        served = [json.loads(read_response(sock)[2])["seq"] for sock in reversed(waiting)]
        assert served == sorted(served), served
        assert read_response(busy)[0] == 200
    finally:
        for socks in by_pid.values():
            for sock in socks:
                sock.close()


MALFORMED = {
    "request line over limit_request_line": (b"GET /" + b"a" * 5000 + b" HTTP/1.1\r\n\r\n", 414),
    "a field over limit_request_field_size": (
        b"GET /healthz HTTP/1.1\r\nX-Big: " + b"v" * 9000 + b"\r\n\r\n",
        431,
    ),
    "a space in a field name": (b"GET /healthz HTTP/1.1\r\nHo st: x\r\n\r\n", 400),
    "an invented method": (b"FROB /healthz HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    "Expect: magic": (b"GET /healthz HTTP/1.1\r\nExpect: magic\r\n\r\n", 417),
    "a malformed chunk (the app's answer)": (
        b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
        400,
    ),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_a_request_that_cannot_be_read_gets_a_json_4xx_and_the_connection_closes(front, case):
    """Whether gunicorn's parser or the app finds the fault, the answer is the service's JSON
    error shape with the status gunicorn gives it; the connection closes (where the next
    request would start is unknown), and a request pipelined behind it is not answered."""
    raw, expected = MALFORMED[case]
    with connect(front) as sock:
        sock.sendall(raw + request_bytes("GET", "/healthz"))
        status, headers, body = read_response(sock)
        assert status == expected, body[:300]
        assert headers["content-type"] == "application/json"
        error = json.loads(body)["error"]
        assert error["code"] and error["message"]
        assert headers["connection"] == "close"
        assert closed_by_server(sock, timeout=5)
