"""Image files (PNG, JPEG, BMP, GIF, WebP, TIFF, ...) -> one (28, 28) pixel array each.

Decoding is guarded: the pixel count is checked from the header before anything is decoded
(MAX_IMAGE_PIXELS), Pillow's decompression-bomb warning becomes a 413, and whatever a decoder
raises on hostile bytes becomes a 400. The decoded picture is then brought to MNIST form by
service/inputs/mnist_form.py.
"""

from __future__ import annotations

import base64
import contextlib
import io
import warnings

import numpy as np
from PIL import Image

from service.errors import BadRequest, PayloadTooLarge
from service.inputs.mnist_form import (
    IMAGE_SIDE,
    PIXEL_MAX,
    ink_from_greyscale,
    normalise_like_mnist,
)
from service.inputs.validate import InputSpec

# Photos are analysed at most this many pixels on the long side: plenty for a 20x20 digit and it
# bounds the time spent on a 12-megapixel upload.
WORKING_SIDE = 640


def pixels_from_image(data: bytes, spec: InputSpec) -> np.ndarray:
    """An image file (PNG, JPEG, BMP, GIF, WebP, TIFF, ...) -> pixels (28, 28) float32 0-255.

    Any size, colour mode and polarity (dark ink on light paper or light on dark); a drawing
    on a transparent canvas; a photo of a digit on unevenly lit paper. Raises
    ``PayloadTooLarge`` when the image decodes to more than ``spec.max_image_pixels`` pixels
    (checked from the header, before decoding), ``BadRequest`` when it cannot be decoded or
    holds no ink.
    """
    return pixels_from_opened(open_image(data, spec))


def open_image(data: bytes, spec: InputSpec) -> Image.Image:
    """Read an image file's header (nothing is decoded yet) and check what decoding it would
    cost: at most ``spec.max_image_pixels`` decoded pixels. JPEG is set to decode at 1/2, 1/4
    or 1/8 scale for free when that still leaves WORKING_SIDE pixels, so a 48-megapixel photo
    costs what a 0.75-megapixel one does."""
    if not data:
        raise BadRequest("empty image file")
    with _decoding_errors_as_client_errors():
        image = Image.open(io.BytesIO(data))
        image.draft(None, (WORKING_SIDE, WORKING_SIDE))  # JPEG only; others ignore it
        check_pixel_count(image.size, spec.max_image_pixels)
        return image


def decoded_pixels(image: Image.Image) -> int:
    """Pixels ``image`` (from ``open_image``) decodes to."""
    width, height = image.size
    return width * height


def pixels_from_opened(image: Image.Image) -> np.ndarray:
    """An image from ``open_image`` -> pixels (28, 28) float32 0-255 (MNIST convention). The
    decoded image is closed (its memory released) before this returns: a batch of files holds
    one full-size image at a time."""
    try:
        with _decoding_errors_as_client_errors():
            greyscale = _decode_greyscale(image)
    finally:
        image.close()
    return normalise_like_mnist(ink_from_greyscale(greyscale))


def _decode_greyscale(image: Image.Image) -> np.ndarray:
    """Decode, reduce, orient and composite transparency -> float32 (H, W) grey levels 0-255
    (0 black) with max(H, W) <= WORKING_SIDE.

    Memory: the decoded image at its own depth (at most MAX_IMAGE_PIXELS pixels of 1-4 bytes
    after JPEG's draft scaling) and then only small copies: it is reduced with a box filter
    in its own mode before any conversion, orientation or compositing, and every float array
    is made from the reduced image.
    """
    image.load()
    orientation = _exif_orientation(image)
    if image.mode in ("P", "PA", "1"):  # palette and 1-bit: no box filter; 1-2 bytes a pixel
        image = image.convert("LA" if image.has_transparency_data else "L")
    factor = max(image.size) // WORKING_SIDE
    if factor >= 2 and image.mode in _REDUCIBLE_MODES:
        # Integer box reduction in place of the first step: resize() would first copy an
        # RGBA image whole into premultiplied form; reduce() never copies the full size.
        image = image.reduce(factor)
    if max(image.size) > WORKING_SIDE:
        scale = WORKING_SIDE / max(image.size)
        width, height = image.size
        reduced_size = (max(1, round(width * scale)), max(1, round(height * scale)))
        image = image.resize(reduced_size, Image.Resampling.BOX)
    if orientation in _TRANSPOSITIONS:
        image = image.transpose(_TRANSPOSITIONS[orientation])
    return np.asarray(_composited_greyscale(image), dtype=np.float32)


# Modes Image.reduce() takes (not palette, 1-bit or the 16-bit "I;16*" family).
_REDUCIBLE_MODES = frozenset({"L", "LA", "La", "RGB", "RGBA", "RGBa", "I", "F", "CMYK", "YCbCr"})

# EXIF orientation -> the transposition that shows the picture upright (ImageOps.exif_transpose).
_TRANSPOSITIONS = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _exif_orientation(image: Image.Image) -> int | None:
    """The EXIF orientation tag, or None (absent or malformed EXIF: keep the stored way up)."""
    with contextlib.suppress(Exception):
        return image.getexif().get(0x0112)
    return None


@contextlib.contextmanager
def _decoding_errors_as_client_errors():
    """Whatever decoding raises on hostile bytes becomes a 400 (or a 413 for a decompression
    bomb or an image too large for memory); never a 500."""
    try:
        # Pillow warns (and errors at twice the size) on decompression bombs while reading
        # the header; turn its warning into an exception we can answer with 413.
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    except (PayloadTooLarge, BadRequest):
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise PayloadTooLarge(f"image too large: {exc}") from None
    except MemoryError:
        raise PayloadTooLarge("image too large to decode") from None
    except Image.UnidentifiedImageError:
        raise BadRequest(
            "cannot decode the image: not a format Pillow reads (PNG, JPEG, BMP, GIF, WebP, "
            "TIFF, ...)"
        ) from None
    except Exception as exc:
        # Decoders raise anything (OSError, SyntaxError, struct.error, IndexError...) on
        # hostile bytes; all of it means "cannot decode".
        raise BadRequest(f"cannot decode the image: {exc or type(exc).__name__}") from None


def check_pixel_count(size: tuple[int, int], max_pixels: int) -> None:
    """PayloadTooLarge for an image of more than ``max_pixels`` pixels (MAX_IMAGE_PIXELS)."""
    width, height = size
    if width * height > max_pixels:
        raise PayloadTooLarge(
            f"image of {width}x{height} pixels is over the limit of {max_pixels} pixels "
            "(MAX_IMAGE_PIXELS)"
        )
    if width < 1 or height < 1:
        raise BadRequest(f"image of {width}x{height} pixels has no pixels")


def _composited_greyscale(image: Image.Image) -> Image.Image:
    """-> an "L" (or "F" for 16/32-bit sources) image with any transparency composited.

    A drawing on a transparent canvas (mostly transparent) goes onto a canvas contrasting with
    its strokes; a mostly opaque picture with transparent parts gets them filled with its own
    dominant level, so transparency never shows up as ink.
    """
    if image.mode in ("I", "F") or image.mode.startswith("I;16"):
        return _wide_greyscale(image)
    if not image.has_transparency_data:
        return _to_luminance(image)
    rgba = image.convert("RGBA")
    probe = rgba.copy()
    probe.thumbnail((256, 256))
    alpha = np.asarray(probe.getchannel("A"), dtype=np.float64) / 255.0
    if alpha.min() == 1.0:
        return rgba.convert("L")
    luminance = np.asarray(probe.convert("L"), dtype=np.float64)
    opaque = alpha >= 0.5
    if opaque.mean() < 0.5:
        if alpha.sum() == 0:
            raise BadRequest("no ink found: the image is fully transparent")
        stroke_level = (luminance * alpha).sum() / alpha.sum()
        canvas_level = 255 if stroke_level < 128 else 0
    else:
        canvas_level = int(np.median(luminance[opaque]))
    canvas = Image.new("RGBA", rgba.size, (canvas_level, canvas_level, canvas_level, 255))
    return Image.alpha_composite(canvas, rgba).convert("L")


def _to_luminance(image: Image.Image) -> Image.Image:
    try:
        return image.convert("L")
    except ValueError:  # modes without a direct conversion (e.g. LAB, HSV)
        return image.convert("RGB").convert("L")


def _wide_greyscale(image: Image.Image) -> Image.Image:
    """16-bit, 32-bit integer and float greyscale -> an "F" image on the 0-255 scale."""
    values = np.asarray(image, dtype=np.float64)
    if not np.isfinite(values).all():
        raise BadRequest("image holds NaN or infinite values")
    low, high = float(values.min()), float(values.max())
    if image.mode == "F" and low >= 0 and high <= 1:
        values = values * PIXEL_MAX
    elif image.mode.startswith("I;16") or (low >= 0 and PIXEL_MAX < high <= 65535):
        values = values / 257.0  # 16-bit range onto 8-bit
    elif low < 0 or high > PIXEL_MAX:
        values = (values - low) * (PIXEL_MAX / (high - low))
    return Image.fromarray(values.astype(np.float32))


def pixels_to_png_data_url(pixels: np.ndarray) -> str:
    """(28, 28) pixels 0-255 (MNIST convention) -> "data:image/png;base64,..." showing exactly
    what the model saw (white ink on black). Values are clipped and rounded to 8 bits."""
    array = np.asarray(pixels, dtype=np.float64)
    if array.shape != (IMAGE_SIDE, IMAGE_SIDE):
        raise ValueError(f"expected pixels shaped (28, 28), got {array.shape}")
    levels = np.clip(np.rint(np.nan_to_num(array)), 0, PIXEL_MAX).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(levels).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
