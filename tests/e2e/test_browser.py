"""The web page and the models view in a real browser (Debian's headless Chromium through
Playwright) against a real gunicorn serving a temporary copy of a store.

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

import base64
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import requests

from tests.support import REPO
from tests.support.bundles import make_bundle
from tests.support.http_io import png_bytes
from tests.support.mnist import find_mnist_dir
from tests.support.servers import GunicornServer
from training.ood import OOD_SCORE_BOUNDS
from training.store import ModelStore

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
MAX_CONTENT_LENGTH = 200_000  # small, so the too-large error is cheap to provoke
WAIT_MS = 15_000
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 360, "height": 740}


# ---------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
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


@pytest.fixture(scope="module")
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


@pytest.fixture(scope="module")
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


@pytest.fixture(scope="module")
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


@pytest.fixture(scope="module")
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


@pytest.fixture(scope="module")
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


@pytest.fixture(scope="module")
def digit_png(mnist_images, tmp_path_factory) -> tuple[Path, int]:
    """The first MNIST test digit as a PNG file (white ink on black), and its label."""
    from PIL import Image

    images, labels = mnist_images
    path = tmp_path_factory.mktemp("digits") / "digit.png"
    Image.fromarray(images[0]).save(path)
    return path, int(labels[0])


# ---------------------------------------------------------------------------------- helpers


def open_page(page, base: str) -> None:
    page.goto(base + "/")
    # The version list arrives from /models after the page loads.
    page.wait_for_selector('#version option[value^="version:"]', state="attached")


def finished(page) -> int:
    return int(page.evaluate("Number(document.getElementById('result').dataset.finished || 0)"))


def wait_finished(page, before: int) -> None:
    # A function, not an expression: the page's Content-Security-Policy forbids eval.
    page.wait_for_function(
        "before => Number(document.getElementById('result').dataset.finished || 0) > before",
        arg=before,
    )


def draw(page, strokes: list[list[tuple[float, float]]]) -> None:
    """Draw with the mouse; points are fractions of the pad's width and height."""
    box = page.locator("#pad").bounding_box()
    for stroke in strokes:
        points = [
            (box["x"] + fx * box["width"], box["y"] + fy * box["height"]) for fx, fy in stroke
        ]
        page.mouse.move(*points[0])
        page.mouse.down()
        for point in points[1:]:
            page.mouse.move(*point, steps=8)
        page.mouse.up()


def draw_with_touch(page, stroke: list[tuple[float, float]]) -> None:
    """One finger stroke through Chromium's touch input (touch -> pointer events), at a
    finger's pace: 60 moves a second and a rest before lifting. (Moves sent all at once make a
    fling, and Chromium then swallows the next tap as the one that stops the fling.)"""
    box = page.locator("#pad").bounding_box()
    session = page.context.new_cdp_session(page)
    points = [(box["x"] + fx * box["width"], box["y"] + fy * box["height"]) for fx, fy in stroke]
    kinds = ["touchStart"] + ["touchMove"] * (len(points) - 1)
    for kind, (x, y) in zip(kinds, points, strict=True):
        session.send("Input.dispatchTouchEvent", {"type": kind, "touchPoints": [{"x": x, "y": y}]})
        page.wait_for_timeout(16)
    page.wait_for_timeout(100)
    session.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})
    session.detach()


SEVEN = [[(0.25, 0.22), (0.75, 0.22), (0.42, 0.85)]]
ONE = [(0.5, 0.15 + 0.07 * step) for step in range(11)]


def predict_via_api(base: str, png: bytes, name: str = "image.png", **params) -> requests.Response:
    return requests.post(
        base + "/predict",
        params={"explain": "1", **params},
        files={"image": (name, png, "image/png")},
        timeout=10,
    )


def shown_answer(page) -> dict:
    return {
        "label": page.inner_text("#label"),
        "version": page.get_attribute("#answered-by", "data-version"),
        "bars": page.locator("#bars .bar-value").all_inner_texts(),
    }


def newest_version(page) -> int:
    """The highest version the page's selector offers."""
    values = page.locator("#version option").evaluate_all(
        "options => options.map(o => o.value).filter(v => v.startsWith('version:'))"
    )
    return max(int(value.split(":")[1]) for value in values)


def pad_png(page) -> bytes:
    url = page.evaluate("document.getElementById('pad').toDataURL('image/png')")
    assert url.startswith("data:image/png;base64,")
    return base64.b64decode(url.split(",", 1)[1])


def without_addresses(text: str) -> str:
    return re.sub(r"0x[0-9a-f]+", "0x...", text)


def assert_no_horizontal_scroll(page) -> None:
    width = page.evaluate("document.scrollingElement.scrollWidth")
    assert width <= PHONE["width"], f"the page scrolls sideways: {width} px wide"


# ---------------------------------------------------------------------------------- tests


def test_drawing_is_classified_as_the_api_classifies_the_same_png(
    desktop, server, served_store, screenshots
):
    open_page(desktop, server)
    draw(desktop, SEVEN)
    before = finished(desktop)
    desktop.click("#predict")
    wait_finished(desktop, before)
    assert desktop.inner_text("#error") == ""
    shown = shown_answer(desktop)

    answer = predict_via_api(server, pad_png(desktop))
    assert answer.status_code == 200, answer.text
    document = answer.json()
    prediction = document["predictions"][0]
    assert shown["label"] == str(prediction["label"])
    assert shown["version"] == str(document["model"]["version"]) == "1"
    assert shown["bars"] == [f"{100 * p:.1f}%" for p in prediction["probabilities"]]
    assert desktop.inner_text("#confidence") == f"{100 * prediction['confidence']:.1f}%"
    _, trained = served_store
    if trained:
        assert shown["label"] == "7"

    # The 28x28 image the model saw, shown larger with square pixels.
    seen = desktop.evaluate(
        "(() => { const img = document.getElementById('seen');"
        " return [img.naturalWidth, img.naturalHeight, img.getBoundingClientRect().width,"
        " getComputedStyle(img).imageRendering, img.src]; })()"
    )
    assert seen[:2] == [28, 28] and seen[2] >= 4 * 28
    assert seen[3] == "pixelated"
    assert seen[4] == prediction["input_png"]
    assert "Predicted" in desktop.inner_text("#status")
    desktop.screenshot(path=screenshots / "page-desktop.png", full_page=True)

    desktop.click("#clear")
    before = finished(desktop)
    desktop.click("#predict")
    assert "draw a digit first" in desktop.inner_text("#error")
    assert finished(desktop) == before, "an empty pad is not sent"


def test_uploaded_mnist_digit_gets_its_label(desktop, server, served_store, digit_png):
    path, true_label = digit_png
    open_page(desktop, server)
    before = finished(desktop)
    desktop.set_input_files("#upload", str(path))
    wait_finished(desktop, before)
    assert desktop.inner_text("#error") == ""
    document = predict_via_api(server, path.read_bytes()).json()
    assert desktop.inner_text("#label") == str(document["predictions"][0]["label"])
    _, trained = served_store
    if trained and find_mnist_dir() is not None:
        assert desktop.inner_text("#label") == str(true_label)


def test_version_selector_switches_the_answering_version(desktop, server, digit_png):
    path, _ = digit_png
    open_page(desktop, server)
    options = desktop.locator("#version option").all_inner_texts()
    assert options[0] == "Served: version 1 (production)"
    assert "Version 1 (served, production)" in options
    newest = newest_version(desktop)
    assert newest >= 2

    before = finished(desktop)
    desktop.set_input_files("#upload", str(path))
    wait_finished(desktop, before)
    assert desktop.get_attribute("#answered-by", "data-version") == "1"
    # Choosing a version asks again about the same image.
    for choice, expected in ((f"version:{newest}", newest), ("", 1), ("version:1", 1)):
        before = finished(desktop)
        desktop.select_option("#version", choice)
        wait_finished(desktop, before)
        assert desktop.get_attribute("#answered-by", "data-version") == str(expected)
        assert f"version {expected}" in desktop.inner_text("#answered-by")
    api = predict_via_api(server, path.read_bytes(), version=str(newest)).json()
    desktop.select_option("#version", f"version:{newest}")
    desktop.wait_for_function(
        "v => document.getElementById('answered-by').dataset.version === v", arg=str(newest)
    )
    shown = desktop.locator("#bars .bar-value").all_inner_texts()
    assert shown == [f"{100 * p:.1f}%" for p in api["predictions"][0]["probabilities"]]


def test_a_flagged_image_says_it_is_not_a_digit_and_still_shows_the_bars(
    detector_desktop, detector_server, flagged_nondigit, screenshots
):
    png, prediction = flagged_nondigit
    page = detector_desktop
    open_page(page, detector_server)
    before = finished(page)
    page.set_input_files(
        "#upload", files=[{"name": "letter.png", "mimeType": "image/png", "buffer": png}]
    )
    wait_finished(page, before)
    assert page.inner_text("#error") == ""
    message = page.locator("#not-digit")
    assert message.is_visible()
    assert "This doesn't look like a digit." in message.inner_text()
    assert not page.locator("#digit-verdict").is_visible(), "no confident label"
    assert not page.locator("#label").is_visible()
    assert page.inner_text("#best-guess") == str(prediction["label"])
    assert page.inner_text("#best-guess-confidence") == f"{100 * prediction['confidence']:.1f}%"
    assert page.inner_text("#ood-score") == f"{prediction['ood_score']:.2f}"
    shown = page.locator("#bars .bar-value").all_inner_texts()
    assert shown == [f"{100 * p:.1f}%" for p in prediction["probabilities"]]
    assert not page.locator("#ood-note").is_visible(), "this version has a detector"
    assert page.inner_text("#status").startswith("This doesn't look like a digit")
    assert page.get_attribute("#result", "data-verdict") == "not-a-digit"
    page.screenshot(path=screenshots / "page-not-a-digit.png", full_page=True)


def prometheus_value(base: str, name: str, labels: str) -> float:
    """One sample of GET /metrics (0 when absent), e.g. ``labels='model="mnist",version="1"'``."""
    text = requests.get(base + "/metrics", timeout=10).text
    found = re.search(rf"^{name}{{{labels}}} (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def test_models_view_shows_calibration_and_the_live_traffic_of_every_worker(
    detector_desktop, detector_server, flagged_nondigit, screenshots
):
    """Under gunicorn (prometheus multiprocess mode) the served version's live distributions
    on the models view are the ones /metrics exports: the flagged count is the counter's."""
    png, _ = flagged_nondigit
    assert predict_via_api(detector_server, png).json()["predictions"][0]["not_a_digit"]
    page = detector_desktop
    page.goto(detector_server + "/ui/models")
    for chart in ("mnist-v1-rel", "mnist-v1-live-conf", "mnist-v1-live-ood"):
        assert page.locator(f"#{chart}").is_visible(), chart
    facts = page.locator('dl[aria-label="Live traffic against validation"]').inner_text()
    flagged = re.search(r"Flagged not a digit\s+live [\d.]+% \((\d+) of (\d+)\)", facts)
    assert flagged, facts
    labels = 'model="mnist",version="1"'
    counter = prometheus_value(detector_server, "convserve_predictions_not_a_digit_total", labels)
    total = prometheus_value(detector_server, "convserve_prediction_confidence_count", labels)
    assert (int(flagged.group(1)), int(flagged.group(2))) == (counter, total)
    assert counter >= 1
    bars = page.locator("#mnist-v1-live-ood rect.bar-live > title")  # not the legend
    assert bars.count() == len(OOD_SCORE_BOUNDS) + 1
    page.screenshot(path=screenshots / "models-calibration-drift.png", full_page=True)


def test_without_a_detector_the_label_shows_and_nothing_about_ood(
    desktop, server, digit_png, screenshots
):
    """The version published by the test (untrained, no detector) answers null: the page
    shows its label as always and only a small note that it has no detector."""
    path, _ = digit_png
    open_page(desktop, server)
    newest = newest_version(desktop)
    desktop.select_option("#version", f"version:{newest}")  # nothing sent yet: no request
    before = finished(desktop)
    desktop.set_input_files("#upload", str(path))
    wait_finished(desktop, before)
    api = predict_via_api(server, path.read_bytes(), version=str(newest)).json()
    prediction = api["predictions"][0]
    assert prediction["not_a_digit"] is None and prediction["ood_score"] is None
    assert desktop.get_attribute("#answered-by", "data-version") == str(newest)
    assert desktop.locator("#label").is_visible()
    assert desktop.inner_text("#label") == str(prediction["label"])
    assert not desktop.locator("#not-digit").is_visible()
    assert "look like a digit" not in desktop.inner_text("#result")
    assert "no not-a-digit detector" in desktop.inner_text("#ood-note")
    assert desktop.get_attribute("#result", "data-verdict") == "digit"
    desktop.screenshot(path=screenshots / "page-no-detector.png", full_page=True)


def test_api_errors_appear_as_readable_alerts(desktop, server):
    open_page(desktop, server)
    text = b"these are notes, not a picture\n"
    before = finished(desktop)
    desktop.set_input_files(
        "#upload", files=[{"name": "notes.txt", "mimeType": "text/plain", "buffer": text}]
    )
    wait_finished(desktop, before)
    api = requests.post(
        server + "/predict", files={"image": ("notes.txt", text, "text/plain")}, timeout=10
    )
    assert api.status_code == 400
    alert = desktop.get_by_role("alert")
    assert alert.is_visible()
    message = alert.inner_text()
    assert message.startswith("The server could not classify that:")
    # The server's own words (object addresses in them vary between requests).
    assert without_addresses(api.json()["error"]["message"]) in without_addresses(message)

    before = finished(desktop)
    big = b"\x89PNG\r\n\x1a\n" + bytes(MAX_CONTENT_LENGTH)
    desktop.set_input_files(
        "#upload", files=[{"name": "huge.png", "mimeType": "image/png", "buffer": big}]
    )
    wait_finished(desktop, before)
    size_kb = round(len(big) / 1000)
    assert f"That file ({size_kb} kB) is too large" in desktop.get_by_role("alert").inner_text()

    # A good answer afterwards clears the alert.
    draw(desktop, SEVEN)
    before = finished(desktop)
    desktop.click("#predict")
    wait_finished(desktop, before)
    assert not desktop.get_by_role("alert").is_visible()


def test_controls_are_reachable_with_the_keyboard_and_show_focus(desktop, server):
    open_page(desktop, server)
    reached = []
    for _ in range(20):
        desktop.keyboard.press("Tab")
        focused = desktop.evaluate(
            "(() => { const el = document.activeElement;"
            " return [el.id || el.textContent.trim(), getComputedStyle(el).outlineStyle]; })()"
        )
        reached.append(focused[0])
        if focused[0] in ("predict", "clear", "version"):
            assert focused[1] != "none", f"no visible focus on {focused[0]}"
        if focused[0] == "version":
            break
    order = [name for name in reached if name in ("predict", "clear", "upload", "camera")]
    assert order == ["predict", "clear", "upload"], "no camera control with a mouse"
    assert reached[-1] == "version"
    # Enter on the focused Predict button works like a click (here: the empty-pad message).
    desktop.focus("#predict")
    desktop.keyboard.press("Enter")
    assert "draw a digit first" in desktop.inner_text("#error")


def test_phone_layout_touch_drawing_and_no_sideways_scrolling(phone, server, screenshots):
    open_page(phone, server)
    assert_no_horizontal_scroll(phone)
    assert phone.locator("#camera").is_visible(), "a phone offers its camera"
    draw_with_touch(phone, ONE)
    before = finished(phone)
    phone.tap("#predict")
    wait_finished(phone, before)
    assert phone.inner_text("#error") == ""
    document = predict_via_api(server, pad_png(phone)).json()
    assert phone.inner_text("#label") == str(document["predictions"][0]["label"])
    assert_no_horizontal_scroll(phone)
    pad_width = phone.locator("#pad").bounding_box()["width"]
    assert 200 <= pad_width <= PHONE["width"]
    phone.screenshot(path=screenshots / "page-phone.png", full_page=True)


def test_models_view_shows_versions_curves_and_matrix(
    desktop, phone, server, served_store, screenshots
):
    root, trained = served_store
    store = ModelStore(root)
    versions = store.versions("mnist")
    desktop.goto(server + "/ui/models")
    rows = desktop.locator("table.versions tbody th[scope=row]").all_inner_texts()
    assert rows == [str(v) for v in sorted(versions, reverse=True)]
    opened = desktop.locator("details.version[open]")
    assert opened.count() == 1 and opened.get_attribute("id") == "mnist-v1"
    titles = desktop.locator("#mnist-v1 svg > title").all_text_contents()
    assert "Confusion matrix on the test set, mnist version 1" in titles
    assert "Learning curve: accuracy per epoch, mnist version 1" in titles
    manifest = store.manifest("mnist", 1)
    epochs = len(manifest["history"])
    assert desktop.locator("#mnist-v1-acc circle.dot-train").count() == epochs
    assert desktop.locator("#mnist-v1-loss circle.dot-val").count() == epochs
    assert desktop.locator("#mnist-v1-cm rect.cell").count() == 100
    accuracy = manifest["metrics"]["test_accuracy"]
    assert f"{100 * accuracy:.2f}%" in desktop.inner_text("table.versions")
    box = desktop.locator("#mnist-v1-cm").bounding_box()
    assert box["width"] > 200, "the confusion matrix is drawn at a readable size"
    desktop.screenshot(path=screenshots / "models-desktop.png", full_page=True)

    phone.goto(server + "/ui/models")
    assert_no_horizontal_scroll(phone)
    phone.screenshot(path=screenshots / "models-phone.png", full_page=True)
    # The page links back to the drawing pad.
    phone.click("nav >> text=Draw")
    phone.wait_for_selector("#pad")
    assert np.isclose(phone.evaluate("window.innerWidth"), PHONE["width"])
