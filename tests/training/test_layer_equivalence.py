"""The fast paths compute what the plain layers compute.

``ConvPool`` (conv -> [ReLU] -> max-pool in one step, pooling before the bias) against the three
layers run one after the other; ``Network``'s plan against a plain loop over its layers; the
layers' layout handling (NCHW views of CHWN storage, column-major inputs) against contiguous
inputs; workspaces against fresh arrays (repeated, chunked and concurrent calls).
"""

import copy
import pickle
import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from training.layers import Affine, BatchNorm, Conv2D, ConvPool, MaxPool2D, ReLU
from training.network import Network, preset

# Rounding differs between the paths (other summation orders), so the absolute tolerance scales
# with the largest expected value: a sum of many float32 terms may cancel to a small number
# with a large relative error. A gradient routed to the wrong pooling position would still be
# off by a whole term, far outside these.
RELATIVE_TOLERANCE = {np.float64: 1e-10, np.float32: 1e-4}
SCALED_ABSOLUTE_TOLERANCE = {np.float64: 1e-12, np.float32: 1e-5}


def assert_close(actual, expected, err_msg="", dtype=None):
    """Equal up to rounding in ``dtype`` (default: the expected array's)."""
    expected = np.asarray(expected)
    dtype = dtype or expected.dtype.type
    scale = float(np.abs(expected).max()) if expected.size else 0.0
    np.testing.assert_allclose(
        actual,
        expected,
        rtol=RELATIVE_TOLERANCE[dtype],
        atol=SCALED_ABSOLUTE_TOLERANCE[dtype] * max(scale, 1e-30),
        err_msg=err_msg,
    )


# Ties. MNIST's flat backgrounds and saturated strokes make equal conv responses inside a
# pooling window, and the gradient must go to the first. But BLAS may round the same dot product
# differently at different positions of a matrix (edge tiles), so with arbitrary floats a "tie"
# can come out of either path broken by an ulp, each its own way. Tests about ties therefore use
# dyadic numbers (multiples of 1/8, inputs of 1/256) whose products and sums are exact in
# float32: every path then sees the same exact ties and must route them the same way.


def digit_like(rng, n, channels, height, width, dtype):
    """Images like normalised MNIST, in exact dyadic values: a flat background and saturated
    strokes, so pooling windows hold exact ties, plus noise on a few pixels."""
    x = np.full((n, channels, height, width), -0.5)
    for image in x:
        for _ in range(3):
            top, left = rng.integers(0, height - 1), rng.integers(0, width - 1)
            image[:, top : top + rng.integers(2, 6), left : left + rng.integers(2, 6)] = 2.75
    noisy = rng.random(x.shape) < 0.05
    x[noisy] += rng.integers(-16, 17, noisy.sum()) / 8
    return x.astype(dtype)


def generic(rng, n, channels, height, width, dtype):
    """Normal random images: no ties, rounding everywhere."""
    return rng.standard_normal((n, channels, height, width)).astype(dtype)


def dyadic(rng, shape, scale_eighths):
    """Random multiples of 1/8 in [-scale/8, scale/8]."""
    return rng.integers(-scale_eighths, scale_eighths + 1, shape) / 8


def plain_forward_backward(layers, x, dout, first_needs_input_grad=True):
    """Run ``layers`` one after the other; returns (output, dx, {layer index: grads})."""
    layers[0].needs_input_grad = first_needs_input_grad
    out = x
    for layer in layers:
        out = layer.forward(out, train=True)
    grad = dout
    for layer in reversed(layers):
        grad = layer.backward(grad)
        if grad is None:
            break
    grads = {i: {k: v.copy() for k, v in layer.grads().items()} for i, layer in enumerate(layers)}
    return out.copy(), None if grad is None else grad.copy(), grads


def make_conv(rng, filters, channels, kernel, stride, pad, dtype):
    """A conv with dyadic weights and biases (exact arithmetic on dyadic inputs)."""
    W = dyadic(rng, (filters, channels, kernel, kernel), 8)
    b = dyadic(rng, filters, 4)
    return Conv2D(W.astype(dtype), b.astype(dtype), stride=stride, pad=pad)


def check_convpool_matches_layers(x, conv, with_relu, pool, rng, needs_input_grad=True, chunk=None):
    dtype = conv.W.dtype.type
    layers = [conv, ReLU(), pool] if with_relu else [conv, pool]
    expected_out = conv.forward(x)
    for layer in layers[1:]:
        expected_out = layer.forward(expected_out)
    dout = rng.standard_normal(expected_out.shape).astype(dtype)
    out, dx, grads = plain_forward_backward(layers, x, dout, needs_input_grad)

    fused = ConvPool(conv, layers[1] if with_relu else None, pool)
    if chunk is not None:  # several chunks in training and inference
        fused.training_chunk = fused.inference_chunk = chunk
    conv.dW = conv.db = None
    fused_out = fused.forward(x, train=True)
    fused_dx = fused.backward(dout)
    assert fused_out.shape == out.shape and fused_out.dtype == dtype
    assert_close(fused_out, out)
    assert_close(conv.dW, grads[0]["W"], "dW")
    assert_close(conv.db, grads[0]["b"], "db")
    if needs_input_grad:
        assert fused_dx.shape == x.shape and fused_dx.dtype == dtype
        assert_close(fused_dx, dx, "dx")
    else:
        assert fused_dx is None
    # Inference (no masks, chunked) gives the same output.
    assert_close(fused.forward(x, train=False), out)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("with_relu", [True, False])
@pytest.mark.parametrize("images", [digit_like, generic])
@pytest.mark.parametrize("chunk", [None, 2])  # 2: several chunks, a short last one
@pytest.mark.parametrize(
    "shape,filters,kernel,stride,pad,pool_size",
    [
        ((6, 1, 28, 28), 4, 5, 1, 0, 2),  # SimpleConvNet's first block
        ((3, 1, 28, 28), 3, 4, 1, 0, 2),  # odd conv output (25): last row and column unpooled
        ((2, 3, 11, 9), 2, 3, 2, 1, 2),  # stride, padding, channels, odd sizes
        ((2, 2, 13, 13), 3, 3, 1, 2, 3),  # 3x3 pooling over a 15x15 output
        ((2, 2, 8, 8), 2, 3, 1, 1, 1),  # pooling of size 1 is the identity
    ],
)
def test_convpool_matches_the_layers_in_sequence(
    dtype, with_relu, images, chunk, shape, filters, kernel, stride, pad, pool_size
):
    rng = np.random.default_rng(sum(shape) + filters + kernel)
    x = images(rng, *shape, dtype)
    conv = make_conv(rng, filters, shape[1], kernel, stride, pad, dtype)
    if images is generic:
        conv.W = rng.standard_normal(conv.W.shape).astype(dtype)
        conv.b = rng.standard_normal(conv.b.shape).astype(dtype)
    check_convpool_matches_layers(x, conv, with_relu, MaxPool2D(pool_size), rng, chunk=chunk)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_convpool_skips_the_first_layers_input_gradient(dtype):
    rng = np.random.default_rng(11)
    x = digit_like(rng, 4, 1, 28, 28, dtype)
    conv = make_conv(rng, 5, 1, 5, 1, 0, dtype)
    check_convpool_matches_layers(x, conv, True, MaxPool2D(2), rng, needs_input_grad=False)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_convpool_on_real_digits(mnist_images, dtype):
    """Real MNIST strokes (pixels / 256, exact) through a dyadic conv: many exact ties."""
    images, _ = mnist_images
    rng = np.random.default_rng(12)
    x = (images[:16, None] / 256.0 - 0.125).astype(dtype)
    conv = make_conv(rng, 6, 1, 5, 1, 0, dtype)
    responses = conv.forward(x, train=False)
    windows = responses.reshape(16, 6, 12, 2, 12, 2).transpose(0, 1, 2, 4, 3, 5).reshape(-1, 4)
    top_two = np.sort(windows, axis=1)[:, -2:]
    assert (top_two[:, 0] == top_two[:, 1]).sum() > 100, "expected tied maxima to route"
    check_convpool_matches_layers(x, conv, True, MaxPool2D(2), rng)


def test_convpool_ties_send_gradient_to_the_first_maximum():
    """A flat image: every pooling window is a four-way tie; the gradient goes to its top-left."""
    conv = Conv2D(np.ones((1, 1, 1, 1)), np.zeros(1))
    fused = ConvPool(conv, ReLU(), MaxPool2D(2))
    conv.needs_input_grad = True
    out = fused.forward(np.ones((1, 1, 4, 4)))
    dx = fused.backward(np.arange(1.0, 5.0).reshape(out.shape))
    expected = np.zeros((4, 4))
    expected[::2, ::2] = [[1, 2], [3, 4]]
    np.testing.assert_array_equal(dx[0, 0], expected)


# Each 2x2 window, row-major (top-left, top-right, bottom-left, bottom-right), and the position
# the first maximum sits at: ties after the first maximum, before it, all but one, none.
WINDOWS_AND_FIRST_MAXIMUM = [
    ([0.0, 5.0, 1.0, 5.0], 1),
    ([5.0, 1.0, 5.0, 5.0], 0),
    ([1.0, 2.0, 3.0, 3.0], 2),
    ([1.0, 2.0, 3.0, 4.0], 3),
    ([7.0, 7.0, 7.0, 1.0], 0),
    ([1.0, 1.0, 2.0, 1.0], 2),
]


@pytest.mark.parametrize("fused", [False, True], ids=["maxpool", "convpool"])
def test_partial_ties_send_gradient_to_the_first_maximum(fused):
    """Windows with ties in every arrangement: the whole gradient goes to the first position
    holding the maximum, in the plain max-pool and in the fused step (1x1 identity conv)."""
    values = np.array([w for w, _ in WINDOWS_AND_FIRST_MAXIMUM])  # (windows, 4)
    # One image per window, a 2x2 input each: (N, 1, 2, 2).
    x = values.reshape(-1, 1, 2, 2)
    if fused:
        conv = Conv2D(np.ones((1, 1, 1, 1)), np.zeros(1))
        conv.needs_input_grad = True
        layer = ConvPool(conv, None, MaxPool2D(2))
    else:
        layer = MaxPool2D(2)
    out = layer.forward(x)
    np.testing.assert_array_equal(out.reshape(-1), values.max(axis=1))
    dout = np.arange(1.0, len(values) + 1).reshape(out.shape)
    dx = layer.backward(dout).reshape(len(values), 4)
    expected = np.zeros_like(values)
    for i, (_, first) in enumerate(WINDOWS_AND_FIRST_MAXIMUM):
        expected[i, first] = dout.reshape(-1)[i]
    np.testing.assert_array_equal(dx, expected)


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 3),
    channels=st.integers(1, 3),
    height=st.integers(3, 12),
    width=st.integers(3, 12),
    filters=st.integers(1, 3),
    kernel=st.integers(1, 3),
    stride=st.integers(1, 2),
    pad=st.integers(0, 2),
    pool_size=st.integers(1, 3),
    with_relu=st.booleans(),
    chunk=st.integers(1, 3),
    seed=st.integers(0, 2**16),
)
def test_convpool_matches_the_layers_for_any_geometry(
    n, channels, height, width, filters, kernel, stride, pad, pool_size, with_relu, chunk, seed
):
    conv_out = [(size + 2 * pad - kernel) // stride + 1 for size in (height, width)]
    if min(conv_out) < pool_size:
        return  # nothing to pool; the layers reject it too
    rng = np.random.default_rng(seed)
    x = digit_like(rng, n, channels, height, width, np.float64)
    conv = make_conv(rng, filters, channels, kernel, stride, pad, np.float64)
    check_convpool_matches_layers(x, conv, with_relu, MaxPool2D(pool_size), rng, chunk=chunk)


def test_convpool_refuses_pools_it_cannot_tile():
    conv = Conv2D(np.ones((1, 1, 3, 3)), np.zeros(1))
    for pool in (MaxPool2D(2, stride=1), MaxPool2D(3, stride=2), MaxPool2D(2, pad=1)):
        assert not ConvPool.fits(pool)
        with pytest.raises(ValueError, match="stride == size"):
            ConvPool(conv, None, pool)


# --------------------------------------------------------------------------- networks


def plain_network_step(net, x, labels):
    """The network computed layer by layer, no fused steps: (loss, logits, grads, dx)."""
    out = np.asarray(x, dtype=net.dtype)
    for _, layer in net.layers:
        out = layer.forward(out, train=True)
    logits = out.copy()
    loss = net.loss_layer.forward(out, labels)
    grad = net.loss_layer.backward()
    for _, layer in reversed(net.layers):
        grad = layer.backward(grad)
        if grad is None:
            break
    grads = {k: v.copy() for k, v in net.grads().items()}
    return loss, logits, grads, None if grad is None else grad.copy()


def fallback_spec():
    """Pools the fused step cannot take (overlapping, padded) and a conv -> pool pair it can."""
    return {
        "input_shape": [2, 11, 11],
        "num_classes": 3,
        "layers": [
            {"type": "conv2d", "filters": 3, "kernel": 3, "pad": 1},
            {"type": "relu"},
            {"type": "maxpool2d", "size": 2, "stride": 1},
            {"type": "conv2d", "filters": 2, "kernel": 2},
            {"type": "maxpool2d", "size": 3, "stride": 2, "pad": 1},
            {"type": "conv2d", "filters": 2, "kernel": 1},
            {"type": "maxpool2d", "size": 2},
            {"type": "affine", "units": 4},
            {"type": "relu"},
            {"type": "affine", "units": "classes"},
        ],
    }


def test_the_plan_fuses_only_where_the_pool_tiles():
    steps = Network(preset("simpleconvnet")).steps
    assert [type(step).__name__ for step in steps] == ["ConvPool", "Affine", "ReLU", "Affine"]
    steps = Network(fallback_spec(), dtype=np.float64).steps
    names = [type(step).__name__ for step in steps]
    assert names == [
        "Conv2D",
        "ReLU",
        "MaxPool2D",
        "Conv2D",
        "MaxPool2D",
        "ConvPool",
        "Affine",
        "ReLU",
        "Affine",
    ]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("spec_name", ["simpleconvnet", "tinyconv", "deepconvnet", "fallback"])
def test_network_matches_its_layers_run_one_by_one(mnist_images, dtype, spec_name):
    images, labels = mnist_images
    if spec_name == "fallback":
        spec = fallback_spec()
        rng = np.random.default_rng(13)
        x = digit_like(rng, 5, 2, 11, 11, dtype)
        labels = rng.integers(0, 3, 5)
    else:
        spec = preset(spec_name)
        x = (images[:8, None] / 256.0 - 0.125).astype(dtype)  # exact, see digit_like
        labels = labels[:8].astype(np.intp)
    net = Network(spec, dtype=dtype, rng=np.random.default_rng(14))
    rng = np.random.default_rng(15)
    for name, param in net.params().items():
        if name.startswith("conv"):  # dyadic, so tied responses stay exactly tied
            param[:] = (
                dyadic(rng, param.shape, 4) if name.endswith(".b") else (param * 64).round() / 64
            )
        elif name.endswith(".b"):  # non-zero biases, so bias and ReLU placement matter
            param[:] = rng.standard_normal(param.shape) * 0.1

    # Dropout draws from its generator on every training forward: give both runs the same.
    dropouts = [layer for _, layer in net.layers if hasattr(layer, "rng")]
    states = [layer.rng.bit_generator.state for layer in dropouts]
    loss, _, grads, _ = plain_network_step(net, x, labels)
    for layer, state in zip(dropouts, states, strict=True):
        layer.rng.bit_generator.state = state
    fused_loss = net.loss(x, labels)
    fused_grads = {k: v.copy() for k, v in net.backward().items()}
    assert_close(fused_loss, loss, dtype=dtype)
    for name, grad in grads.items():
        assert_close(fused_grads[name], grad, name)

    plain_logits = x
    for _, layer in net.layers:
        plain_logits = layer.forward(plain_logits, train=False)
    assert_close(net.forward(x, train=False), plain_logits)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_network_input_gradient_matches_layers(dtype):
    rng = np.random.default_rng(15)
    net = Network(fallback_spec(), dtype=dtype, rng=rng)
    x = digit_like(rng, 3, 2, 11, 11, dtype)
    labels = np.array([0, 2, 1])
    for _, layer in net.layers:
        if hasattr(layer, "needs_input_grad"):
            layer.needs_input_grad = True
    _, _, _, dx = plain_network_step(net, x, labels)
    net.layers[0][1].needs_input_grad = False
    assert_close(net.input_gradient(x, labels), dx)


# --------------------------------------------------------------------------- layouts, workspaces


def layouts(x):
    """The same NCHW values stored C-order, CHWN (transposed view), and Fortran-order."""
    chwn = np.ascontiguousarray(x.transpose(1, 2, 3, 0)).transpose(3, 0, 1, 2)
    return {"c": np.ascontiguousarray(x), "chwn": chwn, "fortran": np.asfortranarray(x)}


@pytest.mark.parametrize(
    "make_layer",
    [
        lambda rng: make_conv(rng, 3, 2, 3, 2, 1, np.float64),
        lambda rng: MaxPool2D(3, 2, 1),
        lambda rng: MaxPool2D(2),
        lambda rng: BatchNorm(rng.standard_normal(2) + 1, rng.standard_normal(2)),
        lambda rng: ReLU(),
    ],
)
def test_layers_do_not_depend_on_the_input_memory_layout(make_layer):
    rng = np.random.default_rng(16)
    layer = make_layer(rng)
    x = digit_like(rng, 3, 2, 7, 6, np.float64)
    results = {}
    for name, variant in layouts(x).items():
        out = layer.forward(variant, train=True)
        dout = layouts(np.cos(np.arange(out.size).reshape(out.shape)))[name]
        dx = layer.backward(dout)
        results[name] = (out.copy(), dx.copy(), {k: v.copy() for k, v in layer.grads().items()})
    reference = results.pop("c")
    for out, dx, grads in results.values():
        np.testing.assert_allclose(out, reference[0], rtol=1e-12)
        np.testing.assert_allclose(dx, reference[1], rtol=1e-12, atol=1e-15)
        for key, grad in grads.items():
            np.testing.assert_allclose(grad, reference[2][key], rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("order", ["C", "F"])
def test_affine_input_gradient_follows_the_input_layout(order):
    rng = np.random.default_rng(17)
    layer = Affine(rng.standard_normal((12, 4)), rng.standard_normal(4))
    x = np.asarray(rng.standard_normal((5, 12)), order=order)
    layer.forward(x)
    dout = rng.standard_normal((5, 4))
    dx = layer.backward(dout)
    np.testing.assert_allclose(dx, dout @ layer.W.T, rtol=1e-12)
    assert dx.flags.f_contiguous == (order == "F")


def test_backward_leaves_its_argument_alone():
    rng = np.random.default_rng(18)
    net = Network(preset("simpleconvnet"), dtype=np.float64, rng=rng)
    x = digit_like(rng, 2, 1, 28, 28, np.float64)
    out = net.steps[0].forward(x)
    dout = rng.standard_normal(out.shape)
    kept = dout.copy()
    net.steps[0].backward(dout)
    np.testing.assert_array_equal(dout, kept)


def test_returned_arrays_are_not_reused_by_later_calls():
    rng = np.random.default_rng(19)
    net = Network(preset("simpleconvnet"), rng=rng)
    first_x, second_x = (digit_like(rng, 4, 1, 28, 28, np.float32) for _ in range(2))
    conv = Conv2D(net.params()["conv1.W"], net.params()["conv1.b"])
    for call in (
        lambda x: net.predict_proba(x),
        lambda x: net.steps[0].forward(x, train=True),
        lambda x: net.steps[0].forward(x, train=False),
        lambda x: conv.forward(x),
    ):
        first = call(first_x)
        kept = first.copy()
        call(second_x)
        np.testing.assert_array_equal(first, kept)


def test_chunked_inference_matches_one_pass():
    rng = np.random.default_rng(20)
    net = Network(preset("simpleconvnet"), rng=rng)
    x = digit_like(rng, 23, 1, 28, 28, np.float32)
    whole = net.predict_proba(x)
    net.steps[0].inference_chunk = 5  # 5 + 5 + 5 + 5 + 3 images
    # Not bit for bit: BLAS rounds a product's elements differently at different tile positions.
    assert_close(net.predict_proba(x), whole)


def test_concurrent_inference_gives_each_caller_its_own_answer():
    """Workspaces are per thread: callers in parallel threads must not see each other's data."""
    rng = np.random.default_rng(21)
    net = Network(preset("simpleconvnet"), rng=rng)
    inputs = [digit_like(rng, n, 1, 28, 28, np.float32) for n in (1, 3, 1, 7, 2, 1, 4, 1)]
    expected = [net.predict_proba(x) for x in inputs]
    failures = []

    def worker(index):
        for _ in range(30):
            got = net.predict_proba(inputs[index])
            if not np.array_equal(got, expected[index]):
                failures.append(index)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(inputs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures


def test_networks_copy_and_pickle_with_fresh_workspaces():
    rng = np.random.default_rng(22)
    net = Network(preset("simpleconvnet"), rng=rng)
    x = digit_like(rng, 3, 1, 28, 28, np.float32)
    expected = net.predict_proba(x)
    for clone in (copy.deepcopy(net), pickle.loads(pickle.dumps(net))):
        np.testing.assert_array_equal(clone.predict_proba(x), expected)
        clone.loss(x, np.array([1, 2, 3]))
        clone.backward()
    np.testing.assert_array_equal(net.predict_proba(x), expected)


@pytest.mark.parametrize("spec_name", ["simpleconvnet", "tinyconv", "deepconvnet", "mlp"])
def test_an_empty_batch_gives_no_rows(spec_name):
    net = Network(preset(spec_name))
    assert net.predict_proba(np.zeros((0, 1, 28, 28), np.float32)).shape == (0, 10)
