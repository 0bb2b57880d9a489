"""Optimizers on a quadratic bowl, their per-name state, decoupled weight decay, schedules."""

import math

import numpy as np
import pytest

from training.optimizers import (
    SGD,
    Adam,
    ConstantSchedule,
    CosineSchedule,
    Momentum,
    OneCycleSchedule,
    StepSchedule,
    make_optimizer,
    make_schedule,
)

# f(p) = 0.5 * sum(curvature * (p - target)^2) for two named parameters, one matrix, one vector.
TARGETS = {"fc1.W": np.array([[1.0, -2.0], [0.5, 3.0]]), "fc1.b": np.array([-1.0, 2.0])}
CURVATURE = {"fc1.W": np.array([[1.0, 4.0], [0.5, 2.0]]), "fc1.b": np.array([3.0, 1.0])}


def quadratic_grads(params):
    return {name: CURVATURE[name] * (p - TARGETS[name]) for name, p in params.items()}


def fresh_params(dtype=np.float64):
    return {name: np.zeros_like(target, dtype=dtype) for name, target in TARGETS.items()}


@pytest.mark.parametrize(
    "optimizer,steps",
    [
        (SGD(lr=0.2), 200),
        (Momentum(lr=0.05, momentum=0.9), 300),
        (Adam(lr=0.05), 1000),
    ],
    ids=["sgd", "momentum", "adam"],
)
def test_optimizer_minimises_a_quadratic(optimizer, steps):
    params = fresh_params()
    start_loss = sum(float((CURVATURE[n] * TARGETS[n] ** 2).sum()) for n in TARGETS) / 2
    for _ in range(steps):
        optimizer.step(params, quadratic_grads(params))
    for name, target in TARGETS.items():
        np.testing.assert_allclose(params[name], target, atol=1e-3, err_msg=name)
    assert start_loss > 1.0  # the optimum really was far away


def test_step_updates_the_arrays_in_place_and_keeps_dtype():
    params = fresh_params(np.float32)
    weight = params["fc1.W"]
    Adam(lr=0.1).step(params, quadratic_grads(params))
    assert params["fc1.W"] is weight
    assert weight.dtype == np.float32
    assert np.all(weight != 0)


@pytest.mark.parametrize("optimizer", [Momentum(lr=0.1), Adam(lr=0.1)], ids=["momentum", "adam"])
def test_state_is_keyed_by_parameter_name(optimizer):
    params = fresh_params()
    optimizer.step(params, quadratic_grads(params))
    assert set(optimizer.state) == {"fc1.W", "fc1.b"}
    for name, slot in optimizer.state.items():
        for value in slot.values():
            assert value.shape == params[name].shape


def test_sgd_keeps_no_state():
    params = fresh_params()
    optimizer = SGD(lr=0.1)
    optimizer.step(params, quadratic_grads(params))
    assert optimizer.state == {}
    # one exact step: p = 0 - lr * curvature * (0 - target)
    np.testing.assert_allclose(params["fc1.b"], 0.1 * CURVATURE["fc1.b"] * TARGETS["fc1.b"])


def test_adam_first_step_has_the_size_of_the_learning_rate():
    # With bias correction, Adam's first step is lr * sign(g) whatever the gradient's scale.
    params = {"w": np.zeros(3)}
    Adam(lr=0.01).step(params, {"w": np.array([1e-3, -50.0, 7.0])})
    np.testing.assert_allclose(params["w"], [-0.01, 0.01, -0.01], rtol=1e-4)


@pytest.mark.parametrize("name", ["sgd", "momentum", "adam"])
def test_decoupled_weight_decay_shrinks_weights_but_not_biases(name):
    params = {"fc1.W": np.full((2, 2), 2.0), "fc1.b": np.full(2, 2.0)}
    zero = {key: np.zeros_like(value) for key, value in params.items()}
    optimizer = make_optimizer(name, lr=0.1, weight_decay=0.5)
    optimizer.step(params, zero)
    np.testing.assert_allclose(params["fc1.W"], 2.0 * (1 - 0.1 * 0.5))
    np.testing.assert_allclose(params["fc1.b"], 2.0)


def reference_steps(name, params, grads_per_step, lr, weight_decay):
    """The textbook update rules, whole arrays at a time, in float64 (what the blocked in-place
    updates must equal)."""
    params = {key: value.astype(np.float64) for key, value in params.items()}
    state = {key: [np.zeros_like(value), np.zeros_like(value)] for key, value in params.items()}
    for t, grads in enumerate(grads_per_step, start=1):
        for key, p in params.items():
            g = grads[key].astype(np.float64)
            if p.ndim >= 2:
                p *= 1 - lr * weight_decay
            first, second = state[key]
            if name == "sgd":
                p -= lr * g
            elif name == "momentum":
                first[...] = 0.9 * first + g
                p -= lr * first
            else:
                first[...] = 0.9 * first + 0.1 * g
                second[...] = 0.999 * second + 0.001 * g * g
                p -= lr * (first / (1 - 0.9**t)) / (np.sqrt(second / (1 - 0.999**t)) + 1e-8)
    return params


@pytest.mark.parametrize("name", ["sgd", "momentum", "adam"])
def test_blocked_updates_follow_the_rule_on_large_and_strided_parameters(name):
    # block_size 64: the 70 x 30 matrix spans many blocks and ends in a partial one; the strided
    # view (every other column) cannot be cut into flat blocks and is updated whole.
    rng = np.random.default_rng(0)
    params = {
        "fc1.W": rng.standard_normal((70, 30)),
        "fc2.W": rng.standard_normal((20, 40))[:, ::2],
        "fc2.b": rng.standard_normal(5),
    }
    grads_per_step = [
        {key: rng.standard_normal(value.shape) for key, value in params.items()} for _ in range(3)
    ]
    expected = reference_steps(name, params, grads_per_step, lr=0.05, weight_decay=0.1)
    optimizer = make_optimizer(name, lr=0.05, weight_decay=0.1)
    optimizer.block_size = 64
    for grads in grads_per_step:
        # A non-contiguous gradient (a transposed copy) must be read correctly too.
        grads = {**grads, "fc1.W": np.asfortranarray(grads["fc1.W"])}
        optimizer.step(params, grads)
    for key, value in expected.items():
        np.testing.assert_allclose(params[key], value, rtol=1e-12, atol=1e-12, err_msg=key)


def test_a_gradient_of_the_wrong_shape_is_refused_by_name():
    with pytest.raises(ValueError, match=r"fc1.W.*\(2, 3\)"):
        SGD(lr=0.1).step({"fc1.W": np.zeros((2, 3))}, {"fc1.W": np.zeros((3, 2))})


def test_mismatched_names_are_refused():
    with pytest.raises(ValueError, match="fc1.b"):
        SGD(lr=0.1).step({"fc1.W": np.zeros(2), "fc1.b": np.zeros(2)}, {"fc1.W": np.zeros(2)})


def test_missing_gradient_is_refused():
    with pytest.raises(ValueError, match="backward"):
        SGD(lr=0.1).step({"fc1.W": np.zeros(2)}, {"fc1.W": None})


@pytest.mark.parametrize("lr", [0.0, -1.0, math.nan, math.inf])
def test_bad_learning_rates_are_refused(lr):
    with pytest.raises(ValueError, match="learning rate"):
        SGD(lr=lr)


def test_unknown_optimizer_and_schedule_names():
    with pytest.raises(ValueError, match="choose one of sgd, momentum, adam"):
        make_optimizer("rmsprop", lr=0.1)
    with pytest.raises(ValueError, match="choose one of"):
        make_schedule("linear", 0.1, total_steps=10, steps_per_epoch=1)


# --------------------------------------------------------------------------- schedules
def test_constant_schedule():
    assert [ConstantSchedule(0.3)(step) for step in (0, 10, 10**6)] == [0.3, 0.3, 0.3]


def test_step_schedule_decays_at_the_boundaries():
    schedule = StepSchedule(1.0, step_size=10, gamma=0.5)
    assert [schedule(s) for s in (0, 9, 10, 19, 20)] == [1.0, 1.0, 0.5, 0.5, 0.25]


def test_step_schedule_by_name_decays_each_third_on_epoch_boundaries():
    schedule = make_schedule("step", 1.0, total_steps=90, steps_per_epoch=10)  # 9 epochs
    assert schedule(29) == 1.0
    assert schedule(30) == pytest.approx(0.1)
    assert schedule(60) == pytest.approx(0.01)


def test_cosine_schedule_goes_from_lr_to_zero():
    schedule = CosineSchedule(2.0, total_steps=100)
    assert schedule(0) == 2.0
    assert schedule(50) == pytest.approx(1.0)
    assert schedule(100) == pytest.approx(0.0)
    values = [schedule(s) for s in range(101)]
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))


def test_one_cycle_warms_up_then_decays():
    schedule = OneCycleSchedule(1.0, total_steps=100, warmup_fraction=0.2, min_warmup_steps=0)
    assert schedule(0) == pytest.approx(1.0 / 25)
    assert schedule(20) == pytest.approx(1.0)
    assert max(schedule(s) for s in range(100)) == pytest.approx(1.0)
    rising = [schedule(s) for s in range(21)]
    falling = [schedule(s) for s in range(20, 101)]
    assert all(a < b for a, b in zip(rising, rising[1:], strict=False))
    assert all(a > b for a, b in zip(falling, falling[1:], strict=False))
    assert schedule(100) == pytest.approx(1.0 / 1000)


@pytest.mark.parametrize(
    ("total_steps", "warmup_steps"),
    [(11_000, 2_200), (1_540, 308), (1_000, 300), (400, 200), (90, 45), (30, 15), (1, 0)],
)
def test_one_cycle_warm_up_has_a_floor_in_steps(total_steps, warmup_steps):
    # 20 % of the run, but at least 300 steps when the run is long enough for that to be at
    # most half of it; short runs warm up for half their steps.
    schedule = OneCycleSchedule(1.0, total_steps=total_steps)
    assert schedule.warmup_steps == warmup_steps
    if warmup_steps:
        assert schedule(warmup_steps - 1) < 1.0
        assert schedule(warmup_steps) == pytest.approx(1.0)
