"""Data augmentation for digits: random translations.

A digit moved by a pixel or two is the same digit; showing the network such copies is the
cheapest regulariser there is for MNIST (it lifts SimpleConvNet from ~98.9 % to ~99.2 %).
Augmentation works on raw uint8 pixels, before ``training.bundle.normalise``, so the fill value
0 is the background of the MNIST convention.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


def random_shift(images: np.ndarray, max_shift: int, rng: np.random.Generator) -> np.ndarray:
    """Translate each image by its own random (dy, dx), each uniform in [-max_shift, max_shift].

    images: (N, H, W) pixels (any dtype, normally uint8 0-255). Returns a new (N, H, W) array of
    the same dtype; pixels shifted in from outside are 0 (background). The input is not changed.
    Vectorised: the batch is zero-padded once and every output image is one window of its padded
    image, gathered in a single fancy-indexing copy.
    """
    images = np.asarray(images)
    if images.ndim != 3:
        raise ValueError(f"images must be (N, H, W), got shape {images.shape}")
    if int(max_shift) != max_shift or max_shift < 0:
        raise ValueError(f"max_shift must be a non-negative integer, got {max_shift!r}")
    max_shift = int(max_shift)
    if max_shift == 0 or len(images) == 0:
        return images.copy()
    n, height, width = images.shape
    k = max_shift
    padded = np.pad(images, ((0, 0), (k, k), (k, k)))
    # windows[i, r, c] is the (H, W) image whose top-left corner is padded[i, r, c]. Offset
    # r = k - dy puts the original content dy pixels lower (r = k is the unshifted image).
    windows = sliding_window_view(padded, (height, width), axis=(1, 2))
    offsets = rng.integers(0, 2 * k + 1, size=(2, n))
    return windows[np.arange(n), offsets[0], offsets[1]]


def random_affine(
    images: np.ndarray,
    rng: np.random.Generator,
    max_shift: int = 0,
    max_rotation: float = 0.0,
    max_scale: float = 0.0,
) -> np.ndarray:
    """Rotate, scale and translate each image by its own random amounts (see ``affine_batch``).

    images: (N, H, W) pixels 0-255. Angles are uniform in [-max_rotation, max_rotation] degrees,
    scale factors uniform in [1 - max_scale, 1 + max_scale], shifts integers uniform in
    [-max_shift, max_shift] pixels. Returns float32 (N, H, W) pixels 0-255.
    """
    if not 0 <= max_rotation <= 180:
        raise ValueError(f"max_rotation must be in [0, 180] degrees, got {max_rotation!r}")
    if not 0 <= max_scale < 1:
        raise ValueError(f"max_scale must be in [0, 1), got {max_scale!r}")
    if int(max_shift) != max_shift or max_shift < 0:
        raise ValueError(f"max_shift must be a non-negative integer, got {max_shift!r}")
    n = len(images)
    degrees = rng.uniform(-max_rotation, max_rotation, n)
    scales = rng.uniform(1 - max_scale, 1 + max_scale, n)
    shifts = rng.integers(-int(max_shift), int(max_shift) + 1, size=(n, 2))
    return affine_batch(images, degrees, scales, shifts)


def affine_batch(
    images: np.ndarray, degrees: np.ndarray, scales: np.ndarray, shifts: np.ndarray
) -> np.ndarray:
    """Rotate image i by degrees[i] (clockwise as displayed, rows pointing down), scale it by
    scales[i] about its centre, then move it shifts[i] = (down, right) pixels.

    images: (N, H, W); degrees, scales: (N,); shifts: (N, 2). Bilinear interpolation with zero
    (background) outside the image, as ``scipy.ndimage.map_coordinates(order=1,
    mode="grid-constant")`` would do, but 5x faster: the whole batch is four flat gathers from
    a zero-padded copy, in float32. Returns float32 (N, H, W): interpolation makes fractional
    intensities, and rounding them back to uint8 would only add noise.
    """
    images = np.asarray(images)
    if images.ndim != 3:
        raise ValueError(f"images must be (N, H, W), got shape {images.shape}")
    n, height, width = images.shape
    angle = np.deg2rad(np.asarray(degrees, dtype=np.float32))[:, None, None]
    scale = np.asarray(scales, dtype=np.float32)[:, None, None]
    shifts = np.asarray(shifts, dtype=np.float32).reshape(n, 2)
    # For every output pixel, where to read in the input (the inverse map):
    # source = R(-angle) (out - centre - shift) / scale + centre.
    cy, cx = (height - 1) / 2, (width - 1) / 2
    dy = np.arange(height, dtype=np.float32)[None, :, None] - cy - shifts[:, 0, None, None]
    dx = np.arange(width, dtype=np.float32)[None, None, :] - cx - shifts[:, 1, None, None]
    cos, sin = np.cos(angle) / scale, np.sin(angle) / scale
    # Source positions in a copy padded with one ring of zeros. Clipping onto that ring makes
    # anything further out read 0 without a mask; the floor is capped so that the right/lower
    # neighbour always exists.
    rows = np.clip(cos * dy - sin * dx + (cy + 1), 0, height + 1)
    cols = np.clip(sin * dy + cos * dx + (cx + 1), 0, width + 1)
    row_floor = np.minimum(np.floor(rows), height)
    col_floor = np.minimum(np.floor(cols), width)
    row_frac, col_frac = rows - row_floor, cols - col_floor
    row0, col0 = row_floor.astype(np.intp), col_floor.astype(np.intp)
    padded = np.zeros((n, height + 2, width + 2), dtype=np.float32)
    padded[:, 1:-1, 1:-1] = images
    flat = padded.reshape(-1)
    stride = width + 2
    top_left = np.arange(n)[:, None, None] * ((height + 2) * stride) + row0 * stride + col0
    top = flat[top_left] * (1 - col_frac) + flat[top_left + 1] * col_frac
    bottom = flat[top_left + stride] * (1 - col_frac) + flat[top_left + stride + 1] * col_frac
    return top * (1 - row_frac) + bottom * row_frac
