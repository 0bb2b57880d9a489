"""Reading a request body whole, within MAX_CONTENT_LENGTH, for the routes that take one.

Shared by ``/predict`` and the V2 ``infer`` route so both answer a body over the limit the same
way: 413, whether its length was declared or it came chunked.
"""

from __future__ import annotations

from flask import Request
from werkzeug.exceptions import RequestEntityTooLarge

_CHUNK = 64 * 1024


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
