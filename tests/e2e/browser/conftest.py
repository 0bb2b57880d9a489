"""Fixtures of the browser tests: the web page and the models view in a real browser
(Debian's headless Chromium through Playwright) against a real gunicorn serving a temporary
copy of a store.

The store is a copy of the repository's model_store/ (or of $CONVSERVE_TEST_STORE) when it holds
the trained ``mnist`` (then "the right label" is asserted), else a temporary store of untrained
bundles (then only "the page shows what the API answers" is). Either way a second version is
published to the copy, so the version selector has something to switch to.

The "not a digit" answer needs a version with a detector: a second server serves a tiny
network trained in the session on the tiny MNIST fixture (the recipe fits its temperature and
detector), and is shown letters and shapes drawn in MNIST's form (training/nondigits.py).

Screenshots of each view (desktop and a 360-px phone) are written to the test's temporary
directory; the path is printed (``pytest -s``) so a person can look at them.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.e2e.browser.pages import (
    CHROMIUM,
    CHROMIUM_ARGS,
    DESKTOP,
    MAX_CONTENT_LENGTH,
    PHONE,
    WAIT_MS,
    predict_via_api,
)
from tests.support import REPO
from tests.support.bundles import make_bundle
from tests.support.http_io import png_bytes
from tests.support.servers import GunicornServer
from training.store import ModelStore

# ---------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="package")
def browser():
    if not CHROMIUM.exists():
        pytest.skip(f"browser tests need Debian's chromium at {CHROMIUM} (make browser)")
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="browser tests need the playwright Python package"
    )
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(scope="package")
def served_store(tmp_path_factory):
    """(store root, trained?): a copy of model_store/ holding the trained mnist, or a store of
    untrained bundles; either way with one more version published for the selector."""
    root = tmp_path_factory.mktemp("browser-store") / "store"
    bundles = tmp_path_factory.mktemp("browser-bundles")
    # CONVSERVE_TEST_STORE: another store to copy (e.g. a freshly trained one), else the repo's.
    repo_store = Path(os.environ.get("CONVSERVE_TEST_STORE") or REPO / "model_store")
    trained = (repo_store / "mnist").is_dir() and bool(ModelStore(repo_store).versions("mnist"))
    store = ModelStore(root)
    if trained:
        shutil.copytree(repo_store, root)
        # The repository serves mnist:2 (calibrated, with the not-a-digit detector); these
        # page tests want mnist:1, the same weights without a detector (the detector cases
        # have their own server below).
        if store.aliases("mnist").get("production") != 1:
            store.promote("mnist", 1, "production")
    else:
        first = untrained_bundle_with_history(bundles / "first.npz")
        store.publish(first, "mnist", alias="production")
    store.publish(make_bundle(bundles / "extra.npz", seed=7), "mnist", note="browser test")
    return root, trained


def untrained_bundle_with_history(path: Path) -> Path:
    """Random weights, but a made-up history and confusion matrix for the models view."""
    from training.bundle import build_metadata, input_contract, save_bundle
    from training.network import Network, preset

    network = Network(preset("simpleconvnet", num_classes=10), rng=np.random.default_rng(0))
    history = [
        {
            "epoch": epoch,
            "train_loss": 2.0 / epoch,
            "train_accuracy": 1 - 0.2 / epoch,
            "val_loss": 2.2 / epoch,
            "val_accuracy": 1 - 0.25 / epoch,
        }
        for epoch in range(1, 7)
    ]
    matrix = (np.eye(10, dtype=int) * 95 + np.roll(np.eye(10, dtype=int), 1, axis=1) * 5).tolist()
    metadata = build_metadata(
        network,
        contract=input_contract(0.1307, 0.3081),
        class_labels=list(range(10)),
        metrics={"test_accuracy": 0.95, "confusion_matrix": matrix},
        training={"preset": "simpleconvnet", "epochs": 6},
        history=history,
    )
    return save_bundle(path, network, metadata)


@pytest.fixture(scope="package")
def server(served_store, tmp_path_factory):
    """A real gunicorn (one worker) on a free loopback port: yields its base URL."""
    root, _ = served_store
    log = tmp_path_factory.mktemp("gunicorn") / "gunicorn.log"
    settings = {"MODEL_NAME": "mnist", "MODEL_ALIAS": "production", "LOG_LEVEL": "warning"}
    running = GunicornServer(
        root, log, WORKERS="1", MAX_CONTENT_LENGTH=str(MAX_CONTENT_LENGTH), **settings
    ).start()
    try:
        yield running.url
    finally:
        running.stop()


@pytest.fixture(scope="package")
def detector_server(browser, tiny_mnist_dir, tmp_path_factory):
    """A real gunicorn serving, as production, a version with a not-a-digit detector: a tiny
    mlp trained on the tiny MNIST (seconds; the recipe fits the temperature and the detector).
    Yields its base URL. Asks for ``browser`` first, so it trains nothing without chromium."""
    from training.data import load_mnist
    from training.recipe import save_trained_bundle, train_and_evaluate
    from training.trainer import TrainConfig

    directory = tmp_path_factory.mktemp("detector")
    config = TrainConfig(epochs=5, batch_size=20, shift=0)
    trained = train_and_evaluate(load_mnist(tiny_mnist_dir), "mlp", config, seed=7, val_size=100)
    store = ModelStore(directory / "store")
    bundle = save_trained_bundle(trained, directory / "detector.npz")
    store.publish(bundle, "mnist", alias="production", note="with a detector")
    assert "ood" in store.manifest("mnist", 1), "the recipe fitted no detector"
    running = GunicornServer(
        store.root, directory / "gunicorn.log", WORKERS="1", LOG_LEVEL="warning"
    ).start()
    try:
        yield running.url
    finally:
        running.stop()


@pytest.fixture(scope="package")
def flagged_nondigit(detector_server) -> tuple[bytes, dict]:
    """(PNG, the API's prediction) of the first built-in letter or shape (in MNIST's form)
    that the served detector flags: which ones a tiny network flags depends on its training,
    so the test picks one the API flags and then asks the page about it."""
    from training.nondigits import nondigit_set

    drawings = nondigit_set(font_limit=0)
    for image in [*drawings["letters"][:40], *drawings["shapes"]]:
        png = png_bytes(image)
        answer = predict_via_api(detector_server, png)
        assert answer.status_code == 200, answer.text
        prediction = answer.json()["predictions"][0]
        if prediction["not_a_digit"]:
            return png, prediction
    pytest.fail("the served detector flags none of the letters and shapes")


@pytest.fixture(scope="package")
def screenshots(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("screenshots")
    print(f"\nbrowser screenshots: {directory}")
    return directory


def page_in_new_context(browser, **context_options):
    """A page in a fresh browser context; fails the test if the page raised a JavaScript
    error while it was in use."""
    context = browser.new_context(**context_options)
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    yield page
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


@pytest.fixture
def desktop(browser, server):
    yield from page_in_new_context(browser, viewport=DESKTOP)


@pytest.fixture
def detector_desktop(browser, detector_server):
    yield from page_in_new_context(browser, viewport=DESKTOP)


@pytest.fixture
def phone(browser, server):
    yield from page_in_new_context(
        browser, viewport=PHONE, device_scale_factor=2, is_mobile=True, has_touch=True
    )


@pytest.fixture(scope="package")
def digit_png(mnist_images, tmp_path_factory) -> tuple[Path, int]:
    """The first MNIST test digit as a PNG file (white ink on black), and its label."""
    from PIL import Image

    images, labels = mnist_images
    path = tmp_path_factory.mktemp("digits") / "digit.png"
    Image.fromarray(images[0]).save(path)
    return path, int(labels[0])
