"""KServe's Python model server serving convserve's bundle, for ``benchmarks/peers.py``: a
``kserve.Model`` answering V1 (``POST /v1/models/mnist:predict``, ``{"instances": [...]}``) and
V2 (``POST /v2/models/mnist/infer``) with the bundle's own ``predict_proba``, as a KServe user
writes one. Latency logging, the access log and gRPC are off. Run with the peers' venv:

    .venv-peers/bin/python benchmarks/peer_kserve.py --port 8081 --workers 2

(KServe starts one process per worker with multiprocessing's spawn, which imports this module
again in each: the model class must live at module level.)
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path

import kserve
import numpy as np
from kserve import InferOutput, InferRequest, InferResponse
from kserve import model_server as kserve_model_server
from kserve.utils.utils import generate_uuid
from peer_apps import MODEL_NAME, load_bundle, prediction


class ConvserveModel(kserve.Model):
    """convserve's bundle as a KServe model: V1 ``instances`` and V2 ``inputs``."""

    def __init__(self, name: str):
        super().__init__(name)
        self.bundle = None
        self.load()

    def load(self) -> bool:
        _version, self.bundle = load_bundle()
        self.ready = True
        return self.ready

    def predict(self, payload, headers=None):
        if isinstance(payload, InferRequest):
            pixels = payload.inputs[0].as_numpy().astype(np.float32).reshape(-1, 28, 28)
            probabilities = self.bundle.predict_proba(pixels).astype(np.float32)
            output = InferOutput(
                name="probabilities", shape=list(probabilities.shape), datatype="FP32"
            )
            output.set_data_from_numpy(probabilities, binary_data=False)
            return InferResponse(
                model_name=self.name,
                infer_outputs=[output],
                response_id=payload.id or generate_uuid(),
            )
        pixels = np.asarray(payload["instances"], dtype=np.float32).reshape(-1, 28, 28)
        probabilities = self.bundle.predict_proba(pixels)
        return {"predictions": [prediction(row) for row in probabilities]}


def quiet_log_config() -> str:
    """A logging config file for KServe's uvicorn: warnings only, so no access line per request
    (convserve and the FastAPI peer run without theirs too)."""
    config = {
        "version": 1,
        "disable_existing_loggers": False,
        "handlers": {"stderr": {"class": "logging.StreamHandler"}},
        "root": {"level": "WARNING", "handlers": ["stderr"]},
        "loggers": {name: {"level": "WARNING"} for name in ("uvicorn", "uvicorn.access", "kserve")},
    }
    path = Path(tempfile.mkdtemp(prefix="peers-log-")) / "log.json"
    path.write_text(json.dumps(config))
    return str(path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    # KServe takes its logging config from the options it parsed when it was imported.
    kserve_model_server.args.log_config_file = quiet_log_config()
    kserve.ModelServer(
        http_port=args.port,
        workers=args.workers,
        enable_grpc=False,
        enable_latency_logging=False,
    ).start([ConvserveModel(MODEL_NAME)])
    return 0


if __name__ == "__main__":
    sys.exit(main())
