"""Gradient checks: every layer and whole networks against central differences in float64."""

import numpy as np
import pytest

from training.layers import (
    Affine,
    BatchNorm,
    Conv2D,
    Dropout,
    Flatten,
    MaxPool2D,
    ReLU,
    Sigmoid,
    SigmoidBinaryCrossEntropy,
    SoftmaxCrossEntropy,
)
from training.network import Network, preset


def numerical_gradient(f, x, eps=1e-6):
    """Central differences of the scalar f() with respect to every element of x (in place)."""
    grad = np.zeros_like(x)
    it = np.nditer(x, flags=["multi_index"])
    for _ in it:
        i = it.multi_index
        old = x[i]
        x[i] = old + eps
        plus = f()
        x[i] = old - eps
        minus = f()
        x[i] = old
        grad[i] = (plus - minus) / (2 * eps)
    return grad


def check_layer(layer, x, rtol=1e-5, atol=1e-7):
    """Loss = sum(forward(x) * R) for a fixed random R; compare dx and every parameter grad."""
    rng = np.random.default_rng(1)
    out = layer.forward(x, train=True)
    weights = rng.standard_normal(out.shape)

    def loss():
        return float((layer.forward(x, train=True) * weights).sum())

    layer.forward(x, train=True)
    dx = layer.backward(weights.copy())
    analytic = {name: grad.copy() for name, grad in layer.grads().items()}
    np.testing.assert_allclose(dx, numerical_gradient(loss, x), rtol=rtol, atol=atol)
    for name, param in layer.params().items():
        np.testing.assert_allclose(
            analytic[name],
            numerical_gradient(loss, param),
            rtol=rtol,
            atol=atol,
            err_msg=f"gradient of {name}",
        )


@pytest.mark.parametrize("stride,pad,channels", [(1, 0, 1), (2, 1, 3), (1, 2, 2), (3, 0, 2)])
def test_conv2d_gradients(stride, pad, channels):
    rng = np.random.default_rng(0)
    W = rng.standard_normal((4, channels, 3, 3))
    b = rng.standard_normal(4)
    x = rng.standard_normal((2, channels, 7, 6))
    check_layer(Conv2D(W, b, stride=stride, pad=pad), x)


def test_conv2d_matches_direct_convolution():
    rng = np.random.default_rng(0)
    W = rng.standard_normal((3, 2, 3, 3))
    b = rng.standard_normal(3)
    x = rng.standard_normal((2, 2, 6, 5))
    out = Conv2D(W, b, stride=2, pad=1).forward(x)
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    expected = np.zeros((2, 3, 3, 3))
    for n in range(2):
        for f in range(3):
            for i in range(3):
                for j in range(3):
                    patch = xp[n, :, 2 * i : 2 * i + 3, 2 * j : 2 * j + 3]
                    expected[n, f, i, j] = (patch * W[f]).sum() + b[f]
    np.testing.assert_allclose(out, expected, rtol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_conv2d_dtype_follows_weights(dtype):
    W = np.ones((2, 1, 3, 3), dtype=dtype)
    layer = Conv2D(W, np.zeros(2, dtype=dtype))
    out = layer.forward(np.ones((1, 1, 5, 5)))
    assert out.dtype == dtype and out.shape == (1, 2, 3, 3)
    dx = layer.backward(np.ones_like(out))
    assert dx.dtype == dtype and layer.dW.dtype == dtype and layer.db.dtype == dtype


def test_conv2d_rejects_bad_arguments():
    with pytest.raises(ValueError, match="shape"):
        Conv2D(np.zeros((2, 3, 3)), np.zeros(2))
    with pytest.raises(ValueError, match="b must have shape"):
        Conv2D(np.zeros((2, 1, 3, 3)), np.zeros(3))
    with pytest.raises(ValueError, match="stride"):
        Conv2D(np.zeros((2, 1, 3, 3)), np.zeros(2), stride=0)


@pytest.mark.parametrize("size,stride,pad", [(2, 2, 0), (3, 2, 1), (2, 1, 0)])
def test_maxpool_gradients(size, stride, pad):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 3, 6, 6))
    check_layer(MaxPool2D(size, stride, pad), x)


def test_maxpool_ties_send_gradient_to_first_maximum():
    x = np.ones((1, 1, 2, 2))  # a flat, saturated window: four tied maxima
    pool = MaxPool2D(2)
    pool.forward(x)
    dx = pool.backward(np.array([[[[5.0]]]]))
    np.testing.assert_array_equal(dx[0, 0], [[5.0, 0.0], [0.0, 0.0]])


@pytest.mark.parametrize("layer_cls", [ReLU, Sigmoid, Flatten])
def test_elementwise_gradients(layer_cls):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 2, 4, 4))
    x[np.abs(x) < 1e-3] = 0.5  # keep away from ReLU's kink
    check_layer(layer_cls(), x)


def test_affine_gradients_on_4d_input():
    rng = np.random.default_rng(4)
    check_layer(
        Affine(rng.standard_normal((12, 5)), rng.standard_normal(5)),
        rng.standard_normal((3, 3, 2, 2)),
    )


@pytest.mark.parametrize("shape", [(6, 4), (4, 3, 3, 3)])
def test_batchnorm_gradients(shape):
    rng = np.random.default_rng(5)
    features = shape[1]
    layer = BatchNorm(rng.standard_normal(features) + 1, rng.standard_normal(features))
    check_layer(layer, rng.standard_normal(shape), rtol=1e-4, atol=1e-6)


def test_dropout_backward_uses_the_same_mask_and_inference_is_identity():
    x = np.ones((50, 40))
    layer = Dropout(0.5, np.random.default_rng(0))
    out = layer.forward(x, train=True)
    assert set(np.unique(out)) == {0.0, 2.0}
    np.testing.assert_array_equal(layer.backward(np.ones_like(x)), out)
    np.testing.assert_array_equal(layer.forward(x, train=False), x)


def test_softmax_cross_entropy_gradient():
    rng = np.random.default_rng(6)
    logits = rng.standard_normal((5, 4))
    labels = np.array([0, 3, 1, 1, 2])
    loss = SoftmaxCrossEntropy()
    loss.forward(logits, labels)
    analytic = loss.backward()
    numeric = numerical_gradient(lambda: loss.forward(logits, labels), logits)
    np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-9)


def test_sigmoid_binary_cross_entropy_gradient_and_stability():
    rng = np.random.default_rng(7)
    logits = rng.standard_normal((6, 1)) * 3
    labels = np.array([0, 1, 1, 0, 1, 0])
    loss = SigmoidBinaryCrossEntropy()
    loss.forward(logits, labels)
    analytic = loss.backward()
    numeric = numerical_gradient(lambda: loss.forward(logits, labels), logits)
    np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-9)
    assert np.isfinite(loss.forward(np.array([[1000.0], [-1000.0]]), np.array([0, 1])))


def network_gradient_check(net, x, labels, check_input=True):
    net.loss(x, labels)
    analytic = {k: v.copy() for k, v in net.backward().items()}
    for name, param in net.params().items():
        numeric = numerical_gradient(lambda: net.loss(x, labels), param)
        np.testing.assert_allclose(
            analytic[name], numeric, rtol=1e-4, atol=1e-7, err_msg=f"gradient of {name}"
        )
    if not check_input:
        return
    dx = net.input_gradient(x, labels)
    x = x.copy()
    np.testing.assert_allclose(
        dx, numerical_gradient(lambda: net.loss(x, labels), x), rtol=1e-4, atol=1e-7
    )


def small_convnet_spec(num_classes=3):
    return {
        "input_shape": [1, 8, 8],
        "num_classes": num_classes,
        "layers": [
            {"type": "conv2d", "filters": 3, "kernel": 3, "stride": 2, "pad": 1},
            {"type": "relu"},
            {"type": "conv2d", "filters": 2, "kernel": 3, "pad": 1},
            {"type": "maxpool2d", "size": 2},
            {"type": "affine", "units": 5},
            {"type": "sigmoid"},
            {"type": "affine", "units": "classes"},
        ],
    }


def test_whole_network_gradients_random_data():
    rng = np.random.default_rng(8)
    net = Network(small_convnet_spec(), dtype=np.float64, rng=rng)
    x = rng.standard_normal((4, 1, 8, 8))
    network_gradient_check(net, x, np.array([0, 2, 1, 2]))


def test_simpleconvnet_on_real_digits_with_pooling_ties(mnist_images):
    """Real MNIST pixels: flat saturated strokes make exact ties inside pooling windows, where a
    max-pool backward built from an equality mask would count the gradient twice."""
    images, labels = mnist_images
    spec = preset("simpleconvnet", num_classes=10)
    spec["layers"][0].update(filters=2, kernel=3)
    spec["layers"][3]["units"] = 4
    net = Network(spec, dtype=np.float64, rng=np.random.default_rng(9))
    # Negative biases keep the empty background strictly below ReLU's kink at 0.
    net.params()["conv1.b"][:] = -0.05
    net.params()["fc1.b"][:] = 0.1
    x = images.astype(np.float64)[:, None] / 255.0
    # Keep the images whose conv -> ReLU output has tied non-zero maxima in a pooling window.
    (_, conv), (_, relu) = net.layers[:2]
    activation = relu.forward(conv.forward(x, train=False), train=False)
    n, c, h, w = activation.shape
    windows = activation.reshape(n, c, h // 2, 2, w // 2, 2).transpose(0, 1, 2, 4, 3, 5)
    windows = windows.reshape(n, c, h // 2, w // 2, 4)
    top = np.sort(windows, axis=-1)
    tied = ((top[..., -1] == top[..., -2]) & (top[..., -1] > 0)).any(axis=(1, 2, 3))
    assert tied.sum() >= 2, "expected real digits with tied maxima inside pooling windows"
    chosen = np.flatnonzero(tied)[:2]
    # Parameter gradients only: perturbing one input pixel breaks a tie, where the loss has a
    # kink and central differences are not a derivative.
    network_gradient_check(net, x[chosen], labels[chosen].astype(np.intp), check_input=False)


def test_sigmoid_binary_network_gradients():
    rng = np.random.default_rng(10)
    spec = preset("mlp", num_classes=2, hidden=4)
    spec["input_shape"] = [1, 3, 3]
    spec["loss"] = "sigmoid_binary_cross_entropy"
    net = Network(spec, dtype=np.float64, rng=rng)
    network_gradient_check(net, rng.standard_normal((5, 1, 3, 3)), np.array([0, 1, 1, 0, 1]))
