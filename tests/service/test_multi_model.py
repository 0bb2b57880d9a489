"""Several models per server: every model in the store (or MODELS), each at its own alias,
loaded and refused on its own; /predict keeps answering with MODEL_NAME."""

from __future__ import annotations

import pytest

from tests.support.apps import build_app
from tests.support.bundles import corrupt_bundle, make_bundle, make_store

IMAGE = {"image": [[0] * 28] * 28}
V2_BODY = {"inputs": [{"name": "input", "shape": [1, 784], "datatype": "UINT8", "data": [0] * 784}]}


@pytest.fixture
def store(tmp_path):
    """mnist:1 and mnist:2 (production -> 1); letters:1 (production), letters:2 (staging), a
    two-class model so its answers are told apart."""
    store = make_store(tmp_path, {"alias": "production"}, {"seed": 2})
    for number, alias in ((1, "production"), (2, "staging")):
        path = make_bundle(tmp_path / f"letters{number}.npz", seed=10 + number, classes=[0, 1])
        store.publish(path, "letters", alias=alias)
    return store


def predict(client, path: str) -> dict:
    response = client.post(path, json=IMAGE)
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def test_every_model_in_the_store_is_served_at_its_alias(store):
    client = build_app(store.root).test_client()
    assert predict(client, "/predict")["model"] == {"name": "mnist", "version": 1}
    letters = predict(client, "/models/letters/predict")
    assert letters["model"] == {"name": "letters", "version": 1}
    assert len(letters["predictions"][0]["probabilities"]) == 2
    v2 = client.post("/v2/models/letters/infer", json=V2_BODY).get_json()
    assert v2["model_name"] == "letters" and v2["model_version"] == "1"
    ready = client.get("/readyz").get_json()
    assert ready["models"] == {"letters": 1, "mnist": 1}
    assert client.get("/v2/models/letters/ready").status_code == 200


def test_models_follow_their_own_alias(store):
    client = build_app(store.root, MODELS="mnist,letters@staging").test_client()
    assert predict(client, "/models/letters/predict")["model"]["version"] == 2
    assert predict(client, "/models/mnist/predict")["model"]["version"] == 1


def test_a_configured_list_serves_only_its_models(store):
    client = build_app(store.root, MODELS="mnist").test_client()
    response = client.post("/models/letters/predict", json=IMAGE)
    assert response.status_code == 404
    assert "letters" in response.get_json()["error"]["message"]
    assert client.post("/v2/models/letters/infer", json=V2_BODY).status_code == 404


def test_a_model_that_fails_to_load_blocks_no_other(store):
    corrupt_bundle(store.root, 1, name="letters")
    client = build_app(store.root).test_client()
    assert predict(client, "/predict")["model"]["name"] == "mnist"
    response = client.get("/readyz")
    assert response.status_code == 503
    assert "letters" in response.get_json()["error"]["message"]
    assert client.get("/v2/models/mnist/ready").status_code == 200
    assert client.get("/v2/models/letters/ready").status_code == 503
    assert client.post("/models/letters/predict", json=IMAGE).status_code == 503


def test_a_model_published_under_a_new_name_is_picked_up(store, tmp_path):
    app = build_app(store.root)
    client = app.test_client()
    assert client.post("/models/fashion/predict", json=IMAGE).status_code == 404
    store.publish(make_bundle(tmp_path / "fashion.npz", seed=7), "fashion", alias="production")
    assert predict(client, "/models/fashion/predict")["model"] == {"name": "fashion", "version": 1}
    names = [entry["name"] for entry in client.get("/models").get_json()["models"]]
    assert names == ["fashion", "letters", "mnist"]
    app.extensions["convserve"].models.stop()


def test_model_name_must_be_among_models(store):
    with pytest.raises(ValueError, match="MODEL_NAME"):
        build_app(store.root, MODELS="letters")
