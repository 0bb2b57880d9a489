"""KServe V1 / TensorFlow Serving REST: model listing and readiness, :predict in the row
(instances) and columnar (inputs) formats, b64 image files, errors in the V1 shape; answers and
refusals the same as /predict's for the same pixels."""

from __future__ import annotations

import base64

import numpy as np
import pytest

from tests.support.apps import build_app, expected_probabilities
from tests.support.http_io import png_bytes
from tests.support.mnist import synthetic_digit


@pytest.fixture
def v1_client(store_root):
    app = build_app(store_root)
    yield app.test_client()
    app.extensions["convserve"].models.stop()


def test_models_and_readiness(v1_client):
    assert v1_client.get("/v1/models").get_json() == {"models": ["mnist"]}
    assert v1_client.get("/v1/models/mnist").get_json() == {
        "name": "mnist",
        "version": "1",
        "ready": True,
    }
    assert v1_client.get("/v1/models/mnist/versions/2").get_json()["version"] == "2"
    missing = v1_client.get("/v1/models/fashion")
    assert missing.status_code == 404 and "fashion" in missing.get_json()["error"]


def test_instances_give_one_prediction_each(v1_client, store_root):
    digits = [synthetic_digit(seed) for seed in range(3)]
    instances = [digits[0].tolist(), digits[1].ravel().tolist(), digits[2].tolist()]
    response = v1_client.post("/v1/models/mnist:predict", json={"instances": instances})
    assert response.status_code == 200
    predictions = response.get_json()["predictions"]
    expected = expected_probabilities(store_root, 1, np.stack(digits))
    for prediction, probabilities in zip(predictions, expected, strict=True):
        np.testing.assert_allclose(prediction["probabilities"], probabilities, rtol=1e-5)
        assert prediction["label"] == int(np.argmax(probabilities))


def test_columnar_inputs_and_pinned_versions(v1_client, store_root):
    digit = synthetic_digit(1)
    for body in ({"inputs": [digit.tolist()]}, {"inputs": {"input": [digit.tolist()]}}):
        response = v1_client.post("/v1/models/mnist/versions/2:predict", json=body)
        assert response.status_code == 200
        outputs = response.get_json()["outputs"]
        expected = expected_probabilities(store_root, 2, digit[None])
        np.testing.assert_allclose(outputs["probabilities"], expected, rtol=1e-5)
        assert outputs["label"] == [int(np.argmax(expected[0]))]


def test_b64_image_files_are_read_like_uploads(v1_client):
    image = png_bytes(synthetic_digit(2), invert=True, size=112)
    instance = {"b64": base64.b64encode(image).decode()}
    via_v1 = v1_client.post("/v1/models/mnist:predict", json={"instances": [instance]})
    via_predict = v1_client.post("/predict", data=image, content_type="image/png")
    assert via_v1.status_code == 200 and via_predict.status_code == 200
    np.testing.assert_allclose(
        via_v1.get_json()["predictions"][0]["probabilities"],
        via_predict.get_json()["predictions"][0]["probabilities"],
        rtol=1e-6,
    )


BAD = {
    "boolean": ({"instances": [[[True] * 28] * 28]}, 400, "instances[0][0][0]"),
    "over 255": ({"instances": [[300] * 784]}, 400, "instances[0][0]: 300 is outside"),
    "wrong shape": ({"instances": [[0] * 783]}, 400, "instances[0]"),
    "empty": ({"instances": []}, 400, "empty batch"),
    "too many": ({"instances": [[0] * 784] * 9}, 413, "MAX_BATCH"),
    "both formats": ({"instances": [], "inputs": []}, 400, "either"),
    "neither": ({}, 400, "either"),
    "mixed b64": ({"instances": [{"b64": "AA=="}, [0] * 784]}, 400, "every instance"),
    "bad b64": ({"instances": [{"b64": "***"}]}, 400, "base64"),
}


@pytest.mark.parametrize(("body", "status", "fragment"), BAD.values(), ids=BAD.keys())
def test_bad_requests_are_v1_errors(v1_client, body, status, fragment):
    response = v1_client.post("/v1/models/mnist:predict", json=body)
    assert response.status_code == status
    document = response.get_json()
    assert set(document) == {"error"} and fragment in document["error"], document


def test_the_same_pixels_are_refused_alike_by_predict(v1_client):
    image = [[0] * 28 for _ in range(28)]
    image[3][4] = 256
    v1 = v1_client.post("/v1/models/mnist:predict", json={"instances": [image]})
    predict = v1_client.post("/predict", json={"images": [image]})
    assert v1.status_code == predict.status_code == 400
    assert (
        v1.get_json()["error"].replace("instances", "images")
        == (predict.get_json()["error"]["message"])
    )
