"""The one validation path: every decoded request ends here as one pixel batch.

Whatever way the pixels came in (``/predict`` JSON, ``.npy``, image files; V2 JSON or binary
tensors), the decoder hands an array and the name of where it came from to ``pixel_batch``,
which checks, in this order: the dtype (real numbers; booleans refused), the shape (against
the model's image shape from its bundle), the batch size (1 to ``max_batch``), and that every
value is finite and within 0-255. Decoders call ``check_batch_size`` themselves too, as soon as
they know the count, so no work is done for a batch that will be refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from numbers import Real

import numpy as np

from service.errors import BadRequest, PayloadTooLarge

PIXEL_MAX = 255.0


@dataclass(frozen=True)
class InputSpec:
    """What one request may hold for one model.

    ``image_shape`` (H, W) comes from the bundle's input contract; the limits come from the
    settings (MAX_BATCH, MAX_IMAGE_PIXELS, MAX_REQUEST_PIXELS; see docs/SERVING.md).
    """

    image_shape: tuple[int, int] = (28, 28)
    max_batch: int = 256
    max_image_pixels: int = 8_388_608
    max_request_pixels: int = 67_108_864

    @property
    def image_values(self) -> int:
        """Values in one image: H * W."""
        return self.image_shape[0] * self.image_shape[1]

    def accepted_shapes(self) -> str:
        """The batch shapes ``pixel_batch`` takes, for error messages."""
        height, width = self.image_shape
        return (
            f"(N, {height}, {width}), (N, 1, {height}, {width}) or (N, {height * width}), "
            f"or ({height}, {width}) for one image"
        )


def check_batch_size(count: int, spec: InputSpec, where: str) -> None:
    """Raise BadRequest for an empty batch, PayloadTooLarge for one over ``spec.max_batch``."""
    if count < 1:
        raise BadRequest(f"{where}: empty batch, expected at least one image")
    if count > spec.max_batch:
        raise PayloadTooLarge(
            f"{where}: batch of {count} is over the limit of {spec.max_batch} (MAX_BATCH)"
        )


def check_request_pixels(total: int, spec: InputSpec, where: str) -> None:
    """PayloadTooLarge when a request's images decode to more than ``spec.max_request_pixels``
    pixels in all: the bound on one request's work, checked before any image is decoded."""
    if total > spec.max_request_pixels:
        raise PayloadTooLarge(
            f"{where}: {total} pixels to decode in one request, over the limit of "
            f"{spec.max_request_pixels} (MAX_REQUEST_PIXELS)"
        )


def batch_count(shape: tuple[int, ...], spec: InputSpec, where: str, *, single: bool) -> int:
    """The number of images in an array of ``shape``, or BadRequest when the shape is not one
    of ``spec.accepted_shapes()``. ``single``: the caller sent one image, shaped (H, W)."""
    image_shape = tuple(spec.image_shape)
    if single:
        if shape in (image_shape, (spec.image_values,)):
            return 1
        raise BadRequest(f"{where}: expected shape {image_shape}, got {shape}")
    if len(shape) == 3 and shape[1:] == image_shape:
        return shape[0]
    if len(shape) == 4 and shape[1:] == (1, *image_shape):
        return shape[0]
    if len(shape) == 2 and shape[1] == spec.image_values:
        return shape[0]
    raise BadRequest(f"{where}: expected shape {spec.accepted_shapes()}, got {shape}")


def pixel_batch(values: np.ndarray, spec: InputSpec, where: str, *, single: bool = False):
    """An array of pixel values as decoded -> float32 pixels (N, H, W), 0-255, MNIST convention.

    ``values`` has any real numeric dtype (integers or floats, any byte order) and one of the
    accepted shapes; ``where`` names it in errors ("images", "input", "image"); ``single``
    means one image shaped (H, W) or (H * W,). Raises BadRequest or PayloadTooLarge naming the first
    problem, with the position of the first bad value (``images[3][5][7]: 256 is outside
    0-255``).
    """
    dtype = values.dtype
    if dtype.kind == "b":
        raise BadRequest(f"{where}: booleans are not pixel values (0-255)")
    if dtype.kind not in "iuf" or dtype.subdtype is not None:
        raise BadRequest(f"{where}: dtype {dtype} is not a real number type (integers or floats)")
    count = batch_count(values.shape, spec, where, single=single)
    check_batch_size(count, spec, where)
    if dtype != np.uint8:  # uint8 cannot leave 0-255
        _check_value_range(values, where)
    return values.reshape(count, *spec.image_shape).astype(np.float32)


def _check_value_range(values: np.ndarray, where: str) -> None:
    """Raise BadRequest naming the first value outside 0-255 (or NaN/inf), by its index."""
    in_range = (values >= 0) & (values <= PIXEL_MAX)  # False for NaN
    if in_range.all():
        return
    position = tuple(int(i) for i in np.argwhere(~in_range)[0])
    raise BadRequest(f"{where}{format_index(position)}: {describe_bad_number(values[position])}")


def format_index(position: tuple[int, ...]) -> str:
    """(3, 5, 7) -> "[3][5][7]"."""
    return "".join(f"[{i}]" for i in position)


def describe_bad_number(value: Real) -> str:
    """Why a number is not a pixel value, for error messages."""
    if isinstance(value, int | np.integer):
        # str() of a 5000-digit integer raises ValueError; nobody needs to read it back anyway.
        shown = str(value) if abs(int(value)) < 10**12 else "a huge integer"
        return f"{shown} is outside 0-255"
    if value != value:
        return "NaN is not a pixel value (0-255)"
    if value in (float("inf"), float("-inf")):
        return f"{value} is not a pixel value (0-255)"
    return f"{float(value):g} is outside 0-255"
