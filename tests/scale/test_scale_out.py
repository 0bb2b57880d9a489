"""Scale-out on one machine: 3 ``convserve serve`` replicas (1 sync worker each) sharing one
store directory, nginx in front (deploy/nginx). A promotion reaches every replica; a replica
killed or restarted under a steady load costs the clients nothing; slow clients cost the
replicas nothing. Every load is bounded in count and in time."""

from __future__ import annotations

import os
import signal
import socket
import time

import pytest
import requests

from benchmarks.fleet import SteadyLoad, post_predict
from tests.scale.conftest import RELOAD_INTERVAL_S

CLIENTS = 4
pytestmark = pytest.mark.slow  # ~15 s per test: 3 replicas and nginx each


def describe(failures) -> str:
    return f"{len(failures)} failed: {failures[:5]}"


def test_a_promotion_reaches_every_replica_within_the_reload_interval(
    fleet, shared_store, predict_body
):
    """Each answer names the replica (X-Served-By) and the version. After the promote, every
    replica answers version 2 from some moment on, and that moment is within
    RELOAD_INTERVAL_S + 2 s of the promote."""
    addresses = {replica.address for replica in fleet.replicas}
    first_new: dict[str, float] = {}
    with requests.Session() as session:
        promoted_at = time.monotonic()
        shared_store.promote("mnist", 2, "production")
        deadline = promoted_at + RELOAD_INTERVAL_S + 10
        while time.monotonic() < deadline:
            answer = post_predict(session, fleet.proxy.url, predict_body)
            assert answer.status == 200, answer
            if answer.version == 2:
                first_new.setdefault(answer.served_by, answer.at)
            else:
                assert answer.version == 1, answer
                # An old answer after a new one from the same replica would be a flap.
                assert answer.served_by not in first_new, answer
            if set(first_new) == addresses:
                break
    assert set(first_new) == addresses, f"only {sorted(first_new)} serve version 2"
    for address, at in first_new.items():
        assert at - promoted_at <= RELOAD_INTERVAL_S + 2, (address, at - promoted_at)
    # And straight from each replica, not only through the proxy.
    for replica in fleet.replicas:
        ready = requests.get(replica.url + "/readyz", timeout=10).json()
        assert ready["model"]["version"] == 2, replica.name


def replica_is_gone(replica) -> bool:
    """True when nothing accepts on the replica's port any more."""
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", replica.port)) != 0


def wait_until_gone(replica, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not replica_is_gone(replica):
        assert time.monotonic() < deadline, f"{replica.name} still accepts"
        time.sleep(0.05)


def test_kill_9_of_a_replica_master_under_load_fails_no_request(fleet, predict_body):
    """SIGKILL of one replica's gunicorn master: its worker notices the parent is gone,
    answers what it holds and leaves; connections refused or reset meanwhile are retried by
    nginx on another replica. Then SIGKILL of another replica's master and worker together
    (a crash mid-request): the same."""
    load = SteadyLoad(fleet.proxy.url, predict_body, CLIENTS, max_requests=20_000, max_seconds=90)
    load.start()
    try:
        load.wait_for(60)
        victim = fleet.replicas[1]
        os.kill(victim.process.pid, signal.SIGKILL)
        wait_until_gone(victim)
        before = len(load.answers)
        load.wait_for(before + 60)
        crashed = fleet.replicas[2]
        crashed.kill()  # the whole process group: the worker dies mid-request
        after = len(load.answers)
        load.wait_for(after + 60)
    finally:
        answers = load.stop()
    assert not load.failures(), describe(load.failures())
    assert len(answers) >= after + 60
    late = answers[after + 10 :]
    assert {answer.served_by.split(",")[-1].strip() for answer in late} == {
        fleet.replicas[0].address
    }


def test_rolling_restart_of_every_replica_fails_no_request(fleet, predict_body):
    """One replica at a time: SIGTERM (1 s of failing readiness while still serving, then
    gunicorn's graceful stop answering everything queued), wait for exit 0, start it again on
    the same port, wait until ready; then the next. The clients see only 200s."""
    load = SteadyLoad(fleet.proxy.url, predict_body, CLIENTS, max_requests=50_000, max_seconds=150)
    load.start()
    try:
        load.wait_for(40)
        for replica in fleet.replicas:
            assert replica.terminate() == 0, replica.log_path.read_text()[-2000:]
            replica.start()
            count = len(load.answers)
            load.wait_for(count + 30)
    finally:
        answers = load.stop()
    assert not load.failures(), describe(load.failures())
    assert len(answers) >= 40 + 3 * 30
    assert all(replica.starts == 2 for replica in fleet.replicas)
    # Every restarted replica is back in the rotation (nginx retries a failed one after
    # fail_timeout, 5 s).
    seen = set()
    with requests.Session() as session:
        for _ in range(400):
            answer = post_predict(session, fleet.proxy.url, predict_body)
            assert answer.status == 200, answer
            seen.add(answer.served_by.split(",")[-1].strip())
            if len(seen) == 3:
                break
            time.sleep(0.05)
    assert seen == {replica.address for replica in fleet.replicas}


def open_slow_header_connections(url_port: int, count: int) -> list[socket.socket]:
    """``count`` connections that send a request line and then headers a byte at a time."""
    connections = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", url_port), timeout=5)
        sock.sendall(b"POST /predict HTTP/1.1\r\nHost: convserve\r\nX-Slow: ")
        connections.append(sock)
    return connections


def test_slow_header_clients_do_not_hold_the_replicas(fleet, predict_body):
    """64 connections trickling their headers (slowloris) hold nginx connection slots only:
    3 sync workers behind it keep answering other clients, every request 200."""
    slow = open_slow_header_connections(fleet.proxy.port, 64)
    answers = []
    try:
        with requests.Session() as session:
            for round_number in range(30):
                for sock in slow:
                    sock.sendall(b"x")  # still sending headers
                answers.append(post_predict(session, fleet.proxy.url, predict_body, timeout=10))
                if round_number % 10 == 0:
                    time.sleep(0.1)
        # The slow clients were held, not turned away: still open, still unanswered.
        for sock in slow:
            sock.setblocking(False)
            with pytest.raises(BlockingIOError):
                sock.recv(1)
    finally:
        for sock in slow:
            sock.close()
    failures = [answer for answer in answers if answer.status != 200]
    assert not failures, describe(failures)
    assert len({a.served_by.split(",")[-1].strip() for a in answers}) == 3
