"""Helpers for the service tests (plain functions and constants). The fixtures that use them
are in service_fixtures.py, loaded with ``pytest_plugins = ["service_fixtures"]``.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
from PIL import Image

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


def digit_pixels(seed: int = 0) -> np.ndarray:
    """A digit-like uint8 (28, 28) image: a bar and a stroke whose place depends on ``seed``."""
    pixels = np.zeros((28, 28), dtype=np.uint8)
    offset = seed % 8
    pixels[6:22, 8 + offset : 12 + offset] = 255
    pixels[6 + offset : 9 + offset, 6:20] = 255
    return pixels


def png_bytes(pixels: np.ndarray, *, invert: bool = False, size: int | None = None) -> bytes:
    """``pixels`` (MNIST convention) as a PNG; ``invert`` gives dark ink on white paper."""
    image = Image.fromarray(np.ascontiguousarray(255 - pixels if invert else pixels, np.uint8))
    if size is not None:
        image = image.resize((size, size))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def expected_probabilities(store_root: Path, version: int, pixels: np.ndarray) -> np.ndarray:
    """What the version's own network says, for comparison with the service's answer."""
    bundle = ModelStore(store_root).load(MODEL, version)
    return bundle.predict_proba(np.asarray(pixels, dtype=np.float32).reshape(-1, 28, 28))


def corrupt_bundle(store_root: Path, version: int, name: str = MODEL) -> None:
    """Flip bytes in the middle of a published bundle (its sha256 no longer matches)."""
    path = store_root / name / str(version) / "model.npz"
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 8] = bytes(b ^ 0xFF for b in data[middle : middle + 8])
    path.write_bytes(bytes(data))


def point_alias_by_hand(store_root: Path, alias: str, version: int, name: str = MODEL) -> None:
    """Move an alias without the store's checks, as a hand edit or bit rot after a promotion
    would: the only way to make an alias point at a corrupt version."""
    path = store_root / name / "aliases.json"
    document = json.loads(path.read_text())
    document["aliases"][alias] = version
    document.setdefault("history", {}).setdefault(alias, []).append(
        {"version": version, "previous": None, "at": "by hand", "action": "promote"}
    )
    tmp = path.with_name(".aliases.json.by-hand.tmp")
    tmp.write_text(json.dumps(document))
    os.replace(tmp, path)


def error_of(response) -> dict:
    """The ``{"code", "message"}`` of an error answer, checking its shape on the way."""
    assert response.mimetype == "application/json", response.data[:200]
    document = response.get_json()
    assert set(document) == {"error"}, document
    assert set(document["error"]) == {"code", "message"}, document
    assert isinstance(document["error"]["message"], str) and document["error"]["message"]
    return document["error"]
