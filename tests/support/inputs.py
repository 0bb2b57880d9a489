"""Request payloads -> pixels, as the inputs tests call them: one function per way in, on the
service's own InputSpec and validation path, and the check every fuzzed conversion must pass."""

from __future__ import annotations

import numpy as np

from service.errors import BadRequest, PayloadTooLarge
from service.inputs import InputSpec, pixel_batch, pixels_from_payload
from service.inputs.json_values import predict_payload_values


def pixels_from_json_body(body: bytes, max_batch: int) -> np.ndarray:
    return pixels_from_payload("json", body, InputSpec(max_batch=max_batch))


def pixels_from_json(payload: object, max_batch: int) -> np.ndarray:
    """An already parsed payload, every element's type checked (no body-level shortcut)."""
    spec = InputSpec(max_batch=max_batch)
    values, where, single = predict_payload_values(payload, spec)
    return pixel_batch(values, spec, where, single=single)


def pixels_from_npy(body: bytes, max_batch: int) -> np.ndarray:
    return pixels_from_payload("npy", body, InputSpec(max_batch=max_batch))


def pixels_from_image(data: bytes, max_pixels: int = 25_000_000) -> np.ndarray:
    return pixels_from_payload("image", data, InputSpec(max_image_pixels=max_pixels))[0]


def pixels_or_client_error(convert) -> tuple[np.ndarray | None, Exception | None]:
    """Run a conversion that must either return valid pixels (at most 4 images) or raise
    BadRequest / PayloadTooLarge with a message; anything else fails the test."""
    try:
        pixels = convert()
    except (BadRequest, PayloadTooLarge) as exc:
        assert str(exc)
        return None, exc
    assert pixels.dtype == np.float32 and pixels.ndim == 3 and pixels.shape[1:] == (28, 28)
    assert 1 <= pixels.shape[0] <= 4
    assert np.isfinite(pixels).all() and pixels.min() >= 0 and pixels.max() <= 255
    return pixels, None
