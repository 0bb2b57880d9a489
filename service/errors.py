"""HTTP-free errors the service raises, each with the status and code one handler maps to JSON.

Routes never build error responses by hand: they raise one of these (or a domain error from
``training``) and ``service.app`` turns it into ``{"error": {"code": ..., "message": ...}}``
(the V2 routes use their own ``{"error": "<message>"}`` shape).
"""

from training.errors import ConvserveError, InvalidInput


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
