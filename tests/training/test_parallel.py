"""A training step with the batch split over threads (training/parallel.py) against the plain
step, the optimizer's block-wise update, and the conv backward's chunked products."""

import threading

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from training.bundle import input_contract, normalise
from training.data import load_mnist, split_validation
from training.layers import Conv2D, ConvPool, MaxPool2D, ReLU
from training.network import Network, preset
from training.optimizers import Adam, Momentum
from training.parallel import THREADS_ENV, TrainStep, _deal, default_threads
from training.trainer import TrainConfig, evaluate, train

SPLITTABLE = ("simpleconvnet", "mlp", "tinyconv")


@pytest.fixture(scope="module")
def digits(mnist_images):
    """(x (64, 1, 28, 28) float32 normalised, labels (64,) intp)."""
    images, labels = mnist_images
    x = normalise(images, input_contract(0.1307, 0.3081), np.float32)
    return x, labels.astype(np.intp)


def twins(spec_name="simpleconvnet", seed=0):
    """Two networks with the same starting weights."""
    spec = preset(spec_name, hidden=32)
    return (Network(spec, rng=np.random.default_rng(seed)) for _ in range(2))


def worker_threads():
    return [t for t in threading.enumerate() if t.name.startswith("train-step-")]


def assert_close_to(got: dict, expected: dict, rtol: float) -> None:
    """Each array within rtol of the largest magnitude in the expected one (float32 sums)."""
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        scale = float(np.abs(value).max()) or 1.0
        np.testing.assert_allclose(got[key], value, rtol=0, atol=rtol * scale, err_msg=key)


def assert_adam_close_to(got: dict, expected: dict, rtol: float, steps: int, lr: float) -> None:
    """Adam divides each gradient by its own running magnitude, so for a weight whose gradient
    is ~0 the float32 rounding of the sums (which the split changes, and which differs between
    CPUs' BLAS kernels) can change a step's direction: up to ``lr`` per step. All but 1 in
    10,000 weights must match to ``rtol`` as for Momentum, and none may differ by more than
    those steps could make."""
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        difference = np.abs(got[key] - value)
        scale = float(np.abs(value).max()) or 1.0
        off = int((difference > rtol * scale).sum())
        assert off <= value.size // 10_000, f"{key}: {off} of {value.size} differ"
        assert float(difference.max()) <= 2 * steps * lr, key


@pytest.mark.parametrize("spec_name", SPLITTABLE)
@pytest.mark.parametrize(("threads", "count"), [(2, 64), (3, 50), (2, 33)])
def test_the_split_gives_the_whole_batch_gradient(digits, spec_name, threads, count):
    x, labels = digits[0][:count], digits[1][:count]
    split_net, plain_net = twins(spec_name)
    with TrainStep(split_net, Adam(), threads) as step:
        assert len(step.shares(count)) == threads  # really split, unevenly for 50 and 33
        loss, logits = step.gradients(x, labels)
    expected_loss = plain_net.loss(x, labels)
    plain_net.backward()
    assert loss == pytest.approx(expected_loss, rel=1e-5)
    np.testing.assert_allclose(logits, plain_net.forward(x), rtol=1e-5, atol=1e-5)
    assert_close_to(split_net.grads(), plain_net.grads(), rtol=2e-6)


@pytest.mark.parametrize(
    "make_optimizer",
    [lambda: Adam(1e-3, weight_decay=1e-2), lambda: Momentum(0.05, weight_decay=5e-3)],
    ids=["adamw", "momentum"],
)
def test_split_steps_update_the_weights_like_plain_steps(digits, make_optimizer):
    x, labels = digits
    split_net, plain_net = twins()
    split_opt, plain_opt = make_optimizer(), make_optimizer()
    with TrainStep(split_net, split_opt, 2) as split, TrainStep(plain_net, plain_opt, 1) as plain:
        assert plain.threads == 1 and split.threads == 2
        for i in range(8):
            part = slice(8 * (i % 3), 64)  # batches of 64, 56, 48 images: all split
            split_loss, _ = split(x[part], labels[part])
            plain_loss, _ = plain(x[part], labels[part])
            assert split_loss == pytest.approx(plain_loss, rel=1e-4)
    assert split_opt.steps == plain_opt.steps == 8
    if isinstance(split_opt, Adam):
        assert_adam_close_to(split_net.params(), plain_net.params(), rtol=1e-5, steps=8, lr=1e-3)
    else:
        assert_close_to(split_net.params(), plain_net.params(), rtol=1e-5)
    moved = split_net.params()["fc1.W"] - Network(preset("simpleconvnet")).params()["fc1.W"]
    assert np.abs(moved).max() > 1e-3  # the steps did change the weights


def test_the_split_follows_weights_loaded_after_it_started(digits):
    x, labels = digits
    split_net, plain_net = twins()
    other = Network(preset("simpleconvnet"), rng=np.random.default_rng(7)).state()
    with TrainStep(split_net, Adam(), 2) as step:
        split_net.load_state(other)  # replaces the arrays the replica was built with
        plain_net.load_state(other)
        step.gradients(x, labels)
    plain_net.loss(x, labels)
    assert_close_to(split_net.grads(), plain_net.backward(), rtol=2e-6)


def test_a_failed_check_leaves_the_weights_alone_and_the_step_usable(digits):
    x, labels = digits
    network, _ = twins()
    before = {k: v.copy() for k, v in network.params().items()}

    def refuse(loss):
        raise FloatingPointError(f"loss {loss}")

    with TrainStep(network, Adam(), 2) as step:
        with pytest.raises(FloatingPointError):
            step(x, labels, check=refuse)
        assert all(np.array_equal(network.params()[k], v) for k, v in before.items())
        step(x, labels)  # the workers are still in step with the caller
        assert not np.array_equal(network.params()["fc1.W"], before["fc1.W"])


def test_an_error_in_a_worker_is_raised_by_the_caller(digits):
    x, labels = digits
    network, _ = twins()
    bad = labels.copy()
    bad[-1] = 10  # no such class: only the last share (a worker's) fails
    with TrainStep(network, Adam(), 2) as step:
        with pytest.raises(IndexError):
            step(x, bad)
        loss, _ = step(x, labels)
        assert np.isfinite(loss)


def test_small_batches_and_batch_statistics_are_not_split(digits):
    x, labels = digits
    network, _ = twins()
    with TrainStep(network, Adam(), 2) as step:
        assert step.shares(31) == [slice(0, 31)]  # fewer than 16 images per thread
        assert len(step.shares(32)) == 2
    deep = Network(preset("deepconvnet"), rng=np.random.default_rng(0))
    with TrainStep(deep, Adam(), 4) as step:  # batch norm: its statistics are the batch's
        assert step.threads == 1 and step.shares(1000) == [slice(0, 1000)]
        assert not worker_threads()


def test_worker_threads_stop_when_the_step_is_closed():
    network, _ = twins()
    with TrainStep(network, Adam(), 3):
        assert len(worker_threads()) == 2
        assert all(t.daemon for t in worker_threads())
    assert not worker_threads()


def test_default_threads_follow_blas_and_the_environment(monkeypatch):
    monkeypatch.delenv(THREADS_ENV, raising=False)
    with threadpool_limits(limits=1, user_api="blas"):
        assert default_threads() == 1
    monkeypatch.setenv(THREADS_ENV, "3")
    assert default_threads() == 3
    monkeypatch.setenv(THREADS_ENV, "many")
    with pytest.raises(ValueError, match=THREADS_ENV):
        default_threads()


def test_training_with_the_split_learns_like_the_plain_step(tiny_mnist_dir):
    data = load_mnist(tiny_mnist_dir)
    train_ds, val_ds = split_validation(data.train, 100, np.random.default_rng(0))
    results = {}
    for threads in (2, 1):
        network = Network(preset("simpleconvnet"), rng=np.random.default_rng(0))
        config = TrainConfig(
            epochs=4, batch_size=50, optimizer="adam", lr=3e-3, schedule="constant", shift=0
        )
        config.threads = threads
        rng = np.random.default_rng(0)
        results[threads] = train(network, train_ds, val_ds, config, rng, progress=False)
        assert not worker_threads()
    split, plain = results[2], results[1]
    assert (split.threads, plain.threads) == (2, 1)
    assert split.history[-1]["train_loss"] < 0.3 * split.history[0]["train_loss"]
    assert split.val_accuracy > 0.4
    assert evaluate(split.network, data.test, contract=split.contract)["accuracy"] > 0.4
    for ours, theirs in zip(split.history, plain.history, strict=True):
        assert ours["train_loss"] == pytest.approx(theirs["train_loss"], rel=1e-3)
        assert ours["val_loss"] == pytest.approx(theirs["val_loss"], rel=1e-3)


def test_the_trainer_rejects_a_bad_thread_count(tiny_mnist_dir, monkeypatch):
    from training.trainer import TrainingConfigError

    data = load_mnist(tiny_mnist_dir)
    network = Network(preset("mlp", hidden=8), rng=np.random.default_rng(0))
    with pytest.raises(TrainingConfigError, match="threads"):
        train(network, data.train, None, TrainConfig(threads=0), np.random.default_rng(0))
    monkeypatch.setenv(THREADS_ENV, "0")
    with pytest.raises(TrainingConfigError, match=THREADS_ENV):
        train(network, data.train, None, TrainConfig(epochs=1), np.random.default_rng(0))


# --------------------------------------------------------------------------- the pieces


@pytest.mark.parametrize("parts", [1, 2, 3, 7])
def test_deal_shares_every_element_once_and_evenly(parts):
    blocks = [("a", 0, 750), ("b", 0, 30)] + [("c", i, min(i + 100, 432)) for i in (0, 100, 200)]
    blocks += [("c", 300, 432)]
    dealt = _deal(blocks, parts)
    assert len(dealt) == parts
    covered = {}
    for share in dealt:
        for name, start, stop in share:
            covered.setdefault(name, []).extend(range(start, stop))
    assert {k: sorted(v) for k, v in covered.items()} == {
        "a": list(range(750)),
        "b": list(range(30)),
        "c": list(range(432)),
    }
    sizes = [sum(stop - start for _, start, stop in share) for share in dealt]
    assert max(sizes) - min(sizes) <= 1


@pytest.mark.parametrize("make_optimizer", [lambda: Adam(weight_decay=0.1), lambda: Momentum(0.1)])
def test_updating_blocks_in_any_grouping_is_the_plain_step(make_optimizer):
    rng = np.random.default_rng(0)
    params = {"w": rng.standard_normal((300, 7)), "b": rng.standard_normal(7)}
    grads = {k: rng.standard_normal(v.shape) for k, v in params.items()}
    plain, pieces = make_optimizer(), make_optimizer()
    plain.block_size = pieces.block_size = 256
    expected = {k: v.copy() for k, v in params.items()}
    for _ in range(3):
        plain.step(expected, grads)
        blocks = pieces.begin_step(params, grads)
        for share in reversed(_deal(blocks, 3)):  # other groupings, other order
            pieces.update(params, grads, share)
    for key in params:
        np.testing.assert_array_equal(params[key], expected[key])


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("filters", [30, 4])
def test_chunked_conv_products_are_the_single_product(mnist_images, fused, filters):
    """Training's conv products in column chunks (Conv2D._column_chunk) against one product
    each (small_product huge), float64: 50 MNIST images give a partial last chunk."""
    images = mnist_images[0][:50].astype(np.float64)[:, None] / 255
    rng = np.random.default_rng(0)
    W, b = rng.standard_normal((filters, 1, 5, 5)), rng.standard_normal(filters)
    results = []
    for small_product in (Conv2D.small_product, 10**12):
        conv = Conv2D(W, b)
        conv.small_product = small_product
        layer = ConvPool(conv, ReLU(), MaxPool2D(2)) if fused else conv
        out = layer.forward(images)
        dx = layer.backward(np.sin(np.arange(out.size)).reshape(out.shape))
        results.append((out, conv.dW, conv.db, dx))
        # Inference computes the responses in one product: the same up to rounding.
        np.testing.assert_allclose(layer.forward(images, train=False), out, rtol=1e-12)
    assert Conv2D(W, b)._column_chunk() is not None
    for got, expected in zip(results[0], results[1], strict=True):
        np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-12)
