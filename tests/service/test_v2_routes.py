"""The Open Inference Protocol (KServe V2) REST routes, including the binary tensor extension."""

import json

import numpy as np
import pytest

from tests.support.apps import build_app, expected_probabilities
from tests.support.bundles import corrupt_bundle
from tests.support.mnist import synthetic_digit
from training.store import ModelStore

HEADER = "Inference-Header-Content-Length"


def infer_request(pixels, shape=None, datatype="FP32", **extra) -> dict:
    pixels = np.asarray(pixels)
    shape = shape or [len(pixels), 28, 28]
    tensor = {"name": "input", "shape": shape, "datatype": datatype}
    tensor["data"] = pixels.reshape(-1).tolist()
    return {"inputs": [tensor], **extra}


def post(client, document, path="/v2/models/mnist/infer", **kwargs):
    return client.post(path, data=json.dumps(document), content_type="application/json", **kwargs)


def v2_error(response) -> str:
    document = response.get_json()
    assert set(document) == {"error"} and isinstance(document["error"], str), document
    return document["error"]


def split_binary(response) -> tuple[dict, bytes]:
    size = int(response.headers[HEADER])
    body = response.get_data()
    return json.loads(body[:size]), body[size:]


# ------------------------------------------------------------------------------ health, metadata


def test_server_metadata_lists_the_binary_extension(client):
    document = client.get("/v2").get_json()
    assert document["name"] == "convserve"
    assert "binary_tensor_data" in document["extensions"]


def test_server_live_and_ready(client, tmp_path):
    assert client.get("/v2/health/live").status_code == 200
    assert client.get("/v2/health/ready").status_code == 200
    empty = build_app(tmp_path / "empty").test_client()
    assert empty.get("/v2/health/live").status_code == 200
    response = empty.get("/v2/health/ready")
    assert response.status_code == 503
    assert "no verified model" in v2_error(response)


def test_model_metadata(client):
    document = client.get("/v2/models/mnist").get_json()
    assert document["name"] == "mnist"
    assert document["versions"] == ["1", "2"]
    assert document["inputs"][0] == {
        "name": "input",
        "datatype": "FP32",
        "shape": [-1, 28, 28],
        "parameters": document["inputs"][0]["parameters"],
    }
    assert document["outputs"] == [
        {"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]},
        {"name": "label", "datatype": "INT64", "shape": [-1]},
    ]


def test_versioned_metadata_describes_that_version(store_root, bundle_files):
    ModelStore(store_root).publish(bundle_files["zero_one"], "mnist")  # version 3: 2 classes
    client = build_app(store_root).test_client()
    document = client.get("/v2/models/mnist/versions/3").get_json()
    assert document["versions"] == ["3"]
    assert document["outputs"][0]["shape"] == [-1, 2]


def test_model_ready(client, store_root):
    assert client.get("/v2/models/mnist/ready").get_json()["ready"] is True
    corrupt_bundle(store_root, 2)
    response = client.get("/v2/models/mnist/versions/2/ready")
    assert response.status_code == 503
    assert "mnist:2" in v2_error(response)


def test_a_version_is_ready_once_loaded_and_stays_ready(client, store_root):
    assert client.get("/v2/models/mnist/versions/2/ready").status_code == 200
    corrupt_bundle(store_root, 2)  # the verified copy in memory keeps serving
    assert client.get("/v2/models/mnist/versions/2/ready").status_code == 200


@pytest.mark.parametrize(
    "path",
    [
        "/v2/models/fashion",
        "/v2/models/fashion/ready",
        "/v2/models/mnist/versions/9",
        "/v2/models/mnist/versions/latest",
        "/v2/models/mnist/versions/9/ready",
        "/v2/nothing",
    ],
)
def test_unknown_models_and_versions_are_404_in_the_v2_error_shape(client, path):
    response = client.get(path)
    assert response.status_code == 404
    assert v2_error(response)


# ------------------------------------------------------------------------------ infer (JSON)


@pytest.mark.parametrize(
    ("shape", "nested"),
    [
        ([2, 28, 28], False),
        ([2, 1, 28, 28], False),
        ([2, 784], False),
        ([2, 28, 28], True),
    ],
)
def test_infer_accepts_the_three_shapes_flat_or_nested(client, store_root, shape, nested):
    batch = np.stack([synthetic_digit(1), synthetic_digit(2)])
    document = infer_request(batch, shape)
    if nested:
        document["inputs"][0]["data"] = batch.tolist()
    response = post(client, document)
    assert response.status_code == 200, response.data
    outputs = {o["name"]: o for o in response.get_json()["outputs"]}
    probabilities = np.array(outputs["probabilities"]["data"]).reshape(
        outputs["probabilities"]["shape"]
    )
    expected = expected_probabilities(store_root, 1, batch)
    np.testing.assert_allclose(probabilities, expected, rtol=1e-5, atol=1e-6)
    assert outputs["label"] == {
        "name": "label",
        "datatype": "INT64",
        "shape": [2],
        "data": expected.argmax(axis=1).tolist(),
    }


def test_infer_uint8_id_echo_unknown_parameters_and_model_version(client):
    document = infer_request(
        synthetic_digit()[None], datatype="UINT8", id="request-42", parameters={"whatever": 1}
    )
    document["inputs"][0]["parameters"] = {"content_type": "np"}
    response = post(client, document)
    assert response.status_code == 200
    answer = response.get_json()
    assert answer["id"] == "request-42"
    assert answer["model_name"] == "mnist" and answer["model_version"] == "1"


def test_infer_honours_requested_outputs(client):
    document = infer_request(synthetic_digit()[None], outputs=[{"name": "label"}])
    outputs = post(client, document).get_json()["outputs"]
    assert [o["name"] for o in outputs] == ["label"]


def test_versioned_infer_uses_that_version(client, store_root):
    pixels = synthetic_digit(3)[None]
    response = post(client, infer_request(pixels), "/v2/models/mnist/versions/2/infer")
    answer = response.get_json()
    assert answer["model_version"] == "2"
    np.testing.assert_allclose(
        answer["outputs"][0]["data"],
        expected_probabilities(store_root, 2, pixels)[0],
        rtol=1e-5,
        atol=1e-6,
    )


# ------------------------------------------------------------------------------ binary extension


def test_binary_input_and_binary_outputs(client, store_root):
    batch = np.stack([synthetic_digit(4), synthetic_digit(5)]).astype(np.float32)
    raw = batch.astype("<f4").tobytes()
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": [2, 28, 28],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": len(raw)},
                }
            ],
            "outputs": [
                {"name": "probabilities", "parameters": {"binary_data": True}},
                {"name": "label", "parameters": {"binary_data": False}},
            ],
        }
    ).encode()
    response = client.post(
        "/v2/models/mnist/infer",
        data=header + raw,
        headers={HEADER: str(len(header))},
        content_type="application/octet-stream",
    )
    assert response.status_code == 200, response.data
    answer, tail = split_binary(response)
    probabilities_output, label_output = answer["outputs"]
    assert probabilities_output["parameters"] == {"binary_data_size": 2 * 10 * 4}
    assert "data" not in probabilities_output
    probabilities = np.frombuffer(tail, dtype="<f4").reshape(2, 10)
    expected = expected_probabilities(store_root, 1, batch)
    np.testing.assert_allclose(probabilities, expected, rtol=1e-5, atol=1e-6)
    assert label_output["data"] == expected.argmax(axis=1).tolist()


def test_binary_data_output_makes_every_output_binary(client):
    document = infer_request(synthetic_digit()[None], parameters={"binary_data_output": True})
    response = post(client, document)
    answer, tail = split_binary(response)
    sizes = [o["parameters"]["binary_data_size"] for o in answer["outputs"]]
    assert sizes == [10 * 4, 8]
    assert len(tail) == sum(sizes)
    label = np.frombuffer(tail[40:], dtype="<i8")
    assert label.shape == (1,)


def test_uint8_binary_input(client):
    pixels = synthetic_digit()[None]
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": [1, 784],
                    "datatype": "UINT8",
                    "parameters": {"binary_data_size": 784},
                }
            ]
        }
    ).encode()
    response = client.post(
        "/v2/models/mnist/infer",
        data=header + pixels.tobytes(),
        headers={HEADER: str(len(header))},
    )
    assert response.status_code == 200
    fp32 = post(client, infer_request(pixels)).get_json()["outputs"][0]["data"]
    assert response.get_json()["outputs"][0]["data"] == pytest.approx(fp32)


# ------------------------------------------------------------------------------ infer errors


def binary_body(size_claimed: int, raw: bytes) -> tuple[bytes, dict]:
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": [1, 28, 28],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": size_claimed},
                }
            ]
        }
    ).encode()
    return header + raw, {HEADER: str(len(header))}


@pytest.mark.parametrize(
    ("document", "fragment"),
    [
        ({}, "inputs"),
        ({"inputs": []}, "inputs"),
        ({"inputs": "x"}, "inputs"),
        (
            {"inputs": [{"name": "x", "shape": [1, 784], "datatype": "FP32", "data": [0] * 784}]},
            "input",
        ),
        (
            {
                "inputs": [
                    {"name": "input", "shape": [1, 784], "datatype": "BOOL", "data": [0] * 784}
                ]
            },
            "datatype",
        ),
        (
            {
                "inputs": [
                    {"name": "input", "shape": [1, 27, 28], "datatype": "FP32", "data": [0] * 756}
                ]
            },
            "shape",
        ),
        (
            {"inputs": [{"name": "input", "shape": [0, 784], "datatype": "FP32", "data": []}]},
            "empty batch",
        ),
        (
            {
                "inputs": [
                    {"name": "input", "shape": [1, 784], "datatype": "FP32", "data": [0] * 783}
                ]
            },
            "783",
        ),
        (
            {
                "inputs": [
                    {"name": "input", "shape": [1, 784], "datatype": "FP32", "data": ["a"] * 784}
                ]
            },
            "input[0][0]: expected a number, got a string",
        ),
        (
            {
                "inputs": [
                    {"name": "input", "shape": [1, 784], "datatype": "FP32", "data": [True] * 784}
                ]
            },
            "input[0][0]: expected a number, got a boolean",
        ),
        (
            {
                "inputs": [
                    {"name": "input", "shape": [1, 784], "datatype": "FP32", "data": [300] * 784}
                ]
            },
            "0-255",
        ),
        (
            {
                "inputs": [
                    {"name": "input", "shape": [1, 784], "datatype": "FP32", "data": [-1] * 784}
                ]
            },
            "0-255",
        ),
        ({"inputs": [{"name": "input", "shape": [1, 784], "datatype": "FP32"}]}, "data"),
        (
            {"inputs": [{"name": "input", "shape": "1x784", "datatype": "FP32", "data": [0]}]},
            "shape",
        ),
        ({"id": 7, "inputs": []}, "id"),
        ({"parameters": [], "inputs": []}, "parameters"),
    ],
)
def test_bad_inference_requests_are_400_with_a_message(client, document, fragment):
    response = post(client, document)
    assert response.status_code == 400
    assert fragment in v2_error(response)


def test_unknown_output_is_400(client):
    document = infer_request(synthetic_digit()[None], outputs=[{"name": "logits"}])
    response = post(client, document)
    assert response.status_code == 400
    assert "logits" in v2_error(response)


@pytest.mark.parametrize("body", [b"{", b"[1, 2]", b"", b"\xff"])
def test_invalid_json_is_400(client, body):
    response = client.post("/v2/models/mnist/infer", data=body, content_type="application/json")
    assert response.status_code == 400
    assert v2_error(response)


def test_batch_over_max_batch_is_413(client):
    document = {
        "inputs": [{"name": "input", "shape": [9, 784], "datatype": "UINT8", "data": [0] * 9 * 784}]
    }
    response = post(client, document)
    assert response.status_code == 413
    assert v2_error(response)


@pytest.mark.parametrize(
    ("claimed", "raw", "header_value"),
    [
        (784 * 4, b"\0" * (784 * 4 - 1), None),  # body shorter than claimed
        (784 * 4 - 4, b"\0" * (784 * 4 - 4), None),  # claim does not match the shape
        (784 * 4, b"\0" * (784 * 4 + 3), None),  # bytes nobody claims
        (784 * 4, b"\0" * (784 * 4), "99999999"),  # header longer than the body
        (784 * 4, b"\0" * (784 * 4), "-5"),
        (784 * 4, b"\0" * (784 * 4), "ten"),
    ],
)
def test_inconsistent_binary_requests_are_400(client, claimed, raw, header_value):
    body, headers = binary_body(claimed, raw)
    if header_value is not None:
        headers = {HEADER: header_value}
    response = client.post("/v2/models/mnist/infer", data=body, headers=headers)
    assert response.status_code == 400
    assert v2_error(response)


def test_binary_nan_is_400(client):
    pixels = np.zeros((1, 28, 28), dtype="<f4")
    pixels[0, 5, 5] = np.nan
    body, headers = binary_body(784 * 4, pixels.tobytes())
    response = client.post("/v2/models/mnist/infer", data=body, headers=headers)
    assert response.status_code == 400
    assert "NaN" in v2_error(response)


def test_unknown_model_infer_is_404(client):
    response = post(client, infer_request(synthetic_digit()[None]), "/v2/models/fashion/infer")
    assert response.status_code == 404
    assert "fashion" in v2_error(response)


def test_infer_get_is_405_in_the_v2_shape(client):
    response = client.get("/v2/models/mnist/infer")
    assert response.status_code == 405
    assert v2_error(response)


def test_infer_counts_predictions_in_the_metrics(client):
    post(client, infer_request(np.stack([synthetic_digit(1), synthetic_digit(2)])))
    text = client.get("/metrics").data.decode()
    total = sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("convserve_predictions_total{")
    )
    assert total == 2
