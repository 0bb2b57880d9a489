"""MNIST data: the IDX reader, class subsets, splits, pixel statistics, fingerprints.

Images are uint8 arrays (N, 28, 28) in MNIST convention (0 background, 255 ink); labels are the
original digits as uint8 (N,). Everything random takes an explicit ``numpy.random.Generator``.
Every problem a user can cause (missing, truncated or malformed file, bad class list, split too
large) raises ``DataError`` with a message that names the file or value.

IDX format (http://yann.lecun.com/exdb/mnist/): a big-endian header, then the payload.
    bytes 0-1  zero
    byte  2    element type (0x08 = unsigned byte)
    byte  3    number of dimensions
    then one uint32 per dimension, then prod(dims) elements in C order.
So the magic number, read as one big-endian uint32, is 2051 for images (3 dims) and 2049 for
labels (1 dim).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import struct
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from training.errors import DataError

IMAGE_SHAPE = (28, 28)
IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions (count, rows, columns)
LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension (count)
GZIP_MAGIC = b"\x1f\x8b"
CHUNK_BYTES = 1 << 20  # reads and reductions in steps of 1 MiB: bounded memory

# Split name -> (images file, labels file), without the optional ".gz".
SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


@dataclass
class Dataset:
    """A set of examples: ``images`` uint8 (N, 28, 28), 0 background / 255 ink, and ``labels``
    uint8 (N,), the original digits (a 3-vs-8 subset keeps 3 and 8, not 0 and 1)."""

    images: np.ndarray
    labels: np.ndarray

    def __post_init__(self) -> None:
        if len(self.images) != len(self.labels):
            raise ValueError(
                f"Dataset needs as many images as labels, got {len(self.images)} images "
                f"and {len(self.labels)} labels"
            )

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: np.ndarray) -> Dataset:
        """The examples at ``indices`` (int array), in that order, as a new Dataset (copies)."""
        return Dataset(self.images[indices], self.labels[indices])

    def class_counts(self) -> dict[int, int]:
        """{digit: number of examples} for the digits present, in increasing digit order."""
        digits, counts = np.unique(self.labels, return_counts=True)
        return {int(d): int(c) for d, c in zip(digits, counts, strict=True)}


@dataclass
class MnistData:
    """Both MNIST splits, where they were read from, and the fingerprint of the four files
    (``{file name: {"sha256": hex, "size": bytes}}``) for the bundle's ``data_fingerprint``."""

    train: Dataset
    test: Dataset
    data_dir: Path
    fingerprint: dict


def resolve_data_dir(data_dir: str | os.PathLike | None) -> Path:
    """The MNIST directory to use: ``data_dir`` if given, else $MNIST_DIR, else ./data/mnist."""
    if data_dir is not None and str(data_dir) != "":
        return Path(data_dir).expanduser()
    from_env = os.environ.get("MNIST_DIR")
    if from_env:
        return Path(from_env).expanduser()
    return Path("data") / "mnist"


def _open_maybe_gzip(path: Path):
    """A binary file object over the IDX bytes of ``path``, gunzipping when the file starts
    with the gzip magic (whatever its suffix: a server may have decompressed a ``.gz``)."""
    try:
        with open(path, "rb") as probe:
            is_gzip = probe.read(2) == GZIP_MAGIC
        return gzip.open(path, "rb") if is_gzip else open(path, "rb")  # noqa: SIM115
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a directory, expected an IDX file") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc.strerror or exc}") from None


def _read_exactly(handle, count: int) -> bytearray:
    """Up to ``count`` bytes from ``handle``; fewer only if the data ends first. Grows the
    buffer as data arrives, so a corrupt header claiming terabytes costs nothing."""
    buffer = bytearray()
    while len(buffer) < count:
        chunk = handle.read(min(CHUNK_BYTES, count - len(buffer)))
        if not chunk:
            break
        buffer += chunk
    return buffer


def _count_remaining(handle) -> int:
    """How many bytes are left in ``handle`` (read and discarded in chunks)."""
    extra = 0
    while chunk := handle.read(CHUNK_BYTES):
        extra += len(chunk)
    return extra


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an MNIST IDX file (gzip-compressed or raw) into a writable uint8 array.

    Returns (count, rows, columns) for an images file (magic 2051) or (count,) for a labels file
    (magic 2049). Raises ``DataError`` naming the file when it is missing, not gzip/IDX, has
    another magic number, element type or number of dimensions, or when its payload is shorter
    or longer than the header says (with the byte counts expected and found).
    """
    path = Path(path)
    with _open_maybe_gzip(path) as handle:
        try:
            header = _read_exactly(handle, 4)
            if len(header) < 4:
                raise DataError(
                    f"{path}: too short for an IDX file ({len(header)} bytes, the header alone "
                    "needs at least 8)"
                )
            zero, dtype_code, ndim = struct.unpack(">HBB", header)
            magic = struct.unpack(">I", header)[0]
            if zero != 0 or magic not in (IMAGES_MAGIC, LABELS_MAGIC):
                # Say what the header claims when it looks like IDX at all (another element
                # type or number of dimensions), so a wrong file is easy to recognise.
                claims = (
                    f" (element type {dtype_code:#04x}, {ndim} dimensions)" if zero == 0 else ""
                )
                raise DataError(
                    f"{path}: not an MNIST IDX file: magic number {magic}{claims}, expected "
                    f"{IMAGES_MAGIC} (unsigned bytes, 3 dimensions: images) or {LABELS_MAGIC} "
                    f"(unsigned bytes, 1 dimension: labels)"
                )
            dims_bytes = _read_exactly(handle, 4 * ndim)
            if len(dims_bytes) < 4 * ndim:
                raise DataError(
                    f"{path}: truncated header: expected {4 + 4 * ndim} bytes, "
                    f"found {4 + len(dims_bytes)}"
                )
            dims = struct.unpack(f">{ndim}I", dims_bytes)
            expected_payload = int(np.prod(dims, dtype=object))
            payload = _read_exactly(handle, expected_payload)
            extra = _count_remaining(handle)
        except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
            raise DataError(f"{path}: corrupt or truncated gzip data ({exc})") from None
        except OSError as exc:
            raise DataError(f"{path}: cannot read: {exc.strerror or exc}") from None
    header_bytes = 4 + 4 * ndim
    if len(payload) < expected_payload:
        raise DataError(
            f"{path}: truncated: header says {'x'.join(map(str, dims))} "
            f"(expected {header_bytes + expected_payload} bytes), "
            f"found {header_bytes + len(payload)} bytes"
        )
    if extra:
        raise DataError(
            f"{path}: {extra} unexpected bytes after the data: header says "
            f"{'x'.join(map(str, dims))} (expected {header_bytes + expected_payload} bytes), "
            f"found {header_bytes + expected_payload + extra}"
        )
    return np.frombuffer(payload, dtype=np.uint8).reshape(dims)


def _idx_kind(array: np.ndarray) -> str:
    return "images" if array.ndim == 3 else "labels"


def _find_file(directory: Path, base_name: str) -> Path | None:
    """``base_name.gz`` if present, else the raw ``base_name``, else None."""
    for candidate in (directory / f"{base_name}.gz", directory / base_name):
        if candidate.is_file():
            return candidate
    return None


def load_mnist(data_dir: str | os.PathLike | None = None) -> MnistData:
    """Load both MNIST splits from ``resolve_data_dir(data_dir)``.

    Looks for ``train-images-idx3-ubyte(.gz)``, ``train-labels-idx1-ubyte(.gz)``,
    ``t10k-images-idx3-ubyte(.gz)`` and ``t10k-labels-idx1-ubyte(.gz)``. Raises ``DataError`` when
    the directory or a file is missing, a file is malformed (see ``read_idx``), an images file
    holds labels or the other way round, images are not 28x28, labels are not digits 0-9, or the
    image and label counts of a split disagree (naming both files).
    """
    directory = resolve_data_dir(data_dir)
    download_hint = f"run `convserve data download --dir {directory}` to fetch them"
    if not directory.is_dir():
        raise DataError(f"MNIST directory {directory} does not exist; {download_hint}")
    found = {}
    missing = []
    for base_names in SPLIT_FILES.values():
        for base_name in base_names:
            path = _find_file(directory, base_name)
            if path is None:
                missing.append(f"{base_name}(.gz)")
            found[base_name] = path
    if missing:
        raise DataError(
            f"MNIST files missing in {directory}: {', '.join(missing)}; {download_hint}"
        )

    splits = {}
    for split, (images_name, labels_name) in SPLIT_FILES.items():
        images_path, labels_path = found[images_name], found[labels_name]
        images = read_idx(images_path)
        labels = read_idx(labels_path)
        if images.ndim != 3:
            raise DataError(f"{images_path}: holds {_idx_kind(images)}, expected images")
        if labels.ndim != 1:
            raise DataError(f"{labels_path}: holds {_idx_kind(labels)}, expected labels")
        if images.shape[1:] != IMAGE_SHAPE:
            raise DataError(
                f"{images_path}: images are {images.shape[1]}x{images.shape[2]}, expected 28x28"
            )
        if len(images) != len(labels):
            raise DataError(
                f"{split} split: {images_path.name} has {len(images)} images but "
                f"{labels_path.name} has {len(labels)} labels"
            )
        if len(labels) and labels.max() > 9:
            raise DataError(f"{labels_path}: label {int(labels.max())} is not a digit 0-9")
        splits[split] = Dataset(images, labels)
    fingerprint = fingerprint_files(found.values())
    return MnistData(splits["train"], splits["test"], directory, fingerprint)


def parse_classes(text: str | None) -> list[int] | None:
    """A class list from the command line: ``"0,1"`` -> ``[0, 1]``; None, ``""`` or ``"all"``
    -> None (all ten digits). Sorted, so "1,0" and "0,1" give the same model. Raises
    ``DataError`` unless it names at least two distinct digits 0-9."""
    if text is None or text.strip().lower() in ("", "all"):
        return None
    classes = []
    for item in text.split(","):
        item = item.strip()
        if not item.isdigit() or int(item) > 9:
            raise DataError(f"classes {text!r}: {item!r} is not a digit 0-9")
        if int(item) in classes:
            raise DataError(f"classes {text!r}: digit {item} is listed twice")
        classes.append(int(item))
    if len(classes) < 2:
        raise DataError(f"classes {text!r}: a classifier needs at least two classes")
    return sorted(classes)


def select_classes(ds: Dataset, classes: list[int] | None) -> Dataset:
    """Only the examples whose digit is in ``classes`` (labels stay digits); None keeps all.
    Raises ``DataError`` if a requested digit has no example."""
    if classes is None:
        return ds
    keep = np.isin(ds.labels, classes)
    selected = ds.subset(np.flatnonzero(keep))
    absent = sorted(set(classes) - set(selected.class_counts()))
    if absent:
        raise DataError(f"no examples of class {', '.join(map(str, absent))} in the data")
    return selected


def split_validation(
    ds: Dataset, val_size: int, rng: np.random.Generator
) -> tuple[Dataset, Dataset]:
    """A random held-out split: (train, val) with ``val_size`` examples in val, disjoint,
    each in the original order. ``val_size`` 0 gives an empty val. Raises ``DataError`` when
    ``val_size`` is negative or leaves no training example."""
    if val_size < 0:
        raise DataError(f"validation size must be 0 or more, got {val_size}")
    if val_size >= len(ds):
        raise DataError(
            f"validation size {val_size} leaves no training example out of {len(ds)}; "
            f"use at most {len(ds) - 1}"
        )
    order = rng.permutation(len(ds))
    val_indices = np.sort(order[:val_size])
    train_indices = np.sort(order[val_size:])
    return ds.subset(train_indices), ds.subset(val_indices)


def limit_dataset(ds: Dataset, limit: int | None, rng: np.random.Generator) -> Dataset:
    """A random subset of ``limit`` examples (original order kept); None, or a limit at least
    the size of ``ds``, returns ``ds`` itself. Raises ``DataError`` for a limit below 1."""
    if limit is None:
        return ds
    if limit < 1:
        raise DataError(f"example limit must be at least 1, got {limit}")
    if limit >= len(ds):
        return ds
    return ds.subset(np.sort(rng.choice(len(ds), size=limit, replace=False)))


def pixel_statistics(images: np.ndarray) -> tuple[float, float]:
    """(mean, std) of ``images / 255`` over all pixels, accumulated in float64; population std.

    ``images``: (N, 28, 28) pixels 0-255. For uint8 the statistics come from the exact histogram
    of the 256 values, so 60,000 images need no 376 MB float64 copy. Raises ``DataError`` for
    no images and for a constant image set (std 0 cannot normalise)."""
    images = np.asarray(images)
    if images.size == 0:
        raise DataError("cannot compute pixel statistics of an empty image set")
    if images.dtype == np.uint8:
        flat = images.reshape(-1)
        counts = np.zeros(256, dtype=np.float64)
        # bincount widens its input to int64: in chunks, that is 8 MB at a time, not 376 MB.
        for start in range(0, flat.size, CHUNK_BYTES):
            counts += np.bincount(flat[start : start + CHUNK_BYTES], minlength=256)
        values = np.arange(256, dtype=np.float64) / 255.0
        total = counts.sum()
        mean = float(counts @ values / total)
        std = float(np.sqrt(counts @ (values - mean) ** 2 / total))
    else:
        flat = images.reshape(-1)
        mean = float(np.sum(flat, dtype=np.float64) / flat.size / 255.0)
        squares = 0.0
        for start in range(0, flat.size, CHUNK_BYTES):  # two-pass, bounded memory
            chunk = flat[start : start + CHUNK_BYTES].astype(np.float64) / 255.0 - mean
            squares += float(chunk @ chunk)
        std = float(np.sqrt(squares / flat.size))
    if std == 0.0:
        raise DataError("all pixels have the same value: the standard deviation is 0")
    return mean, std


def sha256_file(path: str | os.PathLike) -> str:
    """The sha256 hex digest of the bytes of ``path``, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def fingerprint_files(paths: Iterable[str | os.PathLike]) -> dict:
    """``{file name: {"sha256": hex, "size": bytes}}`` of each file, keyed by its base name."""
    fingerprint = {}
    for path in map(Path, paths):
        try:
            fingerprint[path.name] = {"sha256": sha256_file(path), "size": path.stat().st_size}
        except OSError as exc:
            raise DataError(f"{path}: cannot read: {exc.strerror or exc}") from None
    return fingerprint


def synthetic_digits(count: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (count, 28, 28), labels uint8 (count,)): a bar and a crossing stroke
    placed by the label and a random offset, thick and saturated (so pooling windows tie, as
    on MNIST). Stand-in digits for tests and benchmarks on a machine without MNIST; not in
    MNIST's own form (service.inputs.mnist_form.normalise_like_mnist brings them to it)."""
    rng = np.random.default_rng(seed)
    images = np.zeros((count, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, count).astype(np.uint8)
    for i, label in enumerate(labels):
        top, left = 6 + rng.integers(-2, 3), 8 + rng.integers(-2, 3)
        images[i, top : top + 16, left + label : left + label + 4] = 255
        images[i, top + label : top + label + 3, left : left + 12] = 255
    return images, labels
