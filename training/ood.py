""" "Not a digit": an out-of-distribution detector fitted with the model, travelling in its bundle.

The chosen method is the Mahalanobis detector of Lee et al. (NeurIPS 2018) on the penultimate
features (the input of the last affine layer; 100 ReLU units for simpleconvnet): one Gaussian
per class with a shared covariance, fitted on training images; an image's distance is its
Mahalanobis distance to the nearest class mean. Digits sit close to one of the ten clusters;
letters, shapes, noise and blank pages land between or far from them, even when the softmax
on top is sure of a class. docs/TRAINING.md has the measurements against the two cheap
alternatives computed from the logits alone (``energy_score``, ``max_softmax_score``).

The threshold is the distance under which ``tpr`` (e.g. 95 %) of the validation digits fall.
What a prediction carries is ``ood_score = distance / threshold``: model-independent units
(1.0 is the threshold of whatever version answers, so one set of histogram buckets fits every
version), and ``not_a_digit = ood_score > 1``.

Stored as two float32 arrays in the bundle (no pickle): ``ood.class_means`` (K, D), the class
means already whitened, and ``ood.whitening`` (D, D), W with W W^T = the shared precision, so a
distance is ``|| f W - m_k ||`` (one (N, D) x (D, D) product and one (N, D) x (D, K)).

Importable by the service: numpy and scipy only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import logsumexp, softmax

ARRAY_PREFIX = "ood."
CLASS_MEANS = ARRAY_PREFIX + "class_means"
WHITENING = ARRAY_PREFIX + "whitening"
METHOD = "mahalanobis"
DEFAULT_TPR = 0.95
# Shrinkage of the shared covariance towards a multiple of the identity: ReLU features have
# dead units (zero variance) and a tiny fitting set has fewer images than dimensions.
SHRINKAGE = 0.01
# Fixed buckets (upper bounds) of the distributions recorded in the metadata, so the service's
# drift view can compare live traffic with validation for any version. ood_score is in units
# of the threshold; the last bucket is everything above the last bound.
CONFIDENCE_BOUNDS = tuple(round(0.05 * i, 2) for i in range(1, 21))
OOD_SCORE_BOUNDS = (0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 3.0, 5.0, 10.0)


class DetectorInvalid(ValueError):
    """Detector arrays or record that do not fit together (the bundle loader names the file)."""


@dataclass(frozen=True)
class MahalanobisDetector:
    """class_means (K, D) whitened, whitening (D, D), threshold: the raw distance at the chosen
    true-positive rate (``fit`` leaves it at 1.0 until ``with_threshold``)."""

    class_means: np.ndarray
    whitening: np.ndarray
    threshold: float = 1.0

    @classmethod
    def fit(cls, features: np.ndarray, targets: np.ndarray, num_classes: int):
        """Features (N, D) of in-distribution images and their class indices (N,) -> the
        detector (threshold 1.0). A class without images gets the overall mean."""
        features = np.asarray(features, dtype=np.float64)
        targets = np.asarray(targets, dtype=np.intp)
        if features.ndim != 2 or len(features) != len(targets) or len(features) < 2:
            raise DetectorInvalid(f"need (N >= 2, D) features and N targets, got {features.shape}")
        dimensions = features.shape[1]
        means = np.tile(features.mean(axis=0), (num_classes, 1))
        for k in range(num_classes):
            if (targets == k).any():
                means[k] = features[targets == k].mean(axis=0)
        centred = features - means[targets]
        covariance = centred.T @ centred / len(features)
        scale = np.trace(covariance) / dimensions or 1.0
        covariance = (1 - SHRINKAGE) * covariance + SHRINKAGE * scale * np.eye(dimensions)
        eigenvalues, eigenvectors = np.linalg.eigh(covariance)
        whitening = eigenvectors / np.sqrt(np.maximum(eigenvalues, 1e-12 * scale))
        return cls(
            class_means=(means @ whitening).astype(np.float32),
            whitening=whitening.astype(np.float32),
        )

    def distances(self, features: np.ndarray) -> np.ndarray:
        """Features (N, D) -> Mahalanobis distance to the nearest class mean (N,) float64."""
        whitened = np.asarray(features, dtype=np.float32) @ self.whitening
        squared = (
            np.einsum("nd,nd->n", whitened, whitened)[:, None]
            - 2 * whitened @ self.class_means.T
            + np.einsum("kd,kd->k", self.class_means, self.class_means)[None, :]
        )
        return np.sqrt(np.maximum(squared.min(axis=1), 0.0)).astype(np.float64)

    def scores(self, features: np.ndarray) -> np.ndarray:
        """Features (N, D) -> ood_score (N,): distance / threshold; > 1 means not a digit."""
        return self.distances(features) / self.threshold

    def with_threshold(self, in_distribution: np.ndarray, tpr: float = DEFAULT_TPR):
        """A copy whose threshold keeps ``tpr`` of the in-distribution features (N, D) (the
        validation digits) at or under it."""
        if not 0 < tpr < 1:
            raise ValueError(f"tpr must be in (0, 1), got {tpr!r}")
        threshold = float(np.quantile(self.distances(in_distribution), tpr))
        return MahalanobisDetector(self.class_means, self.whitening, max(threshold, 1e-6))

    def arrays(self) -> dict[str, np.ndarray]:
        """The bundle members: ``ood.class_means`` and ``ood.whitening`` (float32)."""
        return {CLASS_MEANS: self.class_means, WHITENING: self.whitening}

    @classmethod
    def from_bundle(cls, arrays: dict[str, np.ndarray], record: object, features: int):
        """Rebuild from the bundle's ``ood.*`` arrays and its metadata ``ood`` record, for a
        network whose penultimate layer has ``features`` units and K classes. Raises
        DetectorInvalid naming the problem."""
        if not isinstance(record, dict) or record.get("method") != METHOD:
            raise DetectorInvalid(f"metadata 'ood' must be an object with method {METHOD!r}")
        threshold = record.get("threshold")
        if isinstance(threshold, bool) or not isinstance(threshold, int | float):
            raise DetectorInvalid("metadata 'ood.threshold' must be a number")
        if not (np.isfinite(threshold) and threshold > 0):
            raise DetectorInvalid("metadata 'ood.threshold' must be finite and positive")
        if set(arrays) != {CLASS_MEANS, WHITENING}:
            raise DetectorInvalid(f"detector arrays must be exactly {CLASS_MEANS}, {WHITENING}")
        means, whitening = arrays[CLASS_MEANS], arrays[WHITENING]
        for key, value in arrays.items():
            if value.dtype not in (np.float32, np.float64) or not np.all(np.isfinite(value)):
                raise DetectorInvalid(f"{key!r} must hold finite floats")
        if whitening.shape != (features, features) or means.ndim != 2:
            raise DetectorInvalid(
                f"{WHITENING!r} has shape {whitening.shape}, the network's penultimate layer "
                f"has {features} features"
            )
        if means.shape[1] != features:
            raise DetectorInvalid(f"{CLASS_MEANS!r} has shape {means.shape}")
        return cls(means.astype(np.float32), whitening.astype(np.float32), float(threshold))


# --------------------------------------------------------------------------- alternatives
def energy_score(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Liu et al. 2020: -T logsumexp(logits / T), (N, K) -> (N,); higher = less like training."""
    logits = np.asarray(logits, dtype=np.float64)
    return -temperature * logsumexp(logits / temperature, axis=1)


def max_softmax_score(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Hendrycks & Gimpel 2017: 1 - max softmax(logits / T), (N, K) -> (N,); higher = less
    sure."""
    logits = np.asarray(logits, dtype=np.float64)
    return 1.0 - softmax(logits / temperature, axis=1).max(axis=1)


# --------------------------------------------------------------------------- figures
def auroc(in_distribution: np.ndarray, out_of_distribution: np.ndarray) -> float:
    """Area under the ROC curve for telling OOD from in-distribution by a score where higher
    means OOD: the probability that a random OOD image scores above a random in-distribution
    one (ties count half). Both (N,) arrays."""
    inside = np.asarray(in_distribution, dtype=np.float64)
    outside = np.asarray(out_of_distribution, dtype=np.float64)
    if len(inside) == 0 or len(outside) == 0:
        raise ValueError("auroc needs scores of both kinds")
    ranks = _average_ranks(np.concatenate([inside, outside]))
    outside_ranks = ranks[len(inside) :].sum()
    return float(
        (outside_ranks - len(outside) * (len(outside) + 1) / 2) / (len(inside) * len(outside))
    )


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks of ``values`` (N,), ties sharing their average rank (Mann-Whitney U)."""
    order = np.argsort(values, kind="mergesort")
    ordered = values[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    ends = np.r_[starts[1:], len(values)]
    average = (starts + ends + 1) / 2.0
    ranks = np.empty(len(values))
    ranks[order] = np.repeat(average, ends - starts)
    return ranks


def histogram(values: np.ndarray, bounds: tuple[float, ...]) -> dict:
    """values (N,) -> {"le": bounds, "counts": per bucket (len(bounds) + 1,): counts[i] holds
    bounds[i-1] < v <= bounds[i], the last everything above the last bound, "total"}."""
    index = np.searchsorted(np.asarray(bounds), np.asarray(values, dtype=np.float64), "left")
    counts = np.bincount(index, minlength=len(bounds) + 1)
    return {"le": list(bounds), "counts": counts.tolist(), "total": int(len(values))}
