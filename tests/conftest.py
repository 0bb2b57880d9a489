"""Shared fixtures: real MNIST when it is on this machine, tiny generated IDX files otherwise."""

import gzip
import os
import struct
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def find_mnist_dir() -> Path | None:
    """$MNIST_DIR, then ../shared/data/mnist beside the repository."""
    for candidate in (os.environ.get("MNIST_DIR"), REPO.parent / "shared" / "data" / "mnist"):
        if candidate and (Path(candidate) / "t10k-images-idx3-ubyte.gz").is_file():
            return Path(candidate)
    return None


def read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as handle:
        data = handle.read()
    _, _, dtype_code, ndim = struct.unpack(">BBBB", data[:4])
    dims = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def synthetic_digits(count: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Digit-like 28x28 uint8 images: thick saturated strokes (so pooling windows tie)."""
    rng = np.random.default_rng(seed)
    images = np.zeros((count, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, count).astype(np.uint8)
    for i, label in enumerate(labels):
        top, left = 6 + rng.integers(-2, 3), 8 + rng.integers(-2, 3)
        images[i, top : top + 16, left + label : left + label + 4] = 255
        images[i, top + label : top + label + 3, left : left + 12] = 255
    return images, labels


def in_mnist_form(image: np.ndarray) -> np.ndarray:
    """A uint8 (28, 28) drawing brought to MNIST's own form, the way LeCun made it: cropped to
    the ink, scaled (antialiased) to fit 20x20 keeping the aspect ratio, placed in 28x28 with
    its centre of mass at the centre. Only for the synthetic fallback digits."""
    from PIL import Image
    from scipy import ndimage

    rows, cols = np.nonzero(image)
    crop = image[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    scale = 20 / max(crop.shape)
    height, width = (max(1, round(n * scale)) for n in crop.shape)
    fitted = np.asarray(Image.fromarray(crop).resize((width, height), Image.Resampling.LANCZOS))
    canvas = np.zeros((28, 28), dtype=np.float64)
    top, left = (28 - height) // 2, (28 - width) // 2
    canvas[top : top + height, left : left + width] = fitted
    centre_row, centre_col = ndimage.center_of_mass(canvas)
    shifted = ndimage.shift(canvas, (14 - centre_row, 14 - centre_col), order=0)
    return np.clip(shifted, 0, 255).astype(np.uint8)


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


TINY_MNIST_SIZES = {"train": 500, "t10k": 200}


@pytest.fixture(scope="session")
def tiny_mnist_dir(tmp_path_factory) -> Path:
    """A directory with the four MNIST .gz files, tiny but valid: 500 train and 200 test
    synthetic digits (every digit 0-9 present in both). Shared by the session: do not modify."""
    directory = tmp_path_factory.mktemp("tiny_mnist")
    for seed, (prefix, count) in enumerate(TINY_MNIST_SIZES.items()):
        images, labels = synthetic_digits(count, seed=seed)
        assert set(labels.tolist()) == set(range(10)), "the fixture must hold all ten digits"
        write_idx(directory / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(directory / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return directory


@pytest.fixture(scope="session")
def mnist_dir(tiny_mnist_dir) -> Path:
    """The real MNIST directory (find_mnist_dir()) when present, else ``tiny_mnist_dir``."""
    return find_mnist_dir() or tiny_mnist_dir


@pytest.fixture(scope="session")
def mnist_images() -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N, 28, 28), labels uint8 (N,)) from the MNIST test set, or synthetic."""
    directory = find_mnist_dir()
    if directory is None:
        images, labels = synthetic_digits(64)
        return np.stack([in_mnist_form(image) for image in images]), labels
    images = read_idx(directory / "t10k-images-idx3-ubyte.gz")[:64]
    labels = read_idx(directory / "t10k-labels-idx1-ubyte.gz")[:64]
    return np.array(images), np.array(labels)


def make_bundle(
    path: Path,
    *,
    preset_name: str = "simpleconvnet",
    seed: int = 0,
    test_accuracy: float | None = None,
    classes: list[int] | None = None,
) -> Path:
    """Write a small untrained bundle (random weights, float32) for store and service tests."""
    from training.bundle import build_metadata, input_contract, save_bundle
    from training.network import Network, preset

    labels = classes if classes is not None else list(range(10))
    network = Network(preset(preset_name, num_classes=len(labels)), rng=np.random.default_rng(seed))
    metrics = {} if test_accuracy is None else {"test_accuracy": test_accuracy}
    metadata = build_metadata(
        network,
        contract=input_contract(0.1307, 0.3081),
        class_labels=labels,
        metrics=metrics,
        training={"preset": preset_name, "seed": seed},
    )
    return save_bundle(path, network, metadata)


def make_store(directory: Path, *versions: dict, name: str = "mnist"):
    """A ModelStore at ``directory / "store"`` with one tiny bundle published per entry of
    ``versions`` (version 1, 2, ...): each a dict of ``make_bundle`` keywords plus an optional
    ``alias``. The bundle files are written to ``directory`` as v1.npz, v2.npz, ..."""
    from training.store import ModelStore

    store = ModelStore(directory / "store")
    for number, version in enumerate(versions, start=1):
        options = dict(version)
        alias = options.pop("alias", None)
        store.publish(make_bundle(directory / f"v{number}.npz", **options), name, alias=alias)
    return store


@pytest.fixture
def bundle_path(tmp_path) -> Path:
    """An untrained SimpleConvNet bundle with test_accuracy 0.5 recorded."""
    return make_bundle(tmp_path / "model.npz", test_accuracy=0.5)
