"""Fixtures for the service tests, after the Flask tutorial: ``app`` builds a fresh app on a
temporary store holding tiny bundles, ``client`` is its test client."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.apps import MODEL, build_app
from tests.support.bundles import make_bundle
from training.store import ModelStore


@pytest.fixture(scope="session")
def bundle_files(tmp_path_factory) -> dict[str, Path]:
    """Tiny bundles made once per session: distinct weights (seeds), rising accuracies so the
    store's promotion gate lets each replace the previous one."""
    directory = tmp_path_factory.mktemp("bundles")
    return {
        "v1": make_bundle(directory / "v1.npz", seed=1, test_accuracy=0.5),
        "v2": make_bundle(directory / "v2.npz", seed=2, test_accuracy=0.6),
        "v3": make_bundle(directory / "v3.npz", seed=3, test_accuracy=0.7),
        "zero_one": make_bundle(
            directory / "zero_one.npz", seed=4, test_accuracy=0.9, classes=[0, 1]
        ),
    }


@pytest.fixture
def store_root(tmp_path, bundle_files) -> Path:
    """A store with mnist:1 (alias production) and mnist:2 (no alias)."""
    root = tmp_path / "store"
    store = ModelStore(root)
    store.publish(bundle_files["v1"], MODEL, alias="production")
    store.publish(bundle_files["v2"], MODEL)
    return root


@pytest.fixture
def app(store_root):
    """A fresh app on ``store_root`` with the test settings; its poller is stopped after."""
    app = build_app(store_root)
    yield app
    app.extensions["convserve"].predictor.stop()


@pytest.fixture
def client(app):
    """The Flask test client of ``app``."""
    return app.test_client()
