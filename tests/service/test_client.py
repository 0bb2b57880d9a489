"""The Python client (service/client.py) and ``convserve predict`` (service/client_cli.py).

Against a stub Flask app served on 127.0.0.1 (it answers from what it received, so the tests
can check what the client sent), and at the end against the real app when it is importable.
"""

import io
import json
import re
import socket
import threading

import numpy as np
import pytest
from flask import Flask, jsonify, request
from PIL import Image
from werkzeug.serving import make_server

from convserve.cli import main
from service import client as client_module
from service.client import Client, ClientError, describe_prediction
from tests.support.http_io import png_bytes
from tests.support.mnist import synthetic_digit
from tests.support.servers import free_port
from training.errors import ConvserveError


def label_from_name(filename: str) -> int:
    """The stub's "model": the first digit in an uploaded file's name."""
    match = re.search(r"\d", filename)
    return int(match.group()) if match else 0


def prediction(label: int, filename: str = "") -> dict:
    """A confident answer; a file named "letter..." is flagged not a digit, one named
    "old..." comes from a version without a detector (null flag and score)."""
    probabilities = [0.01] * 10
    probabilities[label] = 0.91
    flagged, score = False, 0.42
    if filename.startswith("letter"):
        flagged, score = True, 3.2
    elif filename.startswith("old"):
        flagged = score = None
    return {
        "label": label,
        "confidence": 0.91,
        "probabilities": probabilities,
        "not_a_digit": flagged,
        "ood_score": score,
    }


def error(status: int, code: str, message: str):
    return jsonify({"error": {"code": code, "message": message}}), status


def make_stub_app(received: list, state: dict) -> Flask:
    app = Flask("convserve_stub")

    @app.get("/healthz")
    def healthz():
        return jsonify({"status": "ok"})

    @app.get("/readyz")
    def readyz():
        if not state["ready"]:
            return error(503, "not_ready", "no model loaded yet")
        return jsonify({"status": "ready"})

    @app.get("/models")
    def models():
        return jsonify({"models": [{"name": "mnist", "versions": [1, 2]}]})

    @app.post("/predict")
    def predict():
        record = {"mimetype": request.mimetype, "args": request.args.to_dict()}
        received.append(record)
        version = int(request.args.get("version", 1))
        if request.args.get("alias") == "staging":
            version = 2
        if request.args.get("alias") == "broken-proxy":
            return "<html><body>502 Bad Gateway</body></html>", 502
        if version == 99:
            return error(404, "not_found", "no version 99 of 'mnist'")
        if request.mimetype == "multipart/form-data":
            uploads = list(request.files.items(multi=True))
            record["files"] = [(field, upload.filename, upload.read()) for field, upload in uploads]
            names = [upload.filename for _, upload in uploads]
            if any("bad" in name for name in names):
                return error(400, "invalid_input", "cannot decode the image: not a PNG")
            labels = [label_from_name(name) for name in names]
        elif request.mimetype == "application/x-npy":
            pixels = np.load(io.BytesIO(request.get_data()), allow_pickle=False)
            record["array"] = pixels
            labels = [int(image.flat[0]) % 10 for image in pixels.reshape(-1, 28, 28)]
        elif request.mimetype == "application/json":
            record["json"] = payload = request.get_json()
            images = [payload["image"]] if "image" in payload else payload["images"]
            labels = [int(np.ravel(image)[0]) % 10 for image in images]
        else:
            return error(415, "unsupported_media_type", f"{request.mimetype} is not supported")
        names = record.get("files") and [name for _, name, _ in record["files"]]
        answers = [
            prediction(label, (names or [""] * len(labels))[i]) for i, label in enumerate(labels)
        ]
        return jsonify({"model": {"name": "mnist", "version": version}, "predictions": answers})

    return app


class ServerThread:
    """A WSGI app served by werkzeug on 127.0.0.1 and a free port, in a daemon thread."""

    def __init__(self, app):
        self.server = make_server("127.0.0.1", 0, app, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        # A short poll interval: shutdown() waits for the serving loop's next poll.
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


@pytest.fixture
def stub():
    received: list = []
    state = {"ready": True}
    server = ServerThread(make_stub_app(received, state))
    server.received, server.state = received, state
    yield server
    server.stop()


@pytest.fixture
def refused_url():
    """A URL on 127.0.0.1 where nothing listens."""
    return f"http://127.0.0.1:{free_port()}"


def write_png(path, seed: int = 0):
    """A synthetic digit, dark ink on white paper, as a 40x40 PNG file at ``path``."""
    path.write_bytes(png_bytes(synthetic_digit(seed), invert=True, size=40))
    return path


def write_npy(path, array):
    np.save(path, array, allow_pickle=False)
    return path


# --------------------------------------------------------------------------------------------
# Client
# --------------------------------------------------------------------------------------------


def test_probes_and_models(stub):
    client = Client(stub.url, timeout=5)
    assert client.health() is True
    assert client.ready() is True
    stub.state["ready"] = False
    assert client.ready() is False
    assert client.health() is True
    assert client.models()["models"][0]["name"] == "mnist"


def test_probes_are_false_when_nothing_listens(refused_url):
    client = Client(refused_url, timeout=5)
    assert client.health() is False
    assert client.ready() is False


def test_predict_files_keeps_the_order_across_images_and_npy(stub, tmp_path):
    three = write_png(tmp_path / "three3.png")
    seven = write_png(tmp_path / "seven7.png", seed=1)
    batch = np.zeros((2, 28, 28), dtype=np.uint8)
    batch[0, 0, 0], batch[1, 0, 0] = 4, 5
    npy = write_npy(tmp_path / "batch.npy", batch)
    answer = Client(stub.url).predict_files([three, npy, seven])
    predictions = answer["predictions"]
    assert [p["label"] for p in predictions] == [3, 4, 5, 7]
    assert [p["file"] for p in predictions] == [str(three), str(npy), str(npy), str(seven)]
    assert [p.get("index") for p in predictions] == [None, 0, 1, None]
    assert answer["model"] == {"name": "mnist", "version": 1}
    # Images as multipart file parts (with their names and bytes), the .npy as its own body.
    assert [r["mimetype"] for r in stub.received] == [
        "multipart/form-data",
        "application/x-npy",
        "multipart/form-data",
    ]
    field, filename, data = stub.received[0]["files"][0]
    assert (field, filename, data) == ("files", "three3.png", three.read_bytes())
    np.testing.assert_array_equal(stub.received[1]["array"], batch)


def test_predict_files_sends_several_images_per_request_within_the_limits(
    stub, tmp_path, monkeypatch
):
    monkeypatch.setattr(client_module, "FILES_PER_REQUEST", 2)
    paths = [write_png(tmp_path / f"digit{n}.png", seed=n) for n in range(5)]
    answer = Client(stub.url).predict_files(paths)
    assert [p["label"] for p in answer["predictions"]] == [0, 1, 2, 3, 4]
    assert [len(r["files"]) for r in stub.received] == [2, 2, 1]


def test_predict_files_splits_requests_by_size(stub, tmp_path, monkeypatch):
    paths = [write_png(tmp_path / f"digit{n}.png", seed=n) for n in range(3)]
    monkeypatch.setattr(client_module, "BYTES_PER_REQUEST", paths[0].stat().st_size + 1)
    Client(stub.url).predict_files(paths)
    assert [len(r["files"]) for r in stub.received] == [1, 1, 1]


@pytest.mark.parametrize(
    ("pin", "expected_args", "expected_version"),
    [
        ({}, {}, 1),
        ({"version": 2}, {"version": "2"}, 2),
        ({"alias": "staging"}, {"alias": "staging"}, 2),
    ],
)
def test_version_and_alias_go_in_the_query(stub, tmp_path, pin, expected_args, expected_version):
    client = Client(stub.url)
    answer = client.predict_files([write_png(tmp_path / "one1.png")], **pin)
    assert answer["model"]["version"] == expected_version
    client.predict_pixels(np.zeros((28, 28)), **pin)
    client.predict_npy(np.zeros((28, 28)), **pin)
    assert [r["args"] for r in stub.received] == [expected_args] * 3


def test_version_and_alias_together_are_refused(stub, tmp_path):
    with pytest.raises(ValueError, match="not both"):
        Client(stub.url).predict_files([write_png(tmp_path / "a.png")], version=1, alias="x")
    assert stub.received == []


@pytest.mark.parametrize(
    ("pixels", "key"),
    [
        (np.full((28, 28), 7, dtype=np.uint8), "image"),
        (np.full(784, 7.0), "image"),
        (np.full((3, 28, 28), 7, dtype=np.float16), "images"),
        (np.full((2, 784), 7, dtype=np.int64), "images"),
    ],
)
def test_predict_pixels_sends_json(stub, pixels, key):
    answer = Client(stub.url).predict_pixels(pixels)
    (record,) = stub.received
    assert record["mimetype"] == "application/json"
    assert list(record["json"]) == [key]
    expected = pixels.astype(np.float64)
    sent = np.asarray(record["json"][key], dtype=np.float64)
    np.testing.assert_array_equal(sent, expected)
    assert all(p["label"] == 7 for p in answer["predictions"])


@pytest.mark.parametrize(
    ("pixels", "message"),
    [
        (np.zeros((27, 28)), r"shaped \(28, 28\)"),
        (np.zeros((2, 2, 28, 28)), r"shaped \(28, 28\)"),
        (np.full((28, 28), np.nan), "NaN"),
        (np.array([["a"] * 28] * 28), "dtype"),
    ],
)
def test_predict_pixels_checks_the_array_first(stub, pixels, message):
    with pytest.raises(ValueError, match=message):
        Client(stub.url).predict_pixels(pixels)
    assert stub.received == []


def test_predict_npy_sends_the_array(stub):
    pixels = np.arange(2 * 784, dtype=np.float32).reshape(2, 28, 28) % 256
    Client(stub.url).predict_npy(pixels)
    (record,) = stub.received
    assert record["mimetype"] == "application/x-npy"
    np.testing.assert_array_equal(record["array"], pixels)


def test_error_answers_carry_status_code_and_message(stub, tmp_path):
    client = Client(stub.url)
    with pytest.raises(ClientError) as caught:
        client.predict_files([write_png(tmp_path / "bad.png")])
    assert isinstance(caught.value, ConvserveError)
    assert (caught.value.status, caught.value.code) == (400, "invalid_input")
    assert "cannot decode the image: not a PNG" in str(caught.value)
    with pytest.raises(ClientError, match="404 not_found: no version 99") as caught:
        client.predict_pixels(np.zeros((28, 28)), version=99)
    assert caught.value.status == 404


def test_an_error_answer_that_is_not_json(stub):
    with pytest.raises(ClientError, match="502: <html><body>502 Bad Gateway") as caught:
        Client(stub.url).predict_pixels(np.zeros((28, 28)), alias="broken-proxy")
    assert caught.value.status == 502 and caught.value.code is None


def test_connection_refused_names_the_url(refused_url):
    with pytest.raises(ClientError, match=re.escape(refused_url)) as caught:
        Client(refused_url).predict_pixels(np.zeros((28, 28)))
    assert "connection refused" in str(caught.value)
    assert caught.value.status is None


def test_a_silent_server_times_out():
    # A listening socket that never accepts: the connection is queued, no answer ever comes.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        with pytest.raises(ClientError, match="no answer from .* within 0.2 s"):
            Client(url, timeout=0.2).models()


def test_unreadable_files(stub, tmp_path):
    client = Client(stub.url)
    with pytest.raises(ClientError, match="cannot read .*missing.png"):
        client.predict_files([tmp_path / "missing.png"])
    (tmp_path / "junk.npy").write_bytes(b"not an array")
    with pytest.raises(ClientError, match="cannot read .*junk.npy as a .npy array"):
        client.predict_files([tmp_path / "junk.npy"])
    np.save(tmp_path / "objects.npy", np.array([{}, []], dtype=object), allow_pickle=True)
    with pytest.raises(ClientError, match="objects.npy"):
        client.predict_files([tmp_path / "objects.npy"])
    write_npy(tmp_path / "flat.npy", np.zeros(784))
    with pytest.raises(ClientError, match=r"flat.npy: expected an array shaped .* got \(784,\)"):
        client.predict_files([tmp_path / "flat.npy"])
    with pytest.raises(ClientError, match="no files"):
        client.predict_files([])
    assert stub.received == []


# --------------------------------------------------------------------------------------------
# convserve predict
# --------------------------------------------------------------------------------------------


def test_cli_prints_file_label_confidence(stub, tmp_path, capsys):
    three = write_png(tmp_path / "three3.png")
    batch = np.zeros((2, 28, 28), dtype=np.uint8)
    batch[1, 0, 0] = 8
    npy = write_npy(tmp_path / "b.npy", batch)
    assert main(["predict", str(three), str(npy), "--url", stub.url]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(maxsplit=1) for line in lines] == [
        [str(three), "label 3 (0.9100)"],
        [f"{npy}[0]", "label 0 (0.9100)"],
        [f"{npy}[1]", "label 8 (0.9100)"],
    ]


def test_cli_says_not_a_digit_instead_of_a_label(stub, tmp_path, capsys):
    letter = write_png(tmp_path / "letter7.png")
    old = write_png(tmp_path / "old5.png")
    assert main(["predict", str(letter), str(old), "--url", stub.url]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(maxsplit=1) for line in lines] == [
        [str(letter), "not a digit (ood 3.20) - best guess 7 (0.9100)"],
        [str(old), "label 5 (0.9100)"],  # no detector: a label, nothing made up
    ]
    assert main(["predict", str(letter), str(old), "--url", stub.url, "--json"]) == 0
    flagged, unavailable = json.loads(capsys.readouterr().out)["predictions"]
    assert (flagged["not_a_digit"], flagged["ood_score"]) == (True, 3.2)
    assert (unavailable["not_a_digit"], unavailable["ood_score"]) == (None, None)


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"not_a_digit": False, "ood_score": 0.4}, "label 7 (0.4100)"),
        ({"not_a_digit": None, "ood_score": None}, "label 7 (0.4100)"),
        ({}, "label 7 (0.4100)"),  # a service from before the detector
        ({"not_a_digit": True, "ood_score": 3.2}, "not a digit (ood 3.20) - best guess 7 (0.4100)"),
        ({"not_a_digit": True}, "not a digit - best guess 7 (0.4100)"),
    ],
)
def test_describe_prediction_shows_the_flag(fields, expected):
    assert describe_prediction({"label": 7, "confidence": 0.41, **fields}) == expected


def test_cli_json_prints_the_answer(stub, tmp_path, capsys):
    seven = write_png(tmp_path / "seven7.png")
    assert main(["predict", str(seven), "--url", stub.url, "--version", "2", "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["model"] == {"name": "mnist", "version": 2}
    assert answer["predictions"][0]["label"] == 7
    assert answer["predictions"][0]["file"] == str(seven)
    assert len(answer["predictions"][0]["probabilities"]) == 10


def test_cli_takes_the_url_from_the_environment(stub, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CONVSERVE_URL", stub.url)
    assert main(["predict", str(write_png(tmp_path / "two2.png")), "--alias", "staging"]) == 0
    assert capsys.readouterr().out.split()[1:3] == ["label", "2"]
    assert stub.received[0]["args"] == {"alias": "staging"}


def test_cli_errors_exit_2_with_a_message(stub, tmp_path, capsys, refused_url):
    assert main(["predict", str(tmp_path / "nope.png"), "--url", stub.url]) == 2
    assert capsys.readouterr().err.startswith("convserve: error: cannot read")
    bad = write_png(tmp_path / "bad.png")
    assert main(["predict", str(bad), "--url", stub.url]) == 2
    err = capsys.readouterr().err
    assert err.startswith("convserve: error: the service answered 400 invalid_input")
    assert main(["predict", str(bad), "--url", refused_url]) == 2
    assert refused_url in capsys.readouterr().err


@pytest.mark.parametrize(
    "arguments",
    [
        ["--version", "1", "--alias", "production"],
        ["--version", "0"],
        ["--version", "two"],
        [],
    ],
)
def test_cli_usage_errors(tmp_path, capsys, arguments):
    files = [] if not arguments else [str(tmp_path / "x.png")]
    with pytest.raises(SystemExit) as caught:
        main(["predict", *files, *arguments])
    assert caught.value.code == 2
    assert "usage: convserve predict" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# Against the real service
# --------------------------------------------------------------------------------------------


@pytest.fixture
def real_service(tmp_path):
    app_module = pytest.importorskip("service.app")
    from tests.support.bundles import make_bundle
    from training.store import ModelStore

    store = ModelStore(tmp_path / "store")
    store.publish(make_bundle(tmp_path / "one.npz", seed=1, test_accuracy=0.5), "mnist")
    store.publish(
        make_bundle(tmp_path / "two.npz", seed=2, test_accuracy=0.6), "mnist", alias="production"
    )
    app = app_module.create_app(
        {"MODEL_STORE": str(store.root), "RELOAD_INTERVAL_S": 0, "LOG_LEVEL": "error"}
    )
    server = ServerThread(app)
    yield server
    server.stop()
    app.extensions["convserve"].predictor.stop()


def test_against_the_real_service(real_service, tmp_path, mnist_images, capsys):
    client = Client(real_service.url)
    assert client.health() and client.ready()
    assert "mnist" in json.dumps(client.models())
    digits = mnist_images[0][:3]
    png = tmp_path / "digit.png"
    Image.fromarray(255 - digits[0]).resize((140, 140)).save(png)
    npy = write_npy(tmp_path / "digits.npy", digits[1:])
    answer = client.predict_files([png, npy])
    assert answer["model"] == {"name": "mnist", "version": 2}
    assert [p["file"] for p in answer["predictions"]] == [str(png), str(npy), str(npy)]
    for p in answer["predictions"]:
        assert p["label"] in range(10)
        assert p["not_a_digit"] is None and p["ood_score"] is None  # no detector in these
        assert len(p["probabilities"]) == 10
        assert p["confidence"] == pytest.approx(max(p["probabilities"]))
    pinned = client.predict_pixels(digits, version=1)
    assert pinned["model"]["version"] == 1 and len(pinned["predictions"]) == 3
    assert client.predict_npy(digits[0])["predictions"][0]["label"] in range(10)
    with pytest.raises(ClientError) as caught:
        client.predict_pixels(np.full((28, 28), 255), alias="no-such-alias")
    assert caught.value.status == 404
    (tmp_path / "junk.png").write_bytes(b"not an image")
    with pytest.raises(ClientError, match="cannot decode the image") as caught:
        client.predict_files([tmp_path / "junk.png"])
    assert (caught.value.status, caught.value.code) == (400, "invalid_input")
    assert main(["predict", str(png), "--url", real_service.url]) == 0
    line = capsys.readouterr().out
    assert line.startswith(str(png)) and line.split()[1] == "label"
