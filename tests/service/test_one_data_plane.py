"""/predict and the V2 infer route share one data plane: for the same pixels they give the same
answer, or the same 4xx for the same reason (booleans, NaN, out of range, wrong shape, too
many images), whichever encoding carries them (JSON on both, .npy against V2 binary)."""

import io
import json

import numpy as np
import pytest

from tests.support.apps import TEST_SETTINGS
from tests.support.mnist import synthetic_digit

MAX_BATCH = TEST_SETTINGS["MAX_BATCH"]
HEADER = "Inference-Header-Content-Length"


def digits(count: int) -> list:
    return [synthetic_digit(seed).tolist() for seed in range(count)]


def with_value(images: list, index: int, row: int, column: int, value) -> list:
    images = json.loads(json.dumps(images))
    images[index][row][column] = value
    return images


def predict_json(client, images: list):
    body = json.dumps({"images": images})
    return client.post("/predict", data=body, content_type="application/json")


def v2_json(client, images: list, shape: list | None = None):
    shape = shape or [len(images), 28, 28]
    tensor = {"name": "input", "shape": shape, "datatype": "FP32", "data": images}
    body = json.dumps({"inputs": [tensor]})
    return client.post("/v2/models/mnist/infer", data=body, content_type="application/json")


def predict_npy(client, array: np.ndarray):
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return client.post("/predict", data=buffer.getvalue(), content_type="application/x-npy")


def v2_binary(client, array: np.ndarray, datatype: str):
    tensor = {
        "name": "input",
        "shape": list(array.shape),
        "datatype": datatype,
        "parameters": {"binary_data_size": array.nbytes},
    }
    header = json.dumps({"inputs": [tensor]}).encode()
    return client.post(
        "/v2/models/mnist/infer",
        data=header + array.tobytes(),
        content_type="application/octet-stream",
        headers={HEADER: str(len(header))},
    )


def reason(response, where: str) -> str:
    """The error message with its location prefix (``images``/``input``) made neutral."""
    document = response.get_json()
    message = (
        document["error"] if isinstance(document["error"], str) else document["error"]["message"]
    )
    return message.replace(where, "<pixels>", 1)


def assert_same_outcome(predict_response, v2_response) -> None:
    assert predict_response.status_code == v2_response.status_code
    if predict_response.status_code == 200:
        probabilities = [p["probabilities"] for p in predict_response.get_json()["predictions"]]
        outputs = {o["name"]: o for o in v2_response.get_json()["outputs"]}
        np.testing.assert_allclose(
            np.reshape(outputs["probabilities"]["data"], (len(probabilities), -1)),
            probabilities,
            rtol=1e-6,
        )
    else:
        assert 400 <= predict_response.status_code < 500
        assert reason(predict_response, "images") == reason(v2_response, "input")


JSON_CASES = {
    "valid": digits(2),
    "fractions": with_value(digits(2), 1, 3, 4, 0.5),
    "boolean true": with_value(digits(2), 1, 3, 4, True),
    "boolean false": with_value(digits(1), 0, 0, 0, False),
    "string": with_value(digits(2), 0, 5, 6, "7"),
    "null": with_value(digits(2), 0, 5, 6, None),
    "over 255": with_value(digits(2), 1, 27, 0, 256),
    "negative": with_value(digits(2), 0, 3, 4, -0.5),
    "huge": with_value(digits(1), 0, 3, 4, 1e300),
    "short row": [digits(1)[0][:27] + [[0] * 27]],
    "missing row": [digits(1)[0][:27]],
    "too many images": digits(MAX_BATCH + 1),
    "the batch limit": digits(MAX_BATCH),
}


@pytest.mark.parametrize("images", JSON_CASES.values(), ids=JSON_CASES.keys())
def test_json_pixels_get_the_same_outcome_on_both_routes(client, images):
    assert_same_outcome(predict_json(client, images), v2_json(client, images))


def test_an_empty_batch_is_refused_alike(client):
    assert_same_outcome(predict_json(client, []), v2_json(client, [], shape=[0, 28, 28]))


def test_a_wrong_image_shape_is_a_400_on_both_routes(client):
    wrong = [[[0] * 27 for _ in range(28)]]
    assert predict_json(client, wrong).status_code == 400
    assert v2_json(client, wrong, shape=[1, 28, 27]).status_code == 400


BINARY_CASES = {
    "valid float32": np.stack([synthetic_digit(s) for s in range(3)]).astype(np.float32),
    "valid uint8": np.stack([synthetic_digit(s) for s in range(3)]),
    "NaN": np.where(np.eye(28, dtype=bool), np.nan, 0).astype(np.float32)[None],
    "infinity": np.full((2, 28, 28), -np.inf, dtype=np.float32),
    "over 255": (np.eye(28) * 256).astype(np.float32)[None].repeat(2, 0),
    "too many images": np.zeros((MAX_BATCH + 1, 28, 28), dtype=np.float32),
    "flat images": np.zeros((2, 784), dtype=np.float32),
    "one channel": np.zeros((2, 1, 28, 28), dtype=np.float32),
}
DATATYPES = {np.dtype(np.float32): "FP32", np.dtype(np.uint8): "UINT8"}


@pytest.mark.parametrize("array", BINARY_CASES.values(), ids=BINARY_CASES.keys())
def test_binary_pixels_get_the_same_outcome_as_npy(client, array):
    assert_same_outcome(
        predict_npy(client, array), v2_binary(client, array, DATATYPES[array.dtype])
    )


def test_booleans_are_refused_by_every_encoding(client):
    flags = np.zeros((1, 28, 28), dtype=bool)
    assert predict_npy(client, flags).status_code == 400
    assert v2_binary(client, flags.view(np.uint8), "BOOL").status_code == 400
    assert predict_json(client, [flags[0].tolist()]).status_code == 400
    assert v2_json(client, [flags[0].tolist()]).status_code == 400
