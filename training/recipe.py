"""The training recipe as a Python API: split, build, train, evaluate and describe a model.

    from training.data import load_mnist
    from training.recipe import publish_trained, save_trained_bundle, train_and_evaluate
    from training.store import ModelStore
    from training.trainer import TrainConfig

    trained = train_and_evaluate(load_mnist("data/mnist"), "simpleconvnet", TrainConfig())
    save_trained_bundle(trained, "runs/mnist.npz")
    publish_trained(trained, ModelStore("model_store"), "mnist", alias="staging")

``convserve train`` is this module plus argument parsing and printing, so a bundle trained from
Python carries exactly the metadata the CLI records: ``metrics`` (the test accuracy the store's
regression gate compares), ``training`` (every setting, the seed, sizes, seconds) and
``history`` (one row per epoch).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from training.bundle import build_metadata, save_bundle
from training.data import (
    Dataset,
    MnistData,
    limit_dataset,
    select_classes,
    split_validation,
)
from training.fileio import write_atomically
from training.network import PRESETS, Network, preset
from training.posthoc import Posthoc, fit_posthoc
from training.store import ModelStore
from training.trainer import TrainConfig, TrainingConfigError, TrainResult, evaluate, train

ALL_DIGITS = list(range(10))
# Fewer optimizer steps than this and a run warns that its bundle will be poor (measured on
# MNIST with the default recipe: 30 steps 23 %, 60 steps 84 %, 90 steps 95 % test).
FEW_STEPS = 100


class ShortRunWarning(UserWarning):
    """The run makes too few optimizer steps for the network to learn; it still finishes."""


@dataclass(frozen=True)
class Splits:
    """The three datasets of a run, each ``images`` uint8 (N, 28, 28) and digit ``labels`` (N,):
    ``train`` (after the validation hold-out and the limit), ``val`` (possibly empty) and
    ``test`` (the test split restricted to the run's classes)."""

    train: Dataset
    val: Dataset
    test: Dataset


@dataclass
class TrainedModel:
    """What ``train_and_evaluate`` returns.

    network: the best epoch's weights. metadata: the bundle metadata (``metrics``, ``training``,
    ``history``, input contract, class labels, data fingerprint, ``calibration``, ``ood``,
    ``distributions``), ready for ``save_bundle``. arrays: the detector's ``ood.*`` arrays,
    saved beside the weights.
    test: ``training.trainer.evaluate`` on the test split (accuracy, loss, count, errors,
    per-class accuracy, confusion matrix). result: the trainer's ``TrainResult`` (history,
    best epoch, unrounded ``seconds``).
    """

    network: Network
    metadata: dict
    test: dict
    result: TrainResult
    arrays: dict = dataclasses.field(default_factory=dict)

    @property
    def history(self) -> list[dict]:
        return self.result.history


def resolve_spec(architecture: str | dict, class_labels: list[int]) -> dict:
    """A preset name -> its spec with one output per class; a spec dict is returned as is (the
    network checks it when built). Raises TrainingConfigError for an unknown preset."""
    if isinstance(architecture, dict):
        return architecture
    if architecture not in PRESETS:
        raise TrainingConfigError(
            f"unknown architecture preset {architecture!r}; choose one of {', '.join(PRESETS)}"
        )
    return preset(architecture, num_classes=len(class_labels))


def split_data(
    data: MnistData,
    classes: list[int] | None,
    *,
    val_size: int,
    limit: int | None,
    rng: np.random.Generator,
) -> Splits:
    """The run's datasets: ``classes`` only (None: all ten digits), ``val_size`` training
    images held out at random, then at most ``limit`` of the rest. Raises DataError when a
    class has no example or the hold-out leaves no training image."""
    train_ds, val_ds = split_validation(select_classes(data.train, classes), val_size, rng)
    return Splits(
        train=limit_dataset(train_ds, limit, rng),
        val=val_ds,
        test=select_classes(data.test, classes),
    )


def warn_if_too_short(config: TrainConfig, train_images: int) -> None:
    """Emit a ShortRunWarning when ``config`` makes fewer than FEW_STEPS optimizer steps on
    ``train_images`` images."""
    steps = config.epochs * config.steps_per_epoch(train_images)
    if steps >= FEW_STEPS:
        return
    epochs = f"{config.epochs} epoch{'s' if config.epochs > 1 else ''}"
    warnings.warn(
        ShortRunWarning(
            f"this run makes only {steps} optimizer steps ({train_images} images in batches of "
            f"{config.batch_size}, {epochs}); the network needs about {FEW_STEPS} to learn: "
            "add --epochs or images"
        ),
        stacklevel=3,
    )


def train_and_evaluate(
    data: MnistData,
    architecture: str | dict,
    config: TrainConfig | None = None,
    *,
    seed: int = 0,
    val_size: int = 5000,
    limit: int | None = None,
    dtype: str = "float32",
    progress: bool = False,
    arch: str | None = None,
) -> TrainedModel:
    """Train a network on ``data.train`` and measure it once on ``data.test``.

    architecture: a preset name (``training.network.PRESETS``) or a spec dict. config: the
    recipe (default: ``TrainConfig()``, the tuned SimpleConvNet recipe); its ``class_labels``
    choose the digits (None: all ten). seed: the validation split, the initial weights and the
    training order each come from their own child of it, so changing one setting does not
    reshuffle the others. val_size: training images held out to choose the best epoch (0:
    keep the last). limit: train on at most this many images. dtype: "float32" or "float64".
    progress: the split sizes, a progress bar and one line per epoch on stderr. arch: how the
    architecture was named, recorded as ``training.arch`` (default: the preset or spec name).
    A run of fewer than FEW_STEPS steps emits a ShortRunWarning. Raises TrainingConfigError,
    DataError or TrainingDiverged; nothing is written in any case.
    """
    config = TrainConfig() if config is None else config
    config.validate()
    classes = None if config.class_labels is None else list(config.class_labels)
    class_labels = ALL_DIGITS if classes is None else classes
    spec = resolve_spec(architecture, class_labels)
    # A fourth child for the detector's sample: the first three draw what they always did.
    split_rng, init_rng, train_rng, posthoc_rng = (
        np.random.default_rng(child) for child in np.random.SeedSequence(seed).spawn(4)
    )
    splits = split_data(data, classes, val_size=val_size, limit=limit, rng=split_rng)
    network = Network(spec, dtype=np.dtype(dtype), rng=init_rng)
    if progress:
        _print_sizes(spec, splits, class_labels)
    warn_if_too_short(config, len(splits.train))
    config = dataclasses.replace(config, class_labels=class_labels)
    result = train(network, splits.train, splits.val, config, train_rng, progress=progress)
    test = evaluate(network, splits.test, contract=result.contract, class_labels=class_labels)
    posthoc = fit_posthoc(
        network, result.contract, splits, class_labels, rng=posthoc_rng, progress=progress
    )
    run = {"seed": seed, "limit": limit, "dtype": np.dtype(dtype).name}
    run["arch"] = arch if arch is not None else spec.get("name", "custom")
    metadata = _bundle_metadata(network, data, spec, config, splits, result, test, posthoc, run)
    return TrainedModel(
        network=network, metadata=metadata, test=test, result=result, arrays=posthoc.arrays
    )


def _bundle_metadata(network, data, spec, config, splits, result, test, posthoc, run) -> dict:
    """Everything the bundle records: the run, its figures, calibration and detector."""
    metadata = build_metadata(
        network,
        contract=result.contract,
        class_labels=result.class_labels,
        training=_training_record(spec, config, splits, result, run),
        metrics=_metrics_record(test, result, posthoc),
        data_fingerprint=data.fingerprint,
        history=result.history,
    )
    metadata.update(posthoc.metadata)
    return metadata


def _print_sizes(spec: dict, splits: Splits, class_labels: list[int]) -> None:
    print(
        f"training {spec.get('name', 'custom')} on {len(splits.train)} images "
        f"(validation {len(splits.val)}, test {len(splits.test)}), classes {class_labels}",
        file=sys.stderr,
    )


def _metrics_record(test: dict, result: TrainResult, posthoc: Posthoc) -> dict:
    """The bundle's ``metrics``: test figures (the store's gate reads ``test_accuracy``, and
    with ``--gate`` ``test_ece`` and ``ood_auroc``), the best epoch's validation figures, and
    the calibration and detector figures."""
    return {
        **posthoc.metrics,
        "test_accuracy": test["accuracy"],
        "test_loss": test["loss"],
        "test_errors": test["errors"],
        "test_images": test["count"],
        "val_accuracy": result.val_accuracy,
        "val_loss": result.val_loss,
        "per_class_accuracy": test["per_class_accuracy"],
        "confusion_matrix": test["confusion_matrix"],
    }


def _training_record(
    spec: dict, config: TrainConfig, splits: Splits, result: TrainResult, run: dict
) -> dict:
    """The bundle's ``training``: every setting needed to repeat the run, and how it went.
    run: ``arch``, ``seed``, ``limit`` and ``dtype`` as given to train_and_evaluate."""
    return {
        "preset": spec.get("name", "custom"),
        "arch": run["arch"],
        **{k: v for k, v in config.to_dict().items() if k != "class_labels"},
        "threads": result.threads,  # the split changes the order of the sums (parallel.py)
        "augmentation": {"shift": config.shift},
        "seed": run["seed"],
        "classes": list(config.class_labels),
        "val_size": len(splits.val),
        "limit": run["limit"],
        "dtype": run["dtype"],
        "train_images": len(splits.train),
        "epochs_run": len(result.history),
        "best_epoch": result.best_epoch,
        "stopped_early": result.stopped_early,
        "seconds": round(result.seconds, 1),
    }


# --------------------------------------------------------------------------- outputs
def curves_paths(bundle_path: str | os.PathLike) -> tuple[Path, Path]:
    """``runs/model.npz`` -> (``runs/model.curves.json``, ``runs/model.curves.png``)."""
    path = Path(bundle_path)
    return path.with_name(path.stem + ".curves.json"), path.with_name(path.stem + ".curves.png")


def save_trained_bundle(trained: TrainedModel, path: str | os.PathLike) -> Path:
    """Write the bundle (weights + metadata) atomically to ``path`` (a ``.npz``)."""
    return save_bundle(path, trained.network, trained.metadata, trained.arrays)


def save_curves(trained: TrainedModel, bundle_path: str | os.PathLike) -> Path:
    """Write the learning curves beside the bundle as ``<stem>.curves.json``: {"bundle": file
    name, "best_epoch", "history" (one row per epoch), "test_accuracy"}. Returns its path."""
    json_path, _ = curves_paths(bundle_path)
    curves = {
        "bundle": Path(bundle_path).name,
        "best_epoch": trained.result.best_epoch,
        "history": trained.history,
        "test_accuracy": trained.test["accuracy"],
    }
    return write_atomically(json_path, (json.dumps(curves, indent=2) + "\n").encode())


def publish_trained(
    trained: TrainedModel,
    store: ModelStore,
    name: str,
    *,
    alias: str | None = None,
    note: str | None = None,
    bundle_path: str | os.PathLike | None = None,
) -> int:
    """Publish the model as ``name``'s next version and return the version number; ``alias``
    goes through the store's regression gate (the bundle's ``metrics.test_accuracy``).
    bundle_path: the bundle already written by ``save_trained_bundle``, published as is; None
    writes a temporary one. Raises StoreError (e.g. the gate refused; nothing is published)."""
    if bundle_path is not None:
        return store.publish(bundle_path, name, alias=alias, note=note)
    with tempfile.TemporaryDirectory(prefix="convserve-publish-") as scratch:
        path = save_trained_bundle(trained, Path(scratch) / "model.npz")
        return store.publish(path, name, alias=alias, note=note)
