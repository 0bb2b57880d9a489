"""Per-request bookkeeping: the request id, the JSON access log line and the request metrics.

A client's ``X-Request-ID`` is echoed when it is short and plain; otherwise one is made up.
Every answer carries it, and so does its access log line.
"""

from __future__ import annotations

import logging
import os
import random
import re
import time

from flask import Flask, Response, g, request

from service.front_io import AFTER_RESPONSE
from service.metrics import ServiceMetrics
from service.registry import ModelRegistry

access_logger = logging.getLogger("convserve.access")

_REQUEST_ID_RE = re.compile(r"[A-Za-z0-9._:/+=-]{1,128}")


def new_request_id() -> str:
    """32 random hex digits (an identifier, not a secret: no system call for it)."""
    return f"{random.getrandbits(128):032x}"


def register_request_hooks(app: Flask, models: ModelRegistry, metrics: ServiceMetrics) -> None:
    """Before each request: per-process start-up, the clock and the request id. After it:
    the X-Request-ID header; at the teardown, which the front runs once the answer has left
    (service/web.py), the metrics and the access log line. The metrics' writes wait longer
    still when the server offers that (service/front_io.py: AFTER_RESPONSE)."""

    # The hooks take the request and ``g`` through their proxies once each: every attribute
    # read or written through a proxy looks the object up again (~0.5 us).
    @app.before_request
    def start_request():
        # Per process, once: the poller starts after the fork.
        models.ensure_started()
        context = g._get_current_object()
        context.started = time.perf_counter()
        metrics.request_started()
        context.in_flight = True
        given = request.environ.get("HTTP_X_REQUEST_ID")
        if given is not None and _REQUEST_ID_RE.fullmatch(given):
            context.request_id = given
        else:
            context.request_id = new_request_id()

    @app.after_request
    def finish_request(response: Response) -> Response:
        # What the answer says and when it was ready; the rest waits for the teardown.
        context = g._get_current_object()
        started = context.get("started")
        context.elapsed = time.perf_counter() - started if started is not None else 0.0
        context.status = response.status_code
        request_id = context.get("request_id") or new_request_id()
        context.request_id = request_id
        response.headers["X-Request-ID"] = request_id
        return response

    @app.teardown_request
    def end_request(exc):
        # Teardown runs whatever happened, so the in-flight gauge never drifts upwards; under
        # the front it runs once the answer has left (service/web.py: ServiceFlask.wsgi_app).
        context = g._get_current_object()
        if context.pop("in_flight", False):
            metrics.request_finished()
        status = context.get("status")
        if status is not None:  # an answer was made (not a failure of the hooks themselves)
            _record_answer(metrics, context, status)
        after_response = request.environ.get(AFTER_RESPONSE)
        if after_response is None:
            metrics.write_pending()
        else:
            after_response(metrics.write_pending)


def _record_answer(metrics: ServiceMetrics, context, status: int) -> None:
    """The request metrics and the access log line of an answered request."""
    current = request._get_current_object()
    rule = current.url_rule
    # Unmatched paths share one label: scanners must not grow the metrics without bound.
    route = rule.rule if rule is not None else "<unmatched>"
    elapsed = context.elapsed
    metrics.observe_request(route, current.method, status, elapsed)
    inference = context.get("inference_model")
    if inference is not None:
        metrics.observe_inference_request(*inference, status, elapsed)
    if access_logger.isEnabledFor(logging.INFO):
        _log_access(context.request_id, status, elapsed)


def mark_inference(model) -> None:
    """Called by the inference routes once the model is chosen: the access log and the
    per-model metrics name ``model``'s name and version."""
    g.model_version = model.version
    g.inference_model = (model.name, model.version)


def _log_access(request_id: str, status: int, elapsed: float) -> None:
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
