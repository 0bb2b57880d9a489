"""The KServe V1 / TensorFlow Serving REST protocol, as a Blueprint: translation only.

    GET  /v1/models                                  {"models": [names]}
    GET  /v1/models/<name>[/versions/<v>]            {"name", "ready"} (KServe V1 model ready)
    POST /v1/models/<name>[/versions/<v>]:predict    {"instances": [...]} -> {"predictions": [...]}
                                                     {"inputs": ...}     -> {"outputs": ...}

An instance is one image: 28 rows of 28 pixels or 784 values (0-255, MNIST convention), or
``{"b64": "<base64 of an image file>"}`` (TensorFlow Serving's binary encoding). The row format
(``instances``) answers one object per instance, ``{"label", "probabilities"}``; the columnar
format (``inputs``: the list of images, or ``{"input": [...]}``) answers
``{"outputs": {"label": [...], "probabilities": [[...]]}}``. The pixels go through the data
plane's one validation path, so V1, V2 and ``/predict`` accept and refuse the same values.
Errors are ``{"error": "<message>"}`` (service/errors.py shapes them for paths under /v1).
"""

from __future__ import annotations

import base64
import binascii

import numpy as np
from flask import Blueprint, current_app, g, request

from service.access import mark_inference
from service.batching import BATCH
from service.dataplane import Predictions
from service.errors import BadRequest, NotReady
from service.inputs.json_values import check_json_value_count, images_array, parse_json
from service.predictor import ServedModel
from service.routes import service_state
from service.web import json_response, read_body, version_in_path
from training.errors import BundleInvalid

v1_blueprint = Blueprint("v1", __name__, url_prefix="/v1")


def _model(name: str, version_text: str | None) -> ServedModel:
    version = None if version_text is None else version_in_path(name, version_text)
    model = service_state().dataplane.model(name, version)
    g.model_version = model.version
    return model


@v1_blueprint.get("/models")
def list_models():
    return json_response({"models": service_state().models.names()})


@v1_blueprint.get("/models/<name>", defaults={"version_text": None})
@v1_blueprint.get("/models/<name>/versions/<version_text>")
def model_ready(name: str, version_text: str | None):
    """KServe V1 model readiness: 200 with ``ready: true``, or 503 with the reason."""
    try:
        model = _model(name, version_text)
    except BundleInvalid as exc:
        raise NotReady(str(exc)) from None
    return json_response({"name": name, "version": str(model.version), "ready": True})


@v1_blueprint.post("/models/<name>:predict", defaults={"version_text": None})
@v1_blueprint.post("/models/<name>/versions/<version_text>:predict")
def predict(name: str, version_text: str | None):
    dataplane = service_state().dataplane
    model = _model(name, version_text)
    mark_inference(model)
    spec = dataplane.spec(model)
    body = read_body(request, current_app.config["MAX_CONTENT_LENGTH"])
    check_json_value_count(body, spec)
    document = parse_json(body)
    if not isinstance(document, dict) or ("instances" in document) == ("inputs" in document):
        raise BadRequest('expected a JSON object with either "instances" or "inputs"')
    columnar = "inputs" in document
    images = document["inputs"] if columnar else document["instances"]
    if columnar and isinstance(images, dict):
        if set(images) != {"input"}:
            raise BadRequest('"inputs" as an object takes one named input: "input"')
        images = images["input"]
    pixels = _pixels(images, model, "inputs" if columnar else "instances")
    result = dataplane.infer(model, pixels, batch=request.environ.get(BATCH))
    return json_response(_columnar(result) if columnar else _rows(result))


def _pixels(images, model: ServedModel, where: str) -> np.ndarray:
    """Instances, as pixel lists or all as {"b64": ...} image files -> one validated batch."""
    dataplane = service_state().dataplane
    if not isinstance(images, list):
        raise BadRequest(f"{where}: expected a list of images")
    if images and all(isinstance(image, dict) for image in images):
        # Image files: the /predict multipart path, so the same pixel budgets apply.
        return dataplane.pixels(model, "images", [_b64(image, where) for image in images])
    if any(isinstance(image, dict) for image in images):
        raise BadRequest(f'{where}: either every instance is {{"b64": ...}} or none is')
    spec = dataplane.spec(model)
    if not images:
        raise BadRequest(f"{where}: empty batch, expected at least one image")
    return dataplane.validate(model, images_array(images, spec, where), where)


def _b64(instance: dict, where: str) -> bytes:
    if set(instance) != {"b64"} or not isinstance(instance["b64"], str):
        raise BadRequest(f'{where}: an image file instance is {{"b64": "<base64>"}}')
    try:
        return base64.b64decode(instance["b64"], validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(f"{where}: b64 is not valid base64") from None


def _ood(result: Predictions) -> tuple[list | None, list | None]:
    """(not_a_digit, ood_score) lists, or Nones when the version has no detector."""
    if not result.ood_available:
        return None, None
    return result.not_a_digit.tolist(), result.ood_score.tolist()


def _rows(result: Predictions) -> dict:
    flags, scores = _ood(result)
    return {
        "predictions": [
            {
                "label": label,
                "probabilities": result.probabilities[row],
                "not_a_digit": None if flags is None else flags[row],
                "ood_score": None if scores is None else scores[row],
            }
            for row, label in enumerate(result.labels)
        ]
    }


def _columnar(result: Predictions) -> dict:
    flags, scores = _ood(result)
    outputs = {"label": result.labels, "probabilities": result.probabilities}
    return {"outputs": {**outputs, "not_a_digit": flags, "ood_score": scores}}
