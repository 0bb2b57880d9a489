"""The service's own JSON API, as a Blueprint: health, /predict, the model catalog, admin, metrics.

Routes only translate HTTP: they parse the query and body kind (service/web.py), call the data
plane (service/dataplane.py) or the catalog (service/catalog.py), and encode the answer.
Errors are raised, never built here: service/errors.py maps every exception to its answer.
The V2 protocol's routes are in service/v2.py, the pages in service/ui.py.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

import numpy as np
import orjson
from flask import Blueprint, Response, current_app, g, request

from service.access import mark_inference
from service.batching import BATCH
from service.catalog import Catalog
from service.dataplane import DataPlane, Predictions
from service.draining import is_draining
from service.errors import Forbidden, NotFound, NotReady, ServiceError, Unauthorized
from service.inputs import pixels_to_png_data_url
from service.metrics import ServiceMetrics
from service.openapi import route_index
from service.predictor import Predictor
from service.registry import ModelRegistry
from service.web import json_response, parse_flag, parse_pin, read_payload
from training.store import ModelStore

api_blueprint = Blueprint("api", __name__)

_HEALTHY_BODY = orjson.dumps({"status": "ok"})


@dataclass
class ServiceState:
    """What the routes share, in ``app.extensions["convserve"]``."""

    settings: dict
    store: ModelStore
    models: ModelRegistry
    predictor: Predictor  # the default model's (MODEL_NAME)
    dataplane: DataPlane
    catalog: Catalog
    metrics: ServiceMetrics
    openapi: dict


def service_state() -> ServiceState:
    return current_app.extensions["convserve"]


@api_blueprint.get("/api", endpoint="index")
def index():
    """The JSON index of the routes; GET / is the web page (service/ui.py)."""
    return json_response(route_index(current_app))


@api_blueprint.get("/healthz")
def healthz():
    """Liveness: the process answers. Independent of the model on purpose."""
    return Response(_HEALTHY_BODY, mimetype="application/json")


@api_blueprint.get("/readyz")
def readyz():
    """Readiness: every model this server serves has a verified, warmed-up version loaded,
    and the server is not draining. Changes of state are logged once, not every probe."""
    models = service_state().models
    problem = None
    if not models.ready:
        problem = models.not_ready_message()
    elif is_draining():
        problem = "draining: this server is shutting down and takes no new work"
    models.readiness.observe(problem)
    if problem is not None:
        raise NotReady(problem)
    default = models.default.served
    g.model_version = default.version
    return json_response(
        {
            "status": "ready",
            "model": {"name": default.name, "version": default.version},
            "models": models.versions_served(),
        }
    )


@api_blueprint.post("/predict", defaults={"name": None})
@api_blueprint.post("/models/<name>/predict")
def predict(name: str | None):
    # The request object itself: each attribute read through Flask's proxy costs ~0.5 us.
    req = request._get_current_object()
    dataplane = service_state().dataplane
    version = alias = None
    explain = False
    if req.environ.get("QUERY_STRING"):  # most requests have none: skip parsing it
        version, alias = parse_pin(req.args)
        explain = parse_flag(req.args, "explain")
    model = dataplane.model(name, version, alias)
    mark_inference(model)
    payload = read_payload(req, current_app.config["MAX_CONTENT_LENGTH"])
    pixels = dataplane.pixels(model, *payload)
    result = dataplane.infer(model, pixels, batch=req.environ.get(BATCH))
    return json_response(predictions_document(result, pixels, explain=explain))


def predictions_document(result: Predictions, pixels: np.ndarray, *, explain: bool) -> dict:
    """The /predict answer: per image, in order, the label, its probability and all of them,
    and whether it looks like a digit at all: ``not_a_digit`` (bool) and ``ood_score`` (> 1:
    not a digit), both null when the version has no detector (unavailable, never made up);
    with ``explain``, the 28x28 pixels the model saw (as numbers and as a PNG data URL)."""
    probabilities = result.probabilities
    flags = result.not_a_digit.tolist() if result.ood_available else None
    scores = result.ood_score.tolist() if result.ood_available else None
    predictions = []
    for row, (index, label) in enumerate(zip(result.top, result.labels, strict=True)):
        row_probabilities = probabilities[row]
        prediction = {
            "label": label,
            "confidence": row_probabilities[index],
            "probabilities": row_probabilities,
            "not_a_digit": None if flags is None else flags[row],
            "ood_score": None if scores is None else scores[row],
        }
        if explain:
            prediction["input_png"] = pixels_to_png_data_url(pixels[row])
            prediction["input_pixels"] = np.ascontiguousarray(pixels[row]).reshape(-1)
        predictions.append(prediction)
    model = result.model
    return {"model": {"name": model.name, "version": model.version}, "predictions": predictions}


@api_blueprint.get("/models")
def list_models():
    return json_response(service_state().catalog.models_document())


@api_blueprint.get("/models/<name>")
def show_model(name: str):
    return json_response(service_state().catalog.model_document(name))


@api_blueprint.get("/models/<name>/versions/<version_text>")
def show_version(name: str, version_text: str):
    return json_response(service_state().catalog.version_document(name, version_text))


@api_blueprint.post("/admin/reload")
def admin_reload():
    state = service_state()
    token = state.settings["ADMIN_TOKEN"]
    if token is None:
        # Without a token the route does not exist, as far as clients can tell.
        raise NotFound("The requested URL was not found on the server.")
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        raise Unauthorized("send Authorization: Bearer <ADMIN_TOKEN>")
    if not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise Forbidden("wrong admin token")
    outcomes = state.models.check_all(force=True)  # this worker, now
    workers = state.models.broadcast.broadcast()  # then every other worker, confirmed
    refused = {name: outcome for name, outcome in outcomes.items() if outcome["error"]}
    if refused:
        raise ServiceError(
            "reload refused: "
            + "; ".join(
                f"{name}: still serving version {outcome['served_version']}: {outcome['error']}"
                for name, outcome in refused.items()
            ),
            code="reload_failed",
            status=409,
        )
    # The default model's outcome at the top level, as before several models were served.
    default = outcomes[state.models.default_name]
    return json_response({**default, "models": outcomes, "workers": workers})


@api_blueprint.get("/metrics")
def metrics_route():
    body, content_type = service_state().metrics.render()
    return Response(body, content_type=content_type)


@api_blueprint.get("/openapi.json")
def openapi():
    return json_response(service_state().openapi)
