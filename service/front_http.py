"""Reading a request's head for the HTTP front (service/front.py) with httptools: llhttp, the
C parser of Node.js that uvicorn uses, instead of gunicorn's pure-Python one.

Only the head (request line and header fields) is parsed here; everything after it stays
gunicorn's: the header policy (Expect, X-Forwarded-* from trusted proxies, repeated singleton
fields, underscores), the body readers (Content-Length, chunked, limits), keep-alive and the
error answers (400, 414, 431, 501 by exception type). The limits are gunicorn's settings,
checked before the parser sees a byte: ``limit_request_line``, ``limit_request_fields``,
``limit_request_field_size``. llhttp is strict where gunicorn is: CRLF line ends only, no
obsolete line folding, no Content-Length beside Transfer-Encoding; it knows the standard
methods only, so an invented one is a 400 here rather than the app's 405.

Why: a /predict's head took ~40 us of CPU in gunicorn's parser (~7 % of the request), ~10 us
here (docs/BENCHMARKS.md, "The HTTP front").
"""

from __future__ import annotations

import httptools
from gunicorn.http.errors import (
    InvalidHeader,
    InvalidHTTPVersion,
    InvalidRequestLine,
    InvalidRequestMethod,
    LimitRequestHeaders,
    LimitRequestLine,
)
from gunicorn.http.message import RFC9112_TARGET_INVALID, Request
from gunicorn.http.parser import RequestParser
from gunicorn.util import split_request_uri

_VERSIONS = {"1.1": (1, 1), "1.0": (1, 0)}


class _Head:
    """httptools' callbacks: what the head holds."""

    __slots__ = ("url", "fields", "complete")

    def __init__(self):
        self.url = b""
        self.fields: list[tuple[bytes, bytes]] = []
        self.complete = False

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.fields.append((name, value))

    def on_headers_complete(self) -> None:
        self.complete = True


class FrontRequest(Request):
    """gunicorn's request, its head read by httptools (module docstring)."""

    def __init__(self, cfg, unreader, peer_addr, req_number=1):
        # What gunicorn's constructors work out from the config before parsing (limits, the
        # scheme, whether its C parser is used) is the same for every request of a worker:
        # copied from a template made once per config by gunicorn's own code, instead of
        # a dozen config lookups per request.
        self.__dict__.update(_initial_attributes(cfg))
        self.peer_addr = self.remote_addr = peer_addr
        self.unreader, self.req_number = unreader, req_number
        self.headers, self.trailers = [], []
        unused = self.parse(unreader)
        unreader.unread(unused)
        self.set_body_reader()

    def parse(self, unreader) -> bytes:
        """Read the head from ``unreader``, set the request line and headers; returns the
        bytes read past the head (the body's start, a pipelined request)."""
        buf = bytearray()
        self.read_into(unreader, buf, stop=True)  # nothing at all: the client is done
        while (end := buf.find(b"\r\n\r\n")) < 0:
            self._check_line_limit(buf)
            if buf.count(b"\n") != buf.count(b"\r\n"):  # the head would never end
                raise InvalidHeader("bare LF as line terminator", req=self)
            if len(buf) > self.max_buffer_headers + max(self.limit_request_line, 0):
                raise LimitRequestHeaders("max buffer headers")
            self.read_into(unreader, buf)
        end += 4
        head = bytes(buf[:end])
        self._check_line_limit(head)
        fields = _parse_head(head, self)
        self._take_request_line(fields[0], fields[1])
        self._take_headers(fields[2])
        return bytes(buf[end:])

    def _check_line_limit(self, data: bytes | bytearray) -> None:
        start = 2 if data[:2] == b"\r\n" else 0  # RFC 9112 2.2: one empty line may lead
        line_end = data.find(b"\r\n", start)
        length = (len(data) if line_end < 0 else line_end) - start
        if 0 < self.limit_request_line < length:
            raise LimitRequestLine(length, self.limit_request_line)

    def _take_request_line(self, method: str, target_and_version: tuple[str, str]) -> None:
        target, version = target_and_version
        self.method = method
        self.uri = target
        if not target or RFC9112_TARGET_INVALID.search(target):
            raise InvalidRequestLine(target)
        try:
            parts = split_request_uri(target)
        except ValueError:
            raise InvalidRequestLine(target) from None
        self.path, self.query = parts.path or "", parts.query or ""
        self.fragment = parts.fragment or ""
        if version not in _VERSIONS:
            raise InvalidHTTPVersion(version)
        self.version = _VERSIONS[version]

    def _take_headers(self, fields: list[tuple[bytes, bytes]]) -> None:
        if len(fields) > self.limit_request_fields:
            raise LimitRequestHeaders("limit request headers fields")
        scheme_state, seen = [False], set()
        secure_scheme_headers, forwarder_headers = self._peer_trusted_for_forwarded()
        headers = []
        for raw_name, raw_value in fields:
            if len(raw_name) + len(raw_value) + 2 > self.limit_request_field_size:
                raise LimitRequestHeaders("limit request headers fields size")
            kept = self._apply_header_policy(  # gunicorn's own, as for its C parser
                raw_name.decode("latin-1").upper(),
                raw_value.decode("latin-1"),
                scheme_state,
                seen,
                secure_scheme_headers,
                forwarder_headers,
            )
            if kept is not None:
                headers.append(kept)
        self.headers = headers

    def _peer_trusted_for_forwarded(self):
        """gunicorn's answer, remembered per peer address: it is the same for every request
        of a connection, and gunicorn works it out with ``ipaddress`` each time."""
        if not isinstance(self.peer_addr, tuple):
            return super()._peer_trusted_for_forwarded()
        key = (id(self.cfg), self.peer_addr[0])
        trusted = _TRUSTED.get(key)
        if trusted is None:
            if len(_TRUSTED) >= 1024:
                _TRUSTED.clear()  # many peers, no proxy in front: bounded, recomputed
            trusted = _TRUSTED[key] = super()._peer_trusted_for_forwarded()
        return trusted


# (id of the gunicorn config, peer address) -> (secure scheme headers, forwarder headers).
_TRUSTED: dict = {}


class _Unparsed(Request):
    """gunicorn's request constructors without the parsing: what they set from the config."""

    def parse(self, unreader) -> bytes:
        return b""

    def set_body_reader(self) -> None:
        pass


class _NoInput:
    def unread(self, data: bytes) -> None:
        pass


_INITIAL: dict = {}  # gunicorn config -> a request's attributes before parsing


def _initial_attributes(cfg) -> dict:
    initial = _INITIAL.get(cfg)
    if initial is None:
        if len(_INITIAL) >= 8:  # a config per (re)load of the worker: a handful at most
            _INITIAL.clear()
        initial = _INITIAL[cfg] = vars(_Unparsed(cfg, _NoInput(), None)).copy()
    return initial


def _parse_head(head: bytes, request: FrontRequest):
    """``head`` (request line, fields, blank line) -> (method, (target, version), fields),
    or gunicorn's exception for a malformed one."""
    found = _Head()
    parser = httptools.HttpRequestParser(found)
    try:
        parser.feed_data(head)
    except httptools.HttpParserUpgrade:
        pass  # the head is complete; upgrades are not served, the app answers normally
    except httptools.HttpParserInvalidMethodError:
        raise InvalidRequestMethod(head.split(b" ", 1)[0][:32].decode("latin-1")) from None
    except httptools.HttpParserError as exc:
        raise InvalidHeader(str(exc), req=request) from None
    if not found.complete:
        raise InvalidHeader("incomplete request head", req=request)
    target = found.url.decode("latin-1")
    return parser.get_method().decode("ascii"), (target, parser.get_http_version()), found.fields


class FrontParser(RequestParser):
    """gunicorn's request parser (keep-alive, body draining), making ``FrontRequest``s."""

    mesg_class = FrontRequest
