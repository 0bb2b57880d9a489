"""MNIST for the tests: the real files when this machine has them, else synthetic digits.

One generator, ``training.data.synthetic_digits`` (benchmarks use it too): digit-like strokes,
brought to MNIST's own form (when a test needs that) by the service's own
``normalise_like_mnist``, not by a copy of it.
"""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np

from service.inputs.mnist_form import normalise_like_mnist
from tests.support import REPO
from training.data import read_idx, synthetic_digits

# The tiny MNIST directory: images per split (every digit 0-9 present in both).
TINY_MNIST_SIZES = {"train": 500, "t10k": 200}


def find_mnist_dir() -> Path | None:
    """The directory holding the real MNIST test split, or None: $MNIST_DIR when it is set
    (set it to a missing path to run the suite on the synthetic fallback), else
    ../shared/data/mnist beside the repository."""
    from_environment = os.environ.get("MNIST_DIR")
    candidate = Path(from_environment) if from_environment else REPO.parent / "shared/data/mnist"
    return candidate if (candidate / "t10k-images-idx3-ubyte.gz").is_file() else None


def synthetic_digit(seed: int = 0) -> np.ndarray:
    """One synthetic digit, uint8 (28, 28); different seeds give different digits."""
    images, _ = synthetic_digits(1, seed=seed)
    return images[0]


def in_mnist_form(image: np.ndarray) -> np.ndarray:
    """A uint8 (28, 28) drawing as MNIST was made (cropped to the ink, fitted in 20x20, centre
    of mass at the centre), by the service's own normalisation; uint8 (28, 28)."""
    normalised = normalise_like_mnist(np.asarray(image, dtype=np.uint8))
    return np.clip(np.rint(normalised), 0, 255).astype(np.uint8)


def mnist_test_digits(count: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``count`` MNIST test images uint8 (count, 28, 28) and labels (count,); when
    MNIST is not on this machine, ``count`` synthetic digits in MNIST's form."""
    directory = find_mnist_dir()
    if directory is None:
        images, labels = synthetic_digits(count)
        return np.stack([in_mnist_form(image) for image in images]), labels
    # Copies: the slices alone would keep the whole test split alive.
    images = read_idx(directory / "t10k-images-idx3-ubyte.gz")[:count].copy()
    labels = read_idx(directory / "t10k-labels-idx1-ubyte.gz")[:count].copy()
    return images, labels


def write_idx(path: Path, array: np.ndarray) -> Path:
    """Write a uint8 array as an IDX file (magic 0x0803 for 3 dims, 0x0801 for 1 dim), gzipped
    when ``path`` ends in ``.gz``. Returns ``path``."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(
        ">" + "I" * array.ndim, *array.shape
    )
    payload = header + array.tobytes()
    path = Path(path)
    if path.suffix == ".gz":
        # mtime=0: the same array always gives the same bytes (and the same sha256).
        path.write_bytes(gzip.compress(payload, compresslevel=6, mtime=0))
    else:
        path.write_bytes(payload)
    return path


def write_tiny_mnist(directory: Path) -> Path:
    """The four MNIST .gz files in ``directory``, tiny but valid: synthetic digits, as many as
    ``TINY_MNIST_SIZES`` says, every digit 0-9 in both splits. Returns ``directory``."""
    for seed, (prefix, count) in enumerate(TINY_MNIST_SIZES.items()):
        images, labels = synthetic_digits(count, seed=seed)
        assert set(labels.tolist()) == set(range(10)), "the tiny MNIST must hold all ten digits"
        write_idx(directory / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(directory / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return directory
