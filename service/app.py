"""The Flask application: configuration, routes, one error handler, access logs and metrics.

Run it with gunicorn (``gunicorn -c service/gunicorn.conf.py 'service.app:create_app()'``) or
``convserve serve``. Three thin layers: the routes here parse HTTP and answer it; the
``Predictor`` (service/predictor.py) owns the models; the network computes.

Nothing reads configuration at import time: ``create_app`` takes the defaults, then the
environment, then its ``config`` mapping (the tests' way in).
"""

from __future__ import annotations

import hmac
import io
import logging
import os
import re
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import orjson
from flask import Flask, Request, Response, g, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from service import inputs
from service.body import read_body
from service.errors import (
    BadRequest,
    Forbidden,
    NotFound,
    NotReady,
    ServiceError,
    Unauthorized,
    UnsupportedMediaType,
)
from service.metrics import ServiceMetrics
from service.predictor import Predictions, Predictor
from training.errors import BundleInvalid, ConvserveError, DataError, InvalidInput
from training.store import (
    AliasNotFound,
    InvalidName,
    ModelNotFound,
    ModelStore,
    StoreError,
    VersionNotFound,
    validate_name,
)

logger = logging.getLogger("convserve.app")
access_logger = logging.getLogger("convserve.access")

# ------------------------------------------------------------------------------ configuration

# name -> (default, parser of the environment's string). Documented in docs/SERVING.md.
SETTINGS: dict[str, tuple[object, type]] = {
    "MODEL_STORE": ("model_store", str),
    "MODEL_NAME": ("mnist", str),
    "MODEL_ALIAS": ("production", str),
    "RELOAD_INTERVAL_S": (2.0, float),
    "ADMIN_TOKEN": (None, str),
    "MAX_BATCH": (256, int),
    "MAX_CONTENT_LENGTH": (10 * 1024 * 1024, int),
    "MAX_IMAGE_PIXELS": (25_000_000, int),
    "MODEL_CACHE_SIZE": (4, int),
    "LOG_LEVEL": ("info", str),
}
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


def load_config(config: Mapping | None = None, environ: Mapping | None = None) -> dict:
    """Defaults, then the environment (strings, parsed), then ``config`` (values as they
    are). Raises ValueError naming the setting for a value that cannot work."""
    environ = os.environ if environ is None else environ
    settings = {}
    for key, (default, parse) in SETTINGS.items():
        value = default
        raw = environ.get(key)
        if raw is not None and raw.strip() != "":
            try:
                value = parse(raw.strip())
            except ValueError:
                raise ValueError(f"{key}={raw!r}: expected {parse.__name__}") from None
        settings[key] = value
    extra = dict(config or {})
    settings.update(extra)
    _check_config(settings)
    return settings


def _check_config(settings: dict) -> None:
    def require(condition: bool, key: str, expected: str) -> None:
        if not condition:
            raise ValueError(f"{key}={settings[key]!r}: {expected}")

    for key in ("MAX_BATCH", "MAX_CONTENT_LENGTH", "MAX_IMAGE_PIXELS"):
        value = settings[key]
        require(isinstance(value, int) and not isinstance(value, bool) and value > 0, key, "> 0")
    require(settings["MAX_IMAGE_PIXELS"] >= 28 * 28, "MAX_IMAGE_PIXELS", "at least 784")
    cache = settings["MODEL_CACHE_SIZE"]
    require(isinstance(cache, int) and cache >= 0, "MODEL_CACHE_SIZE", "an integer >= 0")
    interval = settings["RELOAD_INTERVAL_S"]
    require(isinstance(interval, int | float) and interval >= 0, "RELOAD_INTERVAL_S", ">= 0")
    level = str(settings["LOG_LEVEL"]).lower()
    require(level in LOG_LEVELS, "LOG_LEVEL", f"one of {', '.join(LOG_LEVELS)}")
    settings["LOG_LEVEL"] = level
    validate_name(settings["MODEL_NAME"])
    if not settings["ADMIN_TOKEN"]:
        settings["ADMIN_TOKEN"] = None  # empty means unset: /admin/reload stays hidden


# ------------------------------------------------------------------------------ logging


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and the record's ``fields``."""

    def format(self, record: logging.LogRecord) -> str:
        document = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if fields:
            document.update(fields)
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(document, default=str).decode()


class StderrHandler(logging.Handler):
    """Writes to whatever ``sys.stderr`` is at the time (gunicorn's, or pytest's capture)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(self.format(record) + "\n")
        except Exception:
            self.handleError(record)


def configure_logging(level: str) -> None:
    """JSON lines on stderr for the ``convserve`` loggers at ``level``; idempotent, so several
    apps in one process share one handler."""
    root = logging.getLogger("convserve")
    root.setLevel(level.upper())
    if not any(isinstance(handler, StderrHandler) for handler in root.handlers):
        handler = StderrHandler()
        handler.setFormatter(JsonLogFormatter())
        root.addHandler(handler)


# A client's X-Request-ID is echoed only if it is short and plain; otherwise one is made up.
_REQUEST_ID_RE = re.compile(r"[A-Za-z0-9._:/+=-]{1,128}")


# ------------------------------------------------------------------------------ errors


def describe_error(exc: Exception) -> tuple[int, str, str]:
    """(status, code, message) for any exception; the one place errors become statuses."""
    if isinstance(exc, ServiceError):
        return exc.status, exc.code, exc.message
    if isinstance(exc, AliasNotFound):
        return 404, "alias_not_found", str(exc)
    if isinstance(exc, VersionNotFound):
        return 404, "version_not_found", str(exc)
    if isinstance(exc, ModelNotFound):
        return 404, "model_not_found", str(exc)
    if isinstance(exc, InvalidName):
        return 400, "invalid_name", str(exc)
    if isinstance(exc, BundleInvalid):
        # The requested version exists but cannot be served (corrupt or tampered): a conflict
        # with the store's state, not a crash.
        return 409, "model_invalid", str(exc)
    if isinstance(exc, InvalidInput | DataError):
        return 400, "invalid_input", str(exc)
    if isinstance(exc, StoreError):
        return 500, "store_error", str(exc)
    if isinstance(exc, ConvserveError):
        return 400, "bad_request", str(exc)
    if isinstance(exc, HTTPException):
        status = exc.code or 500
        code = "payload_too_large" if status == 413 else _snake(exc.name)
        return status, code, exc.description or exc.name
    return 500, "internal", "internal error; the request id is in the X-Request-ID header"


def _snake(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


# ------------------------------------------------------------------------------ app state


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


@dataclass
class ServiceState:
    """What the routes share: settings, store, predictor, metrics. In ``app.extensions``."""

    settings: dict
    store: ModelStore
    predictor: Predictor
    metrics: ServiceMetrics


def json_response(document, status: int = 200, headers: Mapping | None = None) -> Response:
    """orjson-encoded JSON (numpy arrays and scalars allowed): cheaper than Flask's jsonify."""
    body = orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY)
    return Response(body, status=status, headers=headers, mimetype="application/json")


def parse_pin(args: Mapping) -> tuple[int | None, str | None]:
    """``?version=N`` / ``?alias=NAME`` -> (version, alias); at most one of them."""
    version_text = args.get("version")
    alias = args.get("alias")
    if version_text is not None and alias is not None:
        raise BadRequest("give ?version= or ?alias=, not both", code="invalid_query")
    version = None
    if version_text is not None:
        if not (version_text.isascii() and version_text.isdigit() and len(version_text) <= 18):
            raise BadRequest(
                f"version must be a non-negative integer, got {version_text[:40]!r}",
                code="invalid_query",
            )
        version = int(version_text)
    if alias is not None:
        validate_name(alias, "alias")
    return version, alias


def parse_flag(args: Mapping, key: str) -> bool:
    value = args.get(key)
    if value is None:
        return False
    lowered = value.lower()
    if lowered in ("1", "true", "yes", "on", ""):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise BadRequest(f"?{key}= must be 1/0 or true/false, got {value[:40]!r}", code="invalid_query")


# ------------------------------------------------------------------------------ the factory


def create_app(config: Mapping | None = None) -> Flask:
    """Build the app: settings (defaults < environment < ``config``), logging, the store, the
    predictor with its first load (a failure leaves the app alive but not ready), routes."""
    settings = load_config(config)
    configure_logging(settings["LOG_LEVEL"])
    app = Flask(__name__)
    app.request_class = ServiceRequest
    app.config.update(settings)  # MAX_CONTENT_LENGTH is also Flask's own limit on bodies

    metrics = ServiceMetrics()
    store = ModelStore(settings["MODEL_STORE"])
    predictor = Predictor(
        store,
        settings["MODEL_NAME"],
        settings["MODEL_ALIAS"],
        reload_interval_s=settings["RELOAD_INTERVAL_S"],
        cache_size=settings["MODEL_CACHE_SIZE"],
        max_batch=settings["MAX_BATCH"],
        max_image_pixels=settings["MAX_IMAGE_PIXELS"],
        hooks=metrics,
    )
    # The first load happens here, in whichever process builds the app (the gunicorn worker,
    # the test): no thread is started, so building it in a pre-fork master is safe too.
    predictor.check_for_update(force=True)
    state = ServiceState(settings, store, predictor, metrics)
    app.extensions["convserve"] = state

    _register_request_hooks(app, state)
    _register_error_handler(app)
    _register_routes(app, state)

    from service.v2 import v2_blueprint

    app.register_blueprint(v2_blueprint)
    from service.ui import ui_blueprint

    app.register_blueprint(ui_blueprint)  # GET / (the web page), /ui/models, /ui/static/
    return app


def _register_request_hooks(app: Flask, state: ServiceState) -> None:
    predictor, metrics = state.predictor, state.metrics

    @app.before_request
    def start_request():
        # Per process, once (cheap pid check after that): the poller starts after the fork.
        predictor.ensure_started()
        g.started = time.perf_counter()
        given = request.headers.get("X-Request-ID")
        if given is not None and _REQUEST_ID_RE.fullmatch(given):
            g.request_id = given
        else:
            g.request_id = os.urandom(16).hex()

    @app.after_request
    def finish_request(response: Response) -> Response:
        started = g.get("started")
        elapsed = time.perf_counter() - started if started is not None else 0.0
        rule = request.url_rule
        # Unmatched paths share one label: scanners must not grow the metrics without bound.
        route = rule.rule if rule is not None else "<unmatched>"
        status = response.status_code
        metrics.observe_request(route, request.method, status, elapsed)
        request_id = g.get("request_id") or os.urandom(16).hex()
        response.headers["X-Request-ID"] = request_id
        if access_logger.isEnabledFor(logging.INFO):
            access_logger.info(
                "%s %s %s",
                request.method,
                request.path,
                status,
                extra={
                    "fields": {
                        "event": "access",
                        "request_id": request_id,
                        "method": request.method,
                        "path": request.path,
                        "status": status,
                        "duration_ms": round(elapsed * 1000, 3),
                        "model_version": g.get("model_version"),
                        "pid": os.getpid(),
                    }
                },
            )
        return response


def _register_error_handler(app: Flask) -> None:
    @app.errorhandler(Exception)
    def handle_error(exc: Exception):
        status, code, message = describe_error(exc)
        if isinstance(exc, RequestEntityTooLarge):
            # werkzeug's own wording names no limit; say which one.
            message = (
                f"the request body is over the limit of {app.config['MAX_CONTENT_LENGTH']} "
                "bytes (MAX_CONTENT_LENGTH), or a multipart body has too many parts"
            )
        if status >= 500:
            logger.error(
                "%s while answering %s %s",
                type(exc).__name__,
                request.method,
                request.path,
                exc_info=exc if code == "internal" else None,
                extra={"fields": {"request_id": g.get("request_id")}},
            )
        headers = {}
        if isinstance(exc, HTTPException) and status == 405:
            headers = {k: v for k, v in exc.get_headers() if k.lower() == "allow"}
        if status == 401:
            headers["WWW-Authenticate"] = 'Bearer realm="convserve admin"'
        if request.path.startswith("/v2/") or request.path == "/v2":
            # The Open Inference Protocol's error shape.
            return json_response({"error": message}, status, headers)
        return json_response({"error": {"code": code, "message": message}}, status, headers)


# ------------------------------------------------------------------------------ routes


def read_payload(req: Request, limit: int | None) -> tuple[str, object]:
    """The body of ``req`` as (payload kind, payload) for ``Predictor.pixels_from``, chosen by
    Content-Type; 415 for any other type. ``limit`` is MAX_CONTENT_LENGTH."""
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


def predictions_document(result: Predictions, pixels: np.ndarray, *, explain: bool) -> dict:
    """The /predict answer: per image, in order, the label, its probability and all of them."""
    probabilities = result.probabilities
    predictions = []
    for row, (index, label) in enumerate(zip(result.top, result.labels, strict=True)):
        scores = probabilities[row]
        prediction = {"label": label, "confidence": scores[index], "probabilities": scores}
        if explain:
            prediction["input_png"] = inputs.pixels_to_png_data_url(pixels[row])
            prediction["input_pixels"] = np.ascontiguousarray(pixels[row]).reshape(-1)
        predictions.append(prediction)
    model = result.model
    return {"model": {"name": model.name, "version": model.version}, "predictions": predictions}


def _register_routes(app: Flask, state: ServiceState) -> None:
    from service.openapi import openapi_document, route_index

    settings, predictor, metrics, store = (
        state.settings,
        state.predictor,
        state.metrics,
        state.store,
    )
    healthy_body = orjson.dumps({"status": "ok"})

    # The JSON index of the routes; GET / is the web page (service/ui.py).
    @app.get("/api", endpoint="index")
    def index():
        return json_response(route_index(app))

    @app.get("/healthz")
    def healthz():
        """Liveness: the process answers. Independent of the model on purpose."""
        return Response(healthy_body, mimetype="application/json")

    @app.get("/readyz")
    def readyz():
        """Readiness: a verified, warmed-up model is being served."""
        served = predictor.served
        if served is None:
            raise NotReady(predictor.not_ready_message())
        g.model_version = served.version
        return json_response(
            {"status": "ready", "model": {"name": served.name, "version": served.version}}
        )

    @app.post("/predict")
    def predict():
        # The request object itself: each attribute read through Flask's proxy costs ~0.5 us,
        # and its max_content_length two more proxy lookups (the app's config is at hand).
        req = request._get_current_object()
        version = alias = None
        explain = False
        if req.environ.get("QUERY_STRING"):  # most requests have none: skip parsing it
            version, alias = parse_pin(req.args)
            explain = parse_flag(req.args, "explain")
        pixels = predictor.pixels_from(*read_payload(req, app.config["MAX_CONTENT_LENGTH"]))
        result = predictor.predict(predictor.model_for(version, alias), pixels)
        g.model_version = result.model.version
        metrics.count_predictions(result.model.name, result.labels)
        return json_response(predictions_document(result, pixels, explain=explain))

    @app.get("/models")
    def list_models():
        served = predictor.served
        models = []
        for name in store.models():
            entry = {"name": name, "versions": store.versions(name)}
            try:
                entry["aliases"] = store.aliases(name)
            except StoreError as exc:
                entry["aliases"] = {}
                entry["error"] = str(exc)
            if name == predictor.name:
                entry["served_version"] = served.version if served else None
            models.append(entry)
        return json_response(
            {"models": models, "serving": {"name": predictor.name, **predictor.status()}}
        )

    @app.get("/models/<name>")
    def show_model(name: str):
        versions = store.versions(name)
        aliases = store.aliases(name)
        by_version: dict[int, list[str]] = {}
        for alias, target in aliases.items():
            by_version.setdefault(target, []).append(alias)
        served = predictor.served if name == predictor.name else None
        rows = []
        for version in versions:
            row = {"version": version, "aliases": by_version.get(version, [])}
            try:
                manifest = store.manifest(name, version)
                for key in ("created", "architecture", "note", "metrics", "class_labels"):
                    row[key] = manifest.get(key)
            except (BundleInvalid, ModelNotFound) as exc:
                row["error"] = str(exc)
            row["served"] = served is not None and served.version == version
            rows.append(row)
        document = {"name": name, "versions": rows, "aliases": aliases}
        if name == predictor.name:
            document["serving"] = predictor.status()
        return json_response(document)

    @app.get("/models/<name>/versions/<version_text>")
    def show_version(name: str, version_text: str):
        if not (version_text.isascii() and version_text.isdigit() and len(version_text) <= 18):
            raise NotFound(f"no version {version_text[:40]!r} of {name!r}: versions are integers")
        version = store.resolve(name, version=int(version_text))
        manifest = store.manifest(name, version)
        served = predictor.served if name == predictor.name else None
        error = predictor.last_error if name == predictor.name else None
        return json_response(
            {
                "name": name,
                "version": version,
                "aliases": sorted(a for a, v in store.aliases(name).items() if v == version),
                "served": served is not None and served.version == version,
                # Set when this version was the one last refused as a reload.
                "reload_error": error if error and error.get("version") == version else None,
                "manifest": manifest,
            }
        )

    @app.post("/admin/reload")
    def admin_reload():
        token = settings["ADMIN_TOKEN"]
        if token is None:
            # Without a token the route does not exist, as far as clients can tell.
            raise NotFound("The requested URL was not found on the server.")
        header = request.headers.get("Authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            raise Unauthorized("send Authorization: Bearer <ADMIN_TOKEN>")
        if not hmac.compare_digest(given.strip().encode(), token.encode()):
            raise Forbidden("wrong admin token")
        outcome = predictor.check_for_update(force=True)
        if outcome["error"]:
            raise ServiceError(
                f"reload refused, still serving version {outcome['served_version']}: "
                f"{outcome['error']}",
                code="reload_failed",
                status=409,
            )
        return json_response(outcome)

    @app.get("/metrics")
    def metrics_route():
        body, content_type = metrics.render()
        return Response(body, content_type=content_type)

    document = openapi_document(settings)

    @app.get("/openapi.json")
    def openapi():
        return json_response(document)
