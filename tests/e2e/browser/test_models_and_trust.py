"""The answers a user can trust, in a real browser: "not a digit" on the page, and the models
view with its curves, matrix, calibration and live traffic (fixtures: conftest.py)."""

from __future__ import annotations

import re

import numpy as np
import pytest
import requests

from tests.e2e.browser.pages import (
    PHONE,
    assert_no_horizontal_scroll,
    finished,
    newest_version,
    open_page,
    predict_via_api,
    wait_finished,
)
from tests.support.http_io import settled_metrics
from training.ood import OOD_SCORE_BOUNDS
from training.store import ModelStore

pytestmark = pytest.mark.browser


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
    settled_metrics(detector_server + "/metrics", "convserve_predictions_not_a_digit_total", 1)
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
