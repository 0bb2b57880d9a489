"""Fixtures for the whole suite: MNIST (real when it is on this machine, tiny generated IDX
files otherwise) and a tiny bundle. The helpers behind them are in tests/support/."""

from pathlib import Path

import numpy as np
import pytest

from tests.support.bundles import make_bundle
from tests.support.mnist import find_mnist_dir, mnist_test_digits, write_tiny_mnist


@pytest.fixture(scope="session")
def tiny_mnist_dir(tmp_path_factory) -> Path:
    """A directory with the four MNIST .gz files, tiny but valid: 500 train and 200 test
    synthetic digits (every digit 0-9 present in both). Shared by the session: do not modify."""
    return write_tiny_mnist(tmp_path_factory.mktemp("tiny_mnist"))


@pytest.fixture(scope="session")
def mnist_dir(tiny_mnist_dir) -> Path:
    """The real MNIST directory (find_mnist_dir()) when present, else ``tiny_mnist_dir``."""
    return find_mnist_dir() or tiny_mnist_dir


@pytest.fixture(scope="session")
def mnist_images() -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (64, 28, 28), labels uint8 (64,)) from the MNIST test set, or synthetic
    digits in MNIST's form."""
    return mnist_test_digits(64)


@pytest.fixture
def bundle_path(tmp_path) -> Path:
    """An untrained SimpleConvNet bundle with test_accuracy 0.5 recorded."""
    return make_bundle(tmp_path / "model.npz", test_accuracy=0.5)
