"""Make ``training/probe_digits.npz``: the store's probe set of real handwritten digits.

    python3 -m venv /tmp/skvenv
    /tmp/skvenv/bin/pip install scikit-learn pillow scipy numpy
    /tmp/skvenv/bin/python scripts/make_probe_set.py [--out training/probe_digits.npz]

scikit-learn is *not* a dependency of convserve: it is only the carrier of the source data, so
run this in a scratch venv. The committed ``.npz`` is what the package uses.

Source: scikit-learn's bundled ``load_digits``, a copy of the test set of the UCI "Optical
Recognition of Handwritten Digits" data set (E. Alpaydin, C. Kaynak, 1998; 13 writers;
https://doi.org/10.24432/C50P49), licensed CC BY 4.0. Each digit there is an 8x8 grid of
counts 0-16: the ink pixels of each 4x4 block of a 32x32 NIST-normalised bitmap. It is not
MNIST (no MNIST image is copied into the repository).

Each digit is brought to MNIST's form: counts scaled to ink 0-255 on a 0 background, cropped
to the ink, upsampled 4x (LANCZOS: back to the 32x32 bitmap's scale), sharpened with a gamma
of 1.5 (block counts spread every stroke over whole 4x4 cells, so the upsampled strokes are
softer and wider than MNIST's; 1.5 was the best of 1.0, 1.5 and 2.0 for the embedded model),
fitted into 20x20 keeping the aspect ratio and placed in 28x28 with its centre of mass at
(14, 14) (as ``service/inputs.py`` does for uploaded images). The first ``--per-class``
digits of each class, in the data set's order, are kept.

Output (read with ``numpy.load(..., allow_pickle=False)``): ``images`` uint8 (N, 28, 28),
``labels`` uint8 (N,), ``source`` (a 0-d string: where the digits come from, their licence).
The zip members carry a fixed timestamp, so the same inputs give the same bytes.
"""

from __future__ import annotations

import argparse
import io
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage
from sklearn.datasets import load_digits

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "training" / "probe_digits.npz"
SOURCE = (
    "UCI Optical Recognition of Handwritten Digits (Alpaydin & Kaynak 1998, "
    "doi:10.24432/C50P49), CC BY 4.0, via scikit-learn load_digits; 8x8 counts brought to "
    "MNIST form by scripts/make_probe_set.py"
)
COUNT_MAX = 16  # the data set's block counts are 0-16
UPSAMPLE = 4  # each count covers 4x4 pixels of the original 32x32 bitmap
GAMMA = 1.5
DIGIT_BOX = 20
IMAGE_SIDE = 28
CENTRE_OF_MASS = 14.0


def resized(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """float (H, W) -> float (height, width), LANCZOS, clipped to 0-255."""
    result = Image.fromarray(image.astype(np.float32), mode="F").resize(
        (width, height), Image.Resampling.LANCZOS
    )
    return np.clip(np.asarray(result, dtype=np.float64), 0.0, 255.0)


def in_mnist_form(counts: np.ndarray) -> np.ndarray:
    """counts (8, 8) in 0-16 -> uint8 (28, 28): ink 0-255 on 0, fitted into 20x20, centre of
    mass at (14, 14)."""
    ink = counts.astype(np.float64) * 255.0 / COUNT_MAX
    rows = np.flatnonzero(ink.any(axis=1))
    columns = np.flatnonzero(ink.any(axis=0))
    crop = ink[rows[0] : rows[-1] + 1, columns[0] : columns[-1] + 1]
    height, width = crop.shape
    bitmap = resized(crop, width * UPSAMPLE, height * UPSAMPLE)
    bitmap = 255.0 * (bitmap / 255.0) ** GAMMA
    scale = DIGIT_BOX / max(bitmap.shape)
    fitted_height, fitted_width = (max(1, round(n * scale)) for n in bitmap.shape)
    digit = resized(bitmap, fitted_width, fitted_height)
    centre_row, centre_column = ndimage.center_of_mass(digit)
    top = int(np.clip(round(CENTRE_OF_MASS - centre_row), 0, IMAGE_SIDE - fitted_height))
    left = int(np.clip(round(CENTRE_OF_MASS - centre_column), 0, IMAGE_SIDE - fitted_width))
    pixels = np.zeros((IMAGE_SIDE, IMAGE_SIDE), dtype=np.float64)
    pixels[top : top + fitted_height, left : left + fitted_width] = digit
    return np.round(pixels).astype(np.uint8)


def first_per_class(labels: np.ndarray, per_class: int) -> np.ndarray:
    """Indices of the first ``per_class`` examples of each digit 0-9, grouped by digit."""
    chosen = [np.flatnonzero(labels == digit)[:per_class] for digit in range(10)]
    if any(len(indices) < per_class for indices in chosen):
        raise SystemExit(f"fewer than {per_class} examples of some digit")
    return np.concatenate(chosen)


def write_npz_reproducibly(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Like ``numpy.savez_compressed``, with fixed member timestamps (stable bytes)."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for key, array in arrays.items():
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.asanyarray(array), allow_pickle=False)
            member = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            member.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(member, buffer.getvalue())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--per-class", type=int, default=20)
    args = parser.parse_args()
    digits = load_digits()
    indices = first_per_class(digits.target, args.per_class)
    images = np.stack([in_mnist_form(digits.images[i]) for i in indices])
    labels = digits.target[indices].astype(np.uint8)
    write_npz_reproducibly(
        args.out, {"images": images, "labels": labels, "source": np.array(SOURCE)}
    )
    print(f"wrote {args.out}: {len(images)} digits ({args.per_class} per class)")


if __name__ == "__main__":
    main()
