"""POST /predict: every body type, pinning versions, explain, and every client error."""

import base64
import io
import json

import numpy as np
import pytest
from PIL import Image

from tests.support.apps import build_app, expected_probabilities
from tests.support.bundles import corrupt_bundle
from tests.support.http_io import error_of, npy_bytes, png_bytes
from tests.support.mnist import synthetic_digit


def post_json(client, document, query=""):
    return client.post(
        "/predict" + query, data=json.dumps(document), content_type="application/json"
    )


# ------------------------------------------------------------------------------ answers


def test_one_json_image_gives_the_served_versions_own_probabilities(client, store_root):
    pixels = synthetic_digit(1)
    response = post_json(client, {"image": pixels.tolist()})
    assert response.status_code == 200
    document = response.get_json()
    assert document["model"] == {"name": "mnist", "version": 1}
    (prediction,) = document["predictions"]
    expected = expected_probabilities(store_root, 1, pixels)[0]
    np.testing.assert_allclose(prediction["probabilities"], expected, rtol=1e-5, atol=1e-6)
    assert prediction["label"] == int(np.argmax(expected))
    assert prediction["confidence"] == pytest.approx(float(expected.max()), rel=1e-5)
    assert sum(prediction["probabilities"]) == pytest.approx(1.0, abs=1e-4)


def test_a_batch_is_answered_in_order(client, store_root):
    batch = np.stack([synthetic_digit(seed) for seed in range(5)])
    response = post_json(client, {"images": batch.tolist()})
    assert response.status_code == 200
    got = np.array([p["probabilities"] for p in response.get_json()["predictions"]])
    np.testing.assert_allclose(got, expected_probabilities(store_root, 1, batch), atol=1e-6)


def test_flat_784_values_are_accepted(client):
    response = post_json(client, {"image": synthetic_digit().reshape(-1).tolist()})
    assert response.status_code == 200


def test_charset_parameter_on_the_json_content_type_is_fine(client):
    response = client.post(
        "/predict",
        data=json.dumps({"image": synthetic_digit().tolist()}),
        content_type="application/json; charset=utf-8",
    )
    assert response.status_code == 200


def test_npy_body(client, store_root):
    batch = np.stack([synthetic_digit(2), synthetic_digit(3)]).astype(np.float32)
    response = client.post("/predict", data=npy_bytes(batch), content_type="application/x-npy")
    assert response.status_code == 200
    got = np.array([p["probabilities"] for p in response.get_json()["predictions"]])
    np.testing.assert_allclose(got, expected_probabilities(store_root, 1, batch), atol=1e-6)


def test_multipart_with_several_image_files_keeps_their_order(client):
    first, second = synthetic_digit(1), synthetic_digit(6)
    response = client.post(
        "/predict",
        data={
            "image": [
                (io.BytesIO(png_bytes(first)), "one.png"),
                (io.BytesIO(png_bytes(second, invert=True)), "two.png"),
            ]
        },
        content_type="multipart/form-data",
    )
    assert response.status_code == 200, response.data
    predictions = response.get_json()["predictions"]
    assert len(predictions) == 2
    # Each file alone gives the same answer as in the batch: order is kept.
    for upload, prediction in zip(
        (png_bytes(first), png_bytes(second, invert=True)), predictions, strict=True
    ):
        alone = client.post(
            "/predict",
            data={"file": (io.BytesIO(upload), "x.png")},
            content_type="multipart/form-data",
        )
        assert alone.get_json()["predictions"][0]["probabilities"] == pytest.approx(
            prediction["probabilities"], abs=1e-6
        )


def test_raw_image_body(client):
    response = client.post("/predict", data=png_bytes(synthetic_digit()), content_type="image/png")
    assert response.status_code == 200
    assert len(response.get_json()["predictions"]) == 1


def test_explain_returns_the_image_the_model_saw(client):
    pixels = synthetic_digit(4)
    response = post_json(client, {"image": pixels.tolist()}, "?explain=1")
    assert response.status_code == 200
    (prediction,) = response.get_json()["predictions"]
    assert len(prediction["input_pixels"]) == 784
    np.testing.assert_array_equal(np.array(prediction["input_pixels"]).reshape(28, 28), pixels)
    prefix = "data:image/png;base64,"
    assert prediction["input_png"].startswith(prefix)
    image = Image.open(io.BytesIO(base64.b64decode(prediction["input_png"][len(prefix) :])))
    assert image.size == (28, 28)


def test_without_explain_there_are_no_explanations(client):
    response = post_json(client, {"image": synthetic_digit().tolist()})
    (prediction,) = response.get_json()["predictions"]
    assert set(prediction) == {"label", "confidence", "probabilities", "not_a_digit", "ood_score"}
    # The test bundles have no detector: unavailable, not made up.
    assert prediction["not_a_digit"] is None and prediction["ood_score"] is None


# ------------------------------------------------------------------------------ pinning


def test_version_pin_loads_that_version_on_demand(client, store_root):
    pixels = synthetic_digit(5)
    response = post_json(client, {"image": pixels.tolist()}, "?version=2")
    assert response.status_code == 200
    document = response.get_json()
    assert document["model"]["version"] == 2
    np.testing.assert_allclose(
        document["predictions"][0]["probabilities"],
        expected_probabilities(store_root, 2, pixels)[0],
        atol=1e-6,
    )
    # The served version is unchanged by a pinned request.
    assert post_json(client, {"image": pixels.tolist()}).get_json()["model"]["version"] == 1


def test_alias_pin(client, app):
    store = app.extensions["convserve"].store
    store.promote("mnist", 2, "staging")
    response = post_json(client, {"image": synthetic_digit().tolist()}, "?alias=staging")
    assert response.status_code == 200
    assert response.get_json()["model"]["version"] == 2
    latest = post_json(client, {"image": synthetic_digit().tolist()}, "?alias=latest")
    assert latest.get_json()["model"]["version"] == 2


def test_pinned_versions_are_kept_in_a_small_lru(app, bundle_files):
    store = app.extensions["convserve"].store
    store.publish(bundle_files["v3"], "mnist")
    predictor = app.extensions["convserve"].predictor
    assert predictor.model_for(version=2) is predictor.model_for(version=2)  # cached
    predictor.model_for(version=3)
    assert predictor.status()["pinned_versions"] == [2, 3]
    store.publish(bundle_files["v1"], "mnist")  # version 4
    predictor.model_for(version=4)
    assert predictor.status()["pinned_versions"] == [3, 4]  # cache size 2: 2 was evicted


@pytest.mark.parametrize(
    ("query", "status", "code"),
    [
        ("?version=9", 404, "version_not_found"),
        ("?alias=nightly", 404, "alias_not_found"),
        ("?version=two", 400, "invalid_query"),
        ("?version=-1", 400, "invalid_query"),
        ("?version=", 400, "invalid_query"),
        ("?version=1&alias=production", 400, "invalid_query"),
        ("?alias=../etc", 400, "invalid_name"),
        ("?explain=maybe", 400, "invalid_query"),
    ],
)
def test_bad_pins_are_client_errors(client, query, status, code):
    response = post_json(client, {"image": synthetic_digit().tolist()}, query)
    assert response.status_code == status
    assert error_of(response)["code"] == code


def test_a_pinned_corrupt_version_is_refused_not_crashed(client, store_root):
    corrupt_bundle(store_root, 2)
    response = post_json(client, {"image": synthetic_digit().tolist()}, "?version=2")
    assert response.status_code == 409
    error = error_of(response)
    assert error["code"] == "model_invalid"
    assert "mnist:2" in error["message"] and "sha256" in error["message"]


# ------------------------------------------------------------------------------ client errors


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"[]",
        b'{"image": "zeros"}',
        b'{"image": [[1, 2], [3]]}',
        b'{"image": [[300]]}',
        b'{"images": []}',
        b'{"image": [[0]], "images": [[[0]]]}',
        b"",
        b"\xff\xfe",
    ],
)
def test_malformed_json_is_400(client, body):
    response = client.post("/predict", data=body, content_type="application/json")
    assert response.status_code == 400
    assert error_of(response)["code"] == "invalid_input"


def test_nan_and_out_of_range_pixels_are_400(client):
    pixels = synthetic_digit().astype(np.float32)
    pixels[3, 3] = np.nan
    response = client.post("/predict", data=npy_bytes(pixels), content_type="application/x-npy")
    assert response.status_code == 400
    pixels[3, 3] = 256
    response = client.post("/predict", data=npy_bytes(pixels), content_type="application/x-npy")
    assert response.status_code == 400


def test_json_batch_over_max_batch_is_413(client):
    batch = [synthetic_digit().tolist()] * 9  # MAX_BATCH is 8
    response = post_json(client, {"images": batch})
    assert response.status_code == 413
    assert error_of(response)["code"] == "payload_too_large"


def test_npy_batch_over_max_batch_is_413(client):
    response = client.post(
        "/predict",
        data=npy_bytes(np.zeros((9, 28, 28), np.uint8)),
        content_type="application/x-npy",
    )
    assert response.status_code == 413


def test_multipart_batch_over_max_batch_is_413(client):
    upload = png_bytes(synthetic_digit())
    files = [(io.BytesIO(upload), f"{i}.png") for i in range(9)]
    response = client.post("/predict", data={"image": files}, content_type="multipart/form-data")
    assert response.status_code == 413


def test_body_over_max_content_length_is_413(client):
    response = client.post(
        "/predict", data=b"0" * (512 * 1024 + 1), content_type="application/json"
    )
    assert response.status_code == 413
    error = error_of(response)
    assert error["code"] == "payload_too_large"
    assert str(512 * 1024) in error["message"]


def test_image_over_the_pixel_limit_is_413(client):
    big = png_bytes(synthetic_digit(), size=201)  # 201 x 201 > MAX_IMAGE_PIXELS = 200 x 200
    response = client.post("/predict", data=big, content_type="image/png")
    assert response.status_code == 413
    assert error_of(response)["code"] == "payload_too_large"


def test_undecodable_image_is_400(client):
    response = client.post(
        "/predict",
        data={"image": (io.BytesIO(b"\x89PNG\r\n\x1a\n garbage"), "bad.png")},
        content_type="multipart/form-data",
    )
    assert response.status_code == 400


def test_multipart_without_a_file_is_400(client):
    response = client.post("/predict", data={"note": "hello"}, content_type="multipart/form-data")
    assert response.status_code == 400
    assert "no image file" in error_of(response)["message"]


@pytest.mark.parametrize("content_type", ["text/plain", "application/xml", None])
def test_unsupported_content_type_is_415(client, content_type):
    response = client.post("/predict", data=b"0", content_type=content_type)
    assert response.status_code == 415
    assert error_of(response)["code"] == "unsupported_media_type"


def test_get_on_predict_is_405_with_allow(client):
    response = client.get("/predict")
    assert response.status_code == 405
    assert error_of(response)["code"] == "method_not_allowed"
    assert "POST" in response.headers["Allow"]


def test_not_ready_is_503(tmp_path):
    app = build_app(tmp_path / "empty-store")
    response = app.test_client().post(
        "/predict",
        data=json.dumps({"image": synthetic_digit().tolist()}),
        content_type="application/json",
    )
    assert response.status_code == 503
    assert error_of(response)["code"] == "not_ready"


def test_pinning_a_loaded_version_does_not_touch_the_store(app, client, monkeypatch):
    predictor = app.extensions["convserve"].predictor
    predictor.model_for(version=2)  # now in the LRU

    def no_store(*args, **kwargs):
        raise AssertionError("the store was read for a loaded version")

    monkeypatch.setattr(predictor.store, "resolve", no_store)
    for version in (1, 2):
        response = post_json(client, {"image": synthetic_digit().tolist()}, f"?version={version}")
        assert response.get_json()["model"]["version"] == version
