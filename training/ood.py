""" "Not a digit": an out-of-distribution detector fitted with the model, travelling in its bundle.

The method is Mahalanobis (Lee et al., NeurIPS 2018): one Gaussian per class with a shared
covariance on features the network computes, and an image's distance to the nearest class
mean. Two views of the same forward pass are modelled (docs/TRAINING.md has the measurements
that chose them):

* ``channel_stats``: the mean and standard deviation over the image of each channel of the
  first convolution block's output (60 numbers for simpleconvnet). These see *how* the image
  is drawn: stroke width and contrast, noise, texture, empty pages.
* ``logits``: the network's logits (10 numbers). They see *what* it looks like to the
  classifier: a letter lands between the digit clusters even when the softmax is sure.

A network without a convolution block (the mlp) uses its penultimate features
(``penultimate``) in place of ``channel_stats``. Each view's distance is divided by its own
``tpr``-quantile on the validation digits, the larger of the two is taken, and the threshold
is that maximum's ``tpr``-quantile on the validation digits (e.g. 95 %). What a prediction
carries is ``ood_score = max_v(distance_v / scale_v) / threshold``: model-independent units
(1.0 is the threshold of whatever version answers, so one set of histogram buckets fits every
version), and ``not_a_digit = ood_score > 1``.

Stored as float32 arrays in the bundle (no pickle), two per view: ``ood.<view>.class_means``
(K, D), the class means already whitened, and ``ood.<view>.whitening`` (D, D), W with W W^T
= the shared precision, so a distance is ``|| f W - m_k ||``; the views, scales and threshold
are in the metadata record ``ood``.

Importable by the service: numpy and scipy only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.special import logsumexp, softmax

ARRAY_PREFIX = "ood."
METHOD = "mahalanobis"
VIEWS = ("channel_stats", "penultimate", "logits")
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


def default_views(outputs: list[np.ndarray]) -> tuple[str, str]:
    """The views for a network whose forward outputs are ``outputs``: channel statistics of
    its first convolution block and the logits; the penultimate features and the logits when
    it has no 4-D output."""
    has_conv = any(output.ndim == 4 for output in outputs[:-1])
    return ("channel_stats" if has_conv else "penultimate", "logits")


def views_of(outputs: list[np.ndarray], views: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The detector's input: ``outputs`` from ``Network.forward_outputs`` -> {view: (N, D)}."""
    return {view: view_features(outputs, view) for view in views}


def view_features(outputs: list[np.ndarray], view: str) -> np.ndarray:
    """One view of a forward pass: ``outputs`` from ``Network.forward_outputs`` -> (N, D)."""
    if view == "logits":
        return np.asarray(outputs[-1], dtype=np.float32)
    if view == "penultimate":
        last = outputs[-2] if len(outputs) > 1 else outputs[-1]
        return np.asarray(last, dtype=np.float32).reshape(last.shape[0], math.prod(last.shape[1:]))
    if view == "channel_stats":
        block = next((o for o in outputs[:-1] if o.ndim == 4), None)
        if block is None:
            raise DetectorInvalid("view 'channel_stats' needs a network with a conv block")
        return np.concatenate([block.mean(axis=(2, 3)), block.std(axis=(2, 3))], axis=1).astype(
            np.float32
        )
    raise DetectorInvalid(f"unknown view {view!r}; known: {', '.join(VIEWS)}")


@dataclass(frozen=True)
class ClassGaussians:
    """Class-conditional Gaussians with a shared covariance on one view: class_means (K, D)
    whitened, whitening (D, D)."""

    class_means: np.ndarray
    whitening: np.ndarray

    @classmethod
    def fit(cls, features: np.ndarray, targets: np.ndarray, num_classes: int) -> ClassGaussians:
        """Features (N, D) of in-distribution images and their class indices (N,). A class
        without images gets the overall mean."""
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
        return cls((means @ whitening).astype(np.float32), whitening.astype(np.float32))

    def distances(self, features: np.ndarray) -> np.ndarray:
        """Features (N, D) -> Mahalanobis distance to the nearest class mean (N,) float64."""
        whitened = np.asarray(features, dtype=np.float32) @ self.whitening
        # |w - m|^2 = |w|^2 - 2 w.m + |m|^2 for every class at once (einsum's parsing costs
        # more than the arithmetic at batch 1).
        squared = (
            np.square(whitened).sum(axis=1, keepdims=True)
            - 2 * whitened @ self.class_means.T
            + np.square(self.class_means).sum(axis=1)
        )
        return np.sqrt(np.maximum(squared.min(axis=1), 0.0)).astype(np.float64)


@dataclass(frozen=True)
class OodDetector:
    """views (names from VIEWS), their ``gaussians``, ``scales`` (each view's distance at the
    TPR on validation digits) and ``threshold`` (the combined score's): ``fit`` leaves scales
    and threshold at 1 until ``with_threshold``."""

    views: tuple[str, ...]
    gaussians: tuple[ClassGaussians, ...]
    scales: tuple[float, ...]
    threshold: float = 1.0

    @classmethod
    def fit(
        cls, features: dict[str, np.ndarray], targets: np.ndarray, num_classes: int
    ) -> OodDetector:
        """``features`` ({view: (N, D)}, from ``views_of``) of in-distribution images and their
        class indices (N,) -> the detector on those views."""
        views = tuple(features)
        gaussians = tuple(ClassGaussians.fit(features[v], targets, num_classes) for v in views)
        return cls(views, gaussians, (1.0,) * len(views))

    def combined(self, features: dict[str, np.ndarray]) -> np.ndarray:
        """{view: (N, D)} -> (N,) the largest of the views' distances, each over its scale."""
        distances = [
            g.distances(features[v]) / s
            for v, g, s in zip(self.views, self.gaussians, self.scales, strict=True)
        ]
        return np.max(distances, axis=0)

    def scores(self, features: dict[str, np.ndarray]) -> np.ndarray:
        """{view: (N, D)} (``views_of(outputs, detector.views)``) -> ood_score (N,); > 1 means
        not a digit."""
        return self.combined(features) / self.threshold

    def with_threshold(
        self, features: dict[str, np.ndarray], tpr: float = DEFAULT_TPR
    ) -> OodDetector:
        """A copy whose scales and threshold keep ``tpr`` of the in-distribution images
        (``features`` of the validation digits) at or under them."""
        if not 0 < tpr < 1:
            raise ValueError(f"tpr must be in (0, 1), got {tpr!r}")
        scales = tuple(
            max(float(np.quantile(g.distances(features[v]), tpr)), 1e-6)
            for v, g in zip(self.views, self.gaussians, strict=True)
        )
        scaled = OodDetector(self.views, self.gaussians, scales)
        threshold = max(float(np.quantile(scaled.combined(features), tpr)), 1e-6)
        return OodDetector(self.views, self.gaussians, scales, threshold)

    def arrays(self) -> dict[str, np.ndarray]:
        """The bundle members: ``ood.<view>.class_means`` and ``ood.<view>.whitening``."""
        arrays = {}
        for view, gaussians in zip(self.views, self.gaussians, strict=True):
            arrays[f"{ARRAY_PREFIX}{view}.class_means"] = gaussians.class_means
            arrays[f"{ARRAY_PREFIX}{view}.whitening"] = gaussians.whitening
        return arrays

    def record(self) -> dict:
        """What the metadata ``ood`` record needs to rebuild the detector with ``arrays``."""
        return {
            "method": METHOD,
            "views": [
                {"name": v, "features": int(g.whitening.shape[0]), "scale": s}
                for v, g, s in zip(self.views, self.gaussians, self.scales, strict=True)
            ],
            "threshold": self.threshold,
        }

    @classmethod
    def from_bundle(
        cls, arrays: dict[str, np.ndarray], record: object, outputs: list[np.ndarray]
    ) -> OodDetector:
        """Rebuild from the bundle's ``ood.*`` arrays and its metadata ``ood`` record, checked
        against ``outputs`` of one forward pass of the bundle's network. Raises
        DetectorInvalid naming the problem."""
        if not isinstance(record, dict) or record.get("method") != METHOD:
            raise DetectorInvalid(f"metadata 'ood' must be an object with method {METHOD!r}")
        threshold = _positive_number(record.get("threshold"), "ood.threshold")
        entries = record.get("views")
        if not isinstance(entries, list) or not entries:
            raise DetectorInvalid("metadata 'ood.views' must be a non-empty list")
        views, gaussians, scales, expected = [], [], [], set()
        for entry in entries:
            view = entry.get("name") if isinstance(entry, dict) else None
            if view not in VIEWS:
                raise DetectorInvalid(f"metadata 'ood.views' names an unknown view {view!r}")
            scales.append(_positive_number(entry.get("scale"), f"ood.views {view} scale"))
            means_key, whitening_key = (
                f"{ARRAY_PREFIX}{view}.class_means",
                f"{ARRAY_PREFIX}{view}.whitening",
            )
            expected |= {means_key, whitening_key}
            if means_key not in arrays or whitening_key not in arrays:
                raise DetectorInvalid(f"detector arrays must be exactly {sorted(expected)}")
            features = view_features(outputs, view).shape[1]
            gaussians.append(
                _checked_gaussians(arrays, means_key, whitening_key, features, outputs)
            )
            views.append(view)
        if set(arrays) != expected:
            raise DetectorInvalid(f"detector arrays must be exactly {sorted(expected)}")
        return cls(tuple(views), tuple(gaussians), tuple(scales), threshold)


def _positive_number(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise DetectorInvalid(f"metadata '{what}' must be a number")
    if not (np.isfinite(value) and value > 0):
        raise DetectorInvalid(f"metadata '{what}' must be finite and positive")
    return float(value)


def _checked_gaussians(
    arrays: dict, means_key: str, whitening_key: str, features: int, outputs: list
) -> ClassGaussians:
    """One view's arrays, checked: finite floats, whitening (D, D) and class means (K, D)
    with D the view's width and K the network's classes."""
    means, whitening = arrays[means_key], arrays[whitening_key]
    for key, value in ((means_key, means), (whitening_key, whitening)):
        if value.dtype not in (np.float32, np.float64) or not np.all(np.isfinite(value)):
            raise DetectorInvalid(f"{key!r} must hold finite floats")
    if whitening.shape != (features, features):
        raise DetectorInvalid(
            f"{whitening_key!r} has shape {whitening.shape}, the network gives {features} features"
        )
    classes = max(outputs[-1].shape[1], 2)
    if means.shape != (classes, features):
        raise DetectorInvalid(
            f"{means_key!r} has shape {means.shape}, expected {(classes, features)}"
        )
    return ClassGaussians(means.astype(np.float32), whitening.astype(np.float32))


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
