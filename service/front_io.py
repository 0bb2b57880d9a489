"""What the HTTP front (service/front.py) does with one connection's bytes: read them by a
deadline, answer in one write, close politely, and run the work the app left for after the
answer.

* ``DeadlineSocket``: the client socket as the request parser reads it; every read ends by the
  deadline of the part being read (headers, body), then ``ReadTimedOut`` (408).
* ``RequestBody``: the body as the app reads it; one gunicorn cannot read is a 400.
* ``ResponseBuffer``: a response's head and body leave in one system call.
* ``FrontResponse``: gunicorn's response framing (RFC 9110/9112), with the Date header made
  once per second rather than once per response.
* ``AfterResponse``: work the app hands the server through the WSGI environ
  (``AFTER_RESPONSE``), run ``AFTER_RESPONSE_DELAY_S`` later, after the answer has left, once
  for all the requests answered meanwhile: the metrics' writes (service/metrics.py).
* ``close``: FIN first when the client may still be sending.
* ``write_json_error``: what gunicorn answers itself (a request it could not read, a late
  head) in the service's JSON error shape, with gunicorn's statuses, instead of its HTML.
"""

from __future__ import annotations

import logging
import os
import select
import time
from collections.abc import Callable

import gevent
import orjson
from gunicorn import SERVER, util
from gunicorn.http import errors, wsgi
from werkzeug import exceptions as http_errors
from werkzeug.exceptions import HTTPException, RequestTimeout

from service.errors import describe_error

# The WSGI environ key under which the front offers ``AfterResponse.add`` to the app.
AFTER_RESPONSE = "convserve.after_response"
# The WSGI environ key by which the front tells the app that it closes each answer (the
# iterable's ``close()``) once the answer has left, in the request's own greenlet, before it
# reads the connection's next request: the app may leave its teardown until then
# (``ServiceFlask.wsgi_app``, service/web.py).
TEARDOWN_AFTER_SEND = "convserve.teardown_after_send"
# The work left for after the answers (the metrics' writes) runs this long after the first
# of them: what /metrics may lag behind the answers.
AFTER_RESPONSE_DELAY_S = 0.1

log = logging.getLogger("convserve.front")


def close(client, linger: str) -> None:
    """Close a client connection. Closing while the client still sends makes the kernel answer
    with a reset, which can destroy the response in flight; lingering sends FIN first and reads
    what comes, up to 2 s (gunicorn's ``close_graceful``, RFC 9112 section 9.6). ``linger``:
    "always" (an error, a timeout: the client may be mid-request), "if unread" (an answered
    request: only if the client has sent more already, so a worker does not hold a finished
    connection while its client reads), or "never" (an idle connection)."""
    if linger == "if unread":
        linger = "always" if readable_now(client.fileno()) else "never"
    if linger == "always":
        util.close_graceful(client)
    else:
        util.close(client)


class ReadTimedOut(RequestTimeout):
    """A request's headers or body did not arrive in time (408). Raised inside the app when the
    body is late, so the app answers it as JSON like any other client error."""

    def __init__(self, what: str, seconds: float):
        super().__init__(f"the request {what} did not arrive within {seconds:g} s")


class DeadlineSocket:
    """The client socket as the request parser reads it: every read ends by ``deadline``
    (``time.monotonic()``), whatever the client's pace; then ``ReadTimedOut``."""

    __slots__ = ("sock", "deadline", "what", "seconds")

    def __init__(self, sock):
        self.sock = sock
        self.deadline = float("inf")
        self.what = "headers"
        self.seconds = 0.0

    def start(self, what: str, seconds: float) -> None:
        self.what, self.seconds = what, seconds
        self.deadline = time.monotonic() + seconds

    def recv(self, size: int) -> bytes:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise ReadTimedOut(self.what, self.seconds)
        self.sock.settimeout(remaining)
        try:
            return self.sock.recv(size)
        except TimeoutError:  # socket.timeout
            raise ReadTimedOut(self.what, self.seconds) from None

    # gunicorn's body drain bounds its reads with these; the deadline already does.
    def settimeout(self, _timeout) -> None:
        pass

    def gettimeout(self) -> None:
        return None


class RequestBody:
    """The request body as the app reads it (``wsgi.input``): gunicorn's reader, except that a
    body it cannot read (a malformed chunk) is raised as a 400 the app answers like any client
    error, not as an exception the app would take for its own fault (500)."""

    __slots__ = ("body",)

    def __init__(self, body):
        self.body = body

    def read(self, size: int | None = None) -> bytes:
        return self._checked(self.body.read, size)

    def readline(self, size: int | None = None) -> bytes:
        return self._checked(self.body.readline, size)

    def readlines(self, hint: int | None = None) -> list[bytes]:
        return self._checked(self.body.readlines, hint)

    def __iter__(self):
        return iter(self.readline, b"")

    @staticmethod
    def _checked(read, argument):
        try:
            return read(argument)
        except errors.ParseException as exc:
            raise http_errors.BadRequest(f"the request body could not be read: {exc}") from None


class EnvironMaker:
    """The WSGI environ of each request, as gunicorn's ``wsgi.create`` makes it for HTTP/1.x
    over TCP (tests/service/test_front_http.py compares the two), from a template of what
    every request of the worker shares, made once: ``create`` rebuilds that part (a
    ``wsgi.errors`` wrapper looking up loggers, config lookups, ``os.environ``) per request.
    Requests it does not cover (a unix socket, the PROXY protocol) go to ``wsgi.create``.
    ``extra``: keys added to every environ (the front's ``AFTER_RESPONSE``)."""

    def __init__(self, cfg, listener_name, extra: dict):
        self.cfg = cfg
        self.covered = isinstance(listener_name, tuple) and cfg.proxy_protocol == "off"
        self.extra = extra | {"wsgi.multithread": True}  # greenlets: requests may interleave
        self.template = wsgi.base_environ(cfg) | self.extra
        if self.covered:
            self.template["SERVER_NAME"] = str(listener_name[0])
            self.template["SERVER_PORT"] = str(listener_name[1])
        self.script_name = os.environ.get("SCRIPT_NAME", "")

    def create(self, req, sock, addr, listener_name) -> tuple[FrontResponse, dict]:
        """(response writer, environ) for ``req`` read from ``sock`` (client ``addr``)."""
        if not self.covered or not isinstance(addr, tuple):
            resp, environ = wsgi.create(req, sock, addr, listener_name, self.cfg, FrontResponse)
            return resp, environ | self.extra
        resp = FrontResponse(req, sock, self.cfg)
        environ = self.template.copy()
        environ["wsgi.input"] = req.body
        environ["gunicorn.socket"] = sock
        environ["REQUEST_METHOD"] = req.method
        environ["QUERY_STRING"] = req.query
        environ["RAW_URI"] = req.uri
        environ["SERVER_PROTOCOL"] = f"HTTP/{req.version[0]}.{req.version[1]}"
        if req._expected_100_continue:
            sock.send(b"HTTP/1.1 100 Continue\r\n\r\n")
        script_name = self._add_headers(req.headers, environ)
        environ["wsgi.url_scheme"] = req.scheme
        environ["REMOTE_ADDR"], environ["REMOTE_PORT"] = addr[0], str(addr[1])
        path_info = req.path
        if script_name:
            if not path_info.startswith(script_name):
                raise errors.ConfigurationProblem(
                    f"Request path {path_info!r} does not start with SCRIPT_NAME {script_name!r}"
                )
            path_info = path_info[len(script_name) :]
        environ["PATH_INFO"] = util.unquote_to_wsgi_str(path_info)
        environ["SCRIPT_NAME"] = script_name
        return resp, environ

    def _add_headers(self, headers: list[tuple[str, str]], environ: dict) -> str:
        """Header fields -> CONTENT_TYPE, CONTENT_LENGTH, HTTP_* (repeated ones joined with
        ","); returns the SCRIPT_NAME (a ``SCRIPT_NAME`` field overrides the setting)."""
        script_name = self.script_name
        repeated: dict[str, list[str]] = {}
        for name, value in headers:
            if name == "CONTENT-TYPE":
                environ["CONTENT_TYPE"] = value
                continue
            if name == "CONTENT-LENGTH":
                environ["CONTENT_LENGTH"] = value
                continue
            if name == "SCRIPT_NAME":
                script_name = value
            key = "HTTP_" + name.replace("-", "_")
            if key in environ:
                repeated.setdefault(key, [environ[key]]).append(value)
            else:
                environ[key] = value
        for key, values in repeated.items():
            environ[key] = ",".join(values)
        return script_name


class ResponseBuffer:
    """The client socket as gunicorn's response writer sees it: what it writes is kept and
    sent by ``flush`` in one ``sendall``, so a response's head and body leave in one system
    call and one TCP segment instead of two. A file sent with ``sendfile`` goes after what is
    kept; anything else (``send`` for "100 Continue", ``shutdown``, ...) is the socket's."""

    __slots__ = ("sock", "parts", "size")

    # Past this much, writes go out at once (a big body is not copied again).
    LIMIT = 256 * 1024

    def __init__(self, sock):
        self.sock = sock
        self.parts: list[bytes] = []
        self.size = 0

    def sendall(self, data: bytes) -> None:
        self.parts.append(data)
        self.size += len(data)
        if self.size > self.LIMIT:
            self.flush()

    def flush(self) -> None:
        if self.parts:
            data = self.parts[0] if len(self.parts) == 1 else b"".join(self.parts)
            self.parts, self.size = [], 0
            # One send: an answer this size fits the socket's buffer (gevent's sendall asks
            # the kernel for that buffer's size first, every time); the rest, if any, after.
            sent = self.sock.send(data)
            if sent < len(data):
                self.sock.sendall(memoryview(data)[sent:])

    def sendfile(self, *args, **kwargs):
        self.flush()
        return self.sock.sendfile(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.sock, name)


class FrontResponse(wsgi.Response):
    """gunicorn's response writer, unchanged but for the head's Date: formatted once per
    second (``email.utils.formatdate`` costs microseconds on every answer otherwise)."""

    def default_headers(self) -> list[str]:
        if self.upgrade:
            connection = "upgrade"
        elif self.should_close():
            connection = "close"
        else:
            connection = "keep-alive"
        major, minor = self.req.version
        headers = [
            f"HTTP/{major}.{minor} {self.status}\r\n",
            f"Server: {SERVER}\r\n",
            _date_line(),
            f"Connection: {connection}\r\n",
        ]
        if self.chunked:
            headers.append("Transfer-Encoding: chunked\r\n")
        return headers


_date = [-1, ""]  # the second it was made for, "Date: ...\r\n"


def _date_line() -> str:
    """``"Date: <IMF-fixdate>\\r\\n"`` for the current second."""
    second = int(time.time())
    if second != _date[0]:
        _date[0], _date[1] = second, f"Date: {util.http_date(second)}\r\n"
    return _date[1]


class AfterResponse:
    """Work to run after answers have left (``add`` is offered to the app as
    ``environ[AFTER_RESPONSE]``): ``delay_s`` after the first request that left some, together
    for every request answered meanwhile; each piece of work runs once however many requests
    added it. The timer runs only when the worker's event loop does, so never before the answer
    that added the work has been sent: no client waits for it, and under load it is done once
    for hundreds of requests (``run_all`` also runs when the worker stops)."""

    def __init__(self, delay_s: float = AFTER_RESPONSE_DELAY_S):
        self.delay_s = delay_s
        self.pending: dict[Callable[[], None], None] = {}  # ordered set
        self.timer = None  # set while work is pending

    def add(self, work: Callable[[], None]) -> None:
        self.pending[work] = None
        if self.timer is None:
            self.timer = gevent.get_hub().loop.timer(self.delay_s)
            self.timer.start(self.run_all)

    def run_all(self) -> None:
        """Run every pending piece of work now."""
        if self.timer is not None:
            self.timer.close()
            self.timer = None
        pending, self.pending = self.pending, {}
        for work in pending:
            try:
                work()
            except Exception:  # never let bookkeeping cost a client its connection
                log.exception("work after the response failed: %r", work)


def readable_now(fd: int) -> bool:
    """True when ``fd`` (a socket, an epoll set) has something to read, without waiting."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))


# gunicorn's errors for a request it could not read -> the HTTP error each one is (the statuses
# of gunicorn's own handle_error); first match wins. The app's faults are not here (500).
# gunicorn's errors that are the app's fault, not the request's (answered 500).
_APP_FAULTS = (
    errors.InvalidResponseHeader,
    errors.InvalidResponseHeaderName,
    errors.ConfigurationProblem,
)
_REQUEST_ERRORS: tuple[tuple[type[Exception], type[HTTPException]], ...] = (
    (errors.LimitRequestLine, http_errors.RequestURITooLarge),
    (errors.LimitRequestHeaders, http_errors.RequestHeaderFieldsTooLarge),
    (errors.ExpectationFailed, http_errors.ExpectationFailed),
    (errors.UnsupportedTransferCoding, http_errors.NotImplemented),
    (errors.ForbiddenProxyRequest, http_errors.Forbidden),
    (errors.ParseException, http_errors.BadRequest),
)


def request_error(exc: Exception) -> HTTPException | None:
    """The HTTP error for a request gunicorn could not read (``exc``), or None when ``exc`` is
    not one of those (the app failed)."""
    if isinstance(exc, _APP_FAULTS):
        return None
    for kind, http_error in _REQUEST_ERRORS:
        if isinstance(exc, kind):
            return http_error(f"the request could not be read: {exc}")
    return None


def write_json_error(sock, error: HTTPException) -> None:
    """Answer ``error`` as ``{"error": {"code", "message"}}`` and ``Connection: close``."""
    status, code, message = describe_error(error)
    body = orjson.dumps({"error": {"code": code, "message": message}})
    head = (
        f"HTTP/1.1 {status} {error.name}\r\nConnection: close\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    sock.sendall(head.encode("latin-1") + body)
