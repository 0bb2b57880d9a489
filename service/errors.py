"""The service's errors and the one place they become HTTP answers.

Routes and the data plane never build error responses by hand: they raise one of the
``ServiceError`` classes below (or a domain error from ``training``), and ``describe_error``
maps any exception to (status, code, message). ``register_error_handler`` turns that into
``{"error": {"code": ..., "message": ...}}`` — or the Open Inference Protocol's
``{"error": "<message>"}`` under /v2.
"""

from __future__ import annotations

import logging
import re

import orjson
from flask import Flask, Response, g, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from training.errors import BundleInvalid, ConvserveError, DataError, InvalidInput
from training.store import (
    AliasNotFound,
    InvalidName,
    ModelNotFound,
    StoreError,
    VersionNotFound,
)

logger = logging.getLogger("convserve.app")


class ServiceError(ConvserveError):
    """An error with an HTTP status and a stable machine-readable code."""

    status = 500
    code = "internal"

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status


class BadRequest(ServiceError, InvalidInput):
    """Malformed or invalid input: wrong shape, ragged lists, non-numbers, NaN, out of range,
    undecodable image, empty batch."""

    status = 400
    code = "invalid_input"


class PayloadTooLarge(ServiceError):
    """Body over MAX_CONTENT_LENGTH, batch over MAX_BATCH, or an image over the pixel limit."""

    status = 413
    code = "payload_too_large"


class UnsupportedMediaType(ServiceError):
    status = 415
    code = "unsupported_media_type"


class NotFound(ServiceError):
    status = 404
    code = "not_found"


class Unauthorized(ServiceError):
    status = 401
    code = "unauthorized"


class Forbidden(ServiceError):
    status = 403
    code = "forbidden"


class NotReady(ServiceError):
    status = 503
    code = "not_ready"


class StoreUnavailable(ServiceError):
    """The model store directory is gone or unreadable (a volume unmounted under the server)."""

    status = 503
    code = "store_unavailable"


class ModelOutputInvalid(ServiceError):
    """The served model produced a non-finite number: the model's fault, never the client's."""

    status = 500
    code = "model_output_invalid"


# Domain errors (HTTP-free, from training/) -> (status, code), most specific first.
_DOMAIN_ERRORS: tuple[tuple[type[Exception], int, str], ...] = (
    (AliasNotFound, 404, "alias_not_found"),
    (VersionNotFound, 404, "version_not_found"),
    (ModelNotFound, 404, "model_not_found"),
    (InvalidName, 400, "invalid_name"),
    # The requested version exists but cannot be served (corrupt or tampered): a conflict
    # with the store's state, not a crash.
    (BundleInvalid, 409, "model_invalid"),
    (InvalidInput, 400, "invalid_input"),
    (DataError, 400, "invalid_input"),
    (StoreError, 500, "store_error"),
    (ConvserveError, 400, "bad_request"),
)


def describe_error(exc: Exception) -> tuple[int, str, str]:
    """(status, code, message) for any exception; the one place errors become statuses."""
    if isinstance(exc, ServiceError):
        return exc.status, exc.code, exc.message
    for kind, status, code in _DOMAIN_ERRORS:
        if isinstance(exc, kind):
            return status, code, str(exc)
    if isinstance(exc, HTTPException):
        status = exc.code or 500
        code = "payload_too_large" if status == 413 else _snake(exc.name)
        return status, code, exc.description or exc.name
    return 500, "internal", "internal error; the request id is in the X-Request-ID header"


def _snake(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def error_response(document, status: int, headers: dict) -> Response:
    return Response(
        orjson.dumps(document), status=status, headers=headers, mimetype="application/json"
    )


def register_error_handler(app: Flask) -> None:
    """Every exception a request raises ends here as a JSON answer."""

    @app.errorhandler(Exception)
    def handle_error(exc: Exception):
        status, code, message = describe_error(exc)
        if isinstance(exc, RequestEntityTooLarge):
            # werkzeug's own wording names no limit; say which one.
            message = (
                f"the request body is over the limit of {app.config['MAX_CONTENT_LENGTH']} "
                "bytes (MAX_CONTENT_LENGTH), or a multipart body has too many parts"
            )
        if status >= 500 and not isinstance(exc, NotReady):  # readiness logs its own changes
            logger.error(
                "%s while answering %s %s: %s",
                type(exc).__name__,
                request.method,
                request.path,
                message,
                exc_info=exc if code == "internal" else None,
                extra={"fields": {"request_id": g.get("request_id"), "code": code}},
            )
        headers = {}
        if isinstance(exc, HTTPException) and status == 405:
            headers = {k: v for k, v in exc.get_headers() if k.lower() == "allow"}
        if status == 401:
            headers["WWW-Authenticate"] = 'Bearer realm="convserve admin"'
        if request.path.startswith(("/v1/", "/v2/")) or request.path == "/v2":
            # The KServe V1 / TF Serving and Open Inference Protocol shape.
            return error_response({"error": message}, status, headers)
        return error_response({"error": {"code": code, "message": message}}, status, headers)
