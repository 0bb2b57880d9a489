"""The training loop, evaluation and random shifts, on tiny synthetic digits (seconds)."""

import numpy as np
import pytest

from tests.support.bundles import make_bundle
from training.augment import random_shift
from training.bundle import input_contract, load_bundle
from training.data import Dataset, load_mnist, split_validation
from training.errors import ConvserveError
from training.network import Network, preset
from training.optimizers import OneCycleSchedule
from training.trainer import (
    TrainConfig,
    TrainingConfigError,
    TrainingDiverged,
    class_indices,
    evaluate,
    train,
)

HISTORY_KEYS = {
    "epoch",
    "train_loss",
    "train_accuracy",
    "val_loss",
    "val_accuracy",
    "lr",
    "seconds",
}
# Shifts would move the synthetic digits' strokes, which is what encodes their label.
QUICK = {"epochs": 3, "batch_size": 50, "shift": 0, "lr": 3e-3, "schedule": "constant"}


@pytest.fixture(scope="module")
def tiny_splits(tiny_mnist_dir):
    """(train 400, val 100, test 200) synthetic digits."""
    data = load_mnist(tiny_mnist_dir)
    train_ds, val_ds = split_validation(data.train, 100, np.random.default_rng(0))
    return train_ds, val_ds, data.test


def mlp(num_classes=10, seed=0, **spec_changes):
    spec = {**preset("mlp", num_classes=num_classes, hidden=64), **spec_changes}
    return Network(spec, rng=np.random.default_rng(seed))


def run(network, tiny_splits, seed=0, **config):
    train_ds, val_ds, _ = tiny_splits
    return train(
        network,
        train_ds,
        val_ds,
        TrainConfig(**{**QUICK, **config}),
        np.random.default_rng(seed),
        progress=False,
    )


# --------------------------------------------------------------------------- train
def test_training_learns_and_records_history(tiny_splits):
    result = run(mlp(), tiny_splits, epochs=5)
    assert [row["epoch"] for row in result.history] == [1, 2, 3, 4, 5]
    assert all(set(row) == HISTORY_KEYS for row in result.history)
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    # The synthetic digits are harder for an mlp than they look; chance is 0.1.
    assert result.val_accuracy > 0.4
    test = evaluate(result.network, tiny_splits[2], contract=result.contract)
    assert test["accuracy"] > 0.4
    assert result.contract["mean"] == pytest.approx(tiny_splits[0].images.mean() / 255)


def test_convnet_trains_with_shifts(tiny_splits):
    network = Network(preset("simpleconvnet"), rng=np.random.default_rng(0))
    result = run(network, tiny_splits, epochs=2, shift=2)
    assert len(result.history) == 2
    assert np.isfinite(result.history[-1]["train_loss"])


def test_same_seed_same_weights_other_seed_other_weights(tiny_splits):
    first = run(mlp(seed=1), tiny_splits, seed=5, shift=1).network.state()
    again = run(mlp(seed=1), tiny_splits, seed=5, shift=1).network.state()
    other = run(mlp(seed=1), tiny_splits, seed=6, shift=1).network.state()
    for name in first:
        np.testing.assert_array_equal(first[name], again[name], err_msg=name)
    assert any(not np.array_equal(first[name], other[name]) for name in first)


def test_early_stopping_keeps_the_best_epoch(tiny_splits):
    # Validation labels that contradict the training labels: the more the network learns, the
    # worse it does on them, so validation soon stops improving.
    train_ds, val_ds, _ = tiny_splits
    contrary = Dataset(val_ds.images, (val_ds.labels + 1) % 10)
    network = mlp()
    result = train(
        network,
        train_ds,
        contrary,
        TrainConfig(**{**QUICK, "epochs": 10, "patience": 2}),
        np.random.default_rng(0),
        progress=False,
    )
    assert result.stopped_early
    assert len(result.history) == result.best_epoch + 2 < 10
    keys = [(row["val_accuracy"], -row["val_loss"]) for row in result.history]
    assert result.best_epoch == 1 + keys.index(max(keys))
    # The returned weights are the best epoch's, not the last epoch's.
    best, last = result.history[result.best_epoch - 1], result.history[-1]
    now = evaluate(network, contrary, contract=result.contract)
    assert now["loss"] == pytest.approx(best["val_loss"], rel=1e-6)
    assert now["loss"] != pytest.approx(last["val_loss"], rel=1e-6)
    assert (result.val_accuracy, result.val_loss) == (best["val_accuracy"], best["val_loss"])


def test_without_validation_the_last_epoch_is_kept(tiny_splits):
    train_ds, _, _ = tiny_splits
    result = train(mlp(), train_ds, None, TrainConfig(**QUICK), np.random.default_rng(0), False)
    assert result.best_epoch == 3
    assert result.val_accuracy is None
    assert all(row["val_accuracy"] is None for row in result.history)


def test_schedule_lr_is_recorded(tiny_splits):
    result = run(mlp(), tiny_splits, epochs=3, schedule="onecycle", lr=0.01)
    # Each epoch records the rate of its last step; 400 images in batches of 50: 8 steps/epoch.
    schedule = OneCycleSchedule(0.01, total_steps=24)
    assert [row["lr"] for row in result.history] == [schedule(7), schedule(15), schedule(23)]
    constant = run(mlp(), tiny_splits, epochs=2, schedule="constant", lr=0.01)
    assert [row["lr"] for row in constant.history] == [0.01, 0.01]


def test_divergence_raises_a_clear_error(tiny_splits):
    with pytest.raises(TrainingDiverged, match="diverged.*smaller --lr"):
        run(mlp(), tiny_splits, optimizer="sgd", lr=1e9, schedule="constant")


def test_subset_labels_map_to_class_indices(tiny_splits):
    train_ds, val_ds, test_ds = tiny_splits

    def only(ds, digits):
        keep = np.isin(ds.labels, digits)
        return Dataset(ds.images[keep], ds.labels[keep])

    network = mlp(num_classes=2)
    result = train(
        network,
        only(train_ds, [3, 8]),
        only(val_ds, [3, 8]),
        TrainConfig(**{**QUICK, "epochs": 5, "class_labels": [3, 8]}),
        np.random.default_rng(0),
        progress=False,
    )
    test = evaluate(network, only(test_ds, [3, 8]), contract=result.contract, class_labels=[3, 8])
    assert test["class_labels"] == [3, 8]
    assert test["accuracy"] > 0.9


def test_sigmoid_loss_two_class_network_trains(tiny_splits):
    train_ds, val_ds, _ = tiny_splits
    keep = np.isin(train_ds.labels, [0, 9])
    binary = Dataset(train_ds.images[keep], train_ds.labels[keep])
    network = mlp(num_classes=2, loss="sigmoid_binary_cross_entropy")
    result = train(
        network,
        binary,
        None,
        TrainConfig(**{**QUICK, "epochs": 4, "class_labels": [0, 9]}),
        np.random.default_rng(0),
        progress=False,
    )
    assert result.history[-1]["train_accuracy"] > 0.9


def test_labels_outside_the_classes_are_refused(tiny_splits):
    train_ds, val_ds, _ = tiny_splits
    with pytest.raises(TrainingConfigError, match=r"not among the model's classes \[3, 8\]"):
        train(
            mlp(num_classes=2),
            train_ds,
            val_ds,
            TrainConfig(**{**QUICK, "class_labels": [3, 8]}),
            np.random.default_rng(0),
            progress=False,
        )


@pytest.mark.parametrize(
    "change,message",
    [
        ({"epochs": 0}, "epochs must be a positive integer"),
        ({"batch_size": -5}, "batch_size"),
        ({"lr": float("nan")}, "lr must be a positive number"),
        ({"weight_decay": -1.0}, "weight_decay"),
        ({"optimizer": "rmsprop"}, "unknown optimizer 'rmsprop'"),
        ({"schedule": "exp"}, "unknown schedule 'exp'"),
        ({"shift": 30}, "shift must be at most 8"),
        ({"patience": -1}, "patience"),
    ],
)
def test_impossible_configs_are_refused(change, message, tiny_splits):
    with pytest.raises(TrainingConfigError, match=message):
        run(mlp(), tiny_splits, **change)
    assert issubclass(TrainingConfigError, ConvserveError)


def test_progress_bar_and_epoch_lines_go_to_stderr(tiny_splits, capsys):
    train_ds, val_ds, _ = tiny_splits
    train(mlp(), train_ds, val_ds, TrainConfig(**QUICK), np.random.default_rng(0), progress=True)
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "epoch 3/3" in captured.err
    assert "val loss" in captured.err
    assert "img/s" in captured.err


# --------------------------------------------------------------------------- evaluate
def constant_predictor(predicted: int, num_classes: int = 10) -> Network:
    """An mlp whose logits are 0 except a large one at ``predicted``, for every input."""
    network = mlp(num_classes=num_classes)
    state = {name: np.zeros_like(value) for name, value in network.state().items()}
    state["fc2.b"][predicted] = 10.0
    network.load_state(state)
    return network


def test_evaluate_counts_every_image_exactly():
    labels = np.array([3, 3, 3, 1, 2, 3, 0, 9, 3, 3, 5] * 10, dtype=np.uint8)  # 110 images
    ds = Dataset(np.zeros((110, 28, 28), dtype=np.uint8), labels)
    contract = input_contract(0.1, 0.3)
    result = evaluate(constant_predictor(3), ds, contract=contract, batch_size=7)
    assert result["count"] == 110
    assert result["accuracy"] == pytest.approx(60 / 110)
    assert result["errors"] == 50
    confusion = np.array(result["confusion_matrix"])
    assert confusion.sum() == 110
    # Rows are the true class: everything lands in column 3.
    assert confusion[:, 3].tolist() == [10, 10, 10, 60, 0, 10, 0, 0, 0, 10]
    assert result["per_class_accuracy"][3] == 1.0
    assert result["per_class_accuracy"][0] == 0.0
    assert result["per_class_accuracy"][4] is None  # no image of class 4
    # The mean loss over all images: -log softmax of the logits (10 at class 3, 0 elsewhere).
    log_z = np.log(np.exp(10.0) + 9)
    expected = (60 * (log_z - 10.0) + 50 * log_z) / 110
    assert result["loss"] == pytest.approx(expected, rel=1e-5)
    big_batches = evaluate(constant_predictor(3), ds, contract=contract, batch_size=1000)
    assert big_batches["confusion_matrix"] == result["confusion_matrix"]


def test_evaluate_a_bundle_uses_its_contract_and_labels(tmp_path, tiny_splits):
    path = make_bundle(tmp_path / "m.npz", preset_name="mlp", classes=[3, 8])
    bundle = load_bundle(path)
    test_ds = tiny_splits[2]
    keep = np.isin(test_ds.labels, [3, 8])
    result = evaluate(bundle, Dataset(test_ds.images[keep], test_ds.labels[keep]))
    assert result["class_labels"] == [3, 8]
    assert result["count"] == int(keep.sum())
    assert np.array(result["confusion_matrix"]).shape == (2, 2)
    with pytest.raises(TrainingConfigError, match="not among"):
        evaluate(bundle, test_ds)


def test_class_indices():
    assert class_indices(np.array([8, 3, 8]), [3, 8]).tolist() == [1, 0, 1]
    assert class_indices(np.array([2, 0]), [0, 1, 2]).tolist() == [2, 0]
    with pytest.raises(TrainingConfigError, match=r"\[5\]"):
        class_indices(np.array([3, 5]), [3, 8])


# --------------------------------------------------------------------------- augment
def test_random_shift_moves_each_image_within_range_with_zero_fill():
    rng = np.random.default_rng(0)
    # No zero pixel inside, so zeros in the output can only be fill.
    images = rng.integers(1, 256, size=(300, 28, 28), dtype=np.uint8)
    original = images.copy()
    shifted = random_shift(images, 2, np.random.default_rng(1))
    np.testing.assert_array_equal(images, original)  # input untouched
    assert shifted.shape == images.shape and shifted.dtype == np.uint8
    seen = set()
    for image, out in zip(images, shifted, strict=True):
        match = [
            (dy, dx)
            for dy in range(-2, 3)
            for dx in range(-2, 3)
            if np.array_equal(out, shift_reference(image, dy, dx))
        ]
        assert len(match) == 1
        seen.add(match[0])
    assert len(seen) == 25  # every offset in [-2, 2]^2 occurs


def shift_reference(image, dy, dx):
    """Obvious per-image shift: content moves dy down and dx right, zeros come in."""
    out = np.zeros_like(image)
    h, w = image.shape
    out[max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = image[
        max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)
    ]
    return out


def test_random_shift_is_reproducible_and_zero_is_identity():
    images = np.random.default_rng(0).integers(0, 256, size=(20, 28, 28), dtype=np.uint8)
    a = random_shift(images, 3, np.random.default_rng(7))
    b = random_shift(images, 3, np.random.default_rng(7))
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(random_shift(images, 0, np.random.default_rng(7)), images)


@pytest.mark.parametrize("bad", [-1, 1.5])
def test_random_shift_refuses_bad_sizes(bad):
    with pytest.raises(ValueError, match="max_shift"):
        random_shift(np.zeros((1, 28, 28), np.uint8), bad, np.random.default_rng(0))
