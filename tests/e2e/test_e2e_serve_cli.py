"""``convserve serve`` for real: it becomes gunicorn, serves the store, and Ctrl-C (SIGINT to
the whole process group, as a terminal sends it) stops it cleanly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from tests.support.bundles import make_bundle
from tests.support.servers import free_port, wait_until_ready
from training.store import ModelStore

pytestmark = pytest.mark.slow


def test_serve_then_ctrl_c(tmp_path):
    store = ModelStore(tmp_path / "store")
    store.publish(make_bundle(tmp_path / "v1.npz", test_accuracy=0.5), "digits", alias="stable")
    port = free_port()
    log_path = tmp_path / "serve.log"
    convserve = Path(sys.executable).with_name("convserve")
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [str(convserve), "serve", "--store", str(tmp_path / "store"), "--port", str(port)]
            + ["--workers", "1", "--model", "digits", "--alias", "stable"]
            + ["--reload-interval", "0"],
            cwd=tmp_path,  # not the repository: the packaged config and app must be found
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_ready(url, process, log_path, timeout=60)
        ready = requests.get(url + "/readyz", timeout=10).json()
        assert ready["model"] == {"name": "digits", "version": 1}
        os.killpg(process.pid, signal.SIGINT)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
    log = log_path.read_text()
    assert "serving on http://127.0.0.1:" in log
    assert "Shutting down" in log
    assert "Traceback" not in log
