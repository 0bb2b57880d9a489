"""Fixtures of the docs tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.mnist import find_mnist_dir, synthetic_digits, write_idx

# Enough synthetic images for the docs' short trainings (model_store/README.md holds out 1,000
# of 6,000 for validation); the 500 of the suite's tiny MNIST are fewer than they ask for.
DOC_MNIST_SIZES = {"train": 6000, "t10k": 1000}


@pytest.fixture(scope="session")
def doc_mnist_dir(tmp_path_factory) -> Path:
    """Real MNIST when this machine has it, else synthetic digits in the four IDX files, as
    many as the docs' training examples take (their figures are then not compared)."""
    real = find_mnist_dir()
    if real is not None:
        return real
    directory = tmp_path_factory.mktemp("doc_mnist")
    for seed, (prefix, count) in enumerate(DOC_MNIST_SIZES.items()):
        images, labels = synthetic_digits(count, seed=seed)
        write_idx(directory / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(directory / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return directory
