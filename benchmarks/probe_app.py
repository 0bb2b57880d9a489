"""The service with two benchmark-only routes that each do a part of what ``POST /predict`` does,
so ``serve_breakdown.py`` can price the parts under the same gunicorn load.

    gunicorn -c service/gunicorn.conf.py 'benchmarks.probe_app:create_app()'

* ``POST /_probe/http``: reads the body and answers ``/predict``'s answer for it, cached from
  the first call: what a POST with this body and this answer costs gunicorn and Flask, nothing
  of the model.
* ``POST /_probe/no-forward``: ``/predict``'s own steps (body by Content-Type, pixels, model
  lookup, prediction metrics, answer document, orjson) with the network's forward pass
  replaced by the probabilities cached from the first call.
* ``POST /_probe/first-layer``: the same, plus the input normalisation and the network's first
  step (for SimpleConvNet the fused conv -> ReLU -> max-pool) on the request's pixels: the
  training package's own code, its output thrown away.

Never part of the service: this module lives in benchmarks/ and only this factory adds the
routes. ``tests/service/test_probe_app.py`` checks both answer exactly what ``/predict`` does.
"""

from __future__ import annotations

from flask import Response, g, request

from service.app import create_app as create_service_app
from service.dataplane import Predictions
from service.routes import predictions_document
from service.web import json_response, read_body, read_payload
from training.bundle import normalise


def create_app(config: dict | None = None):
    app = create_service_app(config)
    state = app.extensions["convserve"]
    dataplane, metrics = state.dataplane, state.metrics
    answers: dict[bytes, tuple[bytes, Predictions]] = {}  # body -> (/predict's answer, result)

    def answer_for(body: bytes, pixels) -> tuple[bytes, Predictions]:
        if body not in answers:
            result = dataplane.infer(dataplane.model(), pixels)
            document = predictions_document(result, pixels, explain=False)
            answers.clear()  # the benchmark sends one body; keep at most one
            answers[body] = (json_response(document).get_data(), result)
        return answers[body]

    @app.post("/_probe/http")
    def probe_http():
        req = request._get_current_object()
        body = read_body(req, app.config["MAX_CONTENT_LENGTH"])
        if body not in answers:
            answer_for(body, dataplane.pixels(dataplane.model(), "json", body))
        return Response(answers[body][0], mimetype="application/json")

    def without_forward(*, first_layer: bool):
        req = request._get_current_object()
        model = dataplane.model()
        kind, payload = read_payload(req, app.config["MAX_CONTENT_LENGTH"])
        pixels = dataplane.pixels(model, kind, payload)
        if first_layer:
            network = model.bundle.network
            network.steps[0].forward(
                normalise(pixels, model.bundle.input, network.dtype.type), train=False
            )
        cached = answer_for(payload, pixels)[1]
        result = Predictions(model, cached.probabilities, cached.top, cached.labels)
        g.model_version = model.version
        metrics.count_predictions(model.name, result.labels)
        return json_response(predictions_document(result, pixels, explain=False))

    @app.post("/_probe/no-forward")
    def probe_no_forward():
        return without_forward(first_layer=False)

    @app.post("/_probe/first-layer")
    def probe_first_layer():
        return without_forward(first_layer=True)

    return app
