"""The front's per-connection pieces (service/front_io.py): the work left for after an answer
(``AfterResponse``) and what it writes, the per-request metric updates kept in memory
(service/metrics.py: ``PendingWrites``), which give the same exposition as prometheus-client's
own updates; and one write per answer (``ResponseBuffer``) that still sends all of it."""

from __future__ import annotations

import gevent
import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from service.front_io import AfterResponse
from service.metrics import LATENCY_BUCKETS_S, PendingWrites

# On bounds, between them, below the first, above the last (+Inf), and zero.
VALUES = [0.0, 0.0005, 0.0004, 0.001, 0.0011, 0.25, 4.9, 5.0, 5.1, 1e9, 0.003, 0.003]


def exposition(registry) -> list[str]:
    """The samples, without the ``_created`` timestamps (two registries differ there)."""
    text = generate_latest(registry).decode()
    return [line for line in text.splitlines() if "_created" not in line]


def two_registries():
    made = []
    for _ in range(2):
        registry = CollectorRegistry()
        counter = Counter("c_total", "c", ["route"], registry=registry)
        histogram = Histogram("h_seconds", "h", ["route"], buckets=LATENCY_BUCKETS_S,
                              registry=registry)  # fmt: skip
        made.append((registry, counter, histogram))
    return made


def test_pending_writes_give_what_direct_updates_give():
    (direct, counter, histogram), (deferred, counter2, histogram2) = two_registries()
    pending = PendingWrites()
    for index, value in enumerate(VALUES):
        route = "/a" if index % 3 else "/b"
        counter.labels(route).inc()
        histogram.labels(route).observe(value)
        pending.count(counter2.labels(route))
        pending.observe(histogram2.labels(route), value)
    counter.labels("/a").inc(7)
    pending.count(counter2.labels("/a"), 7)
    assert exposition(deferred) != exposition(direct)  # nothing written yet
    pending.write()
    assert exposition(deferred) == exposition(direct)
    pending.write()  # written once only
    assert exposition(deferred) == exposition(direct)


def test_after_response_runs_the_work_once_after_the_delay():
    ran = []

    def work():
        ran.append(1)

    after = AfterResponse(delay_s=0.05)
    for _ in range(5):  # a burst of requests adding the same work
        after.add(work)
    assert ran == []  # nothing before the event loop runs (the answers are sent first)
    gevent.sleep(0.2)
    assert ran == [1]
    assert after.pending == {} and after.timer is None
    after.add(work)  # the next request starts the next round
    gevent.sleep(0.2)
    assert ran == [1, 1]


def test_failing_work_is_logged_not_raised(caplog):
    after = AfterResponse(delay_s=0.01)
    after.add(lambda: 1 / 0)
    gevent.sleep(0.1)
    assert "work after the response failed" in caplog.text


def test_run_all_runs_what_is_pending_now():
    """What a stopping worker does: nothing pending is lost."""
    ran = []
    after = AfterResponse(delay_s=60)
    after.add(lambda: ran.append(1))
    after.run_all()
    assert ran == [1] and after.pending == {} and after.timer is None


class PartialSocket:
    """A socket whose send() takes at most ``limit`` bytes, like a full kernel buffer."""

    def __init__(self, limit: int):
        self.limit, self.wire = limit, b""

    def send(self, data) -> int:
        taken = bytes(data[: self.limit])
        self.wire += taken
        return len(taken)

    def sendall(self, data) -> None:
        self.wire += bytes(data)


@pytest.mark.parametrize("limit", [1 << 20, 10, 0])
def test_an_answer_leaves_whole_however_much_one_send_takes(limit):
    from service.front_io import ResponseBuffer

    sock = PartialSocket(limit)
    output = ResponseBuffer(sock)
    output.sendall(b"HTTP/1.1 200 OK\r\n\r\n")
    output.sendall(b"x" * 100)
    assert sock.wire == b""  # kept until flush: one write per answer
    output.flush()
    assert sock.wire == b"HTTP/1.1 200 OK\r\n\r\n" + b"x" * 100
