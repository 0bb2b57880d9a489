"""The official Open Inference Protocol client (``tritonclient[http]``) against the real server:
health, metadata, and inference with JSON and binary tensors both ways."""

from __future__ import annotations

import numpy as np
import pytest

from training.store import ModelStore

httpclient = pytest.importorskip("tritonclient.http", reason="needs tritonclient[http] (dev extra)")
InferenceServerException = pytest.importorskip("tritonclient.utils").InferenceServerException

pytestmark = pytest.mark.slow


@pytest.fixture
def triton(server):
    client = httpclient.InferenceServerClient(url=f"127.0.0.1:{server.port}", network_timeout=30)
    yield client
    client.close()


def digits(count: int) -> np.ndarray:
    batch = np.zeros((count, 28, 28), dtype=np.float32)
    for index in range(count):
        batch[index, 5:23, 6 + 2 * index : 10 + 2 * index] = 255.0
        batch[index, 8 + index : 11 + index, 4:22] = 200.0
    return batch


def expected(e2e_store, version: int, pixels: np.ndarray) -> np.ndarray:
    return ModelStore(e2e_store).load("mnist", version).predict_proba(pixels.reshape(-1, 28, 28))


def test_health_and_metadata(triton):
    assert triton.is_server_live()
    assert triton.is_server_ready()
    assert triton.is_model_ready("mnist")
    assert triton.is_model_ready("mnist", "2")
    assert "binary_tensor_data" in triton.get_server_metadata()["extensions"]
    metadata = triton.get_model_metadata("mnist")
    assert metadata["inputs"][0]["name"] == "input"
    assert [o["name"] for o in metadata["outputs"]] == ["probabilities", "label"]


@pytest.mark.parametrize("binary_input", [True, False])
@pytest.mark.parametrize("binary_output", [True, False])
def test_infer(triton, e2e_store, binary_input, binary_output):
    pixels = digits(3)
    tensor = httpclient.InferInput("input", list(pixels.shape), "FP32")
    tensor.set_data_from_numpy(pixels, binary_data=binary_input)
    outputs = [
        httpclient.InferRequestedOutput("probabilities", binary_data=binary_output),
        httpclient.InferRequestedOutput("label", binary_data=binary_output),
    ]
    result = triton.infer("mnist", [tensor], outputs=outputs, request_id="triton-1")
    probabilities = result.as_numpy("probabilities")
    want = expected(e2e_store, 1, pixels)
    np.testing.assert_allclose(probabilities, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(result.as_numpy("label"), want.argmax(axis=1))
    response = result.get_response()
    assert response["id"] == "triton-1" and response["model_version"] == "1"


def test_infer_without_outputs_gets_all_binary_and_a_pinned_version(triton, e2e_store):
    pixels = digits(2).astype(np.uint8)
    tensor = httpclient.InferInput("input", [2, 784], "UINT8")
    tensor.set_data_from_numpy(pixels.reshape(2, 784))
    result = triton.infer("mnist", [tensor], model_version="2")
    want = expected(e2e_store, 2, pixels.astype(np.float32))
    np.testing.assert_allclose(result.as_numpy("probabilities"), want, rtol=1e-5, atol=1e-6)
    assert result.get_response()["model_version"] == "2"


def test_errors_reach_the_client_as_messages(triton):
    tensor = httpclient.InferInput("input", [1, 27, 28], "FP32")
    tensor.set_data_from_numpy(np.zeros((1, 27, 28), dtype=np.float32))
    with pytest.raises(InferenceServerException, match="shape"):
        triton.infer("mnist", [tensor])
    with pytest.raises(InferenceServerException, match="fashion"):
        triton.get_model_metadata("fashion")
