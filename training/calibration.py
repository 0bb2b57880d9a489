"""Calibrated confidence: temperature scaling and the figures that say whether it worked.

A network trained to low cross-entropy is usually over-confident on the images it gets wrong.
Temperature scaling (Guo et al., "On Calibration of Modern Neural Networks", 2017) divides the
logits by one number T > 0 fitted to minimise the negative log-likelihood on held-out images
(the validation split). The arg-max, and so the accuracy, cannot change; only how sure the
probabilities say the model is.

The expected calibration error (ECE) is the gap between confidence and accuracy, averaged over
15 equal-width confidence bins weighted by how many predictions fall in each.

Importable by the service: numpy and scipy only.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax

ECE_BINS = 15
# The fitted temperature is searched in [1/20, 20]: far wider than any network needs (MNIST
# networks land between 0.7 and 2), narrow enough that a degenerate split cannot push it to 0.
TEMPERATURE_RANGE = (0.05, 20.0)


def as_class_logits(logits: np.ndarray) -> np.ndarray:
    """Logits (N, K) as the softmax sees them; a sigmoid network's (N, 1) logit z becomes the
    equivalent two-class logits (0, z), so one temperature rule serves both losses."""
    logits = np.asarray(logits, dtype=np.float64)
    if logits.ndim != 2:
        raise ValueError(f"logits must be (N, K), got shape {logits.shape}")
    if logits.shape[1] == 1:
        return np.concatenate([np.zeros_like(logits), logits], axis=1)
    return logits


def calibrated_probabilities(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Logits (N, K) (or a sigmoid net's (N, 1)) and a temperature -> probabilities (N, K)
    float64 = softmax(logits / T)."""
    return softmax(as_class_logits(logits) / temperature, axis=1)


def negative_log_likelihood(logits: np.ndarray, targets: np.ndarray, temperature: float) -> float:
    """Mean NLL (nats) of class indices ``targets`` (N,) under softmax(logits / T)."""
    log_probs = log_softmax(as_class_logits(logits) / temperature, axis=1)
    return float(-log_probs[np.arange(len(targets)), targets].mean())


def fit_temperature(logits: np.ndarray, targets: np.ndarray) -> float:
    """The temperature T minimising the NLL of ``targets`` (class indices (N,)) under
    softmax(logits / T), logits (N, K). Searched on log T (the NLL is smooth and unimodal in
    it); 1.0 when there is nothing to fit on (no image)."""
    targets = np.asarray(targets, dtype=np.intp)
    if len(targets) == 0:
        return 1.0
    low, high = np.log(TEMPERATURE_RANGE)
    result = minimize_scalar(
        lambda log_t: negative_log_likelihood(logits, targets, float(np.exp(log_t))),
        bounds=(low, high),
        method="bounded",
        options={"xatol": 1e-4},
    )
    return float(np.exp(result.x))


def reliability(probabilities: np.ndarray, targets: np.ndarray, bins: int = ECE_BINS) -> dict:
    """The reliability diagram's numbers: probabilities (N, K), targets class indices (N,) ->
    {"edges" (bins + 1,), "count", "confidence" (mean top probability, None for an empty bin),
    "accuracy" (None for an empty bin), "ece" (0-1)}, all JSON-able lists."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    targets = np.asarray(targets, dtype=np.intp)
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == targets
    edges = np.linspace(0.0, 1.0, bins + 1)
    # Bins are (low, high]; a confidence of exactly 0 cannot happen for K >= 1.
    index = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)
    count = np.bincount(index, minlength=bins)
    confidence_sum = np.bincount(index, weights=confidence, minlength=bins)
    correct_sum = np.bincount(index, weights=correct, minlength=bins)
    filled = count > 0
    mean_confidence = np.where(filled, confidence_sum / np.maximum(count, 1), np.nan)
    accuracy = np.where(filled, correct_sum / np.maximum(count, 1), np.nan)
    total = max(int(count.sum()), 1)
    gaps = np.abs(mean_confidence - accuracy)[filled]
    ece = float((count[filled] / total * gaps).sum())
    return {
        "edges": edges.round(6).tolist(),
        "count": count.tolist(),
        "confidence": [
            None if not f else round(float(v), 6)
            for f, v in zip(filled, mean_confidence, strict=True)
        ],
        "accuracy": [
            None if not f else round(float(v), 6) for f, v in zip(filled, accuracy, strict=True)
        ],
        "ece": ece,
    }


def expected_calibration_error(
    probabilities: np.ndarray, targets: np.ndarray, bins: int = ECE_BINS
) -> float:
    """ECE (0-1) of probabilities (N, K) against class indices (N,), ``bins`` equal-width
    confidence bins."""
    return reliability(probabilities, targets, bins)["ece"]
