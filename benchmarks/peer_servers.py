"""The servers benchmarks/peers.py measures: convserve's gunicorn and its peers (KServe, FastAPI
+ uvicorn), each a process group on a free 127.0.0.1 port, started alone and stopped with
SIGTERM, all serving a temporary copy of the store; plus the peers' venv (``.venv-peers/``),
the request bodies and the warm-up.

The peers run benchmarks/peer_kserve.py and benchmarks/peer_apps.py in ``.venv-peers/``, created
and filled here on first use; convserve runs from this venv with service/gunicorn.conf.py.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]  # the packages, and serve_load.py

from serve_load import free_port, run_wrk, sample_digit, wrk_post_script  # noqa: E402

from training.store import ModelStore  # noqa: E402

PEERS_VENV = REPO / ".venv-peers"
# What each peer needs besides the repository (training/ imports numpy and scipy).
PEER_PACKAGES = {"kserve": ["kserve"], "fastapi": ["fastapi", "uvicorn[standard]"]}
COMMON_PACKAGES = ["numpy", "scipy", "orjson"]
# gunicorn's own worker classes, for --worker-classes (command-line options override the config).
WORKER_CLASSES = {
    "sync": ["-k", "sync"],
    "gthread": ["-k", "gthread", "--threads", "4"],
    "gevent": ["-k", "gevent"],
}
ONE_BLAS_THREAD = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


# ---------------------------------------------------------------------------- the peers' venv
def ensure_peers_venv(peers: list[str]) -> dict[str, str]:
    """Create .venv-peers if needed and install each peer into it; returns {peer: why not}
    for the peers that could not be installed."""
    python = PEERS_VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(PEERS_VENV)], check=True)
    failed = {}
    for peer in peers:
        stamp = PEERS_VENV / f".installed-{peer}"
        if stamp.exists():
            continue
        command = [str(python), "-m", "pip", "install", "--quiet"]
        done = subprocess.run(
            command + COMMON_PACKAGES + PEER_PACKAGES[peer], capture_output=True, text=True
        )
        if done.returncode != 0:
            failed[peer] = (done.stderr or done.stdout).strip().splitlines()[-1:]
            print(f"peers: could not install {peer}, leaving it out: {failed[peer]}", flush=True)
        else:
            stamp.touch()
    return failed


# ----------------------------------------------------------------------------------- servers
@dataclass
class Route:
    """One way in to a server: the URL path and the JSON body posted to it."""

    path: str
    body: bytes
    script: Path | None = None  # the wrk script that posts ``body``


@dataclass
class Server:
    """One server process group on a free port, started alone and stopped with SIGTERM."""

    name: str
    argv: list[str]
    env: dict
    routes: dict[str, Route]
    ready_path: str
    cwd: Path = REPO
    port: int = 0
    process: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 120) -> None:
        argv = [part.replace("{port}", str(self.port)) for part in self.argv]
        env = {name: value.replace("{port}", str(self.port)) for name, value in self.env.items()}
        self.process = subprocess.Popen(
            argv,
            cwd=self.cwd,
            env={**os.environ, **ONE_BLAS_THREAD, **env},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}")
            try:
                if requests.get(self.url + self.ready_path, timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"{self.name} not ready within {timeout} s")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
        time.sleep(0.5)  # let the ports and the CPU settle

    def cpu_seconds(self) -> float:
        """User + system CPU time of every process of the server's group so far."""
        ticks, total = os.sysconf("SC_CLK_TCK"), 0
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue  # gone meanwhile
            if int(fields[2]) == self.process.pid:  # the process group (field 5)
                total += int(fields[11]) + int(fields[12])  # utime, stime
        return total / ticks

    def worker_pids(self) -> list[int]:
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        return [int(pid) for pid in children.read_text().split()]


def convserve(
    store: Path, routes: dict[str, Route], name="convserve", extra=(), env: dict | None = None
) -> Server:
    """convserve's gunicorn with the service's config and 2 workers, from this venv; ``extra``
    gunicorn options (a worker class) override the config, ``env`` adds settings."""
    return Server(
        name=name,
        argv=[str(Path(sys.executable).with_name("gunicorn")), "-c", "service/gunicorn.conf.py"]
        + list(extra)
        + ["service.app:create_app()"],
        env={
            "BIND": "127.0.0.1:{port}",
            "WORKERS": "2",
            "MODEL_STORE": str(store),
            "LOG_LEVEL": "warning",
            "DRAIN_SECONDS": "0",
        }
        | (env or {}),
        routes=routes,
        ready_path="/readyz",
    )


def kserve(store: Path, routes: dict[str, Route]) -> Server:
    """KServe's Python model server (benchmarks/peer_kserve.py), 2 workers, in .venv-peers."""
    return Server(
        name="kserve",
        argv=[str(PEERS_VENV / "bin" / "python"), "peer_kserve.py", "--port", "{port}"]
        + ["--workers", "2"],
        env={"PEER_STORE": str(store)},
        routes=routes,
        ready_path="/v2/models/mnist/ready",
        cwd=REPO / "benchmarks",
    )


def fastapi(store: Path, routes: dict[str, Route]) -> Server:
    """FastAPI on uvicorn (benchmarks/peer_apps.py), 2 workers, in .venv-peers."""
    return Server(
        name="fastapi",
        argv=[str(PEERS_VENV / "bin" / "python"), "-m", "uvicorn", "--app-dir", "benchmarks"]
        + ["peer_apps:fastapi_app", "--factory", "--host", "127.0.0.1", "--port", "{port}"]
        + ["--workers", "2", "--no-access-log", "--log-level", "warning"],
        env={"PEER_STORE": str(store)},
        routes=routes,
        ready_path="/healthz",
    )


def build_routes(directory: Path) -> dict[str, Route]:
    """The request bodies: one 28x28 MNIST digit in each protocol's JSON."""
    pixels, _ = sample_digit()
    flat = [value for row in pixels for value in row]
    bodies = {
        "predict": ("/predict", {"image": pixels}),
        "kserve_v1": ("/v1/models/mnist:predict", {"instances": [pixels]}),
        "v2": (
            "/v2/models/mnist/infer",
            {"inputs": [{"name": "input", "shape": [1, 28, 28], "datatype": "FP32", "data": flat}]},
        ),
    }
    routes = {}
    for key, (path, document) in bodies.items():
        body = json.dumps(document, separators=(",", ":"))
        folder = directory / key
        folder.mkdir()
        routes[key] = Route(path, body.encode(), wrk_post_script(folder, body))
    return routes


def build_servers(
    tmp: Path, peers: list[str], version: int, worker_classes: str
) -> tuple[Path, list[Server]]:
    """A copy of the store in ``tmp`` serving ``version`` as production, and the servers on
    it, each on its own free port: convserve first, convserve without dynamic batching
    ("convserve-unbatched", /predict only: what the front and the app do without it), then
    the peers (or, with ``worker_classes``, convserve on each of gunicorn's worker classes
    instead)."""
    store = tmp / "store"
    shutil.copytree(REPO / "model_store", store)
    # The version every server serves: the plain network (mnist:1), whose /predict is
    # predict_proba and nothing more (mnist:2 adds the not-a-digit detector in convserve
    # only, which would measure more than the HTTP stacks).
    ModelStore(store).promote("mnist", version, "production", force=True)
    routes = build_routes(tmp)
    ours = convserve(store, {key: routes[key] for key in ("predict", "v2")})
    makers = {"kserve": (kserve, ("kserve_v1", "v2")), "fastapi": (fastapi, ("predict",))}
    unbatched = convserve(
        store, {"predict": routes["predict"]}, "convserve-unbatched", env={"DYNAMIC_BATCHING": "0"}
    )
    servers = [ours, unbatched] + [
        makers[peer][0](store, {key: routes[key] for key in makers[peer][1]}) for peer in peers
    ]
    if worker_classes:
        # The front against gunicorn's own worker classes, same config otherwise.
        servers = [ours] + [
            convserve(store, ours.routes, name=f"convserve-{name}", extra=WORKER_CLASSES[name])
            for name in worker_classes.split(",")
        ]
    for server in servers:
        server.port = free_port()
    return store, servers


# Seconds of load on each route after the first requests, before anything is measured.
WARM_UP_LOAD_S = 3


def warm_up(server: Server, load_s: float = WARM_UP_LOAD_S) -> None:
    """200 requests on each route (they must succeed), then ``load_s`` of wrk at 16
    connections, so that no server's first measured run is also its first seconds under
    load (a worker forked from a preloaded master copies each shared page it first writes
    to; allocators and caches grow). A precaution taken for every server alike: in 2 trials
    of convserve alone, the first of four 3 s runs after 100 requests was not measurably
    slower than the others."""
    with requests.Session() as session:
        for route in server.routes.values():
            for _ in range(200):
                answer = session.post(
                    server.url + route.path,
                    data=route.body,
                    headers={"Content-Type": "application/json"},
                    timeout=10,
                )
                answer.raise_for_status()
    for route in server.routes.values():
        run_wrk(server.url + route.path, 16, load_s, route.script)
