"""What is fitted after training, on the trained network: calibration and the OOD detector.

``fit_posthoc`` runs the network once over a sample of the training split (the detector's
class Gaussians), the validation split (the temperature, the detector's threshold, the
distributions the service's drift view compares with), the test split (ECE before and after,
test digits flagged) and the built-in non-digit set (``training.nondigits``: AUROC and the
share flagged, per kind). Everything it returns is JSON for the metadata, plus the detector's
arrays for the bundle.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass

import numpy as np

from training.bundle import normalise
from training.calibration import (
    ECE_BINS,
    calibrated_probabilities,
    fit_temperature,
    negative_log_likelihood,
    reliability,
)
from training.network import Network
from training.nondigits import nondigit_set
from training.ood import (
    CONFIDENCE_BOUNDS,
    DEFAULT_TPR,
    OOD_SCORE_BOUNDS,
    OodDetector,
    auroc,
    default_views,
    histogram,
    views_of,
)
from training.trainer import class_indices

# Training images the class Gaussians are fitted on: 20k estimate a 100x100 covariance well
# and cost ~10 s of inference on 2 cores.
DETECTOR_IMAGES = 20_000


@dataclass
class Posthoc:
    """metadata: {"calibration", "ood", "distributions"} for the bundle (None values left
    out). metrics: figures for ``metadata["metrics"]`` (ECE, AUROC, flagged shares). arrays:
    the detector's ``ood.*`` arrays."""

    metadata: dict
    metrics: dict
    arrays: dict


def view_features(
    network: Network, images: np.ndarray, contract: dict, batch_size: int = 1000
) -> dict[str, np.ndarray]:
    """Images (N, 28, 28) 0-255 -> {view: (N, D)} for the detector's ``default_views`` of
    this network, in batches (a batch's forward outputs are dropped once reduced)."""
    batches = []
    for start in range(0, max(len(images), 1), batch_size):
        x = normalise(images[start : start + batch_size], contract, network.dtype.type)
        outputs = network.forward_outputs(x)
        batches.append(views_of(outputs, default_views(outputs)))
    return {view: np.concatenate([batch[view] for batch in batches]) for view in batches[0]}


def fit_posthoc(
    network: Network,
    contract: dict,
    splits,
    class_labels: list[int],
    *,
    rng: np.random.Generator,
    tpr: float = DEFAULT_TPR,
    progress: bool = False,
) -> Posthoc:
    """Fit the temperature on ``splits.val`` and the Mahalanobis detector on up to
    DETECTOR_IMAGES of ``splits.train`` (threshold at ``tpr`` of the validation digits; of the
    training images when there is no validation split), and measure both. splits: a
    ``training.recipe.Splits``."""
    started = time.perf_counter()
    num_classes = len(class_labels)
    train = splits.train
    pick = rng.permutation(len(train))[:DETECTOR_IMAGES]
    train_views = view_features(network, train.images[pick], contract)
    train_targets = class_indices(train.labels[pick], class_labels)
    detector = OodDetector.fit(train_views, train_targets, num_classes)
    has_val = len(splits.val) > 0
    held_out = splits.val if has_val else train
    val_views = view_features(network, held_out.images, contract)
    val_logits = val_views["logits"].astype(np.float64)
    val_targets = class_indices(held_out.labels, class_labels)
    detector = detector.with_threshold(val_views if has_val else train_views, tpr)
    temperature = fit_temperature(val_logits, val_targets) if has_val else None
    test_views = view_features(network, splits.test.images, contract)
    test_targets = class_indices(splits.test.labels, class_labels)
    calibration, metrics = _calibration_figures(
        val_logits, val_targets, test_views["logits"].astype(np.float64), test_targets, temperature
    )
    ood, ood_metrics = _ood_figures(network, contract, detector, test_views, tpr)
    ood["fitted_on"] = f"training split ({len(pick)} images)"
    ood["threshold_on"] = "validation split" if has_val else "training split (no validation)"
    metrics.update(ood_metrics)
    val_probabilities = calibrated_probabilities(val_logits, temperature or 1.0)
    distributions = {
        "split": ood["threshold_on"],
        "confidence": histogram(val_probabilities.max(axis=1), CONFIDENCE_BOUNDS),
        "ood_score": histogram(detector.scores(val_views), OOD_SCORE_BOUNDS),
    }
    metadata = {"calibration": calibration, "ood": ood, "distributions": distributions}
    if progress:
        print(
            f"calibration and detector fitted in {time.perf_counter() - started:.0f} s",
            file=sys.stderr,
        )
    return Posthoc(
        metadata={k: v for k, v in metadata.items() if v is not None},
        metrics=metrics,
        arrays=detector.arrays(),
    )


def _calibration_figures(
    val_logits, val_targets, test_logits, test_targets, temperature: float | None
) -> tuple[dict | None, dict]:
    """(metadata "calibration" record or None when nothing was fitted, metrics): ECE on the
    test split with and without the temperature, reliability diagrams for both."""
    before = reliability(calibrated_probabilities(test_logits), test_targets)
    metrics = {"test_ece_uncalibrated": before["ece"], "test_ece": before["ece"]}
    if temperature is None:
        return None, metrics
    after = reliability(calibrated_probabilities(test_logits, temperature), test_targets)
    metrics["test_ece"] = after["ece"]
    record = {
        "method": "temperature",
        "temperature": temperature,
        "fitted_on": f"validation split ({len(val_targets)} images)",
        "ece_bins": ECE_BINS,
        "test_ece_before": before["ece"],
        "test_ece_after": after["ece"],
        "val_nll_before": negative_log_likelihood(val_logits, val_targets, 1.0),
        "val_nll_after": negative_log_likelihood(val_logits, val_targets, temperature),
        "test_reliability_before": before,
        "test_reliability_after": after,
    }
    return record, metrics


def _ood_figures(
    network: Network, contract: dict, detector: OodDetector, test_views, tpr: float
) -> tuple[dict, dict]:
    """(metadata "ood" record, metrics): test digits flagged, AUROC and share flagged of the
    built-in non-digits (``training.nondigits.nondigit_set``), overall and per kind."""
    test_scores = detector.scores(test_views)
    by_kind, outside = {}, []
    for kind, images in nondigit_set().items():
        scores = detector.scores(view_features(network, images, contract))
        outside.append(scores)
        by_kind[kind] = {
            "images": len(images),
            "auroc": round(auroc(test_scores, scores), 4),
            "flagged": round(float((scores > 1).mean()), 4),
        }
    overall = auroc(test_scores, np.concatenate(outside))
    record = {
        **detector.record(),
        "tpr": tpr,
        "score": "max over views of (Mahalanobis distance to the nearest class mean / the "
        "view's scale), over the threshold; > 1 is not a digit",
        "nondigits": by_kind,
    }
    metrics = {
        "ood_auroc": overall,
        "ood_test_digits_flagged": float((test_scores > 1).mean()),
        "ood_nondigits_flagged": float((np.concatenate(outside) > 1).mean()),
    }
    return record, metrics
