"""A scale-out fleet on one machine: N ``convserve serve`` replicas sharing one store, with
nginx in front running the repository's proxy configuration (deploy/nginx/).

Used by benchmarks/scale_out.py and the scale-out tests (tests/scale/). Each replica is the
real command (``convserve serve``, which execs gunicorn), in its own session so it can be
signalled as a whole; nginx is Debian's binary run as an ordinary foreground process with
its own prefix directory (``nginx -p <prefix> -c conf/nginx.conf``), never the system service.
Every wait is bounded. Standard library and requests only (importable from a script run in
benchmarks/ and as ``benchmarks.fleet``).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[1]
RENDER_SCRIPT = REPO / "deploy" / "nginx" / "render.py"
JSON_HEADERS = {"Content-Type": "application/json"}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def find_nginx() -> str | None:
    """Debian's nginx (in /usr/sbin, which a non-root PATH may lack), or any on PATH."""
    found = shutil.which("nginx")
    if found is None and os.access("/usr/sbin/nginx", os.X_OK):
        found = "/usr/sbin/nginx"
    return found


def load_renderer():
    """deploy/nginx/render.py as a module (deploy/ is not a package)."""
    spec = importlib.util.spec_from_file_location("convserve_nginx_render", RENDER_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def wait_for_status(url: str, process: subprocess.Popen, log_path: Path, timeout: float) -> None:
    """Poll ``url`` until it answers 200; fail early, with the log's tail, if the process died."""
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / 0.05) + 1):
        if process.poll() is not None:
            raise RuntimeError(
                f"{process.args[:3]} exited with {process.returncode}:\n"
                f"{log_path.read_text(errors='replace')[-3000:]}"
            )
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
    raise RuntimeError(f"{url} not 200 within {timeout} s:\n{log_path.read_text()[-3000:]}")


def wait_for_port(port: int, process: subprocess.Popen, timeout: float) -> None:
    """Until something accepts on 127.0.0.1:``port`` (bounded), failing if ``process`` died."""
    deadline = time.monotonic() + timeout
    while process.poll() is None and time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing accepts on port {port} (exit code {process.poll()})")


class Replica:
    """``convserve serve --workers 1`` on a fixed 127.0.0.1 port (kept across restarts)."""

    def __init__(self, name: str, store: Path, log_dir: Path, **settings: str):
        self.name = name
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.url = f"http://{self.address}"
        self.log_path = log_dir / f"{name}.log"
        self.env = {
            **os.environ,
            "MODEL_STORE": str(store),
            "LOG_LEVEL": "info",
            "DRAIN_SECONDS": "1",
            **settings,
        }
        self.env.pop("PROMETHEUS_MULTIPROC_DIR", None)  # the gunicorn config makes a fresh one
        self.process: subprocess.Popen | None = None
        self.starts = 0

    def launch(self) -> None:
        """Start the process; ``wait_ready`` waits for it to answer."""
        command = [sys.executable, "-m", "convserve", "serve", "--host", "127.0.0.1"]
        command += ["--port", str(self.port), "--workers", self.env.get("WORKERS", "1")]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                command,
                cwd=REPO,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.starts += 1

    def wait_ready(self, timeout: float = 60.0) -> None:
        try:
            wait_for_status(self.url + "/readyz", self.process, self.log_path, timeout)
        except RuntimeError:
            self.kill()  # never leave a replica that did not come up running
            raise

    def start(self, timeout: float = 60.0) -> Replica:
        self.launch()
        self.wait_ready(timeout)
        return self

    def terminate(self, timeout: float = 40.0) -> int | None:
        """SIGTERM (drain, then gunicorn's graceful stop) and wait; SIGKILL past ``timeout``."""
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return None

    def kill(self) -> None:
        """SIGKILL the master and its worker at once (a crashed host, an OOM kill); waits."""
        if self.process is None or self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    def worker_pids(self) -> list[int]:
        pid = self.process.pid
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text()
        return sorted(int(child) for child in children.split())


class Proxy:
    """nginx with deploy/nginx/convserve.conf.template, on a free 127.0.0.1 port."""

    def __init__(self, prefix: Path, upstreams: list[str], worker_processes: int = 1):
        binary = find_nginx()
        if binary is None:
            raise FileNotFoundError("nginx not found (Debian: apt-get install -y nginx)")
        self.binary = binary
        self.prefix = prefix
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = prefix / "nginx.log"
        load_renderer().write_local_config(
            prefix, f"127.0.0.1:{self.port}", upstreams, worker_processes=worker_processes
        )
        self.process: subprocess.Popen | None = None

    def command(self) -> list[str]:
        return [self.binary, "-e", "stderr", "-p", str(self.prefix), "-c", "conf/nginx.conf"]

    def check_config(self) -> subprocess.CompletedProcess:
        return subprocess.run(self.command() + ["-t"], capture_output=True, text=True, timeout=30)

    def start(self, timeout: float = 30.0, expect_replicas: bool = True) -> Proxy:
        """Start nginx and wait until /healthz answers 200 through it (or, without replicas
        to expect, until it accepts connections)."""
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                self.command(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        if expect_replicas:
            wait_for_status(self.url + "/healthz", self.process, self.log_path, timeout)
        else:
            wait_for_port(self.port, self.process, timeout)
        return self

    def stop(self) -> int | None:
        """SIGQUIT: nginx's graceful stop (finish the requests in hand, then exit)."""
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        self.process.send_signal(signal.SIGQUIT)
        try:
            return self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            return self.process.wait(timeout=10)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")


class Fleet:
    """``replicas`` replicas of one store behind one nginx; a context manager that stops all."""

    def __init__(self, store: Path, directory: Path, replicas: int = 3, **settings: str):
        directory.mkdir(parents=True, exist_ok=True)
        self.replicas = [
            Replica(f"replica-{index}", store, directory, **settings)
            for index in range(1, replicas + 1)
        ]
        self.proxy = Proxy(directory / "nginx", [r.address for r in self.replicas])

    def start(self) -> Fleet:
        try:
            for replica in self.replicas:  # all at once: the start-up is mostly imports
                replica.launch()
            for replica in self.replicas:
                replica.wait_ready()
            self.proxy.start()
        except BaseException:
            self.stop()
            raise
        return self

    def replica_at(self, address: str) -> Replica:
        """The replica named by an X-Served-By value (the last address tried)."""
        last = address.split(",")[-1].strip()
        return next(r for r in self.replicas if r.address == last)

    def stop(self) -> None:
        self.proxy.stop()
        for replica in self.replicas:
            replica.terminate()

    def __enter__(self) -> Fleet:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()


class Answer:
    """One client request's outcome: status (0 when no HTTP answer), which replica and model
    version answered, and when (monotonic seconds)."""

    __slots__ = ("status", "served_by", "version", "error", "at")

    def __init__(self, status: int, served_by: str, version, error: str, at: float):
        self.status, self.served_by, self.version = status, served_by, version
        self.error, self.at = error, at

    def __repr__(self) -> str:
        return f"Answer({self.status}, {self.served_by!r}, v{self.version}, {self.error!r})"


def post_predict(session: requests.Session, url: str, body: bytes, timeout: float = 30) -> Answer:
    """POST /predict once through ``session``; a failure becomes an Answer, never an exception."""
    try:
        response = session.post(url + "/predict", data=body, headers=JSON_HEADERS, timeout=timeout)
    except requests.RequestException as exc:
        return Answer(0, "", None, f"{type(exc).__name__}: {exc}", time.monotonic())
    version = None
    if response.status_code == 200:
        version = response.json()["model"]["version"]
    error = "" if response.status_code == 200 else response.text[:300]
    served_by = response.headers.get("X-Served-By", "")
    return Answer(response.status_code, served_by, version, error, time.monotonic())


class SteadyLoad:
    """``clients`` threads posting /predict back to back (each on its own keep-alive session)
    until ``stop()``, ``max_requests`` in all, or ``max_seconds``: bounded in count and time."""

    def __init__(
        self, url: str, body: bytes, clients: int = 4, max_requests=20_000, max_seconds=120.0
    ):
        import threading

        self.url, self.body = url, body
        self.max_requests, self.max_seconds = max_requests, max_seconds
        self.answers: list[Answer] = []
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._threads = [
            threading.Thread(target=self._client, name=f"load-{n}", daemon=True)
            for n in range(clients)
        ]

    def _client(self) -> None:
        deadline = time.monotonic() + self.max_seconds
        with requests.Session() as session:
            while not self._stopped.is_set() and time.monotonic() < deadline:
                answer = post_predict(session, self.url, self.body)
                with self._lock:
                    if len(self.answers) >= self.max_requests:
                        return
                    self.answers.append(answer)

    def start(self) -> SteadyLoad:
        for thread in self._threads:
            thread.start()
        return self

    def wait_for(self, count: int, timeout: float = 60.0) -> None:
        """Until at least ``count`` answers are in (bounded by ``timeout``)."""
        deadline = time.monotonic() + timeout
        while len(self.answers) < count and time.monotonic() < deadline:
            time.sleep(0.02)

    def stop(self) -> list[Answer]:
        self._stopped.set()
        for thread in self._threads:
            thread.join(timeout=60)
        with self._lock:
            return list(self.answers)

    def failures(self) -> list[Answer]:
        return [answer for answer in self.answers if answer.status != 200]
