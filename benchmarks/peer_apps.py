"""The peers of ``benchmarks/peers.py``: other model servers serving convserve's own model, so a
comparison measures the HTTP stacks and nothing else. Run with the peers' venv (.venv-peers),
never imported by the service or the tests.

Each peer loads the same bundle through ``training.store.ModelStore`` (from the repository,
put on ``sys.path`` here) and answers with its ``Bundle.predict_proba``: the same NumPy forward
pass convserve runs.

    .venv-peers/bin/python benchmarks/peer_kserve.py --port 8081 --workers 2
    PEER_STORE=model_store .venv-peers/bin/uvicorn --app-dir benchmarks \\
        peer_apps:fastapi_app --factory --port 8082 --workers 2 --no-access-log

* **KServe** (benchmarks/peer_kserve.py): ``kserve.ModelServer``, its Python model server
  (FastAPI on uvicorn, one process per worker), with a ``kserve.Model`` answering V1
  (``POST /v1/models/mnist:predict``, ``{"instances": [image]}``) and V2
  (``POST /v2/models/mnist/infer``), as KServe users write one; latency logging, the access
  log and gRPC off.
* **FastAPI + uvicorn** (uvloop and httptools, ``--workers 2``): ``POST /predict`` taking the
  body convserve's ``/predict`` takes (``{"image": [[...28 x 28...]]}``), parsed with orjson
  and answered with orjson: the quickest way FastAPI offers, not its pydantic models.

Environment: ``PEER_STORE`` (the store directory, default the repository's model_store),
``PEER_MODEL`` (default mnist), ``PEER_VERSION`` (default: the version of the production alias,
the one convserve serves).
"""

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import orjson  # noqa: E402

MODEL_NAME = os.environ.get("PEER_MODEL", "mnist")


def load_bundle():
    """(version, bundle): the bundle convserve serves, ``PEER_VERSION`` or the version the
    store's production alias points at."""
    from training.store import ModelStore

    store = ModelStore(os.environ.get("PEER_STORE") or REPO / "model_store")
    version = os.environ.get("PEER_VERSION")
    version = int(version) if version else store.resolve(MODEL_NAME, alias="production")
    return version, store.load(MODEL_NAME, version)


def prediction(probabilities: np.ndarray) -> dict:
    """One image's answer, in the shape of convserve's /predict."""
    label = int(probabilities.argmax())
    return {
        "label": label,
        "confidence": float(probabilities[label]),
        "probabilities": probabilities.tolist(),
    }


# ---------------------------------------------------------------------------------- FastAPI
def fastapi_app():
    """The FastAPI app (a factory: ``uvicorn --factory``), loaded once per worker process.
    (No ``from __future__ import annotations`` in this module: FastAPI reads the annotations
    of the routes to know that ``request`` is the request.)"""
    from fastapi import FastAPI, Request, Response

    version, bundle = load_bundle()
    app = FastAPI()

    @app.get("/healthz")
    async def healthz():
        return Response(b'{"status":"ok"}', media_type="application/json")

    @app.post("/predict")
    async def predict(request: Request):
        document = orjson.loads(await request.body())
        pixels = np.asarray(document["image"], dtype=np.float32).reshape(1, 28, 28)
        probabilities = bundle.predict_proba(pixels)
        body = {
            "model": {"name": MODEL_NAME, "version": version},
            "predictions": [prediction(probabilities[0])],
        }
        return Response(orjson.dumps(body), media_type="application/json")

    return app
