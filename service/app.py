"""The application factory: ``create_app(config=None)`` (the Flask tutorial's shape).

Run it with gunicorn (``gunicorn -c service/gunicorn.conf.py 'service.app:create_app()'``) or
``convserve serve``. Nothing reads configuration at import time: ``create_app`` takes the
defaults, then the environment, then its ``config`` mapping (service/config.py).

Where a request goes (docs/ARCHITECTURE.md follows one through):

    service/routes.py     the JSON API (/predict, /models, health, admin, metrics) - Blueprint
    service/v1.py         KServe V1 / TensorFlow Serving REST                      - Blueprint
    service/v2.py         the Open Inference Protocol (KServe V2)                  - Blueprint
    service/ui.py         the web page and the models view                         - Blueprint
    service/dataplane.py  model lookup -> one validated pixel batch -> forward pass
    service/catalog.py    what the store holds and what is served
    service/errors.py     every exception -> one JSON answer
"""

from __future__ import annotations

from collections.abc import Mapping

from service.access import register_request_hooks
from service.catalog import Catalog
from service.config import load_config
from service.dataplane import DataPlane
from service.errors import register_error_handler
from service.logs import configure_logging
from service.metrics import ServiceMetrics
from service.openapi import openapi_document
from service.registry import ModelRegistry
from service.routes import ServiceState, api_blueprint
from service.ui import ui_blueprint
from service.v1 import v1_blueprint
from service.v2 import v2_blueprint
from service.web import ServiceFlask
from training.store import ModelStore


def create_app(config: Mapping | None = None) -> ServiceFlask:
    """Build the app: settings (defaults < environment < ``config``), logging, the store, the
    served models with their first load (a model that fails to load leaves the app alive but
    not ready, and the other models serving), routes."""
    settings = load_config(config)
    configure_logging(settings["LOG_LEVEL"], settings["LOG_FORMAT"])
    app = ServiceFlask(__name__)
    app.config.update(settings)  # MAX_CONTENT_LENGTH is also Flask's own limit on bodies

    metrics = ServiceMetrics()
    store = ModelStore(settings["MODEL_STORE"])
    models = ModelRegistry(store, settings, hooks=metrics)
    # The first load happens here, in whichever process builds the app (the gunicorn worker,
    # the test): no thread is started, so building it in a pre-fork master is safe too.
    models.load_all()
    app.extensions["convserve"] = ServiceState(
        settings=settings,
        store=store,
        models=models,
        predictor=models.default,
        dataplane=DataPlane(models, settings, hooks=metrics),
        catalog=Catalog(store, models),
        metrics=metrics,
        openapi=openapi_document(settings),
    )
    register_request_hooks(app, models, metrics)
    register_error_handler(app)
    app.register_blueprint(api_blueprint)
    app.register_blueprint(v1_blueprint)
    app.register_blueprint(v2_blueprint)
    app.register_blueprint(ui_blueprint)  # GET / (the web page), /ui/models, /ui/static/
    return app
