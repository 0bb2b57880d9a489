"""The service app as the in-process tests build it: small limits, polling off, and what a
version's own network answers, to compare with the service's answer."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from service.app import create_app
from training.store import ModelStore

MODEL = "mnist"
ADMIN_TOKEN = "test-admin-token"
# Small limits, so the 413 tests need small bodies.
TEST_SETTINGS = {
    "MODEL_NAME": MODEL,
    "MODEL_ALIAS": "production",
    "RELOAD_INTERVAL_S": 0,
    "ADMIN_TOKEN": ADMIN_TOKEN,
    "MAX_BATCH": 8,
    "MAX_CONTENT_LENGTH": 512 * 1024,
    "MAX_IMAGE_PIXELS": 200 * 200,
    "MODEL_CACHE_SIZE": 2,
    "LOG_LEVEL": "info",
}


def build_app(store_root: Path, **overrides):
    """A fresh app on ``store_root`` with the test settings (polling off unless overridden)."""
    return create_app({**TEST_SETTINGS, "MODEL_STORE": str(store_root), **overrides})


def expected_probabilities(store_root: Path, version: int, pixels: np.ndarray) -> np.ndarray:
    """What the version's own network says of ``pixels`` (N, 28, 28) or (28, 28): (N, classes)
    probabilities, for comparison with the service's answer."""
    bundle = ModelStore(store_root).load(MODEL, version)
    return bundle.predict_proba(np.asarray(pixels, dtype=np.float32).reshape(-1, 28, 28))
