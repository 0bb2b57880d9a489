"""The one inference path every protocol shares: which model answers, pixels in, numbers out.

    route (/predict, V2 infer, the page)      parses HTTP, picks the payload kind
      -> DataPlane.model(name, version, alias)  the served or pinned model (Predictor)
      -> DataPlane.pixels(model, kind, payload) one validated batch (service/inputs/)
         or DataPlane.validate(model, values)   for protocols that decode their own tensors
      -> DataPlane.infer(model, pixels)         the network's forward pass (Bundle.predict):
                                                calibrated probabilities, OOD score and flag
      -> route                                  encodes Predictions in its protocol's shape

Protocol modules only translate: every limit and every check on pixels lives behind this
class, so ``/predict`` and V2 accept and refuse exactly the same values.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from service.errors import ModelOutputInvalid
from service.inputs import InputSpec, pixel_batch, pixels_from_payload
from service.predictor import ServedModel
from service.registry import ModelRegistry
from training.bundle import Prediction
from training.store import format_ref

logger = logging.getLogger("convserve.dataplane")


@dataclass(frozen=True)
class Predictions:
    """One batch answered: the model that answered, its probabilities (N, K) float
    C-contiguous (calibrated when the bundle has a temperature), per image the index of the
    top class and its label; and, when the bundle has a detector (``ood_available``), per image
    the out-of-distribution score (N,) in units of its threshold and the flag (N,) bool
    ``not_a_digit`` (score > 1). Without a detector both are None: unavailable, never made up."""

    model: ServedModel
    probabilities: np.ndarray
    top: list[int]
    labels: list
    ood_score: np.ndarray | None = None
    not_a_digit: np.ndarray | None = None

    @property
    def ood_available(self) -> bool:
        return self.ood_score is not None

    def confidences(self) -> np.ndarray:
        """(N,) the probability of each image's top class."""
        return self.probabilities[np.arange(len(self.top)), self.top]


# A model's forward pass as the front may run it for a request: (model, pixels) -> Prediction.
Batch = Callable[[ServedModel, np.ndarray], Prediction]


class InferenceHooks:
    """What the data plane reports (the metrics); the default does nothing."""

    def count_predictions(self, name: str, labels: list) -> None:
        """A batch was answered with these labels."""

    def count_invalid_output(self, name: str, version: int) -> None:
        """The model produced a non-finite number for a request."""

    def observe_predictions(self, result: Predictions) -> None:
        """A batch was answered: its confidences, OOD scores and flags (the drift view)."""

    def inference_done(self, name: str, version: int, batch: int, seconds: float) -> None:
        """A forward pass of ``batch`` images took ``seconds``."""


class DataPlane:
    """Model lookup, payload validation and inference for every protocol.

    ``settings`` supplies the limits (MAX_BATCH, MAX_IMAGE_PIXELS, MAX_REQUEST_PIXELS); the
    image shape comes from each model's bundle.
    """

    def __init__(self, models: ModelRegistry, settings: dict, hooks: InferenceHooks | None = None):
        self.models = models
        self.hooks = hooks or InferenceHooks()
        self._limits = {
            "max_batch": settings["MAX_BATCH"],
            "max_image_pixels": settings["MAX_IMAGE_PIXELS"],
            "max_request_pixels": settings["MAX_REQUEST_PIXELS"],
        }
        self._specs: dict[tuple[int, ...], InputSpec] = {}

    def model(
        self, name: str | None = None, version: int | None = None, alias: str | None = None
    ) -> ServedModel:
        """The model to answer with: model ``name`` (default: MODEL_NAME) at the version its
        alias points to, or the version/alias pinned. 404 for a model this server does not
        serve, 503 for one not loaded yet."""
        predictor = self.models.default if name is None else self.models.predictor(name)
        return predictor.model_for(version, alias)

    def spec(self, model: ServedModel) -> InputSpec:
        """What a request to ``model`` may hold: its image shape, the configured limits."""
        shape = model.input_shape
        spec = self._specs.get(shape)
        if spec is None:
            spec = self._specs[shape] = InputSpec(shape, **self._limits)
        return spec

    def pixels(self, model: ServedModel, kind: str, payload) -> np.ndarray:
        """A /predict payload (see ``inputs.PAYLOAD_KINDS``) -> float32 pixels (N, H, W)."""
        return pixels_from_payload(kind, payload, self.spec(model))

    def validate(
        self, model: ServedModel, values: np.ndarray, where: str, *, single: bool = False
    ) -> np.ndarray:
        """Values a protocol decoded itself -> float32 pixels (N, H, W), through the same
        checks as every /predict payload."""
        return pixel_batch(values, self.spec(model), where, single=single)

    def infer(
        self, model: ServedModel, pixels: np.ndarray, batch: Batch | None = None
    ) -> Predictions:
        """``Predictions`` for pixels (N, H, W) from ``model``: one forward pass giving the
        calibrated probabilities and, when the bundle has a detector, the OOD scores. A
        non-finite output is never answered: it raises ModelOutputInvalid (500) naming the
        version, logged and counted. ``batch``: the front's dynamic batching
        (service/batching.py), which runs the pass together with other requests' when there
        are any; without it the pass is this request's alone. The inference latency
        measured here includes the wait for the batch."""
        started = time.perf_counter()
        prediction = model.predict(pixels) if batch is None else batch(model, pixels)
        self.hooks.inference_done(
            model.name, model.version, len(pixels), time.perf_counter() - started
        )
        probabilities = np.ascontiguousarray(prediction.probabilities)
        scores = prediction.ood_score if prediction.ood_available else None
        if not np.isfinite(probabilities).all() or (
            scores is not None and not np.isfinite(scores).all()
        ):
            self._refuse_invalid_output(model)
        top = probabilities.argmax(axis=1).tolist()
        labels = [model.labels[index] for index in top]
        flags = prediction.not_a_digit if scores is not None else None
        result = Predictions(model, probabilities, top, labels, scores, flags)
        self.hooks.count_predictions(model.name, labels)
        self.hooks.observe_predictions(result)
        return result

    def _refuse_invalid_output(self, model: ServedModel) -> None:
        self.hooks.count_invalid_output(model.name, model.version)
        message = (
            f"{format_ref(model.name, model.version)} produced non-finite probabilities "
            f"for this request; nothing was answered"
        )
        logger.error(message, extra={"fields": {"event": "model_output_invalid"}})
        raise ModelOutputInvalid(message)
