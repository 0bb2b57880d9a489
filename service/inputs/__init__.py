"""Request payloads -> one validated pixel batch: float32 (N, H, W), 0-255, MNIST convention
(0 is background, 255 is ink).

Every way in decodes its payload into an array of values and hands it to the one validation
path, ``validate.pixel_batch`` (dtype, shape from the model's bundle, batch size, finiteness,
range):

    json_values.py  the /predict JSON body; lists of images (also the V2 protocol's ``data``)
    npy.py          .npy bodies (header checked before any data is touched)
    images.py       image files, decoded under pixel limits, then brought to MNIST form by
    mnist_form.py   the MNIST-style normalisation (pure image processing, no HTTP)
    validate.py     InputSpec (image shape and limits) and pixel_batch

Errors are ``BadRequest`` (400) or ``PayloadTooLarge`` (413) naming the problem and where it
is (``images[3][5][7]: expected a number, got a string``); nothing else escapes.
"""

from __future__ import annotations

import numpy as np

from service.errors import BadRequest
from service.inputs.images import (
    decoded_pixels,
    open_image,
    pixels_from_image,
    pixels_from_opened,
    pixels_to_png_data_url,
)
from service.inputs.json_values import predict_body_values
from service.inputs.npy import npy_values
from service.inputs.validate import (
    InputSpec,
    check_batch_size,
    check_request_pixels,
    pixel_batch,
)

__all__ = [
    "PAYLOAD_KINDS",
    "InputSpec",
    "pixel_batch",
    "pixels_from_payload",
    "pixels_to_png_data_url",
]

# The kinds of /predict payload (the route picks the kind from the Content-Type): JSON bytes,
# .npy bytes, one image file's bytes, several image files' bytes.
PAYLOAD_KINDS = ("json", "npy", "image", "images")


def pixels_from_payload(kind: str, payload, spec: InputSpec) -> np.ndarray:
    """A /predict payload of ``kind`` (one of PAYLOAD_KINDS) -> float32 pixels (N, H, W)."""
    if kind == "json":
        values, where, single = predict_body_values(payload, spec)
    elif kind == "npy":
        values, where, single = npy_values(payload, spec)
    elif kind == "image":
        values, where, single = pixels_from_image(payload, spec), "image", True
    elif kind == "images":
        values, where, single = _image_files(payload, spec), "images", False
    else:
        raise ValueError(f"unknown payload kind {kind!r}; one of {PAYLOAD_KINDS}")
    return pixel_batch(values, spec, where, single=single)


def _image_files(files: list[bytes], spec: InputSpec) -> np.ndarray:
    """Several image files -> float32 (N, 28, 28). The count, each image's size and the
    pixels of all of them together are checked from the headers before anything is decoded."""
    if not files:
        raise BadRequest("no image file in the request")
    check_batch_size(len(files), spec, "images")
    images = [open_image(data, spec) for data in files]
    check_request_pixels(sum(map(decoded_pixels, images)), spec, "images")
    return np.stack([pixels_from_opened(image) for image in images])
