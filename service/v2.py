"""The Open Inference Protocol (KServe V2) over REST, with the binary tensor data extension.

Routes (a Blueprint on the same app, so the same models, metrics and error handler)::

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

from service.access import mark_inference
from service.batching import BATCH
from service.dataplane import Predictions
from service.draining import is_draining
from service.errors import BadRequest, NotReady
from service.inputs.json_values import check_json_value_count, images_array
from service.inputs.validate import InputSpec, batch_count, check_batch_size
from service.predictor import ServedModel
from service.routes import service_state
from service.web import read_body, version_in_path
from training import __version__
from training.errors import BundleInvalid

v2_blueprint = Blueprint("v2", __name__, url_prefix="/v2")

INPUT_NAME = "input"
OUTPUT_PROBABILITIES = "probabilities"
OUTPUT_LABEL = "label"
OUTPUT_NOT_A_DIGIT = "not_a_digit"
OUTPUT_OOD_SCORE = "ood_score"
# Bundles with a not-a-digit detector have two more outputs; others have none to offer.
OUTPUT_NAMES = (OUTPUT_PROBABILITIES, OUTPUT_LABEL)
DETECTOR_OUTPUT_NAMES = (OUTPUT_NOT_A_DIGIT, OUTPUT_OOD_SCORE)
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


def _json(document, status: int = 200) -> Response:
    body = orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY)
    return Response(body, status=status, mimetype="application/json")


def _model(name: str, version_text: str | None) -> ServedModel:
    """The model a V2 path names: the served one, or a pinned version (loaded on demand)."""
    version = None if version_text is None else version_in_path(name, version_text)
    return service_state().dataplane.model(name, version)


def _labels_are_integers(model: ServedModel) -> bool:
    return all(isinstance(label, int) and not isinstance(label, bool) for label in model.labels)


def model_metadata(model: ServedModel, versions: list[int]) -> dict:
    """The $metadata_model_response for one model."""
    label_type = "INT64" if _labels_are_integers(model) else "BYTES"
    height, width = model.input_shape
    return {
        "name": model.name,
        "versions": [str(version) for version in versions],
        "platform": "convserve-numpy",
        "inputs": [
            {
                "name": INPUT_NAME,
                "datatype": "FP32",
                "shape": [-1, height, width],
                "parameters": {
                    "description": "pixel values 0-255, 0 background, 255 ink (MNIST); "
                    f"shapes [N, {height}, {width}], [N, 1, {height}, {width}] or "
                    f"[N, {height * width}]; UINT8 and other numeric types accepted",
                },
            }
        ],
        "outputs": [
            {"name": OUTPUT_PROBABILITIES, "datatype": "FP32", "shape": [-1, model.num_classes]},
            {"name": OUTPUT_LABEL, "datatype": label_type, "shape": [-1]},
            *(
                [
                    {"name": OUTPUT_NOT_A_DIGIT, "datatype": "BOOL", "shape": [-1]},
                    {"name": OUTPUT_OOD_SCORE, "datatype": "FP32", "shape": [-1]},
                ]
                if model.has_detector
                else []
            ),
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
    models = service_state().models
    if not models.ready:
        raise NotReady(models.not_ready_message())
    if is_draining():
        raise NotReady("draining: this server is shutting down and takes no new work")
    return _json({"ready": True})


# ------------------------------------------------------------------------------ model routes


@v2_blueprint.get("/models/<name>", defaults={"version_text": None})
@v2_blueprint.get("/models/<name>/versions/<version_text>")
def model_metadata_route(name: str, version_text: str | None):
    model = _model(name, version_text)
    g.model_version = model.version
    if version_text is not None:
        versions = [model.version]
    else:
        versions = service_state().catalog.versions(name)
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
    dataplane = service_state().dataplane
    model = _model(name, version_text)
    mark_inference(model)
    payload, binary = split_body(
        read_body(request, current_app.config["MAX_CONTENT_LENGTH"]),
        request.headers.get(HEADER_LENGTH),
        dataplane.spec(model),
    )
    request_id = payload.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise BadRequest("'id' must be a string")
    parameters = _object(payload.get("parameters"), "parameters")
    values = tensor_values(payload.get("inputs"), binary, dataplane.spec(model))
    outputs = requested_outputs(payload.get("outputs"), parameters, output_names(model))
    pixels = dataplane.validate(model, values, INPUT_NAME)
    result = dataplane.infer(model, pixels, batch=request.environ.get(BATCH))
    return infer_response(result, outputs, request_id)


def infer_response(result: Predictions, outputs: list[tuple[str, bool]], request_id) -> Response:
    """The $inference_response: the requested outputs, as JSON data or binary tensor data."""
    model = result.model
    tensors = {
        OUTPUT_PROBABILITIES: ("FP32", result.probabilities.astype(np.float32, copy=False)),
        OUTPUT_LABEL: _label_tensor(model, result.labels),
    }
    if result.ood_available:
        tensors[OUTPUT_NOT_A_DIGIT] = ("BOOL", result.not_a_digit)
        tensors[OUTPUT_OOD_SCORE] = ("FP32", result.ood_score.astype(np.float32))
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


def split_body(body: bytes, header_length: str | None, spec: InputSpec) -> tuple[dict, bytes]:
    """The request body -> (JSON inference request, the binary tensor bytes after it). The
    JSON part's size is checked against ``spec`` before it is parsed."""
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
    check_json_value_count(body, spec)
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


def tensor_values(inputs, binary: bytes, spec: InputSpec) -> np.ndarray:
    """The request's ``inputs`` (and binary tail) -> the input tensor's values, shaped as
    declared, for the data plane's one validation path. Only the protocol is checked here:
    one tensor named ``input``, a known datatype, a declared shape the model takes and a
    batch within the limit (both before any data is converted), data that fills the shape."""
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
    check_batch_size(batch_count(shape, spec, INPUT_NAME, single=False), spec, INPUT_NAME)
    parameters = _object(tensor.get("parameters"), "inputs[0].parameters")
    binary_size = parameters.get("binary_data_size")
    if binary_size is None:
        if binary:
            raise BadRequest(f"{len(binary)} bytes of binary data that no input claims")
        images = _images_in_data(tensor.get("data"), shape)
        return images_array(images, spec, INPUT_NAME)
    expected = math.prod(shape) * DATATYPES[datatype].itemsize
    if isinstance(binary_size, bool) or not isinstance(binary_size, int):
        raise BadRequest("'binary_data_size' must be an integer")
    if binary_size != expected or len(binary) != expected:
        raise BadRequest(
            f"binary input of shape {list(shape)} {datatype} needs {expected} bytes; "
            f"binary_data_size says {binary_size} and the body holds {len(binary)}"
        )
    return np.frombuffer(binary, dtype=DATATYPES[datatype]).reshape(shape)


def _shape(value) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in value
    ):
        raise BadRequest(f"input 'shape' must be a list of non-negative integers, got {value!r}")
    return tuple(value)


def _images_in_data(data, shape: tuple[int, ...]) -> list:
    """JSON ``data`` for a tensor of ``shape``, flat or nested in row-major order -> a list of
    images in /predict's form (each H rows of W numbers, or H*W numbers)."""
    if not isinstance(data, list):
        raise BadRequest("input 'data' must be a list of numbers (or binary_data_size given)")
    count, per_image = shape[0], math.prod(shape[1:])
    if len(data) == count * per_image and not (data and isinstance(data[0], list)):
        return [data[i * per_image : (i + 1) * per_image] for i in range(count)]
    if len(data) != count:
        raise BadRequest(
            f"input 'data' has {len(data)} values at its top level; shape {list(shape)} needs "
            f"{count * per_image} flat or {count} nested"
        )
    if len(shape) == 4:  # [N, 1, H, W]: one channel per image
        for index, image in enumerate(data):
            if not (isinstance(image, list) and len(image) == 1):
                raise BadRequest(f"input[{index}]: expected one channel, a list of 1")
        return [image[0] for image in data]
    return data


def output_names(model: ServedModel) -> tuple[str, ...]:
    """The outputs ``model`` has: the detector's two only when its bundle carries one."""
    return OUTPUT_NAMES + (DETECTOR_OUTPUT_NAMES if model.has_detector else ())


def requested_outputs(
    outputs, parameters: dict, names: tuple[str, ...] = OUTPUT_NAMES
) -> list[tuple[str, bool]]:
    """(name, as binary) for each output to return, in the order asked for; ``names`` are
    the outputs the model has (all of them when none are asked for)."""
    binary_by_default = parameters.get("binary_data_output") is True
    if outputs is None:
        return [(name, binary_by_default) for name in names]
    if not isinstance(outputs, list) or not all(isinstance(o, dict) for o in outputs):
        raise BadRequest("'outputs' must be a list of objects with a 'name'")
    chosen = []
    for output in outputs:
        name = output.get("name")
        if name not in names:
            unavailable = " (this version has no not-a-digit detector)"
            raise BadRequest(
                f"unknown output {name!r}; the model has {', '.join(names)}"
                + (unavailable if name in DETECTOR_OUTPUT_NAMES else "")
            )
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
    if datatype == "BOOL":
        return np.ascontiguousarray(array, dtype=np.bool_).tobytes()  # one byte each
    return np.ascontiguousarray(array, dtype=DATATYPES[datatype]).tobytes()
