"""The Open Inference Protocol (KServe V2) over REST, with the binary tensor data extension.

Routes (a Blueprint on the same app, so the same predictor, metrics and error handler)::

    GET  /v2                                        server metadata
    GET  /v2/health/live | /v2/health/ready         liveness, readiness
    GET  /v2/models/<name>[/versions/<v>]           model metadata
    GET  /v2/models/<name>[/versions/<v>]/ready     model readiness
    POST /v2/models/<name>[/versions/<v>]/infer     inference

The model has one input, ``input``: pixels 0-255 (MNIST convention) shaped [N, 28, 28],
[N, 1, 28, 28] or [N, 784], as FP32 (UINT8 and the other numeric types are accepted too),
with ``data`` flat or nested in row-major order. Two outputs: ``probabilities`` FP32 [N, K]
and ``label`` INT64 [N]. Requested ``outputs`` are honoured, the request ``id`` is echoed, and
unknown ``parameters`` are ignored. Errors are ``{"error": "<message>"}`` (shaped by the app's
one error handler for paths under /v2).

Binary tensor data extension: with an ``Inference-Header-Content-Length`` header the body is
that many bytes of JSON followed by raw little-endian tensor bytes; an input with
``"parameters": {"binary_data_size": n}`` takes its next ``n`` bytes. An output asked for with
``"parameters": {"binary_data": true}`` (or all outputs, with the request parameter
``binary_data_output``) comes back the same way.
"""

from __future__ import annotations

import math

import numpy as np
import orjson
from flask import Blueprint, Response, current_app, g, request

from service.body import read_body
from service.errors import BadRequest, NotFound, NotReady, PayloadTooLarge
from service.predictor import ServedModel
from training import __version__
from training.errors import BundleInvalid

v2_blueprint = Blueprint("v2", __name__, url_prefix="/v2")

INPUT_NAME = "input"
OUTPUT_PROBABILITIES = "probabilities"
OUTPUT_LABEL = "label"
OUTPUT_NAMES = (OUTPUT_PROBABILITIES, OUTPUT_LABEL)
EXTENSIONS = ["binary_tensor_data"]
HEADER_LENGTH = "Inference-Header-Content-Length"
# The protocol's numeric datatypes -> little-endian numpy dtypes (binary data is little-endian).
DATATYPES = {
    "UINT8": np.dtype("u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
ACCEPTED_SHAPES = "[N, 28, 28], [N, 1, 28, 28] or [N, 784]"


def _state():
    return current_app.extensions["convserve"]


def _json(document, status: int = 200) -> Response:
    body = orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY)
    return Response(body, status=status, mimetype="application/json")


def _model(name: str, version_text: str | None) -> ServedModel:
    """The model a V2 path names: the served one, or a pinned version (loaded on demand)."""
    predictor = _state().predictor
    if name != predictor.name:
        raise NotFound(f"unknown model {name[:80]!r}; this server serves {predictor.name!r}")
    if version_text is None:
        return predictor.model_for()
    if not (version_text.isascii() and version_text.isdigit() and len(version_text) <= 18):
        raise NotFound(f"unknown version {version_text[:40]!r} of model {name!r}")
    return predictor.model_for(version=int(version_text))


def _labels_are_integers(model: ServedModel) -> bool:
    return all(isinstance(label, int) and not isinstance(label, bool) for label in model.labels)


def model_metadata(model: ServedModel, versions: list[int]) -> dict:
    """The $metadata_model_response for one model."""
    label_type = "INT64" if _labels_are_integers(model) else "BYTES"
    return {
        "name": model.name,
        "versions": [str(version) for version in versions],
        "platform": "convserve-numpy",
        "inputs": [
            {
                "name": INPUT_NAME,
                "datatype": "FP32",
                "shape": [-1, 28, 28],
                "parameters": {
                    "description": "pixel values 0-255, 0 background, 255 ink (MNIST); "
                    f"shapes {ACCEPTED_SHAPES}; UINT8 and other numeric types accepted",
                },
            }
        ],
        "outputs": [
            {"name": OUTPUT_PROBABILITIES, "datatype": "FP32", "shape": [-1, model.num_classes]},
            {"name": OUTPUT_LABEL, "datatype": label_type, "shape": [-1]},
        ],
        "parameters": {"class_labels": list(model.labels)},
    }


# ------------------------------------------------------------------------------ server routes


@v2_blueprint.get("", strict_slashes=False)
def server_metadata():
    return _json({"name": "convserve", "version": __version__, "extensions": EXTENSIONS})


@v2_blueprint.get("/health/live")
def server_live():
    return _json({"live": True})


@v2_blueprint.get("/health/ready")
def server_ready():
    predictor = _state().predictor
    if not predictor.ready:
        raise NotReady(predictor.not_ready_message())
    return _json({"ready": True})


# ------------------------------------------------------------------------------ model routes


@v2_blueprint.get("/models/<name>", defaults={"version_text": None})
@v2_blueprint.get("/models/<name>/versions/<version_text>")
def model_metadata_route(name: str, version_text: str | None):
    model = _model(name, version_text)
    g.model_version = model.version
    versions = [model.version] if version_text is not None else _state().store.versions(name)
    return _json(model_metadata(model, versions))


@v2_blueprint.get("/models/<name>/ready", defaults={"version_text": None})
@v2_blueprint.get("/models/<name>/versions/<version_text>/ready")
def model_ready(name: str, version_text: str | None):
    try:
        model = _model(name, version_text)
    except BundleInvalid as exc:
        raise NotReady(str(exc)) from None
    g.model_version = model.version
    return _json({"name": name, "version": str(model.version), "ready": True})


@v2_blueprint.post("/models/<name>/infer", defaults={"version_text": None})
@v2_blueprint.post("/models/<name>/versions/<version_text>/infer")
def infer(name: str, version_text: str | None):
    model = _model(name, version_text)
    g.model_version = model.version
    state = _state()
    payload, binary = split_body(
        read_body(request, current_app.config["MAX_CONTENT_LENGTH"]),
        request.headers.get(HEADER_LENGTH),
    )
    request_id = payload.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise BadRequest("'id' must be a string")
    parameters = _object(payload.get("parameters"), "parameters")
    pixels = pixels_from_inputs(payload.get("inputs"), binary, state.settings["MAX_BATCH"])
    outputs = requested_outputs(payload.get("outputs"), parameters)

    result = state.predictor.predict(model, pixels)
    probabilities = np.ascontiguousarray(result.probabilities, dtype=np.float32)
    labels = result.labels
    state.metrics.count_predictions(model.name, labels)

    tensors = {
        OUTPUT_PROBABILITIES: ("FP32", probabilities),
        OUTPUT_LABEL: _label_tensor(model, labels),
    }
    response_outputs, chunks = [], []
    for output_name, as_binary in outputs:
        datatype, array = tensors[output_name]
        entry = {"name": output_name, "datatype": datatype, "shape": list(array.shape)}
        if as_binary:
            data = _tensor_bytes(datatype, array)
            entry["parameters"] = {"binary_data_size": len(data)}
            chunks.append(data)
        else:
            entry["data"] = array.reshape(-1) if datatype != "BYTES" else array.tolist()
        response_outputs.append(entry)
    document = {"model_name": model.name, "model_version": str(model.version)}
    if request_id is not None:
        document["id"] = request_id
    document["outputs"] = response_outputs
    header = orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY)
    if not chunks:
        return Response(header, mimetype="application/json")
    return Response(
        header + b"".join(chunks),
        mimetype="application/octet-stream",
        headers={HEADER_LENGTH: str(len(header))},
    )


# ------------------------------------------------------------------------------ parsing


def split_body(body: bytes, header_length: str | None) -> tuple[dict, bytes]:
    """The request body -> (JSON inference request, the binary tensor bytes after it)."""
    binary = b""
    if header_length is not None:
        text = header_length.strip()
        if not (text.isascii() and text.isdigit()) or int(text) > len(body):
            raise BadRequest(
                f"{HEADER_LENGTH} must be a byte count no larger than the body "
                f"({len(body)} bytes), got {header_length[:40]!r}"
            )
        size = int(text)
        body, binary = body[:size], body[size:]
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"the inference request is not valid JSON ({exc})") from None
    if not isinstance(payload, dict):
        raise BadRequest("the inference request must be a JSON object with 'inputs'")
    return payload, binary


def _object(value, what: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadRequest(f"'{what}' must be a JSON object")
    return value


def _shape(value) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in value
    ):
        raise BadRequest(f"input 'shape' must be a list of non-negative integers, got {value!r}")
    shape = tuple(value)
    if not (
        (len(shape) == 3 and shape[1:] == (28, 28))
        or (len(shape) == 4 and shape[1:] == (1, 28, 28))
        or (len(shape) == 2 and shape[1] == 784)
    ):
        raise BadRequest(f"input shape {list(shape)} is not one of {ACCEPTED_SHAPES}")
    return shape


def pixels_from_inputs(inputs, binary: bytes, max_batch: int) -> np.ndarray:
    """The request's ``inputs`` (and binary tail) -> float32 pixels (N, 28, 28) in 0-255."""
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise BadRequest(f"'inputs' must be a list of exactly one tensor, named {INPUT_NAME!r}")
    tensor = inputs[0]
    if tensor.get("name") != INPUT_NAME:
        raise BadRequest(f"unknown input {tensor.get('name')!r}; the model's input is 'input'")
    datatype = tensor.get("datatype")
    if datatype not in DATATYPES:
        raise BadRequest(
            f"input datatype {datatype!r} is not supported; use one of {', '.join(DATATYPES)}"
        )
    shape = _shape(tensor.get("shape"))
    count = shape[0]
    if count == 0:
        raise BadRequest("the input holds no images (batch size 0)")
    if count > max_batch:
        raise PayloadTooLarge(f"{count} images in one request; at most {max_batch}")
    elements = math.prod(shape)
    parameters = _object(tensor.get("parameters"), "inputs[0].parameters")
    binary_size = parameters.get("binary_data_size")
    if binary_size is not None:
        dtype = DATATYPES[datatype]
        expected = elements * dtype.itemsize
        if isinstance(binary_size, bool) or not isinstance(binary_size, int):
            raise BadRequest("'binary_data_size' must be an integer")
        if binary_size != expected or len(binary) != expected:
            raise BadRequest(
                f"binary input of shape {list(shape)} {datatype} needs {expected} bytes; "
                f"binary_data_size says {binary_size} and the body holds {len(binary)}"
            )
        values = np.frombuffer(binary, dtype=dtype)
    else:
        if binary:
            raise BadRequest(f"{len(binary)} bytes of binary data that no input claims")
        values = _json_values(tensor.get("data"), elements)
    if values.dtype.kind == "f" and not np.all(np.isfinite(values)):
        raise BadRequest("input data holds NaN or infinite values")
    if values.size and (values.min() < 0 or values.max() > 255):
        raise BadRequest("input pixel values must lie in 0-255 (0 background, 255 ink)")
    return values.astype(np.float32).reshape(count, 28, 28)


def _json_values(data, elements: int) -> np.ndarray:
    """JSON ``data`` (flat or nested, row-major) -> a flat numeric array of ``elements``."""
    if not isinstance(data, list):
        raise BadRequest("input 'data' must be a list of numbers (or binary_data_size given)")
    try:
        values = np.array(data)
    except (ValueError, TypeError, OverflowError):
        raise BadRequest("input 'data' must be a list of numbers, nested evenly") from None
    if values.dtype.kind not in "iuf":
        raise BadRequest("input 'data' must hold only numbers, nested evenly")
    if values.size != elements:
        raise BadRequest(f"input 'data' has {values.size} values; its shape needs {elements}")
    return values.reshape(-1)


def requested_outputs(outputs, parameters: dict) -> list[tuple[str, bool]]:
    """(name, as binary) for each output to return, in the order asked for."""
    binary_by_default = parameters.get("binary_data_output") is True
    if outputs is None:
        return [(name, binary_by_default) for name in OUTPUT_NAMES]
    if not isinstance(outputs, list) or not all(isinstance(o, dict) for o in outputs):
        raise BadRequest("'outputs' must be a list of objects with a 'name'")
    chosen = []
    for output in outputs:
        name = output.get("name")
        if name not in OUTPUT_NAMES:
            raise BadRequest(f"unknown output {name!r}; the model has {', '.join(OUTPUT_NAMES)}")
        output_parameters = _object(output.get("parameters"), f"outputs[{name}].parameters")
        as_binary = output_parameters.get("binary_data", binary_by_default) is True
        chosen.append((name, as_binary))
    return chosen


# ------------------------------------------------------------------------------ encoding


def _label_tensor(model: ServedModel, labels: list) -> tuple[str, np.ndarray]:
    if _labels_are_integers(model):
        return "INT64", np.asarray(labels, dtype=np.int64)
    return "BYTES", np.asarray([str(label) for label in labels], dtype=object)


def _tensor_bytes(datatype: str, array: np.ndarray) -> bytes:
    """Little-endian, row-major bytes; BYTES elements are a 4-byte length then the bytes."""
    if datatype == "BYTES":
        parts = []
        for item in array.reshape(-1):
            encoded = str(item).encode("utf-8")
            parts.append(len(encoded).to_bytes(4, "little") + encoded)
        return b"".join(parts)
    return np.ascontiguousarray(array, dtype=DATATYPES[datatype]).tobytes()
