"""The front's request-head parser (service/front_http.py: httptools) reads what gunicorn's own
parser reads, and refuses what it refuses with the same error (so the same status), for a
table of well-formed and malformed heads; plus where the two differ on purpose."""

from __future__ import annotations

import pytest
from gunicorn import http
from gunicorn.config import Config
from gunicorn.http import errors

from service.front_http import FrontParser

BODY = b'{"image": [[0]]}'
FIELDS = ("method", "uri", "path", "query", "fragment", "version", "headers", "scheme")


def head(*lines: bytes, body: bytes = b"") -> bytes:
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def post(*extra: bytes) -> bytes:
    return head(
        b"POST /predict?version=1 HTTP/1.1",
        b"Host: 127.0.0.1:8000",
        b"Content-Type: application/json",
        b"Content-Length: %d" % len(BODY),
        *extra,
        body=BODY,
    )


ACCEPTED = {
    "POST with a body": post(),
    "GET, HTTP/1.0": head(b"GET /healthz HTTP/1.0"),
    "one empty line first": b"\r\n" + head(b"GET /healthz HTTP/1.1", b"Host: x"),
    "Expect: 100-continue": post(b"Expect: 100-continue"),
    "X-Forwarded-Proto from a trusted peer": post(b"X-Forwarded-Proto: https"),
    "repeated list field": head(b"GET / HTTP/1.1", b"Accept: a", b"Accept: b"),
    "percent-encoded path and fragment-less query": head(b"GET /a%20b?q=%2F&x HTTP/1.1"),
    "absolute-form target": head(b"GET http://x/predict?a=1 HTTP/1.1", b"Host: x"),
    "chunked body": head(
        b"POST /predict HTTP/1.1", b"Transfer-Encoding: chunked", body=b"5\r\nhello\r\n0\r\n\r\n"
    ),
    "empty header value": head(b"GET / HTTP/1.1", b"X-Empty: "),
    "header value with tabs and spaces": head(b"GET / HTTP/1.1", b"X-Spaced: a \t b"),
    "a path under a mount point": head(b"GET /api/healthz?x=1 HTTP/1.1", b"Host: x:81"),
    # A trusted proxy (forwarded_allow_ips) may set SCRIPT_NAME (gunicorn's forwarder_headers).
    "SCRIPT_NAME from a trusted proxy": head(b"GET /api/healthz HTTP/1.1", b"SCRIPT_NAME: /a"),
}

REFUSED = {
    "no version": (head(b"GET /"), errors.ParseException),
    "HTTP/2.0 in HTTP/1 framing": (head(b"GET / HTTP/2.0"), errors.InvalidHTTPVersion),
    "space in a field name": (head(b"GET / HTTP/1.1", b"Ho st: x"), errors.ParseException),
    "control character in a value": (
        head(b"GET / HTTP/1.1", b"X-A: a\x01b"),
        errors.ParseException,
    ),
    "obsolete line folding": (
        head(b"GET / HTTP/1.1", b"X-A: a", b"  folded"),
        errors.ParseException,
    ),
    "bare LF line ends": (b"GET / HTTP/1.1\nHost: x\n\n", errors.ParseException),
    "Content-Length and Transfer-Encoding": (
        post(b"Transfer-Encoding: chunked"),
        errors.ParseException,
    ),
    "two Content-Lengths": (post(b"Content-Length: 3"), errors.ParseException),
    "Expect: something else": (post(b"Expect: magic"), errors.ExpectationFailed),
    "request line over limit_request_line": (
        head(b"GET /" + b"a" * 5000 + b" HTTP/1.1"),
        errors.LimitRequestLine,
    ),
    "more fields than limit_request_fields": (
        head(b"GET / HTTP/1.1", *[b"X-F%d: v" % i for i in range(101)]),
        errors.LimitRequestHeaders,
    ),
    "a field over limit_request_field_size": (
        head(b"GET / HTTP/1.1", b"X-Big: " + b"v" * 9000),
        errors.LimitRequestHeaders,
    ),
    "a head that never ends": (b"GET / HTTP/1.1\r\nX-A: " + b"v" * 900_000, errors.ParseException),
}


class Source:
    """A socket that hands the bytes over in pieces of ``step`` (as a slow client would)."""

    def __init__(self, data: bytes, step: int = 1 << 20):
        self.data, self.step = data, step

    def recv(self, size: int) -> bytes:
        piece, self.data = self.data[: min(size, self.step)], self.data[min(size, self.step) :]
        return piece


def read(parser_class, data: bytes, step: int = 1 << 20):
    request = next(parser_class(Config(), Source(data, step), ("127.0.0.1", 40000)))
    body = request.body.read()
    return {field: getattr(request, field) for field in FIELDS} | {
        "body": body,
        "expect_100": request._expected_100_continue,
        "close": request.should_close(),
    }


@pytest.mark.parametrize("case", sorted(ACCEPTED))
@pytest.mark.parametrize("step", [1 << 20, 7])
def test_well_formed_heads_read_as_gunicorn_reads_them(case, step):
    ours = read(FrontParser, ACCEPTED[case], step)
    assert ours == read(http.RequestParser, ACCEPTED[case], step)


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_malformed_heads_are_refused_like_gunicorn_refuses_them(case):
    data, expected = REFUSED[case]
    with pytest.raises(errors.ParseException) as gunicorns:
        read(http.RequestParser, data)
    with pytest.raises(expected) as ours:
        read(FrontParser, data)
    # The same exception type, so gunicorn's handle_error answers the same status.
    if expected is not errors.ParseException:
        assert type(ours.value) is type(gunicorns.value)


def small_limits() -> Config:
    config = Config()
    config.set("limit_request_line", 40)
    config.set("limit_request_fields", 3)
    config.set("limit_request_field_size", 60)
    return config


@pytest.mark.parametrize(
    "data",
    [
        head(b"GET /short HTTP/1.1", b"Host: x"),
        head(b"GET /" + b"a" * 40 + b" HTTP/1.1", b"Host: x"),
        head(b"GET / HTTP/1.1", b"Host: x", b"A: 1", b"B: 2", b"C: 3"),
        head(b"GET / HTTP/1.1", b"Host: " + b"x" * 60),
    ],
)
def test_the_configured_limits_hold_as_in_gunicorn(data):
    """The limits FrontRequest copies from a per-config template are the config's own: the
    same attributes as gunicorn's request, the same refusals."""
    requests = {}
    for parser_class in (http.RequestParser, FrontParser):
        try:
            request = next(parser_class(small_limits(), Source(data), ("127.0.0.1", 40000)))
        except errors.ParseException as exc:
            requests[parser_class] = type(exc)
        else:
            requests[parser_class] = {
                name: value
                for name, value in vars(request).items()
                if name not in ("cfg", "unreader", "body")
            }
    assert requests[FrontParser] == requests[http.RequestParser]


def test_pipelined_requests_are_read_one_after_the_other():
    data = head(b"GET /a HTTP/1.1", b"Host: x") + post() + head(b"GET /b HTTP/1.1", b"Host: x")
    parser = FrontParser(Config(), Source(data, 13), ("127.0.0.1", 40000))
    paths = []
    for request in parser:
        paths.append((request.path, request.body.read()))
        if len(paths) == 3:
            break
    assert paths == [("/a", b""), ("/predict", BODY), ("/b", b"")]


def test_an_invented_method_is_a_bad_request_here():
    """Where the two differ on purpose: llhttp knows the standard methods only (gunicorn
    passes an invented one to the app, which answers 405)."""
    with pytest.raises(errors.InvalidRequestMethod):
        read(FrontParser, head(b"FROB / HTTP/1.1"))
    assert read(http.RequestParser, head(b"FROB / HTTP/1.1"))["method"] == "FROB"


class Sent:
    """A client socket that keeps what the server sends (the "100 Continue")."""

    def __init__(self):
        self.sent = b""

    def send(self, data: bytes) -> int:
        self.sent += data
        return len(data)


# The objects and callbacks differ by identity; everything else must be equal.
NOT_COMPARED = {"wsgi.errors", "wsgi.input", "gunicorn.socket", "wsgi.early_hints"}


@pytest.mark.parametrize("case", sorted(ACCEPTED))
def test_the_environ_is_the_one_gunicorn_makes(case, monkeypatch):
    """service/front_io.py's ``EnvironMaker`` against gunicorn's own ``wsgi.create``, for every
    well-formed head above, with and without a SCRIPT_NAME."""
    from gunicorn.http import wsgi

    from service.front_io import EnvironMaker, FrontResponse

    listener = ("127.0.0.1", 8000)
    client = ("127.0.0.1", 40000)
    for script_name in ("", "/api"):
        monkeypatch.setenv("SCRIPT_NAME", script_name)
        if script_name and not read(FrontParser, ACCEPTED[case])["path"].startswith("/api"):
            continue
        maker = EnvironMaker(Config(), listener, {"convserve.test": 1})
        request = next(FrontParser(Config(), Source(ACCEPTED[case]), client))
        ours_sent, theirs_sent = Sent(), Sent()
        _, ours = maker.create(request, ours_sent, client, listener)
        _, theirs = wsgi.create(request, theirs_sent, client, listener, Config(), FrontResponse)
        assert ours.pop("convserve.test") == 1 and ours.pop("wsgi.multithread") is True
        theirs.pop("wsgi.multithread")
        assert {k: v for k, v in ours.items() if k not in NOT_COMPARED} == {
            k: v for k, v in theirs.items() if k not in NOT_COMPARED
        }
        assert ours_sent.sent == theirs_sent.sent  # "100 Continue" when asked, once
        if script_name and case == "a path under a mount point":
            assert (ours["SCRIPT_NAME"], ours["PATH_INFO"]) == ("/api", "/healthz")
