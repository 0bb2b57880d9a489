"""Calibration and "not a digit" figures of a bundle, per kind of input, and what they cost.

    .venv/bin/python benchmarks/ood_eval.py runs/mnist.npz [--digits 10000] [--photos 300]
                                            [--json]

1. Calibration: accuracy and ECE (15 bins) on the MNIST test split, raw and with the bundle's
   temperature.
2. Drawings: non-digits (``training.nondigits``: letters in every installed font and Pillow's
   own, symbols, shapes) brought to MNIST form by the service's own ``normalise_like_mnist``,
   and full-field inputs a JSON client can send (blank pages, noise, textures). Per kind: AUROC
   against the MNIST test digits for the bundle's detector (Mahalanobis on two views) and the
   alternatives (Mahalanobis on the penultimate features alone, fitted here on 10,000 training
   digits; energy; max softmax), the share flagged at the bundle's threshold, and each
   method's share of non-digits caught when 95 % of test digits pass. "digit-like" glyphs are
   reported, not counted in "all".
3. Photos: the same drawing pipeline as tests/service/test_inputs.py (ink on unevenly lit paper
   or chalk on a board, blur, noise, JPEG) for MNIST test digits and for non-digits (letters,
   symbols, shapes, textures, near-blank pages), decoded by the service's ``pixels_from_image``.
   "refused" counts pictures the service answers 400 "no ink found" before the model runs.
4. Cost: ``Bundle.predict`` (calibrated probabilities + OOD score) against ``predict_proba``,
   per image, at batch 1 and 256, interleaved.

Needs MNIST (``$MNIST_DIR`` or ../shared/data/mnist); nothing is downloaded.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import find_mnist_dir, interleaved, median, mnist_test_digits  # noqa: E402
from service.errors import BadRequest  # noqa: E402
from service.inputs.images import pixels_from_image  # noqa: E402
from service.inputs.mnist_form import normalise_like_mnist  # noqa: E402
from service.inputs.validate import InputSpec  # noqa: E402
from training.bundle import Bundle, load_bundle, normalise  # noqa: E402
from training.calibration import calibrated_probabilities, expected_calibration_error  # noqa: E402
from training.nondigits import full_field_kinds, ink_drawings  # noqa: E402
from training.ood import (  # noqa: E402
    ClassGaussians,
    auroc,
    energy_score,
    max_softmax_score,
    view_features,
    views_of,
)
from training.trainer import class_indices  # noqa: E402

PHOTO_SIDE = 280


def scores_by_method(bundle: Bundle, images: np.ndarray, penultimate=None) -> dict:
    """Images (N, 28, 28) -> {method: (N,) scores, higher = less like a digit}: the bundle's
    detector, the energy and max-softmax scores of its (calibrated) logits, and, given
    ``penultimate`` (ClassGaussians fitted on training digits), Mahalanobis on the penultimate
    features alone. In batches of 1,000."""
    temperature = bundle.temperature or 1.0
    parts: dict[str, list] = {}
    for start in range(0, max(len(images), 1), 1000):
        x = normalise(images[start : start + 1000], bundle.input, bundle.network.dtype.type)
        outputs = bundle.network.forward_outputs(x)
        scores = {
            "mahalanobis": bundle.detector.scores(views_of(outputs, bundle.detector.views)),
            "energy": energy_score(outputs[-1], temperature),
            "max_softmax": max_softmax_score(outputs[-1], temperature),
        }
        if penultimate is not None:
            scores["penultimate"] = penultimate.distances(view_features(outputs, "penultimate"))
        for method, values in scores.items():
            parts.setdefault(method, []).append(values)
    return {method: np.concatenate(values) for method, values in parts.items()}


def fit_penultimate(bundle: Bundle, count: int = 10_000) -> ClassGaussians:
    """The penultimate-features-only alternative: class Gaussians on ``count`` MNIST training
    digits (the first ones; the default recipe trained on them or held them out)."""
    from training.data import read_idx

    directory = find_mnist_dir()
    images = read_idx(directory / "train-images-idx3-ubyte.gz")[:count]
    labels = read_idx(directory / "train-labels-idx1-ubyte.gz")[:count]
    features = []
    for start in range(0, count, 1000):
        x = normalise(images[start : start + 1000], bundle.input, bundle.network.dtype.type)
        features.append(view_features(bundle.network.forward_outputs(x), "penultimate"))
    targets = class_indices(labels, bundle.class_labels)
    return ClassGaussians.fit(np.concatenate(features), targets, len(bundle.class_labels))


def drawn_in_mnist_form(inks: list[np.ndarray]) -> np.ndarray:
    """Ink canvases -> (N, 28, 28) uint8 through the service's normalise_like_mnist."""
    return np.stack([np.clip(np.rint(normalise_like_mnist(ink)), 0, 255) for ink in inks]).astype(
        np.uint8
    )


def photograph(ink: np.ndarray, rng: np.random.Generator, chalk: bool) -> bytes:
    """Ink (H, W) 0-255 -> a JPEG photo of it, as tests/service/test_inputs.synthetic_photo
    makes them: 280x280, ink on paper lit from one corner (or chalk on a dark board), blur,
    noise, a warm tint."""
    big = Image.fromarray(np.clip(ink, 0, 255).astype(np.uint8)).resize(
        (PHOTO_SIDE, PHOTO_SIDE), Image.Resampling.BICUBIC
    )
    coverage = np.asarray(big, dtype=np.float64) / 255
    rows, columns = np.mgrid[0:PHOTO_SIDE, 0:PHOTO_SIDE] / PHOTO_SIDE
    if chalk:
        paper, colour = 40 + 45 * columns + 20 * rows, 200.0
    else:
        paper, colour = 235 - 60 * columns - 30 * rows, 70.0
    photo = paper * (1 - coverage) + colour * coverage
    photo = ndimage.gaussian_filter(photo, 1.2) + rng.normal(0, 6, photo.shape)
    rgb = np.repeat(np.clip(photo, 0, 255).astype(np.uint8)[..., None], 3, axis=2)
    rgb[..., 2] = np.clip(rgb[..., 2].astype(int) - 12, 0, 255)
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="JPEG", quality=80)
    return buffer.getvalue()


def photo_pixels(inks: list[np.ndarray], seed: int) -> tuple[np.ndarray, int]:
    """Photograph each ink (alternately pencil and chalk) and decode it as the service does:
    ((M, 28, 28) pixels of the photos that reached the model, number refused "no ink")."""
    rng = np.random.default_rng(seed)
    pixels, refused = [], 0
    for index, ink in enumerate(inks):
        try:
            pixels.append(pixels_from_image(photograph(ink, rng, index % 2 == 1), InputSpec()))
        except BadRequest:
            refused += 1
    return np.stack(pixels) if pixels else np.zeros((0, 28, 28), np.float32), refused


def photo_nondigits(rng: np.random.Generator, count: int) -> dict[str, list[np.ndarray]]:
    """Non-digit inks to photograph: letters, symbols, shapes (``count`` of each at most),
    textures (smoothed noise and gratings filling the page) and near-blank pages (a faint
    smudge or a few specks)."""
    drawn = ink_drawings(rng)
    kinds = {
        kind: [inks[i] for i in rng.permutation(len(inks))[:count]] for kind, inks in drawn.items()
    }
    textures = full_field_kinds(rng, count)["textures"]
    kinds["textures"] = [np.asarray(t, dtype=np.float32) for t in textures]
    near_blank = []
    for index in range(count // 3):
        page = np.zeros((28, 28), np.float32)
        if index % 2:
            page[rng.integers(0, 28, 4), rng.integers(0, 28, 4)] = 255
        else:
            page += 40 * np.exp(
                -((np.mgrid[0:28, 0:28] - rng.uniform(6, 22, (2, 1, 1))) ** 2).sum(0) / 30
            )
        near_blank.append(page)
    kinds["near-blank"] = near_blank
    return kinds


def kind_figures(digit_scores: dict, scores: dict, refused: int = 0) -> dict:
    """AUROC per method, share flagged at the bundle's threshold, and per method the share
    caught when 95 % of the digits pass."""
    figures = {"images": len(scores["mahalanobis"]) + refused, "refused": refused}
    for method, values in scores.items():
        cut = np.quantile(digit_scores[method], 0.95)
        figures[method] = {
            "auroc": round(auroc(digit_scores[method], values), 4),
            "caught_at_tpr95": round(float((values > cut).mean()), 4),
        }
    caught = int((scores["mahalanobis"] > 1).sum()) + refused
    figures["flagged"] = round(caught / max(figures["images"], 1), 4)
    return figures


def calibration_figures(bundle: Bundle, images: np.ndarray, labels: np.ndarray) -> dict:
    """Test accuracy and ECE (15 bins) with T = 1 and with the bundle's temperature."""
    x = normalise(images, bundle.input, bundle.network.dtype.type)
    logits = bundle.network.forward(x, train=False)
    targets = class_indices(labels, bundle.class_labels)
    figures = {"temperature": bundle.temperature}
    for name, temperature in (("raw", 1.0), ("calibrated", bundle.temperature or 1.0)):
        probabilities = calibrated_probabilities(logits, temperature)
        figures[name] = {
            "accuracy": float((probabilities.argmax(axis=1) == targets).mean()),
            "ece": expected_calibration_error(probabilities, targets),
        }
    return figures


def cost_figures(bundle: Bundle, images: np.ndarray) -> dict:
    """Microseconds per image of predict_proba and predict at batch 1 and 256 (medians of
    interleaved repetitions) and the ratio."""
    figures = {}
    for batch, calls in ((1, 300), (256, 8)):
        pixels = images[:batch].astype(np.float32)
        timings = interleaved(
            {
                "predict_proba": lambda p=pixels: bundle.predict_proba(p),
                "predict": lambda p=pixels: bundle.predict(p),
            },
            calls=calls,
            repetitions=7,
        )
        plain, full = median(timings["predict_proba"]), median(timings["predict"])
        figures[f"batch_{batch}"] = {
            "predict_proba_us_per_image": round(1e6 * plain / batch, 1),
            "predict_us_per_image": round(1e6 * full / batch, 1),
            "ratio": round(full / plain, 3),
        }
    return figures


def evaluate(bundle: Bundle, digits: int, photos: int) -> dict:
    """Every figure of the module docstring, as one JSON-able document."""
    images, labels, source = mnist_test_digits(digits)
    rng = np.random.default_rng(0)
    penultimate = fit_penultimate(bundle) if find_mnist_dir() is not None else None

    def score(x):
        return scores_by_method(bundle, x, penultimate)

    digit_scores = score(images)
    drawn = {kind: drawn_in_mnist_form(inks) for kind, inks in ink_drawings(rng).items()}
    drawn.update(full_field_kinds(rng, 300))
    drawings = {kind: kind_figures(digit_scores, score(x)) for kind, x in drawn.items()}
    # "digit-like" glyphs (a bracket is a "1" in MNIST form) are reported, not counted.
    all_drawn = np.concatenate([x for kind, x in drawn.items() if kind != "digit-like"])
    drawings["all"] = kind_figures(digit_scores, score(all_drawn))
    photo_digits, digits_refused = photo_pixels(
        [d.astype(np.float32) for d in images[:photos]], seed=1
    )
    photo_digit_scores = score(photo_digits)
    photo_section = {
        "digits": {
            "images": photos,
            "refused": digits_refused,
            "flagged": round(float((photo_digit_scores["mahalanobis"] > 1).mean()), 4),
        }
    }
    everything, refused_total = [], 0
    for offset, (kind, inks) in enumerate(photo_nondigits(rng, photos).items()):
        pixels, refused = photo_pixels(inks, seed=10 + offset)
        if kind != "digit-like":
            refused_total += refused
            everything.append(pixels)
        photo_section[kind] = kind_figures(photo_digit_scores, score(pixels), refused)
    photo_section["all non-digits"] = kind_figures(
        photo_digit_scores, score(np.concatenate(everything)), refused_total
    )
    return {
        "bundle": str(bundle.path),
        "digits": source,
        "test_digits_flagged": round(float((digit_scores["mahalanobis"] > 1).mean()), 4),
        "calibration": calibration_figures(bundle, images, labels),
        "drawings": drawings,
        "photos": photo_section,
        "cost": cost_figures(bundle, images),
    }


def print_report(report: dict) -> None:
    calibration = report["calibration"]
    raw, calibrated = calibration["raw"], calibration["calibrated"]
    print(f"{report['bundle']} on {report['digits']}")
    print(
        f"calibration: T = {calibration['temperature']}; accuracy {100 * raw['accuracy']:.2f}%"
        f" -> {100 * calibrated['accuracy']:.2f}%, ECE {100 * raw['ece']:.2f}%"
        f" -> {100 * calibrated['ece']:.2f}%"
    )
    print(f"test digits flagged: {100 * report['test_digits_flagged']:.2f}%")
    for section in ("drawings", "photos"):
        print(f"\n{section}: kind, images, refused, flagged; AUROC (caught at TPR 95%) per method")
        for kind, row in report[section].items():
            line = f"  {kind:<16}{row['images']:>6}{row['refused']:>6}  flagged "
            line += f"{100 * row['flagged']:5.1f}%"
            if "mahalanobis" in row:
                line += "   " + "  ".join(
                    f"{m} {row[m]['auroc']:.3f} ({100 * row[m]['caught_at_tpr95']:.0f}%)"
                    for m in ("mahalanobis", "penultimate", "energy", "max_softmax")
                    if m in row
                )
            print(line)
    print("\ncost per image (us): predict_proba -> predict")
    for batch, row in report["cost"].items():
        print(
            f"  {batch}: {row['predict_proba_us_per_image']} -> {row['predict_us_per_image']} "
            f"(x{row['ratio']})"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bundle", help="a .npz bundle with a detector (convserve train)")
    parser.add_argument("--digits", type=int, default=10_000, help="MNIST test digits")
    parser.add_argument("--photos", type=int, default=300, help="photos per kind")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    bundle = load_bundle(args.bundle)
    if bundle.detector is None:
        parser.error(f"{args.bundle} has no detector: train it with this convserve version")
    report = evaluate(bundle, args.digits, args.photos)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
