"""Check the V1 routes with a client that speaks KServe V1: KServe's own Python SDK.

kserve is far too heavy for the project's dependencies (it pulls FastAPI, grpcio, the
Kubernetes client, ...), so it lives in a scratch venv:

    python3 -m venv /tmp/kserve-venv && /tmp/kserve-venv/bin/pip install kserve
    make serve &                                     # or any convserve server
    /tmp/kserve-venv/bin/python scripts/check_v1_client.py http://127.0.0.1:8000

It asks model readiness, predicts a drawn "1" with InferenceRESTClient(protocol="v1") and
checks that a bad instance's message reaches the client; exit status 0 when all three hold.
"""

import asyncio
import sys

from kserve import InferenceRESTClient, RESTConfig

ONE = [[0] * 28] * 4 + [[0] * 13 + [255] * 3 + [0] * 12] * 20 + [[0] * 28] * 4


async def check(base: str) -> int:
    client = InferenceRESTClient(config=RESTConfig(protocol="v1"))
    try:
        ready = await client.is_model_ready(base, "mnist")
        answer = await client.infer(base, {"instances": [ONE]}, model_name="mnist")
        prediction = answer["predictions"][0]
        print(
            f"ready {ready}; label {prediction['label']}, not_a_digit {prediction['not_a_digit']}"
        )
        try:
            await client.infer(base, {"instances": [[[True] * 28] * 28]}, model_name="mnist")
            refused = False
        except Exception as exc:  # httpx.HTTPStatusError carries the server's message
            refused = "expected a number, got a boolean" in str(exc)
            print(f"refused: {str(exc)[:120]}")
        return 0 if ready and prediction["label"] == 1 and refused else 1
    finally:
        await client.close()


if __name__ == "__main__":
    sys.exit(asyncio.run(check(sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8000")))
