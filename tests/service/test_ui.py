"""The web page and the models view through Flask's test client: HTML, labels, static files,
the server-rendered models view and its SVG charts. The browser tests are in tests/e2e."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from service.app import create_app
from tests.support.bundles import make_bundle
from training.ood import CONFIDENCE_BOUNDS, OOD_SCORE_BOUNDS, histogram
from training.store import ModelStore

STATIC = Path(__file__).resolve().parents[2] / "service" / "static"


def history_bundle(path: Path, *, seed: int, epochs: int = 3, test_accuracy: float = 0.9):
    """An untrained bundle whose metadata carries a training history, per-class accuracy and
    a confusion matrix, as a trained one does."""
    from training.bundle import build_metadata, input_contract, save_bundle
    from training.network import Network, preset

    network = Network(preset("simpleconvnet", num_classes=10), rng=np.random.default_rng(seed))
    history = [
        {
            "epoch": epoch,
            "train_loss": 1.0 / epoch,
            "train_accuracy": 0.80 + 0.05 * epoch,
            "val_loss": 1.2 / epoch,
            "val_accuracy": 0.78 + 0.05 * epoch,
            "lr": 0.01,
            "seconds": 1.5,
        }
        for epoch in range(1, epochs + 1)
    ]
    matrix = np.diag(np.full(10, 90)).astype(int)
    matrix[3, 5] = 7  # one distinctive mistake: seven 3s read as 5
    metadata = build_metadata(
        network,
        contract=input_contract(0.1307, 0.3081),
        class_labels=list(range(10)),
        metrics={
            "test_accuracy": test_accuracy,
            "val_accuracy": test_accuracy - 0.01,
            "test_loss": 0.3,
            "per_class_accuracy": [0.9] * 10,
            "confusion_matrix": matrix.tolist(),
        },
        training={"preset": "simpleconvnet", "epochs": epochs, "batch_size": 64, "seed": seed},
        data_fingerprint={"train-images-idx3-ubyte.gz": {"sha256": "ab" * 32, "size": 9912422}},
        history=history,
    )
    return save_bundle(path, network, metadata)


@pytest.fixture
def store(tmp_path) -> ModelStore:
    """mnist:1 (production, with history) and mnist:2 (no history, a note with markup)."""
    store = ModelStore(tmp_path / "store")
    store.publish(history_bundle(tmp_path / "one.npz", seed=0), "mnist", alias="production")
    store.publish(
        make_bundle(tmp_path / "two.npz", seed=1, test_accuracy=0.5),
        "mnist",
        note="<script>alert(1)</script> & friends",
    )
    return store


@pytest.fixture
def app(store):
    return create_app(
        {"MODEL_STORE": str(store.root), "RELOAD_INTERVAL_S": 0, "LOG_LEVEL": "error"}
    )


@pytest.fixture
def client(app):
    return app.test_client()


def get(client, path: str):
    """GET and read the whole body, closing the response (static files are open files)."""
    with client.get(path) as response:
        response.get_data()
    return response


class Elements(HTMLParser):
    """Every start tag as (tag, attributes), and the text of the document."""

    def __init__(self, text: str):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)

    def all(self, tag: str) -> list[dict]:
        return [attrs for name, attrs in self.tags if name == tag]


# ---------------------------------------------------------------------------------- the page


def test_root_serves_the_page_with_pad_controls_and_labels(client):
    response = get(client, "/")
    assert response.status_code == 200
    assert response.mimetype == "text/html"
    page = Elements(response.get_data(as_text=True))
    assert [c["id"] for c in page.all("canvas")] == ["pad"]
    buttons = {b["id"]: b for b in page.all("button")}
    assert {"predict", "clear"} <= set(buttons)
    assert all(b.get("type") == "button" for b in buttons.values())
    labelled = {label["for"] for label in page.all("label")}
    controls = [*page.all("input"), *page.all("select")]
    assert {c["id"] for c in controls} == {"upload", "camera", "version"}
    assert all(c["id"] in labelled for c in controls), "every input needs a <label for=...>"
    uploads = [c for c in page.all("input") if c.get("type") == "file"]
    assert all(c.get("accept") == "image/*" for c in uploads)
    assert any("capture" in c for c in uploads), "one control opens the camera on phones"
    alerts = [attrs for _, attrs in page.tags if attrs.get("role") == "alert"]
    assert [a["id"] for a in alerts] == ["error"]
    viewport = [m for m in page.all("meta") if m.get("name") == "viewport"]
    assert viewport and "width=device-width" in viewport[0]["content"]


def test_page_loads_only_its_own_files(client):
    """No CDN: every script, stylesheet and icon is a relative URL this app serves."""
    page = Elements(get(client, "/").get_data(as_text=True))
    urls = [s["src"] for s in page.all("script")] + [link["href"] for link in page.all("link")]
    assert urls, "the page references its files"
    for url in urls:
        assert not re.match(r"^([a-z]+:)?//", url), url
        assert get(client, "/" + url).status_code == 200, url


def test_page_sets_a_same_origin_content_security_policy(client):
    response = get(client, "/")
    policy = response.headers["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "connect-src 'self'" in policy
    assert "img-src 'self' data:" in policy  # the 28x28 image arrives as a data: URL
    assert response.headers["X-Content-Type-Options"] == "nosniff"


@pytest.mark.parametrize(
    ("name", "types"),
    [
        ("app.js", {"text/javascript", "application/javascript"}),
        ("style.css", {"text/css"}),
        ("favicon.svg", {"image/svg+xml"}),
        ("index.html", {"text/html"}),
    ],
)
def test_static_files_have_sensible_content_types(client, name, types):
    response = get(client, f"/ui/static/{name}")
    assert response.status_code == 200
    assert response.mimetype in types
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.data == (STATIC / name).read_bytes()


@pytest.mark.parametrize("path", ["/ui/static/nothing.js", "/ui/static/../app.py"])
def test_missing_static_files_are_json_404s(client, path):
    response = get(client, path)
    assert response.status_code == 404
    assert response.is_json and response.json["error"]["code"]


def test_route_index_moved_to_api(client):
    response = get(client, "/api")
    assert response.status_code == 200
    paths = {route["path"] for route in response.json["routes"]}
    assert {"/predict", "/models", "/api"} <= paths


def test_script_calls_the_api_relative_to_the_page(client):
    """The page's requests stay on its origin and path (works behind a path prefix)."""
    script = get(client, "/ui/static/app.js").get_data(as_text=True)
    assert '"predict?"' in script and 'fetch("models"' in script
    assert "explain" in script
    assert "http://" not in script and "https://" not in script


# ---------------------------------------------------------------------------------- models view


def test_models_view_lists_every_version_with_aliases_and_accuracy(client):
    response = get(client, "/ui/models")
    assert response.status_code == 200 and response.mimetype == "text/html"
    text = response.get_data(as_text=True)
    page = Elements(text)
    assert {d["id"] for d in page.all("details") if "id" in d} >= {"mnist-v1", "mnist-v2"}
    rows = re.findall(r'<tr><th scope="row"><a href="#mnist-v(\d+)">', text)
    assert rows == ["2", "1"], "newest first"
    assert "90.00%" in text and "50.00%" in text  # test accuracies of v1 and v2
    assert '<span class="tag">production</span>' in text
    assert '<span class="tag served">served</span>' in text
    assert "Serving <strong>version 1</strong>" in text
    assert re.search(r'<time datetime="\d{4}-\d\d-\d\dT[^"]+">', text)
    assert "batch_size" in text and "train-images-idx3-ubyte.gz" in text


def test_models_view_escapes_manifest_text(client):
    text = get(client, "/ui/models").get_data(as_text=True)
    assert "<script>" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; friends" in text


def test_models_view_draws_curves_and_confusion_matrix_with_accessible_titles(client):
    text = get(client, "/ui/models").get_data(as_text=True)
    page = Elements(text)
    ids = [attrs["id"] for _, attrs in page.tags if "id" in attrs]
    assert len(ids) == len(set(ids)), "ids are unique"
    svgs = page.all("svg")
    assert {s["id"] for s in svgs} >= {"mnist-v1-acc", "mnist-v1-loss", "mnist-v1-cm"}
    for svg in svgs:
        assert svg["role"] == "img"
        for referenced in svg["aria-labelledby"].split():
            assert referenced in ids
    assert "Learning curve: accuracy per epoch, mnist version 1" in text
    assert "Confusion matrix on the test set, mnist version 1" in text
    assert "true 3, predicted 5: 7" in text
    # Version 2 has no history: said in words, not with empty charts.
    assert "This version records no training history and no confusion matrix." in text
    assert "mnist-v2-acc" not in text and "mnist-v2-cm" not in text


def test_models_view_shows_a_broken_version_without_failing(client, store):
    (store.root / "mnist" / "2" / "manifest.json").write_text("{not json")
    response = get(client, "/ui/models")
    assert response.status_code == 200
    text = response.get_data(as_text=True)
    assert "mnist:2: manifest.json is not valid JSON" in text
    assert 'id="mnist-v1-cm"' in text


def test_models_view_of_an_empty_store(tmp_path):
    (tmp_path / "empty").mkdir()
    app = create_app({"MODEL_STORE": str(tmp_path / "empty"), "RELOAD_INTERVAL_S": 0})
    response = get(app.test_client(), "/ui/models")
    assert response.status_code == 200
    assert "holds no model yet" in response.get_data(as_text=True)


def test_models_view_of_a_store_that_is_gone(tmp_path):
    app = create_app({"MODEL_STORE": str(tmp_path / "gone"), "RELOAD_INTERVAL_S": 0})
    page = get(app.test_client(), "/ui/models").get_data(as_text=True)
    assert "gone or unreadable" in page and "holds no model yet" not in page


def test_models_view_without_the_service_shows_the_store_and_serves_nothing(store):
    """The blueprint alone (no predictor): the store's versions, nothing marked served."""
    from flask import Flask

    from service.ui import ui_blueprint

    app = Flask("pages_only")
    app.config["MODEL_STORE"] = str(store.root)
    app.register_blueprint(ui_blueprint)
    text = get(app.test_client(), "/ui/models").get_data(as_text=True)
    assert re.findall(r'<tr><th scope="row"><a href="#mnist-v(\d+)">', text) == ["2", "1"]
    assert '<span class="tag">production</span>' in text
    assert "served" not in text and "Serving" not in text
    opened = [d["id"] for d in Elements(text).all("details") if "open" in d]
    assert opened == ["mnist-v2"], "the newest version starts open"


def svg_element(text: str, element_id: str) -> str:
    """The markup of the ``<svg id=element_id>`` element in a page."""
    found = re.search(rf'<svg [^>]*id="{re.escape(element_id)}".*?</svg>', text, re.DOTALL)
    assert found, f"no svg {element_id}"
    return found.group(0)


def test_models_view_draws_every_epoch_and_every_cell(client):
    text = get(client, "/ui/models").get_data(as_text=True)
    for chart in ("mnist-v1-acc", "mnist-v1-loss"):
        svg = svg_element(text, chart)
        assert svg.count('<circle class="dot-train"') == 3  # the history has three epochs
        assert svg.count('<circle class="dot-val"') == 3
        assert len(re.findall(r"<polyline ", svg)) == 2
    matrix = svg_element(text, "mnist-v1-cm")
    assert matrix.count('<rect class="cell"') == 100
    assert "<caption>Confusion matrix, mnist version 1: rows are the true class" in text
    table = re.search(r"<caption>Confusion matrix, mnist version 1.*?</table>", text, re.DOTALL)
    assert table and table.group(0).count("<tr>") == 11  # the header and ten classes


HOSTILE = "<img src=x onerror=alert(1)>"


def test_models_view_escapes_hostile_text_in_every_place_a_manifest_reaches(client, store):
    """Class labels reach the charts' texts and tooltips and the table; settings, data file
    names and the architecture reach the facts: none of them may become markup."""
    path = store.root / "mnist" / "1" / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["class_labels"] = [f"{HOSTILE}{index}" for index in range(10)]
    manifest["architecture"] = HOSTILE
    manifest["training"][HOSTILE] = {"nested": HOSTILE}
    manifest["data_fingerprint"] = {HOSTILE: {"sha256": HOSTILE, "size": 3}}
    path.write_text(json.dumps(manifest))
    text = get(client, "/ui/models").get_data(as_text=True)
    assert "<img" not in text
    escaped = "&lt;img src=x onerror=alert(1)&gt;"
    assert f"{escaped}3, predicted {escaped}5: 7" in svg_element(text, "mnist-v1-cm")
    assert f'<th scope="row">{escaped}9</th>' in text
    assert f"nested={escaped}" in text
    assert [attrs["id"] for attrs in Elements(text).all("svg")][:3] == [
        "mnist-v1-acc",
        "mnist-v1-loss",
        "mnist-v1-cm",
    ], "the charts are still drawn"


def test_manifest_history_reaches_the_json_api_too(client):
    """The models view and the API read the same manifest: history included."""
    manifest = get(client, "/models/mnist/versions/1").json["manifest"]
    assert [record["epoch"] for record in manifest["history"]] == [1, 2, 3]
    assert json.loads(json.dumps(manifest["metrics"]["confusion_matrix"]))[3][5] == 7


# ---------------------------------------------------------------------------------- trust


@pytest.fixture(scope="module")
def trusted_bundle(tiny_mnist_dir, tmp_path_factory) -> Path:
    """A tiny mlp trained on the tiny MNIST: the recipe gives it a temperature, a detector,
    the calibration and OOD figures and the validation distributions (seconds)."""
    from training.data import load_mnist
    from training.recipe import save_trained_bundle, train_and_evaluate
    from training.trainer import TrainConfig

    config = TrainConfig(epochs=5, batch_size=20, shift=0)
    trained = train_and_evaluate(load_mnist(tiny_mnist_dir), "mlp", config, seed=7, val_size=100)
    return save_trained_bundle(trained, tmp_path_factory.mktemp("trusted") / "trusted.npz")


@pytest.fixture
def trusted(trusted_bundle, tmp_path):
    """(app, store): mnist:1 old (no calibration, no detector), mnist:2 trusted and served."""
    store = ModelStore(tmp_path / "store")
    store.publish(make_bundle(tmp_path / "old.npz", seed=1), "mnist")
    store.publish(trusted_bundle, "mnist", alias="production")
    app = create_app({"MODEL_STORE": str(store.root), "RELOAD_INTERVAL_S": 0, "LOG_LEVEL": "error"})
    yield app, store
    app.extensions["convserve"].predictor.stop()


def section(text: str, element_id: str) -> str:
    """The markup of one version's details, up to the next version's (they do not nest)."""
    start = text.index(f'<details class="version" id="{element_id}"')
    ends = [text.find(mark, start + 1) for mark in ('<details class="version"', "</section>")]
    return text[start : min(end for end in ends if end > 0)]


def percent(value: float) -> str:
    return f"{100 * value:.2f}%"


def test_models_view_shows_calibration_and_detector_figures(trusted):
    app, store = trusted
    manifest = store.manifest("mnist", 2)
    calibration, figures = manifest["calibration"], manifest["metrics"]
    text = section(get(app.test_client(), "/ui/models").get_data(as_text=True), "mnist-v2")
    assert f"{percent(calibration['test_ece_before'])} before" in text
    assert f"<strong>{percent(calibration['test_ece_after'])}</strong> after" in text
    assert f"{calibration['temperature']:.3f}" in text
    diagram = svg_element(text, "mnist-v2-rel")
    assert "Reliability diagram on the test set, mnist version 2" in diagram
    for split in ("before", "after"):
        bins = [n for n in calibration[f"test_reliability_{split}"]["count"] if n]
        assert diagram.count(f'<circle class="dot-{split}"') == len(bins)
    assert f"<dd>{figures['ood_auroc']:.4g}</dd>" in text
    assert f"<dd>{percent(figures['ood_test_digits_flagged'])}</dd>" in text
    assert f"<dd>{percent(figures['ood_nondigits_flagged'])}</dd>" in text
    for kind, entry in manifest["ood"]["nondigits"].items():
        assert f'<th scope="row">{kind}</th><td class="number">{entry["images"]}</td>' in text


def test_an_old_version_says_not_recorded(trusted):
    app, _ = trusted
    text = section(get(app.test_client(), "/ui/models").get_data(as_text=True), "mnist-v1")
    assert "Calibration: not recorded" in text
    assert "Not-a-digit detector: not recorded" in text
    assert "<svg" not in text and "Live traffic" not in text  # not served either


def live_bar_tooltips(text: str, element_id: str) -> list[str]:
    return re.findall(
        r'<rect class="bar-live"[^>]*><title>([^<]*)</title>', svg_element(text, element_id)
    )


def test_served_version_live_distributions_follow_the_traffic(trusted):
    """The page draws what /predict answered: its histogram of confidences and OOD scores,
    next to the validation ones in the bundle; nothing live before the first prediction."""
    app, store = trusted
    client = app.test_client()
    validation = store.manifest("mnist", 2)["distributions"]
    before = section(get(client, "/ui/models").get_data(as_text=True), "mnist-v2")
    assert f"live 0; validation {validation['confidence']['total']}" in before
    assert live_bar_tooltips(before, "mnist-v2-live-conf") == []
    noise = np.random.default_rng(0).uniform(0, 255, (6, 28, 28)).round()
    answer = client.post("/predict", json={"images": noise.tolist()}).get_json()["predictions"]
    flagged = sum(p["not_a_digit"] for p in answer)
    after = section(get(client, "/ui/models").get_data(as_text=True), "mnist-v2")
    assert f"live 6; validation {validation['confidence']['total']}" in after
    assert f"Flagged not a digit</dt><dd>live {100 * flagged / 6:.1f}% ({flagged} of 6)" in after
    live = histogram(np.array([p["confidence"] for p in answer]), CONFIDENCE_BOUNDS)
    shown = live_bar_tooltips(after, "mnist-v2-live-conf")
    assert [re.search(r"\((\d+) of 6\)", tip).group(1) for tip in shown] == [
        str(count) for count in live["counts"]
    ]
    assert svg_element(after, "mnist-v2-live-ood").count('class="threshold"') == 1


def test_live_distributions_read_the_registry_per_version(trusted):
    app, _ = trusted
    client = app.test_client()
    metrics = app.extensions["convserve"].metrics
    assert metrics.live_distributions("mnist", 2) == {"confidence": None, "ood_score": None}
    images = np.random.default_rng(1).uniform(0, 255, (5, 28, 28)).round().tolist()
    served = client.post("/predict", json={"images": images}).get_json()["predictions"]
    old = client.post("/predict?version=1", json={"images": images[:2]}).get_json()
    live = metrics.live_distributions("mnist", 2)
    assert live["confidence"] == histogram([p["confidence"] for p in served], CONFIDENCE_BOUNDS)
    assert live["ood_score"] == histogram([p["ood_score"] for p in served], OOD_SCORE_BOUNDS)
    old_live = metrics.live_distributions("mnist", 1)
    assert old_live["confidence"]["total"] == len(old["predictions"]) == 2
    assert old_live["ood_score"] is None, "no detector: no OOD score recorded"
