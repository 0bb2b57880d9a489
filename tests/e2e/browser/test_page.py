"""The drawing page in a real browser: drawing, uploading, the version selector, errors,
keyboard and phone (fixtures: conftest.py; helpers: pages.py)."""

from __future__ import annotations

import pytest
import requests

from tests.e2e.browser.pages import (
    MAX_CONTENT_LENGTH,
    ONE,
    PHONE,
    SEVEN,
    assert_no_horizontal_scroll,
    draw,
    draw_with_touch,
    finished,
    newest_version,
    open_page,
    pad_png,
    predict_via_api,
    shown_answer,
    wait_finished,
    without_addresses,
)
from tests.support.mnist import find_mnist_dir

pytestmark = pytest.mark.browser


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
