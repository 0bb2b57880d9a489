"""What the browser tests share besides fixtures: Chromium's settings and the ways a test
draws, waits and reads the page (plain functions; the fixtures are in conftest.py)."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import requests

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
