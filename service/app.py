"""The application factory: ``create_app(config=None)`` (the Flask tutorial's shape).

Run it with gunicorn (``gunicorn -c service/gunicorn.conf.py 'service.app:create_app()'``) or
``convserve serve``. Nothing reads configuration at import time: ``create_app`` takes the
defaults, then the environment, then its ``config`` mapping (service/config.py).

Where a request goes (docs/ARCHITECTURE.md follows one through):

    service/routes.py     the JSON API (/predict, /models, health, admin, metrics) - Blueprint
    service/v2.py         the Open Inference Protocol (KServe V2)                  - Blueprint
    service/ui.py         the web page and the models view                         - Blueprint
    service/dataplane.py  model lookup -> one validated pixel batch -> forward pass
    service/catalog.py    what the store holds and what is served
    service/errors.py     every exception -> one JSON answer
"""

from __future__ import annotations

from collections.abc import Mapping

from flask import Flask

from service.access import register_request_hooks
from service.catalog import Catalog
from service.config import load_config
from service.dataplane import DataPlane
from service.errors import register_error_handler
from service.logs import configure_logging
from service.metrics import ServiceMetrics
from service.openapi import openapi_document
from service.predictor import Predictor
from service.routes import ServiceState, api_blueprint
from service.ui import ui_blueprint
from service.v2 import v2_blueprint
from service.web import ServiceRequest
from training.store import ModelStore


def create_app(config: Mapping | None = None) -> Flask:
    """Build the app: settings (defaults < environment < ``config``), logging, the store, the
    predictor with its first load (a failure leaves the app alive but not ready), routes."""
    settings = load_config(config)
    configure_logging(settings["LOG_LEVEL"])
    app = Flask(__name__)
    app.request_class = ServiceRequest
    app.config.update(settings)  # MAX_CONTENT_LENGTH is also Flask's own limit on bodies

    metrics = ServiceMetrics()
    store = ModelStore(settings["MODEL_STORE"])
    predictor = Predictor(
        store,
        settings["MODEL_NAME"],
        settings["MODEL_ALIAS"],
        reload_interval_s=settings["RELOAD_INTERVAL_S"],
        cache_size=settings["MODEL_CACHE_SIZE"],
        hooks=metrics,
    )
    # The first load happens here, in whichever process builds the app (the gunicorn worker,
    # the test): no thread is started, so building it in a pre-fork master is safe too.
    predictor.check_for_update(force=True)
    app.extensions["convserve"] = ServiceState(
        settings=settings,
        store=store,
        predictor=predictor,
        dataplane=DataPlane(predictor, settings, hooks=metrics),
        catalog=Catalog(store, predictor),
        metrics=metrics,
        openapi=openapi_document(settings),
    )
    register_request_hooks(app, predictor, metrics)
    register_error_handler(app)
    app.register_blueprint(api_blueprint)
    app.register_blueprint(v2_blueprint)
    app.register_blueprint(ui_blueprint)  # GET / (the web page), /ui/models, /ui/static/
    return app
