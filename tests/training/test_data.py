"""The MNIST data layer: IDX reading and its error paths, loading, class subsets, splits,
pixel statistics, fingerprints, and ``convserve data info``."""

import gzip
import hashlib
import json
import shutil
import struct
import subprocess
import sys

import numpy as np
import pytest

from convserve.cli import main
from tests.support import REPO
from tests.support.mnist import TINY_MNIST_SIZES, find_mnist_dir, synthetic_digits, write_idx
from training.data import (
    Dataset,
    fingerprint_files,
    limit_dataset,
    load_mnist,
    parse_classes,
    pixel_statistics,
    read_idx,
    resolve_data_dir,
    select_classes,
    split_validation,
)
from training.errors import DataError

FILE_NAMES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
real_mnist = pytest.mark.skipif(find_mnist_dir() is None, reason="real MNIST not on this machine")


@pytest.fixture
def mnist_copy(tiny_mnist_dir, tmp_path):
    """A writable copy of the tiny MNIST directory, for tests that break one file."""
    return shutil.copytree(tiny_mnist_dir, tmp_path / "mnist")


def idx_header(magic_bytes: bytes, dims: tuple[int, ...]) -> bytes:
    return magic_bytes + struct.pack(">" + "I" * len(dims), *dims)


# --------------------------------------------------------------------------------- read_idx


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_read_idx_round_trips_images_and_labels_raw_and_gzip(tmp_path, suffix):
    images, labels = synthetic_digits(12, seed=3)
    read_images = read_idx(write_idx(tmp_path / f"images{suffix}", images))
    read_labels = read_idx(write_idx(tmp_path / f"labels{suffix}", labels))
    np.testing.assert_array_equal(read_images, images)
    np.testing.assert_array_equal(read_labels, labels)
    assert read_images.dtype == np.uint8 and read_images.shape == (12, 28, 28)
    assert read_images.flags.writeable  # callers (augmentation) may modify in place


def test_read_idx_detects_gzip_by_magic_bytes_not_suffix(tmp_path):
    labels = np.arange(10, dtype=np.uint8)
    gzipped = write_idx(tmp_path / "labels.gz", labels)
    disguised = tmp_path / "train-labels-idx1-ubyte"  # no .gz, but gzip inside
    shutil.copy(gzipped, disguised)
    raw_named_gz = tmp_path / "raw.gz"  # .gz suffix, raw IDX inside
    write_idx(tmp_path / "raw", labels).rename(raw_named_gz)
    np.testing.assert_array_equal(read_idx(disguised), labels)
    np.testing.assert_array_equal(read_idx(raw_named_gz), labels)


def test_read_idx_missing_file_names_it(tmp_path):
    with pytest.raises(DataError, match=r"nowhere-idx3-ubyte\.gz: no such file"):
        read_idx(tmp_path / "nowhere-idx3-ubyte.gz")


def test_read_idx_directory_is_an_error(tmp_path):
    with pytest.raises(DataError, match="is a directory"):
        read_idx(tmp_path)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"\x89PNG\r\n\x1a\n" + bytes(100), r"not an MNIST IDX file: magic number 2303741511,"),
        (idx_header(b"\x00\x00\x08\x04", (1, 28, 28, 1)) + bytes(784), r"4 dimensions"),
        (idx_header(b"\x00\x00\x08\x02", (1, 784)) + bytes(784), r"2 dimensions"),
        (idx_header(b"\x00\x00\x0d\x03", (1, 28, 28)) + bytes(4 * 784), r"element type 0x0d"),
        (b"\x00\x00", r"too short for an IDX file \(2 bytes"),
        (b"", r"too short for an IDX file \(0 bytes"),
        (
            b"\x00\x00\x08\x03" + struct.pack(">I", 5),
            r"truncated header: expected 16 bytes, found 8",
        ),
    ],
    ids=["png", "4-dims", "2-dims", "float-type", "2-bytes", "empty", "short-header"],
)
@pytest.mark.parametrize("compress", [False, True], ids=["raw", "gz"])
def test_read_idx_rejects_malformed_headers(tmp_path, content, message, compress):
    path = tmp_path / "bad-idx3-ubyte"
    path.write_bytes(gzip.compress(content) if compress else content)
    with pytest.raises(DataError, match=message) as caught:
        read_idx(path)
    assert str(path) in str(caught.value)


@pytest.mark.parametrize("compress", [False, True], ids=["raw", "gz"])
def test_read_idx_truncated_payload_says_expected_and_found_bytes(tmp_path, compress):
    images, _ = synthetic_digits(3)
    payload = idx_header(b"\x00\x00\x08\x03", (3, 28, 28)) + images.tobytes()
    cut = payload[: 16 + 2 * 784 + 100]
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(gzip.compress(cut) if compress else cut)
    with pytest.raises(DataError) as caught:
        read_idx(path)
    message = str(caught.value)
    assert str(path) in message
    assert "truncated" in message and "3x28x28" in message
    assert f"expected {16 + 3 * 784} bytes" in message
    assert f"found {16 + 2 * 784 + 100} bytes" in message


def test_read_idx_cut_gzip_stream_is_a_clear_error(tmp_path):
    images, _ = synthetic_digits(20)
    good = write_idx(tmp_path / "good.gz", images).read_bytes()
    path = tmp_path / "cut.gz"
    path.write_bytes(good[: len(good) // 2])  # a download that stopped half way
    with pytest.raises(DataError, match=r"cut\.gz: corrupt or truncated gzip data"):
        read_idx(path)


def test_read_idx_corrupt_gzip_is_a_clear_error(tmp_path):
    images, _ = synthetic_digits(20)
    data = bytearray(write_idx(tmp_path / "good.gz", images).read_bytes())
    data[len(data) // 2] ^= 0xFF
    path = tmp_path / "flipped.gz"
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"flipped\.gz: corrupt or truncated gzip data"):
        read_idx(path)


def test_read_idx_rejects_bytes_after_the_payload(tmp_path):
    labels = np.arange(10, dtype=np.uint8)
    path = write_idx(tmp_path / "labels", labels)
    path.write_bytes(path.read_bytes() + b"junk")
    with pytest.raises(DataError, match=r"4 unexpected bytes after the data.*expected 18 bytes"):
        read_idx(path)


def test_read_idx_header_claiming_huge_sizes_is_truncated_not_memory_error(tmp_path):
    path = tmp_path / "huge"
    path.write_bytes(idx_header(b"\x00\x00\x08\x03", (2**32 - 1, 28, 28)) + bytes(784))
    with pytest.raises(DataError, match=r"truncated: header says 4294967295x28x28"):
        read_idx(path)


# ------------------------------------------------------------------------------ load_mnist


def test_load_mnist_reads_the_tiny_fixture(tiny_mnist_dir):
    mnist = load_mnist(tiny_mnist_dir)
    assert len(mnist.train) == TINY_MNIST_SIZES["train"]
    assert len(mnist.test) == TINY_MNIST_SIZES["t10k"]
    for split in (mnist.train, mnist.test):
        assert split.images.shape == (len(split), 28, 28) and split.images.dtype == np.uint8
        assert split.labels.dtype == np.uint8
        assert set(split.class_counts()) == set(range(10))
    assert mnist.data_dir == tiny_mnist_dir
    assert sorted(mnist.fingerprint) == sorted(f"{name}.gz" for name in FILE_NAMES)


def test_load_mnist_fingerprint_is_sha256_and_size_of_each_file(tiny_mnist_dir):
    fingerprint = load_mnist(tiny_mnist_dir).fingerprint
    for name, entry in fingerprint.items():
        data = (tiny_mnist_dir / name).read_bytes()
        assert entry == {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    assert fingerprint_files([tiny_mnist_dir / name for name in fingerprint]) == fingerprint


def test_load_mnist_reads_raw_files_too(mnist_copy, tiny_mnist_dir):
    for name in FILE_NAMES[:2]:  # decompress the training files, keep the test files gzipped
        gz = mnist_copy / f"{name}.gz"
        (mnist_copy / name).write_bytes(gzip.decompress(gz.read_bytes()))
        gz.unlink()
    raw, reference = load_mnist(mnist_copy), load_mnist(tiny_mnist_dir)
    np.testing.assert_array_equal(raw.train.images, reference.train.images)
    np.testing.assert_array_equal(raw.train.labels, reference.train.labels)
    assert "train-images-idx3-ubyte" in raw.fingerprint


def test_load_mnist_missing_directory_suggests_download(tmp_path):
    missing = tmp_path / "nothing-here"
    with pytest.raises(DataError, match=r"nothing-here does not exist.*convserve data download"):
        load_mnist(missing)


def test_load_mnist_missing_file_names_it(mnist_copy):
    (mnist_copy / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match=r"missing in .*: t10k-labels-idx1-ubyte\(\.gz\)"):
        load_mnist(mnist_copy)


def test_load_mnist_count_mismatch_names_both_files(mnist_copy):
    write_idx(mnist_copy / "train-labels-idx1-ubyte.gz", np.zeros(499, dtype=np.uint8))
    with pytest.raises(DataError) as caught:
        load_mnist(mnist_copy)
    message = str(caught.value)
    assert "train-images-idx3-ubyte.gz has 500 images" in message
    assert "train-labels-idx1-ubyte.gz has 499 labels" in message


def test_load_mnist_rejects_images_that_are_not_28x28(mnist_copy):
    write_idx(mnist_copy / "t10k-images-idx3-ubyte.gz", np.zeros((200, 32, 32), np.uint8))
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte\.gz: images are 32x32"):
        load_mnist(mnist_copy)


def test_load_mnist_rejects_swapped_files(mnist_copy):
    images, labels = (
        mnist_copy / "train-images-idx3-ubyte.gz",
        mnist_copy / "train-labels-idx1-ubyte.gz",
    )
    images_bytes = images.read_bytes()
    images.write_bytes(labels.read_bytes())
    labels.write_bytes(images_bytes)
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte\.gz: holds labels"):
        load_mnist(mnist_copy)


def test_load_mnist_rejects_labels_that_are_not_digits(mnist_copy):
    labels = read_idx(mnist_copy / "t10k-labels-idx1-ubyte.gz")
    labels[7] = 10
    write_idx(mnist_copy / "t10k-labels-idx1-ubyte.gz", labels)
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte\.gz: label 10 is not a digit"):
        load_mnist(mnist_copy)


def test_load_mnist_truncated_file_is_named(mnist_copy):
    path = mnist_copy / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte\.gz: corrupt or truncated"):
        load_mnist(mnist_copy)


def test_resolve_data_dir_argument_then_environment_then_default(monkeypatch, tmp_path):
    monkeypatch.setenv("MNIST_DIR", str(tmp_path / "from-env"))
    assert resolve_data_dir(tmp_path / "given") == tmp_path / "given"
    assert resolve_data_dir(None) == tmp_path / "from-env"
    monkeypatch.delenv("MNIST_DIR")
    assert str(resolve_data_dir(None)) == "data/mnist"


def test_load_mnist_without_argument_uses_environment(monkeypatch, tiny_mnist_dir):
    monkeypatch.setenv("MNIST_DIR", str(tiny_mnist_dir))
    assert load_mnist().data_dir == tiny_mnist_dir


@pytest.fixture(scope="module")
def real_mnist_data():
    return load_mnist(find_mnist_dir())


@real_mnist
def test_real_mnist_counts_and_class_subset(real_mnist_data):
    assert (len(real_mnist_data.train), len(real_mnist_data.test)) == (60000, 10000)
    classes = parse_classes("0,1")
    assert len(select_classes(real_mnist_data.train, classes)) == 12665
    assert len(select_classes(real_mnist_data.test, classes)) == 2115


@real_mnist
def test_real_mnist_pixel_statistics_are_the_well_known_ones(real_mnist_data):
    mean, std = pixel_statistics(real_mnist_data.train.images)
    assert mean == pytest.approx(0.1307, abs=5e-5)
    assert std == pytest.approx(0.3081, abs=5e-5)


# ------------------------------------------------------------------------ classes, splits


def test_parse_classes_valid():
    assert parse_classes("0,1") == [0, 1]
    assert parse_classes(" 8, 3 ,5") == [3, 5, 8]
    assert parse_classes(None) is None
    assert parse_classes("") is None
    assert parse_classes("all") is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0,10", r"'10' is not a digit 0-9"),
        ("1,a", r"'a' is not a digit"),
        ("-1,2", r"'-1' is not a digit"),
        ("1,,2", r"'' is not a digit"),
        ("3,3", r"digit 3 is listed twice"),
        ("7", r"at least two classes"),
    ],
)
def test_parse_classes_rejects(text, message):
    with pytest.raises(DataError, match=message):
        parse_classes(text)


def indexed_dataset(count: int) -> Dataset:
    """Images whose first two pixels encode their index, so subsets can be traced back."""
    images = np.zeros((count, 28, 28), dtype=np.uint8)
    images[:, 0, 0], images[:, 0, 1] = np.divmod(np.arange(count), 256)
    return Dataset(images, (np.arange(count) % 10).astype(np.uint8))


def example_ids(ds: Dataset) -> np.ndarray:
    return ds.images[:, 0, 0].astype(int) * 256 + ds.images[:, 0, 1]


def test_select_classes_keeps_digit_labels_and_only_those():
    ds = indexed_dataset(100)
    subset = select_classes(ds, [3, 8])
    assert set(subset.labels.tolist()) == {3, 8} and len(subset) == 20
    np.testing.assert_array_equal(subset.labels, ds.labels[example_ids(subset)])
    assert select_classes(ds, None) is ds


def test_select_classes_with_an_absent_class_is_an_error():
    ds = indexed_dataset(100)
    no_sevens = Dataset(ds.images[ds.labels != 7], ds.labels[ds.labels != 7])
    with pytest.raises(DataError, match="no examples of class 7"):
        select_classes(no_sevens, [1, 7])


def test_split_validation_is_disjoint_complete_and_seeded():
    ds = indexed_dataset(300)
    train, val = split_validation(ds, 50, np.random.default_rng(7))
    assert (len(train), len(val)) == (250, 50)
    train_ids, val_ids = example_ids(train), example_ids(val)
    assert not set(train_ids) & set(val_ids)
    assert sorted([*train_ids, *val_ids]) == list(range(300))
    np.testing.assert_array_equal(train.labels, ds.labels[train_ids])  # pairs stay together
    again_train, again_val = split_validation(ds, 50, np.random.default_rng(7))
    np.testing.assert_array_equal(example_ids(again_val), val_ids)
    np.testing.assert_array_equal(example_ids(again_train), train_ids)
    _, other_val = split_validation(ds, 50, np.random.default_rng(8))
    assert set(example_ids(other_val)) != set(val_ids)
    assert val_ids.tolist() != list(range(50))  # shuffled, not the first 50


def test_split_validation_zero_gives_an_empty_validation_set():
    ds = indexed_dataset(30)
    train, val = split_validation(ds, 0, np.random.default_rng(0))
    assert len(train) == 30 and len(val) == 0
    assert val.images.shape == (0, 28, 28) and val.labels.dtype == np.uint8


@pytest.mark.parametrize(
    ("val_size", "message"),
    [(30, r"leaves no training example out of 30; use at most 29"), (-1, "0 or more")],
)
def test_split_validation_rejects_bad_sizes(val_size, message):
    with pytest.raises(DataError, match=message):
        split_validation(indexed_dataset(30), val_size, np.random.default_rng(0))


def test_limit_dataset_takes_a_seeded_random_subset():
    ds = indexed_dataset(200)
    limited = limit_dataset(ds, 40, np.random.default_rng(1))
    ids = example_ids(limited)
    assert len(limited) == 40 and len(set(ids)) == 40
    np.testing.assert_array_equal(limited.labels, ds.labels[ids])
    assert ids.tolist() != list(range(40))
    again = limit_dataset(ds, 40, np.random.default_rng(1))
    np.testing.assert_array_equal(example_ids(again), ids)
    assert limit_dataset(ds, None, np.random.default_rng(1)) is ds
    assert limit_dataset(ds, 500, np.random.default_rng(1)) is ds


def test_limit_dataset_rejects_zero():
    with pytest.raises(DataError, match="at least 1, got 0"):
        limit_dataset(indexed_dataset(10), 0, np.random.default_rng(0))


def test_dataset_needs_as_many_labels_as_images():
    with pytest.raises(ValueError, match="3 images and 2 labels"):
        Dataset(np.zeros((3, 28, 28), np.uint8), np.zeros(2, np.uint8))


# --------------------------------------------------------------------------- statistics


def test_pixel_statistics_match_float64_numpy():
    images = np.random.default_rng(0).integers(0, 256, (50, 28, 28), dtype=np.uint8)
    expected = images.astype(np.float64) / 255.0
    mean, std = pixel_statistics(images)
    assert mean == pytest.approx(expected.mean(), rel=1e-12)
    assert std == pytest.approx(expected.std(), rel=1e-12)
    float_mean, float_std = pixel_statistics(images.astype(np.float32))
    assert (float_mean, float_std) == pytest.approx((mean, std), rel=1e-9)


def test_pixel_statistics_half_ink_is_one_half():
    images = np.zeros((2, 28, 28), dtype=np.uint8)
    images[:, :14] = 255
    assert pixel_statistics(images) == pytest.approx((0.5, 0.5))


@pytest.mark.parametrize(
    ("images", "message"),
    [
        (np.zeros((0, 28, 28), np.uint8), "empty"),
        (np.full((3, 28, 28), 9, np.uint8), "standard deviation is 0"),
    ],
    ids=["empty", "constant"],
)
def test_pixel_statistics_rejects_degenerate_input(images, message):
    with pytest.raises(DataError, match=message):
        pixel_statistics(images)


# ---------------------------------------------------------------------------------- CLI


def test_cli_data_info_prints_counts_per_split_and_class(tiny_mnist_dir, capsys):
    assert main(["data", "info", "--data-dir", str(tiny_mnist_dir)]) == 0
    out = capsys.readouterr().out
    mnist = load_mnist(tiny_mnist_dir)
    train_row = next(line for line in out.splitlines() if line.startswith("train "))
    assert train_row.split() == [
        "train",
        str(len(mnist.train)),
        *(str(n) for n in mnist.train.class_counts().values()),
    ]
    for name, entry in mnist.fingerprint.items():
        assert f"{entry['sha256']}" in out and name in out


def test_cli_data_info_json(tiny_mnist_dir, capsys):
    assert main(["data", "info", "--data-dir", str(tiny_mnist_dir), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    mnist = load_mnist(tiny_mnist_dir)
    assert summary["splits"]["test"]["count"] == len(mnist.test)
    assert summary["splits"]["train"]["per_class"] == {
        str(digit): n for digit, n in mnist.train.class_counts().items()
    }
    assert summary["fingerprint"] == mnist.fingerprint
    expected_mean, expected_std = pixel_statistics(mnist.train.images)
    assert summary["train_pixel_mean"] == pytest.approx(expected_mean)
    assert summary["train_pixel_std"] == pytest.approx(expected_std)


def test_cli_data_info_bad_directory_exits_2_with_message(tmp_path, capsys):
    assert main(["data", "info", "--data-dir", str(tmp_path / "absent")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("convserve: error: MNIST directory")
    assert "absent does not exist" in err


def test_cli_data_info_corrupt_file_no_traceback(mnist_copy):
    path = mnist_copy / "train-images-idx3-ubyte.gz"
    path.write_bytes(b"not gzip, not idx")
    result = subprocess.run(
        [sys.executable, "-m", "convserve", "data", "info", "--data-dir", str(mnist_copy)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("convserve: error: ")
    assert "train-images-idx3-ubyte.gz: not an MNIST IDX file" in result.stderr
    assert "Traceback" not in result.stderr
