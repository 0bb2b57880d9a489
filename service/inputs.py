"""Request bodies -> pixels: JSON lists, ``.npy`` arrays and image files.

Every ``pixels_from_*`` function returns float32 pixels 0-255 in MNIST convention (0 is
background, 255 is ink) shaped ``(N, 28, 28)`` with ``N >= 1`` (``pixels_from_image``: one
``(28, 28)`` image), or raises ``BadRequest`` / ``PayloadTooLarge`` with a message that names
the problem and where it is (``images[3][5][7]: expected a number, got a string``). Nothing
else escapes: client bytes never surface as ``ValueError``, ``RecursionError`` or Pillow errors.

Image files are brought to MNIST form the way MNIST itself was made (LeCun et al.): the ink is
cropped to its bounding box, scaled to fit a 20x20 box keeping the aspect ratio (antialiased)
and placed in the 28x28 field so that its centre of mass sits at the centre. Before that, a
photo is flattened: a smooth background surface is fitted and subtracted (uneven illumination),
the paper is suppressed to 0 and the strokes stretched to 255, keeping their soft edges.
"""

from __future__ import annotations

import base64
import contextlib
import io
import warnings
from numbers import Real

import numpy as np
import orjson
from PIL import Image, ImageOps
from scipy import ndimage

from service.errors import BadRequest, PayloadTooLarge

IMAGE_SIDE = 28
IMAGE_VALUES = IMAGE_SIDE * IMAGE_SIDE
PIXEL_MAX = 255.0

# MNIST geometry: ink fits a 20x20 box; its centre of mass is at (14, 14) in pixel indices
# (measured on the MNIST test set: mean 13.99, 14.00).
DIGIT_BOX = 20
CENTRE_OF_MASS = 14.0

# Photos are analysed at most this many pixels on the long side: plenty for a 20x20 digit and it
# bounds the time spent on a 12-megapixel upload.
WORKING_SIDE = 640
# Below this contrast (grey levels, 0-255) between paper and strokes there is no ink.
MIN_INK_CONTRAST = 12.0


# --------------------------------------------------------------------------------------------
# JSON
# --------------------------------------------------------------------------------------------


def pixels_from_json_body(body: bytes, max_batch: int) -> np.ndarray:
    """A JSON request body -> pixels (N, 28, 28) float32 0-255.

    ``{"image": <28x28 nested list or 784 flat list>}`` or ``{"images": [<each as above>]}``.
    This is the hot path: orjson parses (and rejects NaN/Infinity tokens and nesting deeper than
    1024), and a body that can only hold numbers is converted by NumPy in one call.
    """
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(_describe_json_error(body, exc)) from None
    # The only strings a valid body holds are the key "image"/"images" (two quotes, no 'u' or
    # 'l'); without more quotes and without the letters of true/false/null every value is a
    # number, list or empty object, so NumPy's float conversion cannot accept a string or a
    # bool in disguise. Anything else takes the strict element-by-element path.
    raw = body.encode() if isinstance(body, str) else bytes(body)
    numbers_only = raw.count(b'"') == 2 and b"u" not in raw and b"l" not in raw
    return _pixels_from_payload(payload, max_batch, numbers_only=numbers_only)


def pixels_from_json(payload: object, max_batch: int) -> np.ndarray:
    """An already parsed JSON payload -> pixels (N, 28, 28) float32 0-255.

    Same contract as ``pixels_from_json_body``; every element's type is checked in Python (a
    few tens of microseconds per image), so prefer the body function on the hot path.
    """
    return _pixels_from_payload(payload, max_batch, numbers_only=False)


def _describe_json_error(body: bytes | str, exc: Exception) -> str:
    raw = body.encode() if isinstance(body, str) else bytes(body)
    if not raw.strip():
        return 'empty body: expected JSON {"image": [...]} or {"images": [...]}'
    if b"NaN" in raw or b"Infinity" in raw:
        return "malformed JSON: NaN and Infinity are not numbers in JSON (pixels are 0-255)"
    message = str(exc)
    if "depth limit" in message or "recursion" in message.lower():
        return f"malformed JSON: nested too deeply ({message})"
    return f"malformed JSON: {message}"


def _pixels_from_payload(payload: object, max_batch: int, *, numbers_only: bool) -> np.ndarray:
    images, single = _unpack_payload(payload, max_batch)
    if numbers_only:
        pixels = _try_byte_conversion(images)
        if pixels is not None:
            return pixels
        batch = _try_fast_conversion(images)
        if batch is not None:
            _check_value_range(batch, "image" if single else "images")
            return batch.reshape(-1, IMAGE_SIDE, IMAGE_SIDE).astype(np.float32)
    # The strict path: walks every element and says exactly where the first problem is.
    arrays = [
        _image_from_nested_list(image, "image" if single else f"images[{index}]")
        for index, image in enumerate(images)
    ]
    return np.stack(arrays).astype(np.float32)


def _unpack_payload(payload: object, max_batch: int) -> tuple[list, bool]:
    """-> (list of images as given, whether it was the single "image" form)."""
    if not isinstance(payload, dict):
        raise BadRequest(
            f'expected a JSON object {{"image": ...}} or {{"images": [...]}}, '
            f"got {_describe_value(payload)}"
        )
    unknown = sorted(_quote(key) for key in payload if key not in ("image", "images"))
    if unknown:
        raise BadRequest(
            f"unknown key{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}: "
            'expected only "image" or "images" (model selection goes in ?version= or ?alias=)'
        )
    if "image" in payload and "images" in payload:
        raise BadRequest('give either "image" or "images", not both')
    if "image" in payload:
        return [payload["image"]], True
    if "images" not in payload:
        raise BadRequest('expected a JSON object with "image" or "images", got an empty object')
    images = payload["images"]
    if not isinstance(images, list):
        raise BadRequest(f"images: expected a list of images, got {_describe_value(images)}")
    if not images:
        raise BadRequest("images: empty batch, expected at least one image")
    if len(images) > max_batch:
        raise PayloadTooLarge(f"images: batch of {len(images)} is over the limit of {max_batch}")
    return images, False


def _quote(key: object) -> str:
    """A key for an error message: quoted and cut short if a string, else its type."""
    if isinstance(key, str):
        return f'"{key[:40]}..."' if len(key) > 40 else f'"{key}"'
    return f"<{type(key).__name__}>"  # repr() of a 5000-digit int raises; keep it simple


def _try_byte_conversion(images: list) -> np.ndarray | None:
    """Images of plain integers 0-255 (what clients send) -> float32 (N, 28, 28), else None.

    ``bytes(list)`` converts and range-checks a list of small integers in C, several times
    faster than NumPy's nested-list conversion (8 against 20 us for one image). Anything else
    (floats, values outside 0-255, other shapes) answers None and takes the general path, so
    results and error messages are the same either way. The caller has ruled out booleans,
    which ``bytes`` would take as 0 and 1.
    """
    rows = []
    for image in images:
        if type(image) is not list:
            return None
        if len(image) == IMAGE_VALUES:
            rows.append(image)
        elif len(image) == IMAGE_SIDE:
            for row in image:
                if type(row) is not list or len(row) != IMAGE_SIDE:
                    return None
            rows.extend(image)
        else:
            return None
    try:
        data = b"".join(map(bytes, rows))  # every row is a list: bytes(n) is never called
    except (TypeError, ValueError, OverflowError):
        return None
    pixels = np.frombuffer(data, dtype=np.uint8).astype(np.float32)
    return pixels.reshape(len(images), IMAGE_SIDE, IMAGE_SIDE)


def _try_fast_conversion(images: list) -> np.ndarray | None:
    """One NumPy call for well-formed input -> float64 (N, 784) or (N, 28, 28), else None."""
    try:
        batch = np.array(images, dtype=np.float64)
    except (ValueError, TypeError, OverflowError):
        return None
    if batch.shape[1:] in ((IMAGE_SIDE, IMAGE_SIDE), (IMAGE_VALUES,)):
        return batch
    return None


def _check_value_range(batch: np.ndarray, name: str) -> None:
    """Raise BadRequest naming the first value outside 0-255 (or NaN/inf) in an
    (N, 28, 28) or (N, 784) batch; ``name`` is "image" (N == 1) or "images"."""
    position = _first_out_of_range(batch)
    if position is not None:
        where = name if name == "image" else f"{name}[{position[0]}]"
        where += "".join(f"[{i}]" for i in position[1:])
        raise BadRequest(f"{where}: {_describe_bad_number(batch[position])}")


def _first_out_of_range(array: np.ndarray) -> tuple[int, ...] | None:
    in_range = (array >= 0) & (array <= PIXEL_MAX)  # False for NaN
    if in_range.all():
        return None
    return tuple(int(i) for i in np.argwhere(~in_range)[0])


def _image_from_nested_list(image: object, where: str) -> np.ndarray:
    """One image as 28 rows of 28 numbers or 784 numbers -> float64 (28, 28); every element's
    type is checked (no strings, bools, nulls), then the range 0-255."""
    if not isinstance(image, list):
        raise BadRequest(f"{where}: expected 28x28 or 784 values, got {_describe_value(image)}")
    if len(image) == IMAGE_VALUES:
        _check_numbers(image, where)
    elif len(image) == IMAGE_SIDE and any(isinstance(row, list) for row in image):
        for row_index, row in enumerate(image):
            row_where = f"{where}[{row_index}]"
            if not isinstance(row, list):
                raise BadRequest(
                    f"{row_where}: expected a row of 28 numbers, got {_describe_value(row)}"
                )
            if len(row) != IMAGE_SIDE:
                raise BadRequest(f"{row_where}: expected a row of 28 numbers, got {_count(row)}")
            _check_numbers(row, row_where)
    else:
        raise BadRequest(f"{where}: expected 28x28 or 784 values, got {_count(image)}")
    try:
        array = np.array(image, dtype=np.float64)
    except OverflowError:  # an integer beyond float64; find it to name it
        array = None
    if array is None or _first_out_of_range(array) is not None:
        _raise_first_out_of_range(image, where)
    return array.reshape(IMAGE_SIDE, IMAGE_SIDE)


# Exact types JSON parsers produce for numbers; anything else takes the slower ABC check.
_PLAIN_NUMBER_TYPES = frozenset({int, float})


def _check_numbers(values: list, where: str) -> None:
    """Raise BadRequest naming the first element of a flat list that is not a real number."""
    if set(map(type, values)) <= _PLAIN_NUMBER_TYPES:
        return
    for index, value in enumerate(values):
        if isinstance(value, bool | np.bool_) or not isinstance(value, Real):
            raise BadRequest(f"{where}[{index}]: expected a number, got {_describe_value(value)}")


def _raise_first_out_of_range(image: list, where: str) -> None:
    """``image`` (784 numbers or 28 rows of 28, types checked) holds a value outside 0-255."""
    flat = len(image) == IMAGE_VALUES
    for row_index, row in enumerate([image] if flat else image):
        for column, value in enumerate(row):
            if not 0 <= value <= PIXEL_MAX:  # also True for NaN
                prefix = where if flat else f"{where}[{row_index}]"
                raise BadRequest(f"{prefix}[{column}]: {_describe_bad_number(value)}")
    # Only reachable with exotic number types whose float() disagrees with their comparisons.
    raise BadRequest(f"{where}: values must be numbers within 0-255")


def _describe_bad_number(value: Real) -> str:
    if isinstance(value, int | np.integer):
        # str() of a 5000-digit integer raises ValueError; nobody needs to read it back anyway.
        shown = str(value) if abs(int(value)) < 10**12 else "a huge integer"
        return f"{shown} is outside 0-255"
    if value != value:
        return "NaN is not a pixel value (0-255)"
    if value in (float("inf"), float("-inf")):
        return f"{value} is not a pixel value (0-255)"
    return f"{float(value):g} is outside 0-255"


def _count(items: list) -> str:
    if not items:
        return "an empty list"
    if all(isinstance(item, Real) and not isinstance(item, bool) for item in items):
        return f"a list of {len(items)} number{'s' if len(items) != 1 else ''}"
    return f"a list of {len(items)}"


def _describe_value(value: object) -> str:
    """A short description of a JSON-ish value for error messages ("a string", "null")."""
    if value is None:
        return "null"
    if isinstance(value, bool | np.bool_):
        return f"a boolean ({'true' if value else 'false'})"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, Real):
        return "a number"
    if isinstance(value, list):
        return _count(value)
    if isinstance(value, dict):
        return "an object"
    return f"a {type(value).__name__}"


# --------------------------------------------------------------------------------------------
# .npy
# --------------------------------------------------------------------------------------------


def pixels_from_npy(body: bytes, max_batch: int) -> np.ndarray:
    """An ``application/x-npy`` body (``numpy.save`` output) -> pixels (N, 28, 28) float32.

    The array is (28, 28) or (N, 28, 28) of any real numeric dtype (integers or floats, any
    byte order) with values 0-255. The header is checked before any data is touched, so a
    forged shape cannot make us allocate; object arrays (pickle) are refused.
    """
    stream = io.BytesIO(body)
    try:
        version = np.lib.format.read_magic(stream)
    except ValueError:
        raise BadRequest("not a .npy file: the body does not start with the NumPy magic") from None
    try:
        if version == (1, 0):
            shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(stream)
        elif version == (2, 0):
            shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(stream)
        else:
            raise BadRequest(f".npy format version {version[0]}.{version[1]} is not supported")
    except (ValueError, TypeError, SyntaxError) as exc:
        raise BadRequest(f"malformed .npy header: {exc}") from None
    if dtype.hasobject:
        raise BadRequest(".npy object arrays are not accepted (they need pickle)")
    if dtype.kind not in "iuf" or dtype.subdtype is not None:
        raise BadRequest(f".npy dtype {dtype} is not a real number type (integers or floats)")
    if len(shape) == 2 and shape == (IMAGE_SIDE, IMAGE_SIDE):
        count = 1
    elif len(shape) == 3 and shape[1:] == (IMAGE_SIDE, IMAGE_SIDE):
        count = shape[0]
    else:
        raise BadRequest(f".npy array: expected shape (28, 28) or (N, 28, 28), got {shape}")
    if count == 0:
        raise BadRequest(".npy array: empty batch, expected at least one image")
    if count > max_batch:
        raise PayloadTooLarge(f".npy array: batch of {count} is over the limit of {max_batch}")
    data = memoryview(body)[stream.tell() :]
    expected_bytes = count * IMAGE_VALUES * dtype.itemsize
    if len(data) != expected_bytes:
        problem = "truncated" if len(data) < expected_bytes else "trailing bytes after the data"
        raise BadRequest(
            f".npy array {problem}: shape {shape} {dtype} needs {expected_bytes} bytes "
            f"of data, got {len(data)}"
        )
    array = np.frombuffer(data, dtype=dtype).reshape(shape, order="F" if fortran_order else "C")
    batch = array.reshape(count, IMAGE_SIDE, IMAGE_SIDE)
    _check_value_range(batch, "image" if len(shape) == 2 else "images")
    return batch.astype(np.float32)


# --------------------------------------------------------------------------------------------
# Image files
# --------------------------------------------------------------------------------------------


def pixels_from_image(data: bytes, *, max_pixels: int = 40_000_000) -> np.ndarray:
    """An image file (PNG, JPEG, BMP, GIF, WebP, TIFF, ...) -> pixels (28, 28) float32 0-255.

    Any size, colour mode and polarity (dark ink on light paper or light on dark); a drawing
    on a transparent canvas; a photo of a digit on unevenly lit paper. Raises
    ``PayloadTooLarge`` when the image has more than ``max_pixels`` pixels (checked from the
    header, before decoding), ``BadRequest`` when it cannot be decoded or holds no ink.
    """
    if not data:
        raise BadRequest("empty image file")
    greyscale = _decode_greyscale(data, max_pixels)
    ink = _ink_from_greyscale(greyscale)
    return _normalise_like_mnist(ink)


def _decode_greyscale(data: bytes, max_pixels: int) -> np.ndarray:
    """Decode, orient, composite transparency and reduce -> float32 (H, W) grey levels 0-255
    (0 black) with max(H, W) <= WORKING_SIDE."""
    try:
        # Pillow warns (and errors at twice the size) on decompression bombs while reading
        # the header; turn its warning into an exception we can answer with 413.
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            _check_pixel_count(image.size, max_pixels)
            # JPEG can decode at 1/2, 1/4 or 1/8 scale for free: never more than we analyse.
            image.draft(None, (WORKING_SIDE, WORKING_SIDE))
            with contextlib.suppress(Exception):  # malformed EXIF: keep the stored orientation
                image = ImageOps.exif_transpose(image)
            _check_pixel_count(image.size, max_pixels)
            greyscale = _composited_greyscale(image)
            if max(greyscale.size) > WORKING_SIDE:
                scale = WORKING_SIDE / max(greyscale.size)
                width, height = greyscale.size
                reduced_size = (max(1, round(width * scale)), max(1, round(height * scale)))
                greyscale = greyscale.resize(reduced_size, Image.Resampling.BOX)
            return np.asarray(greyscale, dtype=np.float32)
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


def _check_pixel_count(size: tuple[int, int], max_pixels: int) -> None:
    width, height = size
    if width * height > max_pixels:
        raise PayloadTooLarge(
            f"image of {width}x{height} pixels is over the limit of {max_pixels} pixels"
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


def _ink_from_greyscale(greyscale: np.ndarray) -> np.ndarray:
    """Grey levels (H, W) 0-255, any polarity and lighting -> ink (H, W) float32: background
    exactly 0, stroke cores 255, soft edges in between. Raises BadRequest("no ink found")."""
    height, width = greyscale.shape
    # A little smoothing (~1 px at the working size) so noise does not count as ink.
    smoothing = min(height, width) / 500
    if smoothing >= 0.5:
        greyscale = ndimage.gaussian_filter(greyscale, smoothing)

    # Polarity: the background is the level of the border; the ink is whatever departs
    # furthest from it (not the mean of the whole image, which a big bold digit would sway).
    border = max(1, round(0.04 * min(height, width)))
    border_pixels = np.concatenate(
        [
            greyscale[:border].ravel(),
            greyscale[-border:].ravel(),
            greyscale[:, :border].ravel(),
            greyscale[:, -border:].ravel(),
        ]
    )
    background_level = float(np.median(border_pixels))
    darker_by = background_level - float(greyscale.min())
    lighter_by = float(greyscale.max()) - background_level
    if max(darker_by, lighter_by) < MIN_INK_CONTRAST:
        raise BadRequest("no ink found: the image is blank")
    ink = (PIXEL_MAX - greyscale) if darker_by > lighter_by else greyscale.astype(np.float32)

    # Uneven illumination: fit a smooth surface to the background and subtract it.
    residual, noise = _subtract_background(ink)
    strokes = residual > _otsu_threshold(residual)
    if not strokes.any():
        raise BadRequest("no ink found: the image is blank")
    stroke_level = float(np.percentile(residual[strokes], 90))
    if stroke_level < max(MIN_INK_CONTRAST, 6 * noise):
        raise BadRequest("no ink found: nothing stands out from the background")
    # Paper to 0 (a margin over the noise), stroke cores to 255, a linear ramp between keeps
    # the anti-aliased edges.
    low = max(3 * noise, 0.1 * stroke_level)
    ink = np.clip((residual - low) / (stroke_level - low), 0.0, 1.0) * PIXEL_MAX
    return _drop_specks(ink.astype(np.float32))


def _subtract_background(ink: np.ndarray) -> tuple[np.ndarray, float]:
    """ink (H, W) with background low -> (ink minus a fitted quadratic background surface,
    robust noise level of the background in grey levels).

    A quadratic in x and y follows lighting gradients and vignetting but cannot follow a
    stroke, so unlike a morphological estimate it never eats a bold digit. The fit starts from
    the pixels under Otsu's threshold and is refined on those within the noise of the surface.
    """
    height, width = ink.shape
    stride = max(1, round(np.sqrt(height * width / 5_000)))  # fit on ~5k pixels
    sample = ink[::stride, ::stride].astype(np.float64)
    rows, columns = np.mgrid[0:height:stride, 0:width:stride]
    y = rows / max(height - 1, 1) * 2 - 1
    x = columns / max(width - 1, 1) * 2 - 1
    design = np.stack([np.ones_like(x), x, y, x * x, x * y, y * y], axis=-1)
    background = sample <= _otsu_threshold(sample)
    coefficients = np.zeros(design.shape[-1])
    noise = 0.0
    for _ in range(3):
        if background.sum() < design.shape[-1]:
            break
        coefficients, *_ = np.linalg.lstsq(design[background], sample[background], rcond=None)
        sample_residual = sample - design @ coefficients
        deviation = sample_residual[background]
        noise = 1.4826 * float(np.median(np.abs(deviation - np.median(deviation))))
        background = sample_residual <= max(2.5 * noise, 0.5)
    full_rows, full_columns = np.mgrid[0:height, 0:width]
    y = full_rows / max(height - 1, 1) * 2 - 1
    x = full_columns / max(width - 1, 1) * 2 - 1
    terms = (np.ones_like(x), x, y, x * x, x * y, y * y)
    surface = sum(c * term for c, term in zip(coefficients, terms, strict=True))
    return (ink - surface).astype(np.float32), noise


def _otsu_threshold(values: np.ndarray) -> float:
    """Otsu's threshold of an array of levels: the cut maximising between-class variance."""
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return high
    counts, edges = np.histogram(values, bins=256, range=(low, high))
    centres = (edges[:-1] + edges[1:]) / 2
    weight_below = np.cumsum(counts)
    weight_above = weight_below[-1] - weight_below
    sum_below = np.cumsum(counts * centres)
    mean_below = sum_below / np.maximum(weight_below, 1)
    mean_above = (sum_below[-1] - sum_below) / np.maximum(weight_above, 1)
    between = weight_below * weight_above * (mean_below - mean_above) ** 2
    return float(edges[int(np.argmax(between)) + 1])


def _drop_specks(ink: np.ndarray) -> np.ndarray:
    """Zero connected blobs of ink with < 5% of the mass of the largest one (dust, noise,
    JPEG ringing), so they neither widen the bounding box nor pull the centre of mass."""
    labels, count = ndimage.label(ink > 0, structure=np.ones((3, 3)))
    if count == 0:
        raise BadRequest("no ink found")
    masses = ndimage.sum_labels(ink, labels, index=np.arange(1, count + 1))
    keep = np.concatenate([[False], masses >= 0.05 * masses.max()])
    return np.where(keep[labels], ink, 0.0).astype(np.float32)


def _normalise_like_mnist(ink: np.ndarray) -> np.ndarray:
    """ink (H, W), background 0 -> (28, 28): cropped to the ink, fitted into 20x20 keeping
    the aspect ratio, centre of mass at (14, 14)."""
    rows = np.flatnonzero(ink.any(axis=1))
    columns = np.flatnonzero(ink.any(axis=0))
    if rows.size == 0:
        raise BadRequest("no ink found")
    crop = ink[rows[0] : rows[-1] + 1, columns[0] : columns[-1] + 1]
    height, width = crop.shape
    scale = DIGIT_BOX / max(height, width)
    fitted_size = (max(1, round(width * scale)), max(1, round(height * scale)))
    fitted = Image.fromarray(np.ascontiguousarray(crop)).resize(
        fitted_size, Image.Resampling.LANCZOS
    )
    digit = np.clip(np.asarray(fitted, dtype=np.float32), 0.0, PIXEL_MAX)
    if digit.sum() <= 0:
        raise BadRequest("no ink found")
    centre_row, centre_column = ndimage.center_of_mass(digit)
    digit_height, digit_width = digit.shape
    # Integer shift as in MNIST; clamped so no ink leaves the field.
    top = int(np.clip(round(CENTRE_OF_MASS - centre_row), 0, IMAGE_SIDE - digit_height))
    left = int(np.clip(round(CENTRE_OF_MASS - centre_column), 0, IMAGE_SIDE - digit_width))
    pixels = np.zeros((IMAGE_SIDE, IMAGE_SIDE), dtype=np.float32)
    pixels[top : top + digit_height, left : left + digit_width] = digit
    return pixels


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
