"""The training recipe as a Python API (training/recipe.py) on tiny synthetic MNIST files: a
bundle trained from Python carries what the CLI records and passes the store's gate."""

import json

import numpy as np
import pytest

from convserve.cli import main
from training.bundle import build_metadata, load_bundle, save_bundle
from training.data import load_mnist
from training.recipe import (
    ShortRunWarning,
    publish_trained,
    save_curves,
    save_trained_bundle,
    train_and_evaluate,
)
from training.store import ModelStore, PromotionRefused
from training.trainer import TrainConfig, TrainingConfigError

# 400 training images in batches of 20 for 5 epochs: 100 optimizer steps, a run long enough
# not to warn, and about a second for the mlp.
CONFIG = TrainConfig(epochs=5, batch_size=20, shift=0)
RUN = {"seed": 7, "val_size": 100}


@pytest.fixture(scope="module")
def data(tiny_mnist_dir):
    return load_mnist(tiny_mnist_dir)


@pytest.fixture(scope="module")
def trained(data):
    return train_and_evaluate(data, "mlp", CONFIG, **RUN)


def test_metadata_carries_the_metrics_the_store_gate_reads(trained, tmp_path):
    path = save_trained_bundle(trained, tmp_path / "mlp.npz")
    metadata = load_bundle(path).metadata
    metrics = metadata["metrics"]
    assert metrics["test_accuracy"] == trained.test["accuracy"]
    assert 0 <= metrics["test_accuracy"] <= 1
    assert metrics["test_images"] == 200 and np.array(metrics["confusion_matrix"]).sum() == 200
    assert metrics["val_accuracy"] is not None
    training = metadata["training"]
    assert training["preset"] == training["arch"] == "mlp"
    assert training["seed"] == 7 and training["val_size"] == 100
    assert training["train_images"] == 400 and training["classes"] == list(range(10))
    assert training["epochs_run"] == len(metadata["history"]) == 5


def test_python_api_and_cli_train_the_same_bundle(data, trained, tiny_mnist_dir, tmp_path):
    out = tmp_path / "cli.npz"
    options = ["--arch", "mlp", "--epochs", "5", "--batch-size", "20", "--shift", "0"]
    options += ["--seed", "7", "--val-size", "100", "--quiet", "--out", str(out)]
    assert main(["train", "--data-dir", str(tiny_mnist_dir), *options]) == 0
    from_cli = load_bundle(out)
    for name, value in trained.network.state().items():
        np.testing.assert_array_equal(value, from_cli.network.state()[name], err_msg=name)

    def without_timings(metadata):
        training = {k: v for k, v in metadata["training"].items() if k != "seconds"}
        history = [{k: v for k, v in row.items() if k != "seconds"} for row in metadata["history"]]
        rest = {k: v for k, v in metadata.items() if k not in ("created", "training", "history")}
        return {**rest, "training": training, "history": history}

    assert without_timings(trained.metadata) == without_timings(from_cli.metadata)


def test_publishes_through_the_regression_gate(trained, tmp_path):
    store = ModelStore(tmp_path / "store")
    assert publish_trained(trained, store, "digits", alias="production", note="api") == 1
    manifest = store.manifest("digits", 1)
    assert manifest["metrics"]["test_accuracy"] == trained.test["accuracy"]

    # The same weights without the recipe's metrics: the gate has nothing to compare.
    bare = tmp_path / "bare.npz"
    contract = trained.metadata["input"]
    save_bundle(
        bare,
        trained.network,
        build_metadata(trained.network, contract=contract, class_labels=list(range(10))),
    )
    with pytest.raises(PromotionRefused, match="records no test accuracy"):
        store.publish(bare, "digits", alias="production")
    assert store.versions("digits") == [1]

    # An equally good model (its recorded accuracy is not below) is let through.
    assert publish_trained(trained, store, "digits", alias="production") == 2
    assert store.resolve("digits", alias="production") == 2


def test_publish_can_reuse_the_saved_bundle(trained, tmp_path):
    path = save_trained_bundle(trained, tmp_path / "model.npz")
    store = ModelStore(tmp_path / "store")
    assert publish_trained(trained, store, "digits", bundle_path=path) == 1
    assert store.load("digits", 1).metadata == load_bundle(path).metadata


def test_curves_json_beside_the_bundle(trained, tmp_path):
    bundle = tmp_path / "run.npz"
    path = save_curves(trained, bundle)
    assert path == tmp_path / "run.curves.json"
    curves = json.loads(path.read_text())
    assert curves["bundle"] == "run.npz" and curves["best_epoch"] == trained.result.best_epoch
    assert curves["history"] == trained.metadata["history"]
    assert curves["test_accuracy"] == trained.test["accuracy"]


def test_class_subset_keeps_digits_as_labels(data):
    config = TrainConfig(epochs=2, batch_size=20, shift=0, class_labels=[3, 8])
    with pytest.warns(ShortRunWarning, match="only 10 optimizer steps"):
        trained = train_and_evaluate(data, "mlp", config, val_size=10)
    assert trained.metadata["class_labels"] == [3, 8]
    assert trained.network.output_shape == (2,)
    assert trained.test["count"] == trained.metadata["metrics"]["test_images"]
    assert trained.test["count"] == int(np.isin(data.test.labels, [3, 8]).sum())


def test_unknown_preset_is_a_config_error(data):
    with pytest.raises(TrainingConfigError, match="unknown architecture preset 'resnet'"):
        train_and_evaluate(data, "resnet", CONFIG)
