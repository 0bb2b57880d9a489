"""HTTP plumbing the routes share: the Flask and request classes, reading bodies within the
limit, the payload kind of a /predict body, query parameters, and JSON answers.

Nothing here knows about models; the routes (service/routes.py, service/v2.py) use these to
turn HTTP into the data plane's calls and back.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Mapping
from functools import partial

import orjson
from flask import Flask, Request, Response
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.routing import MapAdapter
from werkzeug.wsgi import ClosingIterator

from service.catalog import parse_version_text
from service.errors import BadRequest, NotFound, UnsupportedMediaType
from service.front_io import TEARDOWN_AFTER_SEND
from training.store import validate_name

_CHUNK = 64 * 1024


class ServiceRequest(Request):
    """Flask's request, with multipart uploads kept in memory.

    Uploads are bounded by MAX_CONTENT_LENGTH and read whole anyway, so temporary files buy
    nothing; and werkzeug leaves the temporary file of a truncated part unclosed (a
    ResourceWarning at garbage collection), which an in-memory buffer does not have.
    """

    def _get_file_stream(
        self, total_content_length, content_type, filename=None, content_length=None
    ):
        return io.BytesIO()


class ServiceFlask(Flask):
    """Flask, with each request's URL adapter made from what is remembered per host, and,
    under the front, the request's teardown after the answer has left (``wsgi_app``).

    Flask binds the URL map to every request's environ (``Map.bind_to_environ``): it works
    out and validates the host twice, checks for a WebSocket upgrade, lowers and IDNA-encodes
    the server name, ~15 us of a /healthz's ~200 in the server (py-spy), always with the same
    result for the same host. Here the first request from a host (its scheme, Host field and
    server address) goes through Flask's own ``create_url_adapter``, and the validated host
    and server name are remembered (at most ``MAX_HOSTS``, then forgotten all at once, so no
    client can grow them); the next requests from that host get an adapter made from them and
    their own path, method and query, as Flask's would be (tests/service/test_web.py compares
    the two). Flask's own path still serves any configuration this does not cover: a
    ``SERVER_NAME``, ``TRUSTED_HOSTS``, host or subdomain matching, upgrade requests.
    """

    request_class = ServiceRequest
    MAX_HOSTS = 256

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._hosts: dict[tuple, tuple[str, str]] = {}  # host key -> (request.host, server)

    def create_url_adapter(self, request: Request | None) -> MapAdapter | None:
        if request is None or not self._plain_hosts() or "HTTP_UPGRADE" in request.environ:
            return super().create_url_adapter(request)
        environ = request.environ
        scheme = environ["wsgi.url_scheme"]
        key = (scheme, environ.get("HTTP_HOST"), environ.get("SERVER_NAME"))
        key += (environ.get("SERVER_PORT"),)
        known = self._hosts.get(key)
        if known is None:
            adapter = super().create_url_adapter(request)  # validates; raises for a bad host
            if len(self._hosts) >= self.MAX_HOSTS:
                self._hosts.clear()
            self._hosts[key] = (request.host, adapter.server_name)
            return adapter
        request.host = known[0]
        return MapAdapter(
            self.url_map,
            known[1],
            _wsgi_text(environ.get("SCRIPT_NAME")) or "/",
            self.url_map.default_subdomain or "",
            scheme,
            _wsgi_text(environ.get("PATH_INFO")) or "/",
            environ["REQUEST_METHOD"],
            _wsgi_text(environ.get("QUERY_STRING")),
        )

    def wsgi_app(self, environ: dict, start_response) -> Iterable[bytes]:
        """Flask's ``wsgi_app``, except that under a server that sends the answer before it
        closes it (``environ[TEARDOWN_AFTER_SEND]``: the front) the request context is
        popped, and so the teardown functions run, when the server closes the answer, after
        it has left, rather than before it is sent: the client does not wait for the app's
        bookkeeping (the metrics, the access log line: service/access.py). Elsewhere (the
        test client, another server) Flask's own, unchanged."""
        if not environ.get(TEARDOWN_AFTER_SEND):
            return super().wsgi_app(environ, start_response)
        ctx = self.request_context(environ)
        error: BaseException | None = None  # what Flask's own hands the teardown
        try:
            try:
                ctx.push()
                response = self.full_dispatch_request()
            except Exception as exc:
                error = exc
                response = self.handle_exception(exc)
            except BaseException as exc:
                error = exc
                raise
            body = response(environ, start_response)
        except BaseException:
            self._pop_request_context(ctx, error)
            raise
        return ClosingIterator(body, partial(self._pop_request_context, ctx, error))

    def _pop_request_context(self, ctx, error: BaseException | None) -> None:
        if error is not None and self.should_ignore_error(error):
            error = None
        ctx.pop(error)

    def _plain_hosts(self) -> bool:
        """No setting that makes the host part of routing or of its validation."""
        config = self.config
        return (
            config["SERVER_NAME"] is None
            and config["TRUSTED_HOSTS"] is None
            and not self.url_map.host_matching
            and not self.subdomain_matching
        )


def _wsgi_text(value: str | None) -> str | None:
    """A WSGI environ string (bytes as latin-1) as text, as werkzeug decodes it."""
    return None if value is None else value.encode("latin1").decode(errors="replace")


def json_response(document, status: int = 200, headers: Mapping | None = None) -> Response:
    """orjson-encoded JSON (numpy arrays and scalars allowed): cheaper than Flask's jsonify."""
    body = orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY)
    return Response(body, status=status, headers=headers, mimetype="application/json")


def read_body(req: Request, limit: int | None) -> bytes:
    """The whole body of ``req``; ``limit`` is MAX_CONTENT_LENGTH (the app's config).

    Raises werkzeug's ``RequestEntityTooLarge`` (413) for a body over ``limit``.

    Under gunicorn (which ends the input stream at Content-Length itself, or at the last chunk
    of a chunked body, and says so with ``wsgi.input_terminated``):

    * a body whose length is declared and within the limit is one read of the WSGI input: the
      same bytes werkzeug's guarded stream returns in 64 KiB steps through two more wrappers,
      for a third of the time;
    * a chunked body (no length) is read in steps until its end or one byte past the limit:
      werkzeug's ``get_data`` would hand such a body over silently cut to nothing.

    Anything else (a declared length over the limit, another server) goes through werkzeug's
    ``get_data``, which raises 413 for a declared length over the limit.
    """
    environ = req.environ
    length = req.content_length
    if environ.get("wsgi.input_terminated"):
        stream = environ["wsgi.input"]
        if length is not None and (limit is None or length <= limit):
            return stream.read(length)
        if length is None:
            parts, size = [], 0
            while True:
                part = stream.read(_CHUNK if limit is None else min(_CHUNK, limit + 1 - size))
                if not part:
                    return b"".join(parts)
                parts.append(part)
                size += len(part)
                if limit is not None and size > limit:
                    raise RequestEntityTooLarge()
    return req.get_data(cache=False)


def read_payload(req: Request, limit: int | None) -> tuple[str, object]:
    """The body of a /predict request as (payload kind, payload) for
    ``inputs.pixels_from_payload``, chosen by Content-Type; 415 for any other type. ``limit``
    is MAX_CONTENT_LENGTH."""
    mimetype = req.mimetype
    if mimetype == "application/json" or mimetype.endswith("+json"):
        return "json", read_body(req, limit)
    if mimetype == "multipart/form-data":
        return "images", [upload.read() for _, upload in req.files.items(multi=True)]
    if mimetype in ("application/x-npy", "application/npy"):
        return "npy", read_body(req, limit)
    if mimetype.startswith("image/"):
        return "image", read_body(req, limit)
    shown = mimetype or "none"
    raise UnsupportedMediaType(
        f"Content-Type {shown[:80]!r} is not supported; send application/json "
        '({"image": [[...]]} or {"images": [...]}), multipart/form-data with image files, '
        "application/x-npy, or an image/* body"
    )


def version_in_path(name: str, version_text: str) -> int:
    """The version of a ``.../versions/<v>`` path; 404 when it cannot be a version."""
    version = parse_version_text(version_text)
    if version is None:
        raise NotFound(f"no version {version_text[:40]!r} of {name[:80]!r}: versions are integers")
    return version


def parse_pin(args: Mapping) -> tuple[int | None, str | None]:
    """``?version=N`` / ``?alias=NAME`` -> (version, alias); at most one of them."""
    version_text = args.get("version")
    alias = args.get("alias")
    if version_text is not None and alias is not None:
        raise BadRequest("give ?version= or ?alias=, not both", code="invalid_query")
    version = None
    if version_text is not None:
        version = parse_version_text(version_text)
        if version is None:
            raise BadRequest(
                f"version must be a non-negative integer, got {version_text[:40]!r}",
                code="invalid_query",
            )
    if alias is not None:
        validate_name(alias, "alias")
    return version, alias


def parse_flag(args: Mapping, key: str) -> bool:
    """``?key=1/0/true/false/yes/no/on/off`` (or a bare ``?key``) -> bool; 400 otherwise."""
    value = args.get(key)
    if value is None:
        return False
    lowered = value.lower()
    if lowered in ("1", "true", "yes", "on", ""):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise BadRequest(f"?{key}= must be 1/0 or true/false, got {value[:40]!r}", code="invalid_query")
