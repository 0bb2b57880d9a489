"""A Python client for the convserve service, on ``requests``.

    from service.client import Client
    client = Client("http://127.0.0.1:8000")
    client.predict_files(["seven.png", "batch.npy"])     # image files and .npy files
    client.predict_pixels(pixels)                         # (28, 28) or (N, 28, 28), 0-255
    client.ready()                                        # True once a model is served
    for prediction in answer["predictions"]:
        print(describe_prediction(prediction))   # "label 7 (0.9800)" or "not a digit (...)"

Each prediction carries ``label``, ``confidence`` (calibrated when the version has a
temperature), ``probabilities``, and whether the image looks like a digit at all:
``not_a_digit`` (bool) and ``ood_score`` (> 1: not a digit), both None when the answering
version has no detector (unavailable, not "a digit").

Every problem (the service is not running, a timeout, an error answer, an unreadable file)
raises ``ClientError`` with the HTTP status (if any), the service's error code and its message.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import orjson
import requests

from training.errors import ConvserveError

DEFAULT_URL = "http://127.0.0.1:8000"
NPY_SUFFIX = ".npy"
# Image files go up in multipart requests of at most this many files and bytes, below the
# service's default MAX_BATCH (256) and MAX_CONTENT_LENGTH (10 MiB).
FILES_PER_REQUEST = 64
BYTES_PER_REQUEST = 8 * 1024 * 1024


class ClientError(ConvserveError):
    """The service could not be reached or answered with an error.

    ``status`` is the HTTP status (None when there was no answer), ``code`` the service's
    machine-readable code (e.g. ``invalid_input``), ``message`` its message.
    """

    def __init__(
        self, message: str, *, status: int | None = None, code: str | None = None, url: str = ""
    ):
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.url = url


class Client:
    """Talks to one convserve service at ``base_url``; ``timeout`` in seconds per request."""

    def __init__(self, base_url: str = DEFAULT_URL, timeout: float = 10):
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.session = requests.Session()

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # ---------------------------------------------------------------------------- probes

    def health(self) -> bool:
        """Liveness (GET /healthz): True if the process answers 200. False when it answers
        anything else or cannot be reached (so it can be polled while a server starts)."""
        return self._probe("/healthz")

    def ready(self) -> bool:
        """Readiness (GET /readyz): True once a verified model is served; False while not
        ready (503), on any other answer, or when the service cannot be reached."""
        return self._probe("/readyz")

    def _probe(self, path: str) -> bool:
        try:
            response = self.session.get(self.base_url + path, timeout=self.timeout)
        except requests.RequestException:
            return False
        return response.status_code == 200

    def models(self) -> dict:
        """GET /models: the models in the service's store and what it serves."""
        return self._request("GET", "/models")

    # ---------------------------------------------------------------------------- predict

    def predict_pixels(self, array, version: int | None = None, alias: str | None = None) -> dict:
        """Pixels as JSON: ``array`` (28, 28), (784,), (N, 28, 28) or (N, 784), values 0-255,
        MNIST convention (0 background, 255 ink). -> the service's answer:
        ``{"model": {"name", "version"}, "predictions": [{"label", "confidence",
        "probabilities", "not_a_digit", "ood_score"}, ...]}``."""
        pixels = np.ascontiguousarray(array)
        if pixels.dtype.kind not in "iuf":
            raise ValueError(f"pixels must be integers or floats, got dtype {pixels.dtype}")
        if pixels.dtype.kind == "f" and pixels.dtype not in (np.float32, np.float64):
            pixels = pixels.astype(np.float32)  # orjson serialises float32/float64 only
        if pixels.dtype.kind == "f" and not np.isfinite(pixels).all():
            raise ValueError("pixels contain NaN or infinity")
        if pixels.shape in ((28, 28), (784,)):
            payload = {"image": pixels}
        elif pixels.ndim in (2, 3) and pixels.shape[1:] in ((28, 28), (784,)):
            payload = {"images": pixels}
        else:
            raise ValueError(f"expected pixels shaped (28, 28) or (N, 28, 28), got {pixels.shape}")
        body = orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY)
        return self._predict(
            body, {"Content-Type": "application/json"}, version=version, alias=alias
        )

    def predict_npy(self, array, version: int | None = None, alias: str | None = None) -> dict:
        """Pixels as an ``application/x-npy`` body: ``array`` (28, 28) or (N, 28, 28) of any
        integer or float dtype, values 0-255. -> the service's answer (see predict_pixels)."""
        buffer = io.BytesIO()
        np.save(buffer, np.asarray(array), allow_pickle=False)
        return self._predict(
            buffer.getvalue(), {"Content-Type": "application/x-npy"}, version=version, alias=alias
        )

    def predict_files(
        self,
        paths: Iterable[str | os.PathLike],
        version: int | None = None,
        alias: str | None = None,
    ) -> dict:
        """Classify image files (PNG, JPEG, ...: sent as multipart/form-data) and ``.npy``
        files ((28, 28) or (N, 28, 28) arrays: sent as application/x-npy).

        -> ``{"model": ..., "predictions": [...]}`` with one prediction per image in the order
        of ``paths``; each prediction also carries ``"file"`` (the path as given) and, for
        ``.npy`` files, ``"index"`` (its position in the file's batch). Should the service
        switch models between two requests, the later predictions carry their own ``"model"``.
        """
        paths = [os.fspath(path) for path in paths]
        if not paths:
            raise ClientError("no files to classify")
        _check_pin(version, alias)
        answers: list[tuple[list[tuple[str, int | None]], dict]] = []
        for kind, group in _request_groups(paths):
            if kind == "npy":
                (path,) = group
                array = _read_npy(path)
                answer = self.predict_npy(array, version=version, alias=alias)
                count = 1 if array.ndim == 2 else array.shape[0]
                sources = [(path, index) for index in range(count)]
            else:
                files = [
                    ("files", (Path(path).name, _read_file(path), "application/octet-stream"))
                    for path in group
                ]
                answer = self._predict(None, {}, files=files, version=version, alias=alias)
                sources = [(path, None) for path in group]
            answers.append((sources, answer))
        return _merge_answers(answers)

    # ---------------------------------------------------------------------------- plumbing

    def _predict(
        self,
        body: bytes | None,
        headers: dict,
        *,
        files: list | None = None,
        version: int | None,
        alias: str | None,
    ) -> dict:
        _check_pin(version, alias)
        params = {}
        if version is not None:
            params["version"] = str(version)
        if alias is not None:
            params["alias"] = alias
        answer = self._request(
            "POST", "/predict", params=params, data=body, headers=headers, files=files
        )
        predictions = answer.get("predictions")
        if not isinstance(predictions, list) or not all(
            isinstance(p, dict) and "label" in p and "confidence" in p for p in predictions
        ):
            raise ClientError(
                f"{self.base_url}/predict answered without a list of predictions "
                "(is this a convserve service?)",
                url=self.base_url + "/predict",
            )
        return answer

    def _request(self, method: str, path: str, **kwargs) -> dict:
        url = self.base_url + path
        try:
            response = self.session.request(method, url, timeout=self.timeout, **kwargs)
        except requests.ConnectionError as exc:
            raise ClientError(
                f"cannot connect to the convserve service at {self.base_url} "
                f"({_connection_reason(exc)}); is it running? (--url or CONVSERVE_URL)",
                url=url,
            ) from None
        except requests.Timeout:
            raise ClientError(f"no answer from {url} within {self.timeout:g} s", url=url) from None
        except requests.RequestException as exc:
            raise ClientError(f"request to {url} failed: {exc}", url=url) from None
        if response.status_code >= 400:
            raise _error_from_response(response, url)
        try:
            answer = response.json()
        except ValueError:
            raise ClientError(
                f"{url} answered {response.status_code} with a body that is not JSON",
                status=response.status_code,
                url=url,
            ) from None
        if not isinstance(answer, dict):
            raise ClientError(f"{url} answered with JSON that is not an object", url=url)
        return answer


def describe_prediction(prediction: dict) -> str:
    """One prediction in words: ``label 7 (0.9800)``; when the service flagged the image,
    ``not a digit (ood 3.20) - best guess 7 (0.4100)``, so nobody mistakes the guess for an
    answer. A version without a detector (``not_a_digit`` None or absent) reads as a label."""
    guess = f"{prediction['label']} ({prediction['confidence']:.4f})"
    if prediction.get("not_a_digit") is True:
        score = prediction.get("ood_score")
        ood = f" (ood {score:.2f})" if isinstance(score, int | float) else ""
        return f"not a digit{ood} - best guess {guess}"
    return f"label {guess}"


def _check_pin(version: int | None, alias: str | None) -> None:
    if version is not None and alias is not None:
        raise ValueError("give a version or an alias, not both")


def _connection_reason(exc: requests.ConnectionError) -> str:
    text = str(exc)
    for reason in ("Connection refused", "Name or service not known", "No route to host"):
        if reason in text:
            return reason.lower()
    if "Connection reset" in text or "RemoteDisconnected" in text:
        return "the connection was closed without an answer"
    return type(exc).__name__


def _error_from_response(response: requests.Response, url: str) -> ClientError:
    """An error answer -> ClientError with the service's code and message when the body is
    ``{"error": {"code", "message"}}`` (or the V2 ``{"error": "message"}``)."""
    status = response.status_code
    code = message = None
    try:
        error = response.json().get("error")
    except (ValueError, AttributeError):
        error = None
    if isinstance(error, dict):
        code, message = error.get("code"), error.get("message")
    elif isinstance(error, str):
        message = error
    if not message:
        text = " ".join(response.text.split())[:200]
        message = text or response.reason or "no message"
    label = f"{status} {code}" if code else str(status)
    return ClientError(
        f"the service answered {label}: {message}", status=status, code=code, url=url
    )


def _request_groups(paths: list[str]) -> Iterator[tuple[str, list[str]]]:
    """Paths in order -> ("npy", [one .npy path]) and ("images", [image paths...]) groups, each
    image group within FILES_PER_REQUEST files and (unless a single file) BYTES_PER_REQUEST."""
    images: list[str] = []
    size = 0
    for path in paths:
        if path.lower().endswith(NPY_SUFFIX):
            if images:
                yield "images", images
                images, size = [], 0
            yield "npy", [path]
            continue
        file_size = _file_size(path)
        if images and (len(images) == FILES_PER_REQUEST or size + file_size > BYTES_PER_REQUEST):
            yield "images", images
            images, size = [], 0
        images.append(path)
        size += file_size
    if images:
        yield "images", images


def _file_size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError as exc:
        raise ClientError(f"cannot read {path}: {exc.strerror or exc}") from None


def _read_file(path: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as exc:
        raise ClientError(f"cannot read {path}: {exc.strerror or exc}") from None


def _read_npy(path: str) -> np.ndarray:
    data = _read_file(path)
    try:
        array = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise ClientError(f"cannot read {path} as a .npy array: {exc}") from None
    if not isinstance(array, np.ndarray):
        array.close()  # an .npz archive
        raise ClientError(f"{path}: expected a .npy array, got an .npz archive")
    if array.ndim not in (2, 3):
        raise ClientError(
            f"{path}: expected an array shaped (28, 28) or (N, 28, 28), got {array.shape}"
        )
    return array


def _merge_answers(answers: list[tuple[list[tuple[str, int | None]], dict]]) -> dict:
    """Several /predict answers -> one, each prediction labelled with its file (and index)."""
    first_model = answers[0][1].get("model")
    predictions = []
    for sources, answer in answers:
        received = answer["predictions"]
        if len(received) != len(sources):
            raise ClientError(
                f"the service answered {len(received)} predictions for {len(sources)} images"
            )
        for (path, index), prediction in zip(sources, received, strict=True):
            labelled = {"file": path, **prediction}
            if index is not None:
                labelled["index"] = index
            if answer.get("model") != first_model:
                labelled["model"] = answer.get("model")
            predictions.append(labelled)
    return {"model": first_model, "predictions": predictions}
