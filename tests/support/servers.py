"""Real servers for the end-to-end tests: gunicorn with the service's own config and app spec,
on a free 127.0.0.1 port, with a temporary store; logs go to a file the tests can read.

Every wait here is bounded in time and in count.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

from tests.support import REPO

ADMIN_TOKEN = "e2e-admin-token"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class GunicornServer:
    """``gunicorn -c service/gunicorn.conf.py 'service.app:create_app()'`` run as the container
    runs it, from the repository root, stopped with SIGTERM. ``app`` is another WSGI app spec
    for the same config (a test app around the service)."""

    def __init__(
        self, store: Path, log_path: Path, app: str = "service.app:create_app()", **settings: str
    ):
        self.app = app
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.env = {
            **os.environ,
            "BIND": f"127.0.0.1:{self.port}",
            "WORKERS": "2",
            "MODEL_STORE": str(store),
            "ADMIN_TOKEN": ADMIN_TOKEN,
            "LOG_LEVEL": "info",
            "DRAIN_SECONDS": "0",  # stopping a test server need not wait for a load balancer
            **settings,
        }
        self.env.pop("PROMETHEUS_MULTIPROC_DIR", None)  # the config makes a fresh one
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 60.0, probe: str = "/readyz") -> GunicornServer:
        """Start and wait until ``probe`` answers 200 (``/healthz`` for a server that is
        meant to stay unready: see ``start_unready``)."""
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "gunicorn", "-c", "service/gunicorn.conf.py", self.app],
                cwd=REPO,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            wait_until_ready(self.url, self.process, self.log_path, timeout, probe)
            self.wait_for_workers(timeout)
        except AssertionError:
            self.stop()  # never leave a server that did not come up running
            raise
        return self

    def start_unready(self, timeout: float = 60.0) -> GunicornServer:
        """Start and wait until it answers at all (/healthz), ready or not."""
        return self.start(timeout, probe="/healthz")

    def stop(self) -> int | None:
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            return self.process.wait(timeout=10)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def access_lines(self) -> list[dict]:
        """The JSON access-log lines written so far."""
        lines = []
        for line in self.log_text().splitlines():
            if line.startswith("{") and '"access"' in line:
                lines.append(json.loads(line))
        return lines

    def worker_pids(self) -> list[int]:
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        return sorted(int(pid) for pid in children.read_text().split())

    def wait_for_workers(self, timeout: float) -> None:
        """Until all WORKERS are forked: the first one answers /readyz while the master may
        still be forking the others."""
        for _ in range(int(timeout / 0.05) + 1):
            if len(self.worker_pids()) >= int(self.env["WORKERS"]):
                return
            time.sleep(0.05)
        raise AssertionError(f"fewer than {self.env['WORKERS']} workers: {self.worker_pids()}")


def wait_until_ready(
    url: str, process: subprocess.Popen, log_path: Path, timeout: float, probe: str = "/readyz"
) -> None:
    """Poll ``probe`` until 200; fail early (with the log) if the server died."""
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / 0.05) + 1):
        if process.poll() is not None:
            raise AssertionError(
                f"server exited with {process.returncode}:\n{log_path.read_text()[-3000:]}"
            )
        try:
            if requests.get(url + probe, timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
    raise AssertionError(f"server not ready within {timeout} s:\n{log_path.read_text()[-3000:]}")
