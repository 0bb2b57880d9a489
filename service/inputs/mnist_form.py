"""Bringing a picture of a digit to MNIST's own form, the way MNIST itself was made.

LeCun et al.: the ink is cropped to its bounding box, scaled to fit a 20x20 box keeping the
aspect ratio (antialiased) and placed in the 28x28 field so that its centre of mass sits at the
centre. Before that, a photo is flattened (``ink_from_greyscale``): a smooth background surface
is fitted and subtracted (uneven illumination), the paper is suppressed to 0 and the strokes
stretched to 255, keeping their soft edges.

Pure image processing on NumPy arrays: no request, no HTTP. The service's image decoding
(service/inputs/images.py) and the tests' synthetic digits both use ``normalise_like_mnist``.
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from scipy import ndimage

from service.errors import BadRequest

IMAGE_SIDE = 28
PIXEL_MAX = 255.0
# MNIST geometry: ink fits a 20x20 box; its centre of mass is at (14, 14) in pixel indices
# (measured on the MNIST test set: mean 13.99, 14.00).
DIGIT_BOX = 20
CENTRE_OF_MASS = 14.0
# Below this contrast (grey levels, 0-255) between paper and strokes there is no ink.
MIN_INK_CONTRAST = 12.0


def ink_from_greyscale(greyscale: np.ndarray) -> np.ndarray:
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


def normalise_like_mnist(ink: np.ndarray) -> np.ndarray:
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
