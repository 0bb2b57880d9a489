"""``convserve train`` and ``convserve evaluate``.

    convserve train [--data-dir DIR] [--arch NAME|spec.json] [--classes 0,1] [--val-size 5000]
                    [--limit N] [--epochs N] [--batch-size N] [--optimizer NAME] [--lr LR]
                    [--weight-decay WD] [--schedule NAME] [--shift PIXELS] [--patience N]
                    [--seed N] [--dtype float32|float64] [--hidden N] [--out model.npz]
                    [--publish --name NAME [--alias A] [--note T] [--store DIR]] [--quiet]
    convserve evaluate BUNDLE [--data-dir DIR] [--json]

The defaults of ``train`` are the tuned recipe for SimpleConvNet (docs/TRAINING.md). Every
setting is checked before the data is read and before any training starts, so a typo costs
nothing and no file is written; a failed run (diverged loss, bad data) writes nothing either.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import warnings
from pathlib import Path

from training.bundle import load_bundle
from training.data import load_mnist, parse_classes, resolve_data_dir, select_classes
from training.network import PRESETS, Network, preset
from training.optimizers import DEFAULT_LR, DEFAULT_WEIGHT_DECAY, OPTIMIZERS, SCHEDULES
from training.recipe import (
    ShortRunWarning,
    TrainedModel,
    curves_paths,
    publish_trained,
    save_curves,
    save_trained_bundle,
    train_and_evaluate,
)
from training.store import (
    ModelStore,
    StoreError,
    default_store_root,
    validate_alias,
    validate_name,
)
from training.trainer import TrainConfig, TrainingConfigError, evaluate

DEFAULTS = TrainConfig()


# --------------------------------------------------------------------------- argument types
def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}") from None
    if not (value >= 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return value


def register(subparsers) -> None:
    """Add ``train`` and ``evaluate`` to the ``convserve`` parser."""
    p = subparsers.add_parser(
        "train",
        help="train a classifier on MNIST and write a bundle",
        description=(
            "Train a network on the MNIST training split (minus a held-out validation split used "
            "for early stopping and for choosing the best epoch), report its accuracy on the "
            "test split and write a .npz bundle plus its learning curves. The defaults are the "
            "tuned recipe for simpleconvnet."
        ),
    )
    _add_data_arguments(p)
    _add_recipe_arguments(p)
    _add_run_arguments(p)
    p.set_defaults(func=run_train)

    e = subparsers.add_parser(
        "evaluate",
        help="measure a bundle on the MNIST test split",
        description=(
            "Accuracy, per-class accuracy and the confusion matrix of a bundle on the MNIST test "
            "split, restricted to the bundle's class labels."
        ),
    )
    e.add_argument("bundle", metavar="BUNDLE", help="a .npz bundle")
    e.add_argument(
        "--data-dir", metavar="DIR", help="MNIST directory (default: $MNIST_DIR or ./data/mnist)"
    )
    e.add_argument("--json", action="store_true", help="print the metrics as JSON")
    e.set_defaults(func=run_evaluate)


def _add_data_arguments(p: argparse.ArgumentParser) -> None:
    """What to train on: the data, the architecture, the classes and the splits."""
    p.add_argument(
        "--data-dir", metavar="DIR", help="MNIST directory (default: $MNIST_DIR or ./data/mnist)"
    )
    p.add_argument(
        "--arch",
        default="simpleconvnet",
        metavar="NAME|SPEC.json",
        help=f"a preset ({', '.join(PRESETS)}) or a JSON architecture spec file "
        "(default: %(default)s)",
    )
    p.add_argument("--classes", metavar="0,1", help="train on these digits only (default: all ten)")
    p.add_argument(
        "--val-size",
        type=_non_negative_int,
        default=5000,
        metavar="N",
        help="training images held out for validation; 0: none, keep the last epoch "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--limit", type=_positive_int, metavar="N", help="train on at most N images (quick runs)"
    )


def _add_recipe_arguments(p: argparse.ArgumentParser) -> None:
    """How to train: epochs, batches, optimizer, schedule, augmentation, early stopping."""
    p.add_argument(
        "--epochs",
        type=_positive_int,
        default=DEFAULTS.epochs,
        metavar="N",
        help="passes over the shuffled training split (default: %(default)s)",
    )
    p.add_argument(
        "--batch-size",
        type=_positive_int,
        default=DEFAULTS.batch_size,
        metavar="N",
        help="(default: %(default)s)",
    )
    p.add_argument(
        "--optimizer",
        choices=OPTIMIZERS,
        default=DEFAULTS.optimizer,
        help="momentum is heavy-ball 0.9; adam is AdamW with --weight-decay (default: %(default)s)",
    )
    p.add_argument(
        "--lr",
        type=_positive_float,
        help="peak learning rate of the schedule (default: "
        + ", ".join(f"{k} {v:g}" for k, v in DEFAULT_LR.items())
        + ")",
    )
    p.add_argument(
        "--weight-decay",
        type=_non_negative_float,
        metavar="WD",
        help="decoupled weight decay on weights and kernels, AdamW style (default: "
        + ", ".join(f"{k} {v:g}" for k, v in DEFAULT_WEIGHT_DECAY.items())
        + ")",
    )
    p.add_argument(
        "--schedule",
        choices=SCHEDULES,
        default=DEFAULTS.schedule,
        help="learning-rate schedule; onecycle: 20%% warm-up, then cosine to lr/1000 "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--shift",
        type=_non_negative_int,
        default=DEFAULTS.shift,
        metavar="PIXELS",
        help="random shifts of up to this many pixels; 0: none (default: %(default)s)",
    )
    p.add_argument(
        "--patience",
        type=_non_negative_int,
        default=DEFAULTS.patience,
        metavar="N",
        help="stop after N epochs without a better validation accuracy; 0: run all epochs "
        "(default: %(default)s); the best epoch's weights are kept either way",
    )


def _add_run_arguments(p: argparse.ArgumentParser) -> None:
    """The run itself: seed, dtype, mlp width, where the bundle goes, publishing, output."""
    p.add_argument(
        "--seed",
        type=_non_negative_int,
        default=0,
        metavar="N",
        help="seeds the validation split, initial weights, order and shifts (default: 0)",
    )
    p.add_argument(
        "--dtype", choices=("float32", "float64"), default="float32", help="(default: float32)"
    )
    p.add_argument(
        "--threads",
        type=_positive_int,
        metavar="N",
        help="split each batch over N threads (default: $CONVSERVE_TRAIN_THREADS, else BLAS's "
        "thread count, i.e. the CPUs; 1: no split)",
    )
    p.add_argument(
        "--hidden", type=_positive_int, metavar="N", help="hidden units of the mlp (default 100)"
    )
    p.add_argument(
        "--out",
        metavar="model.npz",
        help="bundle to write (default: runs/<arch>.npz); curves go to <stem>.curves.json",
    )
    p.add_argument("--publish", action="store_true", help="publish the bundle into the store")
    p.add_argument("--name", help="model name in the store (with --publish)")
    p.add_argument("--alias", help="alias to point at the new version (with --publish)")
    p.add_argument("--note", help="a note stored with the version (with --publish)")
    p.add_argument("--store", metavar="DIR", help="model store root (with --publish)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or per-epoch lines")


# --------------------------------------------------------------------------- train
def architecture_spec(arch: str, classes: list[int] | None, hidden: int | None) -> dict:
    """The network spec for ``--arch`` (a preset name or a JSON file) with as many outputs as
    classes. Raises TrainingConfigError for an unknown name, an unreadable or invalid file, or
    a spec whose ``num_classes`` disagrees with ``--classes``."""
    num_classes = len(classes) if classes is not None else 10
    if hidden is not None and arch != "mlp":
        raise TrainingConfigError("--hidden applies to the mlp preset only")
    if arch in PRESETS:
        kwargs = {} if hidden is None else {"hidden": hidden}
        return preset(arch, num_classes=num_classes, **kwargs)
    path = Path(arch)
    if not path.is_file():
        raise TrainingConfigError(
            f"--arch {arch!r} is neither a preset ({', '.join(PRESETS)}) nor a spec file"
        )
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise TrainingConfigError(f"{path}: cannot read the architecture spec ({exc})") from None
    except json.JSONDecodeError as exc:
        raise TrainingConfigError(
            f"{path}: the architecture spec is not valid JSON ({exc})"
        ) from None
    if not isinstance(spec, dict):
        raise TrainingConfigError(f"{path}: the architecture spec must be a JSON object")
    spec.setdefault("num_classes", num_classes)
    if spec["num_classes"] != num_classes:
        raise TrainingConfigError(
            f"{path}: the spec has num_classes {spec['num_classes']!r} but {num_classes} classes "
            "are being trained (see --classes)"
        )
    try:
        Network(spec)  # full check: layer keys, shapes fitting together, output size
    except (ValueError, TypeError, KeyError) as exc:
        raise TrainingConfigError(f"{path}: invalid architecture spec: {exc}") from None
    return spec


def _output_path(args: argparse.Namespace, spec: dict) -> Path:
    """The bundle path, checked to be writable before any training."""
    out = Path(args.out) if args.out else Path("runs") / f"{spec.get('name', 'model')}.npz"
    if out.suffix != ".npz":
        raise TrainingConfigError(f"--out {out}: the bundle file name must end in .npz")
    if out.is_dir():
        raise TrainingConfigError(f"--out {out}: is a directory")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TrainingConfigError(f"--out {out}: cannot create {out.parent} ({exc})") from None
    if not os.access(out.parent, os.W_OK):
        raise TrainingConfigError(f"--out {out}: {out.parent} is not writable")
    return out


def _check_publish(args: argparse.Namespace) -> ModelStore | None:
    """The store to publish to (or None without --publish), checked before training."""
    if not args.publish:
        for option in ("name", "alias", "note", "store"):
            if getattr(args, option) is not None:
                raise TrainingConfigError(f"--{option} only applies with --publish")
        return None
    if not args.name:
        raise TrainingConfigError("--publish needs --name NAME")
    validate_name(args.name)
    if args.alias is not None:
        validate_alias(args.alias)
    return ModelStore(default_store_root(args.store))


def plot_curves(history: list[dict], path: Path) -> bool:
    """Loss and accuracy per epoch as a PNG; False (and nothing written) without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    epochs = [row["epoch"] for row in history]
    figure, (loss_axes, accuracy_axes) = plt.subplots(1, 2, figsize=(10, 4))
    for split in ("train", "val"):
        if all(row[f"{split}_loss"] is not None for row in history):
            loss_axes.plot(epochs, [row[f"{split}_loss"] for row in history], label=split)
            accuracy_axes.plot(
                epochs, [100 * row[f"{split}_accuracy"] for row in history], label=split
            )
    loss_axes.set(xlabel="epoch", ylabel="loss", yscale="log", title="loss")
    accuracy_axes.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    for axes in (loss_axes, accuracy_axes):
        axes.legend()
        axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return True


def format_confusion(confusion: list[list[int]], class_labels: list) -> str:
    """The confusion matrix as a text table: rows = true class, columns = predicted."""
    width = max(4, *(len(str(v)) + 1 for row in confusion for v in row))
    lines = ["true\\pred" + "".join(f"{label:>{width}}" for label in class_labels)]
    for label, row in zip(class_labels, confusion, strict=True):
        lines.append(f"{label:>9}" + "".join(f"{v:>{width}}" for v in row))
    return "\n".join(lines)


def format_per_class(per_class: list, class_labels: list) -> str:
    cells = [
        f"{label}: {'n/a' if acc is None else f'{100 * acc:.2f}%'}"
        for label, acc in zip(class_labels, per_class, strict=True)
    ]
    return "  ".join(cells)


def _train_config(args: argparse.Namespace, classes: list[int] | None) -> TrainConfig:
    """The recipe from the options, checked (TrainingConfigError names the first bad one)."""
    config = TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        optimizer=args.optimizer,
        lr=DEFAULT_LR[args.optimizer] if args.lr is None else args.lr,
        weight_decay=(
            DEFAULT_WEIGHT_DECAY[args.optimizer] if args.weight_decay is None else args.weight_decay
        ),
        schedule=args.schedule,
        shift=args.shift,
        patience=args.patience,
        class_labels=classes,
        threads=args.threads,
    )
    config.validate()
    return config


def describe_posthoc(metadata: dict) -> list[str]:
    """The calibration and not-a-digit lines of the train report (none for what was not
    fitted)."""
    metrics, lines = metadata.get("metrics") or {}, []
    calibration = metadata.get("calibration")
    if isinstance(calibration, dict):
        lines.append(
            f"calibration: temperature {calibration['temperature']:.3f} (fitted on the "
            f"validation split); test ECE {100 * metrics['test_ece_uncalibrated']:.2f}% -> "
            f"{100 * metrics['test_ece']:.2f}% (15 bins), accuracy unchanged"
        )
    ood = metadata.get("ood")
    if isinstance(ood, dict):
        kinds = ", ".join(f"{k} {v['auroc']:.3f}" for k, v in ood.get("nondigits", {}).items())
        lines.append(
            f"not a digit: {ood['method']}, threshold at {100 * ood['tpr']:.0f}% of "
            f"{ood['threshold_on']} digits; flagged {100 * metrics['ood_test_digits_flagged']:.1f}"
            f"% of test digits and {100 * metrics['ood_nondigits_flagged']:.1f}% of the built-in "
            f"non-digits; AUROC {metrics['ood_auroc']:.3f} ({kinds})"
        )
    return lines


def _print_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """``warnings.showwarning`` for the command line: one ``warning: ...`` line on stderr."""
    print(f"warning: {message}", file=sys.stderr)


def run_train(args: argparse.Namespace) -> int:
    # Everything the user typed is checked before the data is read or a step is taken.
    classes = parse_classes(args.classes)
    spec = architecture_spec(args.arch, classes, args.hidden)
    config = _train_config(args, classes)
    out = _output_path(args, spec)
    store = _check_publish(args)

    data = load_mnist(resolve_data_dir(args.data_dir))
    with warnings.catch_warnings():
        # A short run still finishes, but says so even with --quiet, as it happens.
        warnings.simplefilter("always", ShortRunWarning)
        warnings.showwarning = _print_warning
        trained = train_and_evaluate(
            data,
            spec,
            config,
            seed=args.seed,
            val_size=args.val_size,
            limit=args.limit,
            dtype=args.dtype,
            progress=not args.quiet,
            arch=args.arch,
        )
    save_trained_bundle(trained, out)
    json_path = save_curves(trained, out)
    png_path = curves_paths(out)[1]
    plotted = plot_curves(trained.history, png_path)

    test, result = trained.test, trained.result
    class_labels = test["class_labels"]
    print(
        f"test accuracy {100 * test['accuracy']:.2f}% ({test['errors']} errors in "
        f"{test['count']} images), test loss {test['loss']:.4f}; best epoch {result.best_epoch} "
        f"of {len(result.history)}, trained in {result.seconds:.0f} s"
    )
    print("per-class accuracy: " + format_per_class(test["per_class_accuracy"], class_labels))
    print(format_confusion(test["confusion_matrix"], class_labels))
    for line in describe_posthoc(trained.metadata):
        print(line)
    print(f"wrote {out} and {json_path}" + (f" and {png_path}" if plotted else ""))
    if store is not None:
        _publish(trained, store, args, out)
    return 0


def _publish(trained: TrainedModel, store: ModelStore, args: argparse.Namespace, out: Path) -> None:
    """Publish the bundle written at ``out`` and say so; a refusal keeps the bundle."""
    try:
        version = publish_trained(
            trained, store, args.name, alias=args.alias, note=args.note, bundle_path=out
        )
    except StoreError as exc:
        # The bundle is already written: say where, so the run is not lost.
        raise type(exc)(
            f"{exc}; the bundle is kept at {out} (publish it with `convserve models publish`)"
        ) from None
    alias = f" (alias {args.alias})" if args.alias else ""
    print(f"published {args.name}:{version}{alias} to {store.root}")


# --------------------------------------------------------------------------- evaluate
def run_evaluate(args: argparse.Namespace) -> int:
    bundle = load_bundle(args.bundle)
    data = load_mnist(resolve_data_dir(args.data_dir))
    labels = list(bundle.class_labels)
    if not all(isinstance(label, int) and 0 <= label <= 9 for label in labels):
        raise TrainingConfigError(
            f"{args.bundle}: class labels {labels} are not MNIST digits; cannot evaluate on MNIST"
        )
    test_ds = select_classes(data.test, labels if len(labels) < 10 else None)
    result = evaluate(bundle, test_ds)
    if args.json:
        print(json.dumps({"bundle": str(args.bundle), **result}, indent=2))
        return 0
    print(
        f"{args.bundle}: test accuracy {100 * result['accuracy']:.2f}% "
        f"({result['errors']} errors in {result['count']} images), loss {result['loss']:.4f}"
    )
    print("per-class accuracy: " + format_per_class(result["per_class_accuracy"], labels))
    print(format_confusion(result["confusion_matrix"], labels))
    return 0
