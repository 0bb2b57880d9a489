"""The OpenAPI 3 description of every route, served at /openapi.json, and the JSON route index
served at ``GET /api`` (``GET /`` is the web page, service/ui.py).

Written by hand, next to the routes' own docstrings: small enough to read, and a test checks
that every route the app registers is described here and vice versa.
"""

from __future__ import annotations

import copy

from flask import Flask

from service.openapi_schemas import SCHEMAS, ref
from training import __version__

_ERROR = ref("Error")
_V2_ERROR = ref("V2Error")


def _json_content(schema: dict) -> dict:
    return {"application/json": {"schema": schema}}


def _error_responses(*statuses: int, v2: bool = False) -> dict:
    descriptions = {
        400: "malformed or invalid input",
        401: "missing admin token",
        403: "wrong admin token",
        404: "unknown model, version, alias or route",
        405: "method not allowed",
        409: "the version exists but cannot be served (corrupt), or a reload was refused",
        413: "body over MAX_CONTENT_LENGTH, batch over MAX_BATCH or image over MAX_IMAGE_PIXELS",
        415: "unsupported Content-Type",
        503: "no verified model loaded yet",
    }
    schema = _V2_ERROR if v2 else _ERROR
    return {
        str(status): {"description": descriptions[status], "content": _json_content(schema)}
        for status in statuses
    }


def _ok(description: str, schema: dict | None = None, content_type: str = "application/json"):
    response = {"description": description}
    if schema is not None:
        response["content"] = {content_type: {"schema": schema}}
    return response


_PIN_PARAMETERS = [
    {
        "name": "version",
        "in": "query",
        "required": False,
        "description": "answer with this version of the served model (loaded on demand)",
        "schema": {"type": "integer", "minimum": 0},
    },
    {
        "name": "alias",
        "in": "query",
        "required": False,
        "description": "answer with the version this store alias points at",
        "schema": {"type": "string"},
    },
]
_NAME = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
_VERSION = {"name": "version", "in": "path", "required": True, "schema": {"type": "integer"}}
_FILENAME = {"name": "filename", "in": "path", "required": True, "schema": {"type": "string"}}
_V2_VERSION = {"name": "version", "in": "path", "required": True, "schema": {"type": "string"}}

_PIXELS_28 = {
    "type": "array",
    "minItems": 28,
    "maxItems": 28,
    "items": {
        "type": "array",
        "minItems": 28,
        "maxItems": 28,
        "items": {"type": "number", "minimum": 0, "maximum": 255},
    },
    "description": "28 rows of 28 pixels, 0 background to 255 ink (MNIST convention)",
}


_PREDICT_BODY = {
    "required": True,
    "content": {
        "application/json": {"schema": ref("PredictJson")},
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "additionalProperties": {"type": "string", "format": "binary"},
                "description": "one or more image files (PNG, JPEG, ...), any field names",
            }
        },
        "application/x-npy": {
            "schema": {
                "type": "string",
                "format": "binary",
                "description": "a .npy array (28, 28), (N, 28, 28), (N, 1, 28, 28) or (N, 784); "
                "no pickles",
            }
        },
        "image/*": {"schema": {"type": "string", "format": "binary"}},
    },
}


# Generated clients name their methods after these: stable, unique, verbs first.
_OPERATION_IDS = {
    ("get", "/"): "getWebPage",
    ("get", "/api"): "getRouteIndex",
    ("get", "/ui/models"): "getModelsPage",
    ("get", "/ui/static/{filename}"): "getStaticFile",
    ("get", "/healthz"): "getLiveness",
    ("get", "/readyz"): "getReadiness",
    ("post", "/predict"): "predict",
    ("post", "/models/{name}/predict"): "predictWithModel",
    ("get", "/models"): "listModels",
    ("get", "/models/{name}"): "getModel",
    ("get", "/models/{name}/versions/{version}"): "getModelVersion",
    ("post", "/admin/reload"): "reloadModels",
    ("get", "/metrics"): "getMetrics",
    ("get", "/openapi.json"): "getOpenApiDocument",
    ("get", "/v2"): "v2ServerMetadata",
    ("get", "/v2/health/live"): "v2ServerLive",
    ("get", "/v2/health/ready"): "v2ServerReady",
    ("get", "/v2/models/{name}"): "v2ModelMetadata",
    ("get", "/v2/models/{name}/versions/{version}"): "v2ModelVersionMetadata",
    ("get", "/v2/models/{name}/ready"): "v2ModelReady",
    ("get", "/v2/models/{name}/versions/{version}/ready"): "v2ModelVersionReady",
    ("post", "/v2/models/{name}/infer"): "v2ModelInfer",
    ("post", "/v2/models/{name}/versions/{version}/infer"): "v2ModelVersionInfer",
    ("get", "/v1/models"): "v1ListModels",
    ("get", "/v1/models/{name}"): "v1ModelReady",
    ("get", "/v1/models/{name}/versions/{version}"): "v1ModelVersionReady",
    ("post", "/v1/models/{name}:predict"): "v1Predict",
    ("post", "/v1/models/{name}/versions/{version}:predict"): "v1PredictVersion",
}


def _predict_operation(which: str, parameters: list) -> dict:
    """POST /predict and /models/{name}/predict: the same body and answer."""
    return {
        "summary": f"Classify one or more 28x28 images with {which}",
        "parameters": [
            *parameters,
            *_PIN_PARAMETERS,
            {
                "name": "explain",
                "in": "query",
                "required": False,
                "description": "1 adds input_png and input_pixels to each prediction",
                "schema": {"type": "string", "enum": ["0", "1", "true", "false"]},
            },
        ],
        "requestBody": _PREDICT_BODY,
        "responses": {
            "200": _ok("predictions, in order", ref("PredictResponse")),
            **_error_responses(400, 404, 409, 413, 415, 503),
        },
    }


def _paths() -> dict:
    """Every route's operations, each with its operationId (``_OPERATION_IDS``)."""
    paths = _described_paths()
    for path, operations in paths.items():
        for method, operation in operations.items():
            operation["operationId"] = _OPERATION_IDS[(method, path)]
    return paths


def _described_paths() -> dict:
    v2_model_errors = _error_responses(404, 409, 503, v2=True)
    return {
        "/": {
            "get": {
                "summary": "The web page: draw or upload a digit",
                "responses": {"200": _ok("HTML page", {"type": "string"}, "text/html")},
            }
        },
        "/api": {
            "get": {
                "summary": "This index of routes, as JSON",
                "responses": {"200": _ok("routes", ref("RouteIndex"))},
            }
        },
        "/ui/models": {
            "get": {
                "summary": "The models view: every version with its metrics, as HTML",
                "responses": {"200": _ok("HTML page", {"type": "string"}, "text/html")},
            }
        },
        "/ui/static/{filename}": {
            "get": {
                "summary": "The web page's static files (CSS, JavaScript, icons)",
                "parameters": [_FILENAME],
                "responses": {"200": _ok("file"), "404": {"description": "no such file"}},
            }
        },
        "/healthz": {
            "get": {
                "summary": "Liveness: the process answers (independent of the model)",
                "responses": {"200": _ok("alive", ref("Health"))},
            }
        },
        "/readyz": {
            "get": {
                "summary": "Readiness: a verified, warmed-up model is served",
                "responses": {"200": _ok("ready", ref("Readiness")), **_error_responses(503)},
            }
        },
        "/predict": {"post": _predict_operation("the default model (MODEL_NAME)", [])},
        "/models/{name}/predict": {
            "post": _predict_operation("model {name}", [_NAME]),
        },
        "/models": {
            "get": {
                "summary": "The store's models, their versions and aliases, and what is served",
                "responses": {"200": _ok("models", ref("ModelList")), **_error_responses(503)},
            }
        },
        "/models/{name}": {
            "get": {
                "summary": "One model: versions with manifest summaries, aliases, serving state",
                "parameters": [_NAME],
                "responses": {
                    "200": _ok("model", ref("ModelDetail")),
                    **_error_responses(400, 404, 503),
                },
            }
        },
        "/models/{name}/versions/{version}": {
            "get": {
                "summary": "One version's manifest (metrics, training, provenance)",
                "parameters": [_NAME, _VERSION],
                "responses": {
                    "200": _ok("version", ref("VersionDetail")),
                    **_error_responses(400, 404, 409, 503),
                },
            }
        },
        "/admin/reload": {
            "post": {
                "summary": "Check the store now and swap in new versions, in every worker",
                "security": [{"adminToken": []}],
                "responses": {
                    "200": _ok("outcome", ref("ReloadOutcome")),
                    **_error_responses(401, 403, 404, 409),
                },
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics of all workers",
                "responses": {"200": _ok("text exposition", {"type": "string"}, "text/plain")},
            }
        },
        "/openapi.json": {
            "get": {
                "summary": "This document",
                "responses": {"200": _ok("OpenAPI", ref("OpenApiDocument"))},
            }
        },
        "/v2": {
            "get": {
                "summary": "V2 server metadata",
                "tags": ["v2"],
                "responses": {"200": _ok("server metadata", ref("V2ServerMetadata"))},
            }
        },
        "/v2/health/live": {
            "get": {
                "summary": "V2 server liveness",
                "tags": ["v2"],
                "responses": {"200": _ok("live", ref("V2Live"))},
            }
        },
        "/v2/health/ready": {
            "get": {
                "summary": "V2 server readiness",
                "tags": ["v2"],
                "responses": {
                    "200": _ok("ready", ref("V2Ready")),
                    **_error_responses(503, v2=True),
                },
            }
        },
        "/v2/models/{name}": {
            "get": {
                "summary": "V2 model metadata (served version)",
                "tags": ["v2"],
                "parameters": [_NAME],
                "responses": {"200": _ok("metadata", ref("V2ModelMetadata")), **v2_model_errors},
            }
        },
        "/v2/models/{name}/versions/{version}": {
            "get": {
                "summary": "V2 model metadata (one version)",
                "tags": ["v2"],
                "parameters": [_NAME, _V2_VERSION],
                "responses": {"200": _ok("metadata", ref("V2ModelMetadata")), **v2_model_errors},
            }
        },
        "/v2/models/{name}/ready": {
            "get": {
                "summary": "V2 model readiness (served version)",
                "tags": ["v2"],
                "parameters": [_NAME],
                "responses": {"200": _ok("ready", ref("ModelReadiness")), **v2_model_errors},
            }
        },
        "/v2/models/{name}/versions/{version}/ready": {
            "get": {
                "summary": "V2 model readiness (one version, loaded on demand)",
                "tags": ["v2"],
                "parameters": [_NAME, _V2_VERSION],
                "responses": {"200": _ok("ready", ref("ModelReadiness")), **v2_model_errors},
            }
        },
        "/v2/models/{name}/infer": _v2_infer("V2 inference (served version)", [_NAME]),
        "/v2/models/{name}/versions/{version}/infer": _v2_infer(
            "V2 inference (one version)", [_NAME, _V2_VERSION]
        ),
        **_v1_paths(),
    }


def _v1_paths() -> dict:
    """KServe V1 / TensorFlow Serving REST (service/v1.py)."""
    v1_errors = _error_responses(404, 409, 503, v2=True)
    ready = {"200": _ok("ready", ref("ModelReadiness")), **v1_errors}
    predict_errors = _error_responses(400, 404, 409, 413, 503, v2=True)
    predict_body = {
        "required": True,
        "content": _json_content(ref("V1PredictRequest")),
    }

    def predict(summary: str, parameters: list) -> dict:
        return {
            "post": {
                "summary": summary,
                "tags": ["v1"],
                "parameters": parameters,
                "requestBody": predict_body,
                "responses": {
                    "200": _ok("predictions", ref("V1PredictResponse")),
                    **predict_errors,
                },
            }
        }

    return {
        "/v1/models": {
            "get": {
                "summary": "V1: the models served",
                "tags": ["v1"],
                "responses": {"200": _ok("model names", ref("V1ModelList"))},
            }
        },
        "/v1/models/{name}": {
            "get": {
                "summary": "V1 model readiness",
                "tags": ["v1"],
                "parameters": [_NAME],
                "responses": ready,
            }
        },
        "/v1/models/{name}/versions/{version}": {
            "get": {
                "summary": "V1 model readiness (one version)",
                "tags": ["v1"],
                "parameters": [_NAME, _VERSION],
                "responses": ready,
            }
        },
        "/v1/models/{name}:predict": predict("V1 predict (served version)", [_NAME]),
        "/v1/models/{name}/versions/{version}:predict": predict(
            "V1 predict (one version)", [_NAME, _VERSION]
        ),
    }


def _v2_infer(summary: str, parameters: list) -> dict:
    return {
        "post": {
            "summary": summary,
            "tags": ["v2"],
            "parameters": [
                *parameters,
                {
                    "name": "Inference-Header-Content-Length",
                    "in": "header",
                    "required": False,
                    "description": "binary tensor data extension: bytes of JSON before the "
                    "binary tensors",
                    "schema": {"type": "integer"},
                },
            ],
            "requestBody": {
                "required": True,
                "content": _json_content(ref("V2InferenceRequest")),
            },
            "responses": {
                "200": _ok("outputs", ref("V2InferenceResponse")),
                **_error_responses(400, 404, 409, 413, 503, v2=True),
            },
        }
    }


def openapi_document(settings: dict) -> dict:
    """The OpenAPI 3.0 document for an app with these settings (limits appear in the text)."""
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "convserve",
            "version": __version__,
            "description": (
                "Classifies 28x28 images (MNIST convention: 0 background, 255 ink) with "
                f"model {settings['MODEL_NAME']!r} at alias {settings['MODEL_ALIAS']!r}. "
                f"Limits: {settings['MAX_BATCH']} images per request, "
                f"{settings['MAX_CONTENT_LENGTH']} bytes per body, "
                f"{settings['MAX_IMAGE_PIXELS']} pixels per uploaded image. Errors are "
                '{"error": {"code", "message"}}; under /v2 they are {"error": "<message>"}.'
            ),
        },
        "servers": [
            {
                "url": "/",
                "description": "the server that answered this document (make serve: "
                "http://127.0.0.1:8000)",
            }
        ],
        "paths": _paths(),
        "components": {
            "schemas": copy.deepcopy(SCHEMAS),
            "securitySchemes": {"adminToken": {"type": "http", "scheme": "bearer"}},
        },
    }


def flask_rule_to_openapi(rule: str) -> str:
    """``/models/<name>/versions/<version_text>`` -> ``/models/{name}/versions/{version}``."""
    import re

    path = re.sub(r"<(?:[a-z_]+:)?([a-z_]+)>", lambda m: "{" + m.group(1) + "}", rule)
    path = path.replace("{version_text}", "{version}")
    return path.rstrip("/") or "/"


def route_index(app: Flask) -> dict:
    """The JSON index at ``GET /api``: every documented route with its methods and summary."""
    paths = _paths()
    routes = []
    for path, operations in paths.items():
        for method, operation in operations.items():
            routes.append({"method": method.upper(), "path": path, "summary": operation["summary"]})
    return {
        "service": "convserve",
        "version": __version__,
        "openapi": "/openapi.json",
        "routes": routes,
    }
