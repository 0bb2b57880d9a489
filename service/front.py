"""The HTTP front: the gunicorn worker class that serves the app (``FrontWorker``).

One process per core, each an event loop (gevent) that holds many connections and runs the
WSGI app for one request at a time:

* **keep-alive**: HTTP/1.1 connections stay open between requests (``KEEPALIVE`` seconds idle),
  so a client's connection pool does not pay a TCP handshake per request.
* **fair turns**: after each response the connection goes back to the event loop and waits
  for its next request like every other connection, even when that request is already there,
  and the connections whose requests are waiting are served in the order those requests
  arrived (``TurnQueue``): every connection is served once per round, at the same place in
  it. gunicorn's own gevent worker reads the next request at once when it has arrived, and a
  client that answers quickly is served over and over while the others wait (p50 0.9 ms, p99
  over a second); and libev alone serves the connections of one round last-ready-first, which
  makes a connection ready early in one round wait for that round and the whole next one.
* **accepting when free, balanced**: a worker takes a new connection when it has nothing else
  to do, one at a time, so that a connection waits in the kernel's queue (where it survives a
  worker that dies) rather than behind a busy worker's requests. A worker holding more
  connections than another leaves each such connection to the less loaded worker for
  ``BALANCE_GRACE_S`` first (counts shared between the processes). When kept-alive clients
  keep every worker busy for ``ACCEPT_GRACE_S``, a worker takes its fair share of the queue at
  once (the kernel says how many wait): a client pool opening 64 connections is spread evenly
  in a round or two, not accepted one per turn of the event loop.
* **slow clients cost no worker**: reading a request never blocks the process, only the
  connection's own greenlet; the request line and headers must arrive within
  ``HEADER_TIMEOUT`` seconds, and the body within ``BODY_TIMEOUT`` seconds of the headers,
  else the answer is 408 and the connection is closed.
* **one write per answer, before the bookkeeping**: a response's head and body leave in one
  system call (``ResponseBuffer``), not two; the app's teardown (metrics, access log) runs
  after that (``TEARDOWN_AFTER_SEND``), while the client reads the answer.
* **graceful stop**: on SIGTERM the worker stops taking connections, answers every connection
  already queued on the listening socket (the kernel's accept backlog) and every request in
  hand with ``Connection: close``, closes kept-alive connections once idle, then exits
  (service/draining.py runs the drain around it).

The WSGI app runs unpatched (no monkey-patching): only the sockets of this module cooperate.
The app's own threads (the store poller) stay real threads.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import socket
import struct
import time
from collections.abc import Callable

import gevent
from gevent import socket as gsocket
from gevent.hub import Waiter
from gevent.pool import Pool
from gunicorn import http, util
from gunicorn.workers.ggevent import GeventWorker
from werkzeug.exceptions import InternalServerError

from service.batching import BATCH, Batcher
from service.front_counts import CONNECTION_COUNTS
from service.front_http import FrontParser
from service.front_io import (
    AFTER_RESPONSE,
    TEARDOWN_AFTER_SEND,
    AfterResponse,
    DeadlineSocket,
    EnvironMaker,
    ReadTimedOut,
    RequestBody,
    ResponseBuffer,
    close,
    request_error,
    write_json_error,
)

# A worker that stays busy this long with connections queued takes its share of them; one that
# turns out free within IDLE_CHECK_S after that (its long request just ended) takes one.
ACCEPT_GRACE_S = 0.02
IDLE_CHECK_S = 0.002
# A worker holding more connections than another leaves a new one to the less loaded worker
# for this long; if it is still queued then, that worker is busy.
BALANCE_GRACE_S = 0.005
# DYNAMIC_BATCHING values that turn dynamic batching off (service/batching.py).
_OFF = frozenset({"0", "false", "no", "off"})
# How long a stopping worker keeps an idle kept-alive connection open for a request a client
# may already be sending (answered with "Connection: close").
STOP_KEEPALIVE_LINGER_S = 2.0


def _seconds_from_env(name: str, default: float) -> float:
    text = os.environ.get(name)
    if not text:
        return default
    value = float(text)
    if not value > 0:
        raise ValueError(f"{name} must be > 0 seconds, got {text!r}")
    return value


def queued(listener) -> int:
    """How many connections wait in the listening socket's accept queue (Linux: TCP_INFO's
    unacked field of a listening socket); 1 where that cannot be known."""
    try:
        info = listener.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 32)
        return struct.unpack_from("I", info, 24)[0]
    except (OSError, AttributeError, struct.error):
        return 1


def until_idle(timeout: float) -> bool:
    """Wait until the event loop has nothing else to do (True), at most ``timeout`` (False)."""
    with gevent.Timeout(timeout, False):
        gevent.idle()
        return True
    return False


class TurnQueue:
    """Where kept-alive connections wait for their next request, and are served in the order
    their requests arrived.

    Each waiting connection is in an epoll set of its own (one-shot), which the dispatcher
    greenlet (``run``) watches: the kernel lists ready connections in the order they became
    ready, and the dispatcher wakes their greenlets in that order (gevent runs callbacks first
    in, first out). Waiting on each socket through gevent instead would serve them in the
    reverse order (libev runs the watchers of one poll last-ready-first), so a connection ready
    early in a round would wait for the whole round, then the whole next one: twice the tail.
    Idle connections are given up on after their deadline, checked every ``SWEEP_S``."""

    SWEEP_S = 0.5

    def __init__(self, stopping: Callable[[], bool]):
        self.stopping = stopping
        self.hub = gevent.get_hub()
        self.epoll = select.epoll()
        self.waiting: dict[int, tuple[Waiter, float]] = {}  # fd -> (its greenlet, idle until)
        self.registered: set[int] = set()
        self.woken = 0  # connections woken with a request, not yet running again

    def wait(self, fd: int, idle_s: float) -> bool:
        """Until the connection ``fd`` has bytes (True) or has been idle ``idle_s`` (False)."""
        waiter = Waiter(self.hub)
        self.waiting[fd] = (waiter, time.monotonic() + idle_s)
        if fd in self.registered:
            self.epoll.modify(fd, _ONE_READ)
        else:
            self.epoll.register(fd, _ONE_READ)
            self.registered.add(fd)
        try:
            ready = waiter.get()
        finally:
            self.waiting.pop(fd, None)
        if ready:
            self.woken -= 1
        return ready

    def forget(self, fd: int) -> None:
        """Before the connection ``fd`` is closed."""
        if fd in self.registered:
            self.registered.discard(fd)
            with contextlib.suppress(OSError):
                self.epoll.unregister(fd)

    def run(self) -> None:
        """The dispatcher greenlet: wakes the connections whose requests arrived, in order."""
        ready = self.hub.loop.io(self.epoll.fileno(), 1)  # one watcher, reused every round
        while True:
            self.hub.wait(ready)
            for fd, _events in self.epoll.poll(0):
                entry = self.waiting.pop(fd, None)
                if entry is not None:
                    self.woken += 1
                    self.hub.loop.run_callback(entry[0].switch, True)

    def sweep(self) -> None:
        """The greenlet that gives up on idle connections, every ``SWEEP_S``."""
        while True:
            gevent.sleep(self.SWEEP_S)
            self.give_up_idle(time.monotonic())

    def give_up_idle(self, now: float) -> None:
        linger_until = now + STOP_KEEPALIVE_LINGER_S if self.stopping() else float("inf")
        for fd, (waiter, idle_until) in list(self.waiting.items()):
            if idle_until <= now:
                del self.waiting[fd]
                self.hub.loop.run_callback(waiter.switch, False)
            elif idle_until > linger_until:
                self.waiting[fd] = (waiter, linger_until)


_ONE_READ = select.EPOLLIN | select.EPOLLONESHOT


class FrontWorker(GeventWorker):
    """gunicorn's gevent worker with fair turns, balanced accepting, read deadlines and the
    backlog drain (module docstring)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.keepalive_s = float(self.cfg.keepalive)
        self.header_timeout_s = _seconds_from_env("HEADER_TIMEOUT", 10.0)
        self.body_timeout_s = _seconds_from_env("BODY_TIMEOUT", 30.0)
        self.connections = 0
        self.pool: Pool | None = None
        self.turns: TurnQueue | None = None
        self.listener_names: dict = {}
        self.environ_makers: dict = {}
        self.after_response = AfterResponse()
        self.batching = os.environ.get("DYNAMIC_BATCHING", "1").strip().lower() not in _OFF
        self.batcher: Batcher | None = None
        self.slot = CONNECTION_COUNTS.claim_slot()  # in the master, before the fork

    # ------------------------------------------------------------------ process
    def patch(self) -> None:
        """No monkey-patching: the listeners stay gunicorn's, made non-blocking; the accepted
        connections become gevent sockets."""
        for listener in self.sockets:
            listener.setblocking(False)

    def run(self) -> None:
        CONNECTION_COUNTS.start(self.slot, os.getpid())
        try:
            self.serve()
        finally:
            CONNECTION_COUNTS.release(self.slot)

    def serve(self) -> None:
        self.pool = Pool(self.worker_connections)
        self.listener_names = {listener: listener.getsockname() for listener in self.sockets}
        extra = {AFTER_RESPONSE: self.after_response.add, TEARDOWN_AFTER_SEND: True}
        if self.batching:
            self.batcher = Batcher(gevent.get_hub(), others_ready=lambda: self.turns.woken > 0)
            extra[BATCH] = self.batcher.predict
        self.environ_makers = {
            name: EnvironMaker(self.cfg, name, extra) for name in self.listener_names.values()
        }
        self.turns = TurnQueue(stopping=lambda: not self.alive)
        helpers = [gevent.spawn(self.turns.run), gevent.spawn(self.turns.sweep)]
        acceptors = [gevent.spawn(self.accept_forever, listener) for listener in self.sockets]
        wakeup = self.PIPE[0]  # signals write here (signal.set_wakeup_fd): handle them at once
        while self.alive:
            self.notify()
            try:
                gsocket.wait_read(wakeup, timeout=1.0)
                os.read(wakeup, 64)
            except (TimeoutError, BlockingIOError, InterruptedError):
                pass
        gevent.killall(acceptors)
        self.answer_queued_connections()
        for listener in self.sockets:
            util.close(listener)
        deadline = time.monotonic() + self.cfg.graceful_timeout
        while len(self.pool) and time.monotonic() < deadline:
            self.notify()
            self.pool.join(timeout=min(1.0, max(deadline - time.monotonic(), 0)))
        if len(self.pool):
            self.log.warning("Worker graceful timeout (pid:%s)", self.pid)
            self.pool.kill(block=True, timeout=1)
        gevent.killall(helpers)
        self.after_response.run_all()

    # ------------------------------------------------------------------ accepting
    def accept_forever(self, listener) -> None:
        """Take the connections queued on ``listener``: one whenever this worker has nothing
        else to do, so that a new connection waits in the kernel's queue (where it survives a
        worker that dies) rather than behind a busy worker's requests; when this worker has
        stayed busy for ``ACCEPT_GRACE_S`` (kept-alive clients keep every worker so), its fair
        share of the queue at once: enough to hold as many connections as the average worker
        would once the queue is empty, and at least one."""
        fd = listener.fileno()
        while self.alive:
            gsocket.wait_read(fd)
            # No connection at all: nothing else to do for sure (Connection: close clients).
            free = not len(self.pool) or until_idle(ACCEPT_GRACE_S) or until_idle(IDLE_CHECK_S)
            if free:
                self.accept_balanced(listener)
                continue
            share = CONNECTION_COUNTS.fair_share(self.slot, queued(listener))
            for _ in range(max(share, 1)):
                if self.pool.full() or not self.accept_one(listener):
                    break
            if self.pool.full():
                self.pool.wait_available()

    def accept_balanced(self, listener) -> bool:
        """Accept one connection, after ``BALANCE_GRACE_S`` if another worker holds fewer."""
        if not CONNECTION_COUNTS.least_loaded(self.slot):
            gevent.sleep(BALANCE_GRACE_S)
        return self.accept_one(listener)

    def accept_one(self, listener) -> bool:
        """Accept one connection if one is queued and start serving it; False if none was."""
        try:
            client, address = listener.accept()
        except (BlockingIOError, InterruptedError):
            return False
        except OSError as exc:
            if exc.errno in (errno.ECONNABORTED, errno.EMFILE, errno.ENFILE, errno.ENOBUFS):
                return False
            raise
        util.close_on_exec(client)
        connection = gsocket.socket(client.family, client.type, client.proto, client.detach())
        self.connections += 1  # counted now, so a burst of connections sees it at once
        CONNECTION_COUNTS.set(self.slot, self.connections)
        self.pool.spawn(self.serve_connection, listener, connection, address)
        return True

    def answer_queued_connections(self) -> None:
        """At stop: take every connection still queued on the listening sockets (they are
        answered with "Connection: close"), until none is left; each worker does this."""
        for listener in self.sockets:
            while True:
                if self.pool.full():
                    self.pool.wait_available(timeout=1.0)
                    self.notify()
                    continue
                try:
                    if not self.accept_one(listener):
                        break
                except OSError:
                    break  # the socket is gone

    # ------------------------------------------------------------------ a connection
    def serve_connection(self, listener, client, address) -> None:
        reader, output = DeadlineSocket(client), ResponseBuffer(client)
        parser = FrontParser(self.cfg, reader, address)
        listener_name = self.listener_names[listener]
        req = None
        linger = "if unread"  # how to close (``close``)
        try:
            while True:
                reader.start("headers", self.header_timeout_s)
                req = next(parser)
                reader.start("body", self.body_timeout_s)
                try:
                    self.handle_request(listener_name, req, output, address)
                except StopIteration:  # answered; the connection closes
                    output.flush()
                    raise
                output.flush()
                req = None
                if not self.finish_body(parser, reader):
                    linger = "always"
                    break
                # The fair turn: back to the event loop until the next request arrives, unless
                # its bytes are already read (pipelined).
                if parser.unreader.buf.getbuffer().nbytes:
                    gevent.sleep(0)  # a pipelined request: its turn after the others' ready now
                elif not self.wait_for_next_request(client):
                    linger = "never"  # idle: nothing of a request can be on its way
                    break
        except StopIteration:
            pass
        except ReadTimedOut as exc:
            linger = "always"
            if req is None:  # late headers; a late body was answered by the app
                self.reply_timeout(client, exc)
        except http.errors.NoMoreData:
            pass
        except OSError as exc:
            if exc.errno not in (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN):
                self.log.exception("Socket error processing request.")
        except Exception as exc:
            linger = "always"
            self.handle_error(req, client, address, exc)
        finally:
            self.connections -= 1
            CONNECTION_COUNTS.set(self.slot, self.connections)
            self.turns.forget(client.fileno())
            close(client, linger)

    def handle_request(self, listener_name, req, sock, addr) -> None:
        """One request through the app: gunicorn's environ (``EnvironMaker``, from a template)
        and response framing, without the per-request extras of gunicorn's own
        ``handle_request`` the service does not use: its access log (the app writes one line
        per request itself) and the pre/post-request hooks. Raises StopIteration when the
        connection must close."""
        maker = self.environ_makers[listener_name]
        resp, environ = maker.create(req, sock, addr, listener_name)
        environ["wsgi.input"] = RequestBody(environ["wsgi.input"])
        self.nr += 1
        if self.nr >= self.max_requests and self.alive:
            self.log.info("Autorestarting worker after current request.")
            self.alive = False
        if not self.alive or not self.cfg.keepalive:
            resp.force_close()
        try:
            body = self.wsgi(environ, resp.start_response)
            if getattr(req.body, "failed", False):  # a malformed body: where is the next request?
                resp.force_close()
            try:
                for item in body:
                    resp.write(item)
                resp.close()
                sock.flush()  # the answer leaves, then the app's teardown (TEARDOWN_AFTER_SEND)
            finally:
                if hasattr(body, "close"):
                    body.close()
        except (StopIteration, OSError):
            raise
        except Exception:
            if not resp.headers_sent:
                raise  # serve_connection answers 500
            self.log.exception("Error handling request")  # mid-answer: only closing is left
            raise StopIteration() from None
        if resp.should_close():
            raise StopIteration()

    def finish_body(self, parser, reader: DeadlineSocket) -> bool:
        """Read what the app left of the answered request's body: True when the connection
        can serve another request, False when not (the rest could not be read in time, is
        malformed: it was answered already, so the connection simply closes)."""
        try:
            return parser.finish_body(deadline=reader.deadline)
        except (http.errors.ParseException, ReadTimedOut):
            return False

    def wait_for_next_request(self, client) -> bool:
        """Wait for the client's next request, in turn with the other connections: True, or
        False when it stays idle for KEEPALIVE seconds (2 s at most once the worker stops)."""
        idle_s = self.keepalive_s if self.alive else STOP_KEEPALIVE_LINGER_S
        return self.turns.wait(client.fileno(), idle_s)

    def reply_timeout(self, client, exc: ReadTimedOut) -> None:
        with contextlib.suppress(OSError):
            write_json_error(client, exc)

    def handle_error(self, req, client, addr, exc) -> None:
        """A request gunicorn could not read (400, 414, 431, 417, 501, 403, as gunicorn
        answers them) or the app could not answer (500), in the service's JSON error shape."""
        error = request_error(exc)
        if error is None:
            self.log.exception("Error handling request %s", getattr(req, "uri", "(no URI read)"))
            error = InternalServerError()
        else:
            self.log.warning("Invalid request from ip=%s: %s", (addr or ("",))[0], exc)
        with contextlib.suppress(OSError):
            write_json_error(client, error)
