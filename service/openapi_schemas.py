"""The component schemas of the OpenAPI document (service/openapi.py): every request body and
every answer, typed as precisely as the routes write them, so generated clients get real types.

A declarative table, written by hand; tests/service/test_openapi_conformance.py runs
schemathesis against the app to check that every answer matches its schema.
"""

from __future__ import annotations


def ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


_PIXEL = {"type": "number", "minimum": 0, "maximum": 255}
_ROWS_28 = {
    "type": "array",
    "minItems": 28,
    "maxItems": 28,
    "items": {"type": "array", "minItems": 28, "maxItems": 28, "items": _PIXEL},
    "description": "28 rows of 28 pixels, 0 background to 255 ink (MNIST convention)",
}
_FLAT_784 = {
    "type": "array",
    "minItems": 784,
    "maxItems": 784,
    "items": _PIXEL,
    "description": "the same 784 pixels, row after row",
}
_NULLABLE_INT = {"type": "integer", "nullable": True}
_NULLABLE_STRING = {"type": "string", "nullable": True}
_PROBABILITIES = {"type": "array", "items": {"type": "number", "minimum": 0, "maximum": 1}}
_LABEL = {
    "description": "a class label of the model (digits are integers)",
    "oneOf": [{"type": "integer"}, {"type": "string"}],
}

SCHEMAS = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
            }
        },
    },
    "V2Error": {
        "type": "object",
        "required": ["error"],
        "properties": {"error": {"type": "string"}},
        "description": "V1 and V2 errors: the message alone",
    },
    "Image": {
        "description": "one 28x28 image: 28 rows of 28 pixels, or 784 values",
        "anyOf": [_ROWS_28, _FLAT_784],
    },
    "PredictJson": {
        "oneOf": [
            {"type": "object", "required": ["image"], "properties": {"image": ref("Image")}},
            {
                "type": "object",
                "required": ["images"],
                "properties": {"images": {"type": "array", "items": ref("Image"), "minItems": 1}},
            },
        ]
    },
    "ModelVersionRef": {
        "type": "object",
        "required": ["name", "version"],
        "properties": {"name": {"type": "string"}, "version": {"type": "integer"}},
    },
    "Prediction": {
        "type": "object",
        "required": ["label", "confidence", "probabilities"],
        "properties": {
            "label": _LABEL,
            "confidence": {"type": "number", "minimum": 0, "maximum": 1},
            "probabilities": _PROBABILITIES,
            "not_a_digit": {
                "type": "boolean",
                "nullable": True,
                "description": "the not-a-digit detector's verdict; null without a detector",
            },
            "ood_score": {"type": "number", "nullable": True},
            "input_png": {
                "type": "string",
                "description": "with ?explain=1: the 28x28 image the model saw, as a PNG data URL",
            },
            "input_pixels": {
                "type": "array",
                "items": {"type": "number"},
                "description": "with ?explain=1: the 784 pixel values the model saw",
            },
        },
    },
    "PredictResponse": {
        "type": "object",
        "required": ["model", "predictions"],
        "properties": {
            "model": ref("ModelVersionRef"),
            "predictions": {"type": "array", "items": ref("Prediction")},
        },
    },
    "Health": {
        "type": "object",
        "required": ["status"],
        "properties": {"status": {"type": "string", "enum": ["ok"]}},
    },
    "Readiness": {
        "type": "object",
        "required": ["status", "model", "models"],
        "properties": {
            "status": {"type": "string", "enum": ["ready"]},
            "model": ref("ModelVersionRef"),
            "models": {
                "type": "object",
                "additionalProperties": _NULLABLE_INT,
                "description": "each served model's version",
            },
        },
    },
    "ReloadError": {
        "type": "object",
        "nullable": True,
        "properties": {
            "version": _NULLABLE_INT,
            "message": {"type": "string"},
            "at": {"type": "string"},
        },
    },
    "ServingState": {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "alias": {"type": "string"},
            "served_version": _NULLABLE_INT,
            "loaded_at": _NULLABLE_STRING,
            "last_check": _NULLABLE_STRING,
            "last_reload_error": ref("ReloadError"),
            "reload_interval_s": {"type": "number"},
            "pinned_versions": {"type": "array", "items": {"type": "integer"}},
        },
    },
    "ModelSummary": {
        "type": "object",
        "required": ["name", "versions", "aliases"],
        "properties": {
            "name": {"type": "string"},
            "versions": {"type": "array", "items": {"type": "integer"}},
            "aliases": {"type": "object", "additionalProperties": {"type": "integer"}},
            "served_version": _NULLABLE_INT,
        },
    },
    "ModelList": {
        "type": "object",
        "required": ["models"],
        "properties": {
            "models": {"type": "array", "items": ref("ModelSummary")},
            "serving": ref("ServingState"),
        },
    },
    "VersionSummary": {
        "type": "object",
        "required": ["version", "aliases"],
        "properties": {
            "version": {"type": "integer"},
            "aliases": {"type": "array", "items": {"type": "string"}},
            "created": _NULLABLE_STRING,
            "architecture": _NULLABLE_STRING,
            "note": _NULLABLE_STRING,
            "metrics": {"type": "object", "nullable": True},
            "class_labels": {"type": "array", "nullable": True, "items": _LABEL},
            "served": {"type": "boolean"},
        },
    },
    "ModelDetail": {
        "type": "object",
        "required": ["name", "versions", "aliases"],
        "properties": {
            "name": {"type": "string"},
            "versions": {"type": "array", "items": ref("VersionSummary")},
            "aliases": {"type": "object", "additionalProperties": {"type": "integer"}},
            "serving": ref("ServingState"),
        },
    },
    "VersionDetail": {
        "type": "object",
        "required": ["name", "version", "manifest"],
        "properties": {
            "name": {"type": "string"},
            "version": {"type": "integer"},
            "aliases": {"type": "array", "items": {"type": "string"}},
            "served": {"type": "boolean"},
            "reload_error": ref("ReloadError"),
            "manifest": {
                "type": "object",
                "description": "the version's manifest.json (model_store/README.md)",
                "required": ["name", "version", "sha256"],
                "properties": {
                    "name": {"type": "string"},
                    "version": {"type": "integer"},
                    "sha256": {"type": "string"},
                    "metrics": {"type": "object"},
                },
            },
        },
    },
    "ReloadOutcome": {
        "type": "object",
        "required": ["models", "workers"],
        "properties": {
            "changed": {"type": "boolean"},
            "served_version": _NULLABLE_INT,
            "target_version": _NULLABLE_INT,
            "error": _NULLABLE_STRING,
            "models": {
                "type": "object",
                "additionalProperties": {
                    "type": "object",
                    "properties": {
                        "changed": {"type": "boolean"},
                        "served_version": _NULLABLE_INT,
                        "target_version": _NULLABLE_INT,
                        "error": _NULLABLE_STRING,
                    },
                },
            },
            "workers": {
                "type": "object",
                "required": ["confirmed", "total"],
                "properties": {
                    "confirmed": {"type": "integer", "minimum": 0},
                    "total": {"type": "integer", "minimum": 0},
                },
            },
        },
    },
    "RouteIndex": {
        "type": "object",
        "required": ["service", "version", "openapi", "routes"],
        "properties": {
            "service": {"type": "string"},
            "version": {"type": "string"},
            "openapi": {"type": "string"},
            "routes": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["method", "path", "summary"],
                    "properties": {
                        "method": {"type": "string"},
                        "path": {"type": "string"},
                        "summary": {"type": "string"},
                    },
                },
            },
        },
    },
    "OpenApiDocument": {
        "type": "object",
        "required": ["openapi", "info", "paths"],
        "properties": {
            "openapi": {"type": "string"},
            "info": {"type": "object"},
            "paths": {"type": "object"},
        },
    },
    "V1ModelList": {
        "type": "object",
        "required": ["models"],
        "properties": {"models": {"type": "array", "items": {"type": "string"}}},
    },
    "ModelReadiness": {
        "type": "object",
        "required": ["name", "version", "ready"],
        "properties": {
            "name": {"type": "string"},
            "version": {"type": "string"},
            "ready": {"type": "boolean"},
        },
    },
    "V1Instance": {
        "description": 'one image: 28 rows of 28 pixels, 784 values, or {"b64": base64 of an '
        "image file}",
        "anyOf": [
            _ROWS_28,
            _FLAT_784,
            {
                "type": "object",
                "required": ["b64"],
                "properties": {"b64": {"type": "string", "format": "byte"}},
            },
        ],
    },
    "V1PredictRequest": {
        "description": "either instances (row format) or inputs (columnar)",
        "oneOf": [
            {
                "type": "object",
                "required": ["instances"],
                "properties": {
                    "instances": {"type": "array", "minItems": 1, "items": ref("V1Instance")}
                },
            },
            {
                "type": "object",
                "required": ["inputs"],
                "properties": {
                    "inputs": {"type": "array", "minItems": 1, "items": ref("V1Instance")}
                },
            },
        ],
    },
    "V1PredictResponse": {
        "description": "instances are answered with predictions (one per instance), inputs "
        "with columnar outputs",
        "oneOf": [
            {
                "type": "object",
                "required": ["predictions"],
                "properties": {
                    "predictions": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["label", "probabilities"],
                            "properties": {
                                "label": _LABEL,
                                "probabilities": _PROBABILITIES,
                                "not_a_digit": {"type": "boolean", "nullable": True},
                                "ood_score": {"type": "number", "nullable": True},
                            },
                        },
                    }
                },
            },
            {
                "type": "object",
                "required": ["outputs"],
                "properties": {
                    "outputs": {
                        "type": "object",
                        "required": ["label", "probabilities"],
                        "properties": {
                            "label": {"type": "array", "items": _LABEL},
                            "probabilities": {"type": "array", "items": _PROBABILITIES},
                            "not_a_digit": {
                                "type": "array",
                                "nullable": True,
                                "items": {"type": "boolean"},
                            },
                            "ood_score": {
                                "type": "array",
                                "nullable": True,
                                "items": {"type": "number"},
                            },
                        },
                    }
                },
            },
        ],
    },
    "V2ServerMetadata": {
        "type": "object",
        "required": ["name", "version", "extensions"],
        "properties": {
            "name": {"type": "string"},
            "version": {"type": "string"},
            "extensions": {"type": "array", "items": {"type": "string"}},
        },
    },
    "V2Live": {
        "type": "object",
        "required": ["live"],
        "properties": {"live": {"type": "boolean"}},
    },
    "V2Ready": {
        "type": "object",
        "required": ["ready"],
        "properties": {"ready": {"type": "boolean"}},
    },
    "V2TensorMetadata": {
        "type": "object",
        "required": ["name", "datatype", "shape"],
        "properties": {
            "name": {"type": "string"},
            "datatype": {"type": "string"},
            "shape": {"type": "array", "items": {"type": "integer"}},
            "parameters": {"type": "object"},
        },
    },
    "V2ModelMetadata": {
        "type": "object",
        "required": ["name", "versions", "platform", "inputs", "outputs"],
        "properties": {
            "name": {"type": "string"},
            "versions": {"type": "array", "items": {"type": "string"}},
            "platform": {"type": "string"},
            "inputs": {"type": "array", "items": ref("V2TensorMetadata")},
            "outputs": {"type": "array", "items": ref("V2TensorMetadata")},
            "parameters": {"type": "object"},
        },
    },
    "V2Tensor": {
        "type": "object",
        "required": ["name", "datatype", "shape"],
        "properties": {
            "name": {"type": "string"},
            "datatype": {"type": "string"},
            "shape": {"type": "array", "items": {"type": "integer"}},
            "parameters": {"type": "object"},
            "data": {"type": "array", "items": {}},
        },
    },
    "V2InferenceRequest": {
        "type": "object",
        "required": ["inputs"],
        "properties": {
            "id": {"type": "string"},
            "parameters": {"type": "object"},
            "inputs": {"type": "array", "items": ref("V2Tensor")},
            "outputs": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["name"],
                    "properties": {"name": {"type": "string"}, "parameters": {"type": "object"}},
                },
            },
        },
    },
    "V2InferenceResponse": {
        "type": "object",
        "required": ["model_name", "outputs"],
        "properties": {
            "model_name": {"type": "string"},
            "model_version": {"type": "string"},
            "id": {"type": "string"},
            "outputs": {"type": "array", "items": ref("V2Tensor")},
        },
    },
}
