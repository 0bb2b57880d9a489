"""The training loop and the evaluation of a trained model.

``train`` runs shuffled epochs (each one pass over a fresh permutation drawn from the caller's
``numpy.random.Generator``, so the same seed gives the same weights), optionally with random
shifts, a learning-rate schedule and decoupled weight decay; it measures train and validation
loss and accuracy after every epoch, stops early when validation accuracy has not improved for
``patience`` epochs and always hands back the weights of the *best* validation epoch. A loss that
turns NaN or infinite stops the run with ``TrainingDiverged`` before anything is written.

The network sees pixels through ``training.bundle.normalise`` with the input contract of the
training split (mean and std of the images actually trained on), the same function the service
uses, so training and serving see identical numbers.

Labels stay digits everywhere outside the network (a 3-vs-8 model has class labels ``[3, 8]``);
the trainer maps them to class indices 0..K-1 with ``class_labels``.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from training.augment import random_shift
from training.bundle import Bundle, input_contract, normalise
from training.errors import ConvserveError
from training.network import Network
from training.optimizers import (
    DEFAULT_LR,
    DEFAULT_WEIGHT_DECAY,
    OPTIMIZERS,
    SCHEDULES,
    make_optimizer,
    make_schedule,
)
from training.parallel import TrainStep, default_threads


class TrainingDiverged(ConvserveError):
    """The loss became NaN or infinite: the learning rate is too high for this network."""


class TrainingConfigError(ConvserveError):
    """A training setting that cannot work (bad epochs, batch size, classes, ...)."""


@dataclass
class TrainConfig:
    """How to train. The defaults are the tuned recipe for SimpleConvNet on MNIST (see
    docs/TRAINING.md for the measurements behind them).

    lr is the peak learning rate of the schedule; weight_decay is decoupled (AdamW style);
    shift is the largest random translation in pixels (0 turns augmentation off); patience is
    the number of epochs without a better validation accuracy before stopping (0: never stop
    early, but still keep the best epoch's weights). class_labels are the digits the network's
    outputs stand for (default 0..K-1). threads: how many threads each training batch is split
    over (``training.parallel``); None follows the machine (``$CONVSERVE_TRAIN_THREADS``, else
    BLAS's thread count), 1 turns the split off.
    """

    epochs: int = 20
    batch_size: int = 100
    optimizer: str = "momentum"
    lr: float = DEFAULT_LR["momentum"]
    weight_decay: float = DEFAULT_WEIGHT_DECAY["momentum"]
    schedule: str = "onecycle"
    shift: int = 2
    patience: int = 0
    class_labels: list[int] | None = None
    eval_batch_size: int = 1000
    threads: int | None = None

    def steps_per_epoch(self, images: int) -> int:
        """Optimizer steps one epoch over ``images`` training images takes (the last batch may
        be smaller)."""
        return math.ceil(images / self.batch_size)

    def validate(self) -> None:
        """Raise TrainingConfigError naming the first impossible setting."""
        for name in ("epochs", "batch_size", "eval_batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise TrainingConfigError(f"{name} must be a positive integer, got {value!r}")
        for name in ("shift", "patience"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise TrainingConfigError(f"{name} must be a non-negative integer, got {value!r}")
        threads = self.threads
        if threads is not None and (
            isinstance(threads, bool) or not isinstance(threads, int) or threads < 1
        ):
            raise TrainingConfigError(f"threads must be a positive integer, got {threads!r}")
        if self.shift > 8:
            raise TrainingConfigError(f"shift must be at most 8 pixels, got {self.shift}")
        if not (isinstance(self.lr, int | float) and self.lr > 0 and math.isfinite(self.lr)):
            raise TrainingConfigError(f"lr must be a positive number, got {self.lr!r}")
        wd = self.weight_decay
        if not (isinstance(wd, int | float) and wd >= 0 and math.isfinite(wd)):
            raise TrainingConfigError(f"weight_decay must be a non-negative number, got {wd!r}")
        if self.optimizer not in OPTIMIZERS:
            raise TrainingConfigError(
                f"unknown optimizer {self.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}"
            )
        if self.schedule not in SCHEDULES:
            raise TrainingConfigError(
                f"unknown schedule {self.schedule!r}; choose one of {', '.join(SCHEDULES)}"
            )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class TrainResult:
    """What ``train`` returns. ``network`` holds the best epoch's weights; ``history`` has one
    dict per epoch run (epoch, train_loss, train_accuracy, val_loss, val_accuracy, lr, seconds);
    ``seconds`` is the wall time of the whole run; ``threads`` the threads each batch was split
    over (1: not split)."""

    network: Network
    contract: dict
    class_labels: list[int]
    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    val_accuracy: float | None = None
    val_loss: float | None = None
    stopped_early: bool = False
    seconds: float = 0.0
    threads: int = 1


# --------------------------------------------------------------------------- helpers
def training_contract(images: np.ndarray) -> dict:
    """The input contract (scale 1/255, mean, std) of a training split, images (N, 28, 28)."""
    from training.data import pixel_statistics  # the data layer; not needed for evaluation

    mean, std = pixel_statistics(images)
    if not std > 0:
        raise TrainingConfigError("the training images are all identical (pixel std is 0)")
    return input_contract(mean, std)


def class_indices(labels: np.ndarray, class_labels: list[int]) -> np.ndarray:
    """Digit labels (N,) -> indices into ``class_labels`` (N,) as intp. Raises
    TrainingConfigError when a label is not one of the classes."""
    labels = np.asarray(labels).astype(np.intp)
    classes = np.asarray(class_labels, dtype=np.intp)
    by_value = np.argsort(classes)
    positions = np.searchsorted(classes[by_value], labels).clip(0, len(classes) - 1)
    indices = by_value[positions]
    unknown = classes[indices] != labels
    if unknown.any():
        stray = np.unique(labels[unknown]).tolist()
        raise TrainingConfigError(
            f"labels {stray} are not among the model's classes {list(class_labels)}"
        )
    return indices


def predicted_indices(logits: np.ndarray) -> np.ndarray:
    """Logits (N, K) -> predicted class indices (N,); (N, 1) sigmoid logits -> 1 where > 0."""
    if logits.shape[1] == 1:
        return (logits[:, 0] > 0).astype(np.intp)
    return logits.argmax(axis=1)


def _check_finite(loss: float, where: str, lr: float) -> None:
    if not math.isfinite(loss):
        raise TrainingDiverged(
            f"training diverged: the loss became {loss} {where} (learning rate {lr:.3g}); "
            "try a smaller --lr; nothing was written"
        )


def _confusion_counts(
    network: Network,
    images: np.ndarray,
    targets: np.ndarray,
    contract: dict,
    num_classes: int,
    batch_size: int,
) -> tuple[np.ndarray, float]:
    """Inference over all images in batches: (confusion matrix (K, K) int64 with rows = true
    class, summed loss over all images)."""
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    loss_sum = 0.0
    dtype = network.dtype.type
    for start in range(0, len(targets), batch_size):
        batch_targets = targets[start : start + batch_size]
        x = normalise(images[start : start + batch_size], contract, dtype)
        logits = network.forward(x, train=False)
        loss_sum += network.loss_layer.forward(logits, batch_targets) * len(batch_targets)
        pairs = batch_targets * num_classes + predicted_indices(logits)
        confusion += np.bincount(pairs, minlength=num_classes * num_classes).reshape(
            num_classes, num_classes
        )
    return confusion, loss_sum


def _metrics(confusion: np.ndarray, loss_sum: float, class_labels: list[int]) -> dict:
    count = int(confusion.sum())
    correct = int(np.trace(confusion))
    per_class_total = confusion.sum(axis=1)
    per_class = [
        (float(confusion[i, i] / total) if total else None)
        for i, total in enumerate(per_class_total)
    ]
    return {
        "accuracy": correct / count if count else None,
        "loss": loss_sum / count if count else None,
        "count": count,
        "errors": count - correct,
        "class_labels": list(class_labels),
        "per_class_accuracy": per_class,
        "confusion_matrix": confusion.tolist(),
    }


def evaluate(
    model: Bundle | Network,
    ds,
    *,
    contract: dict | None = None,
    class_labels: list[int] | None = None,
    batch_size: int = 1000,
) -> dict:
    """Accuracy, mean loss, per-class accuracy and the confusion matrix of a model on a dataset.

    model: a loaded ``Bundle`` (contract and class labels come from its metadata) or a
    ``Network`` (then ``contract`` is required and ``class_labels`` defaults to 0..K-1).
    ds: a Dataset with ``images`` uint8 (N, 28, 28) and digit ``labels`` (N,), all of them among
    the class labels. Runs in batches of ``batch_size`` and counts every image (no remainder is
    dropped). Returns {"accuracy", "loss", "count", "errors", "class_labels",
    "per_class_accuracy" (list aligned with class_labels; None for a class with no images),
    "confusion_matrix" (K x K list of ints, rows = true class, columns = predicted)}.
    """
    if isinstance(model, Bundle):
        network = model.network
        contract = model.input if contract is None else contract
        class_labels = model.class_labels if class_labels is None else class_labels
    else:
        network = model
        if contract is None:
            raise ValueError("evaluate(network, ...) needs the input contract")
    num_classes = network.spec["num_classes"]
    if class_labels is None:
        class_labels = list(range(num_classes))
    if len(class_labels) != num_classes:
        raise ValueError(f"{len(class_labels)} class labels for a {num_classes}-class network")
    targets = class_indices(ds.labels, class_labels)
    confusion, loss_sum = _confusion_counts(
        network, ds.images, targets, contract, num_classes, batch_size
    )
    return _metrics(confusion, loss_sum, class_labels)


# --------------------------------------------------------------------------- training
@dataclass
class _Run:
    """What one training run carries from step to step."""

    network: Network
    config: TrainConfig
    contract: dict
    class_labels: list[int]
    train_targets: np.ndarray
    optimizer: object
    schedule: object
    train_step: TrainStep
    step: int = 0


# A diverging run overflows before its loss turns NaN; the finiteness checks in the loop report
# that with a clear message, so numpy's overflow warnings would only be noise.
@np.errstate(over="ignore", invalid="ignore")
def train(
    network: Network,
    train_ds,
    val_ds,
    config: TrainConfig,
    rng: np.random.Generator,
    progress: bool = True,
) -> TrainResult:
    """Train ``network`` in place and return it with the best validation epoch's weights.

    train_ds, val_ds: Datasets (``images`` uint8 (N, 28, 28), digit ``labels`` (N,)); val_ds may
    be None or empty, then the last epoch is kept and validation figures are None.
    rng: drives the shuffling and the shifts (the network's initial weights and dropout masks
    come from the generator it was built with). progress: a tqdm bar with images/s and one
    summary line per epoch on stderr.
    Raises TrainingDiverged on a NaN/inf loss and TrainingConfigError on impossible settings.
    """
    class_labels = _checked_class_labels(network, config, train_ds)
    run = _start_run(network, config, train_ds, class_labels)
    try:
        return _train_epochs(run, train_ds, val_ds, rng, progress)
    finally:
        run.train_step.close()  # the step's worker threads


def _train_epochs(run: _Run, train_ds, val_ds, rng: np.random.Generator, progress: bool):
    """The epochs of ``train`` -> its TrainResult."""
    network, config, class_labels = run.network, run.config, run.class_labels
    has_val = val_ds is not None and len(val_ds.labels) > 0
    val_targets = class_indices(val_ds.labels, class_labels) if has_val else None
    result = TrainResult(network=network, contract=run.contract, class_labels=class_labels)
    result.threads = run.train_step.threads
    best_key: tuple[float, float] | None = None
    best_state: dict[str, np.ndarray] | None = None
    epochs_without_improvement = 0
    run_start = time.perf_counter()
    for epoch in range(1, config.epochs + 1):
        epoch_start = time.perf_counter()
        record = _train_epoch(run, train_ds, epoch, rng, progress)
        if has_val:
            _validate(run, val_ds, val_targets, record)
        record["seconds"] = time.perf_counter() - epoch_start
        result.history.append(record)
        if progress:
            print(_epoch_line(record, config.epochs), file=sys.stderr, flush=True)
        # Best = highest validation accuracy, ties broken by lower validation loss.
        key = (record["val_accuracy"], -record["val_loss"]) if has_val else (epoch, 0.0)
        if best_key is None or key > best_key:
            best_key, best_state = key, _snapshot(network, epoch, run.optimizer.lr)
            result.best_epoch = epoch
            result.val_accuracy, result.val_loss = record["val_accuracy"], record["val_loss"]
            epochs_without_improvement = 0
            continue
        epochs_without_improvement += 1
        if config.patience and epochs_without_improvement >= config.patience:
            result.stopped_early = True
            if progress:
                print(
                    f"early stop: no better validation accuracy for {config.patience} "
                    f"epochs; keeping epoch {result.best_epoch}",
                    file=sys.stderr,
                )
            break
    network.load_state(best_state)
    result.seconds = time.perf_counter() - run_start
    return result


def _checked_class_labels(network: Network, config: TrainConfig, train_ds) -> list[int]:
    """The digits the outputs stand for; TrainingConfigError for an impossible setting."""
    config.validate()
    num_classes = network.spec["num_classes"]
    class_labels = (
        list(config.class_labels) if config.class_labels is not None else list(range(num_classes))
    )
    if len(class_labels) != num_classes:
        raise TrainingConfigError(
            f"{len(class_labels)} class labels for a {num_classes}-class network"
        )
    if len(train_ds.labels) == 0:
        raise TrainingConfigError("the training set is empty")
    return class_labels


def _start_run(network: Network, config: TrainConfig, train_ds, class_labels) -> _Run:
    count = len(train_ds.labels)
    steps_per_epoch = config.steps_per_epoch(count)
    try:
        threads = default_threads() if config.threads is None else config.threads
    except ValueError as exc:  # a bad $CONVSERVE_TRAIN_THREADS
        raise TrainingConfigError(str(exc)) from None
    contract = training_contract(train_ds.images)
    train_targets = class_indices(train_ds.labels, class_labels)
    optimizer = make_optimizer(config.optimizer, config.lr, config.weight_decay)
    return _Run(
        network=network,
        config=config,
        contract=contract,
        class_labels=class_labels,
        train_targets=train_targets,
        optimizer=optimizer,
        schedule=make_schedule(
            config.schedule, config.lr, config.epochs * steps_per_epoch, steps_per_epoch
        ),
        train_step=TrainStep(network, optimizer, threads),  # last: it starts threads
    )


def _train_epoch(run: _Run, train_ds, epoch: int, rng: np.random.Generator, progress: bool):
    """One pass over a fresh permutation of the training set -> the epoch's record (training
    figures; validation figures None until ``_validate``)."""
    config, network, optimizer = run.config, run.network, run.optimizer
    count = len(train_ds.labels)
    dtype = network.dtype.type
    order = rng.permutation(count)
    loss_sum, correct = 0.0, 0
    bar = tqdm(
        total=count,
        desc=f"epoch {epoch}/{config.epochs}",
        unit="img",
        unit_scale=True,
        file=sys.stderr,
        disable=not progress,
        leave=False,
        dynamic_ncols=True,
    )
    with bar:
        for start in range(0, count, config.batch_size):
            batch = order[start : start + config.batch_size]
            pixels = train_ds.images[batch]
            if config.shift:
                pixels = random_shift(pixels, config.shift, rng)
            targets = run.train_targets[batch]
            optimizer.lr = run.schedule(run.step)
            where = f"at epoch {epoch}, step {run.step + 1}"
            loss, logits = run.train_step(
                normalise(pixels, run.contract, dtype),
                targets,
                check=lambda value, where=where: _check_finite(value, where, optimizer.lr),
            )
            run.step += 1
            loss_sum += loss * len(batch)
            correct += int((predicted_indices(logits) == targets).sum())
            bar.update(len(batch))
            if run.step % 25 == 0:
                bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
    return {
        "epoch": epoch,
        "train_loss": loss_sum / count,
        "train_accuracy": correct / count,
        "val_loss": None,
        "val_accuracy": None,
        "lr": optimizer.lr,
        "seconds": 0.0,
    }


def _validate(run: _Run, val_ds, val_targets: np.ndarray, record: dict) -> None:
    """The validation loss and accuracy into ``record``."""
    num_classes = run.network.spec["num_classes"]
    confusion, val_loss_sum = _confusion_counts(
        run.network, val_ds.images, val_targets, run.contract, num_classes,
        run.config.eval_batch_size,
    )  # fmt: skip
    record["val_loss"] = val_loss_sum / len(val_targets)
    record["val_accuracy"] = float(np.trace(confusion) / len(val_targets))
    where = f"on validation after epoch {record['epoch']}"
    _check_finite(record["val_loss"], where, run.optimizer.lr)


def _snapshot(network: Network, epoch: int, lr: float) -> dict[str, np.ndarray]:
    """A copy of the weights of a new best epoch; TrainingDiverged if any is not finite."""
    if not all(np.isfinite(value).all() for value in network.state().values()):
        raise TrainingDiverged(
            f"training diverged: the weights hold NaN or infinity after epoch {epoch} "
            f"(learning rate {lr:.3g}); try a smaller --lr; nothing was written"
        )
    return {name: value.copy() for name, value in network.state().items()}


def _epoch_line(record: dict, epochs: int) -> str:
    line = (
        f"epoch {record['epoch']:>{len(str(epochs))}}/{epochs}  "
        f"train loss {record['train_loss']:.4f} acc {100 * record['train_accuracy']:.2f}%"
    )
    if record["val_accuracy"] is not None:
        line += f"  val loss {record['val_loss']:.4f} acc {100 * record['val_accuracy']:.2f}%"
    return line + f"  lr {record['lr']:.2e}  {record['seconds']:.1f}s"
