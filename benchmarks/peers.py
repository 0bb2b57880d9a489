"""convserve's HTTP front against the peers serving the same model: throughput, tail latency,
slow clients and memory (issue 12's figures).

    make bench-peers                                    # ~10 minutes
    .venv/bin/python benchmarks/peers.py --reps 1 --duration 3 --json

The peers, from PyPI in their own venv (``.venv-peers/``, created on first use, gitignored):
KServe's Python model server (V1 ``:predict`` and V2 ``infer``) and FastAPI + uvicorn
(benchmarks/peer_kserve.py, benchmarks/peer_apps.py). Each serves convserve's own
``Bundle.predict_proba`` on the embedded model (``--version``, default mnist:1, made the
production alias of a temporary copy of the store) with 2 worker processes and one BLAS thread
each; no server writes an access line per request. A peer that does not install is reported
and left out.

For each repetition, every server in turn (the order rotates) is started **alone**, warmed up,
driven by wrk with keep-alive clients at each concurrency on each of its routes, and stopped.
The figures are medians over the repetitions. Then, for convserve only:

* ``Connection: close`` clients against today's front and gunicorn's sync workers (the
  previous front), alternated;
* slow clients: 16 connections sending headers at 1 byte/s and 2 sending bodies at 100 B/s,
  while one normal client asks ``/healthz`` (a new connection each time) and ``/predict``
  (kept alive) in turn for ``--slow-seconds``: the slowest answer must take under 1 s;
* memory: each worker's RSS after the first 1k ``/predict`` requests and after 100k.

Every run is bounded: wrk runs ``--duration`` seconds, the slow-client phase
``--slow-seconds``, the memory phase at most ``--memory-seconds``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]

from serve_load import (  # noqa: E402
    free_port,
    rss_mb,
    run_wrk,
    sample_digit,
    wrk_post_script,
)

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
TARGETS = {
    "predict_vs_kserve_v1": {1: 1.0, 16: 1.1, 64: 1.1},
    "v2_vs_kserve_v2": 1.2,
    "p99_ms": {16: 12.0, 64: 40.0},
    "slow_client_answer_s": 1.0,
    "rss_growth_mb": 5.0,
}


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


def convserve(store: Path, routes: dict[str, Route], name="convserve", extra=()) -> Server:
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
        },
        routes=routes,
        ready_path="/readyz",
    )


def kserve(store: Path, routes: dict[str, Route]) -> Server:
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


# ------------------------------------------------------------------------------ measurements
def warm_up(server: Server) -> None:
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


def throughput(servers: list[Server], levels: list[int], reps: int, duration: float) -> dict:
    """{server: {route: {level: [wrk result per repetition]}}}, each server alone in turn."""
    runs: dict = {server.name: {} for server in servers}
    for rep in range(reps):
        order = servers[rep % len(servers) :] + servers[: rep % len(servers)]
        for server in order:
            server.start()
            try:
                warm_up(server)
                for level in levels:
                    for key, route in server.routes.items():
                        cpu = server.cpu_seconds()
                        result = run_wrk(server.url + route.path, level, duration, route.script)
                        cpu = server.cpu_seconds() - cpu
                        result["server_cpu_us"] = cpu / max(result["requests"], 1) * 1e6
                        runs[server.name].setdefault(key, {}).setdefault(level, []).append(result)
                        print(
                            f"  rep {rep + 1} {server.name:9} {key:9} c={level:<3} "
                            f"{result['rps']:8.0f} req/s  p99 {result.get('p99_ms', 0):7.2f} ms  "
                            f"errors {errors(result)}  "
                            f"server CPU {result['server_cpu_us']:.0f} us/req",
                            flush=True,
                        )
            finally:
                server.stop()
    return runs


def errors(result: dict) -> int:
    return result["non_2xx"] + result["socket_errors"]


def closing_clients(servers: list[Server], level: int, reps: int, duration: float) -> dict:
    """/predict with ``Connection: close`` (a connection per request): {server: [results]}."""
    runs: dict = {server.name: [] for server in servers}
    for rep in range(reps):
        for server in servers[rep % 2 :] + servers[: rep % 2]:
            server.start()
            try:
                warm_up(server)
                route = server.routes["predict"]
                result = run_wrk(
                    server.url + route.path, level, duration, route.script, ("Connection: close",)
                )
                runs[server.name].append(result)
                print(
                    f"  rep {rep + 1} {server.name:15} close c={level} {result['rps']:8.0f} req/s"
                    f"  p99 {result.get('p99_ms', 0):7.2f} ms  errors {errors(result)}",
                    flush=True,
                )
            finally:
                server.stop()
    return runs


class Dribbler(threading.Thread):
    """A slow client: sends ``head`` at once, then ``tail`` one byte every ``interval`` s."""

    def __init__(self, url_port: int, head: bytes, tail: bytes, interval: float, stop):
        super().__init__(daemon=True)
        self.port, self.head, self.tail, self.interval, self.stop = (
            url_port,
            head,
            tail,
            interval,
            stop,
        )

    def run(self) -> None:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
                sock.sendall(self.head)
                for byte in self.tail:
                    if self.stop.wait(self.interval):
                        return
                    sock.sendall(bytes([byte]))
        except OSError:
            pass  # the server gave up on it (a read timeout): fine


def slow_clients(server: Server, seconds: float) -> dict:
    """The slowest answer a normal client got while 16 connections sent headers at 1 B/s and 2
    sent bodies at 100 B/s, and how many of its requests failed."""
    stop = threading.Event()
    predict = server.routes.get("predict") or server.routes["kserve_v1"]
    head = (
        f"POST {predict.path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(predict.body)}\r\n\r\n"
    ).encode()
    dribblers = [
        Dribbler(server.port, b"GET / HTTP/1.1\r\n", b"X-Slow: " + b"a" * 1000, 1.0, stop)
        for _ in range(16)
    ] + [Dribbler(server.port, head, predict.body, 0.01, stop) for _ in range(2)]
    server.start()
    slowest, failures, answered = 0.0, 0, 0
    try:
        for dribbler in dribblers:
            dribbler.start()
        time.sleep(1.0)
        deadline = time.monotonic() + seconds
        with requests.Session() as session:
            while time.monotonic() < deadline:
                for kind in ("health", "predict"):
                    started = time.monotonic()
                    try:
                        if kind == "health":
                            ok = requests.get(server.url + server.ready_path, timeout=10).ok
                        else:
                            ok = session.post(
                                server.url + predict.path,
                                data=predict.body,
                                headers={"Content-Type": "application/json"},
                                timeout=10,
                            ).ok
                    except requests.RequestException:
                        ok = False
                    slowest = max(slowest, time.monotonic() - started)
                    answered += ok
                    failures += not ok
                time.sleep(0.05)
    finally:
        stop.set()
        server.stop()
        for dribbler in dribblers:
            dribbler.join(timeout=5)
    return {"slowest_s": slowest, "failures": failures, "answered": answered}


def memory(server: Server, total: int, seconds: float) -> dict:
    """Each worker's RSS (MB) after the first ~1k /predict requests and after ``total``, all
    sent by wrk with 16 kept-alive connections (the same load throughout, so the two figures
    differ only by what the requests left behind)."""
    route = server.routes["predict"]
    server.start()
    try:
        sent = run_wrk(server.url + route.path, 16, 0.5, route.script)["requests"]
        workers = server.worker_pids()
        first = {pid: rss_mb(pid) for pid in workers}
        first_count, deadline = sent, time.monotonic() + seconds
        while sent < total and time.monotonic() < deadline:
            sent += run_wrk(server.url + route.path, 16, 5, route.script)["requests"]
        last = {pid: rss_mb(pid) for pid in server.worker_pids()}
    finally:
        server.stop()
    return {
        "first_requests": first_count,
        "requests": sent,
        "workers": [
            {
                "after_first_mb": first[pid],
                "after_all_mb": last[pid],
                "growth_mb": last[pid] - first[pid],
            }
            for pid in first
            if pid in last
        ],
    }


# ---------------------------------------------------------------------------------- summary
def median_of(results: list[dict], key: str) -> float:
    return statistics.median(result.get(key, float("nan")) for result in results)


def summarize(runs: dict, levels: list[int]) -> list[dict]:
    rows = []
    for name, routes in runs.items():
        for key, by_level in routes.items():
            for level in levels:
                results = by_level[level]
                rows.append(
                    {
                        "server": name,
                        "route": key,
                        "concurrency": level,
                        "rps": median_of(results, "rps"),
                        "p50_ms": median_of(results, "p50_ms"),
                        "p99_ms": median_of(results, "p99_ms"),
                        "server_cpu_us": median_of(results, "server_cpu_us"),
                        "errors": sum(errors(result) for result in results),
                        "runs": [round(result["rps"]) for result in results],
                    }
                )
    return rows


def row(rows: list[dict], server: str, route: str, level: int) -> dict | None:
    for entry in rows:
        if (entry["server"], entry["route"], entry["concurrency"]) == (server, route, level):
            return entry
    return None


def verdicts(rows: list[dict], levels: list[int], close: dict, slow: dict, mem: dict) -> list:
    """(what, figure, target, met) for each of the issue's targets that was measured."""
    checks = []
    for level in levels:
        ours, theirs = (
            row(rows, "convserve", "predict", level),
            row(rows, "kserve", "kserve_v1", level),
        )
        if ours and theirs and level in TARGETS["predict_vs_kserve_v1"]:
            ratio = ours["rps"] / theirs["rps"]
            target = TARGETS["predict_vs_kserve_v1"][level]
            checks.append(
                (
                    f"/predict vs KServe V1, c={level}",
                    f"{ratio:.2f}x",
                    f">= {target}x",
                    ratio >= target,
                )
            )
        ours, theirs = row(rows, "convserve", "v2", level), row(rows, "kserve", "v2", level)
        if ours and theirs:
            ratio = ours["rps"] / theirs["rps"]
            target = TARGETS["v2_vs_kserve_v2"]
            checks.append(
                (
                    f"V2 infer vs KServe V2, c={level}",
                    f"{ratio:.2f}x",
                    f">= {target}x",
                    ratio >= target,
                )
            )
        ours = row(rows, "convserve", "predict", level)
        if ours and level in TARGETS["p99_ms"]:
            target = TARGETS["p99_ms"][level]
            checks.append(
                (
                    f"/predict p99, c={level}",
                    f"{ours['p99_ms']:.1f} ms",
                    f"<= {target:g} ms",
                    ours["p99_ms"] <= target,
                )
            )
    ours_errors = sum(entry["errors"] for entry in rows if entry["server"] == "convserve")
    checks.append(
        ("convserve errors (all keep-alive runs)", str(ours_errors), "0", ours_errors == 0)
    )
    if close:
        front, sync = (
            statistics.median(r["rps"] for r in close[name])
            for name in ("convserve", "convserve-sync")
        )
        checks.append(
            (
                "Connection: close, front vs sync workers",
                f"{front / sync:.2f}x",
                ">= 1.0x (no worse)",
                front >= 0.97 * sync,
            )
        )
    slow = slow.get("convserve")
    if slow:
        checks.append(
            (
                "slowest normal answer among slow clients",
                f"{slow['slowest_s'] * 1000:.0f} ms, {slow['failures']} failed",
                "< 1 s, 0 failed",
                slow["slowest_s"] < TARGETS["slow_client_answer_s"] and not slow["failures"],
            )
        )
    if mem:
        growth = max(worker["growth_mb"] for worker in mem["workers"])
        checks.append(
            (
                f"worker RSS growth, {mem['first_requests']} -> {mem['requests']} requests",
                f"{growth:+.1f} MB",
                f"<= {TARGETS['rss_growth_mb']:g} MB",
                growth <= TARGETS["rss_growth_mb"],
            )
        )
    return checks


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--levels", default="1,16,64", help="wrk connections (default 1,16,64)")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per wrk run")
    parser.add_argument("--reps", type=int, default=3, help="repetitions, order rotated")
    parser.add_argument("--peers", default="kserve,fastapi")
    parser.add_argument("--slow-seconds", type=float, default=10.0)
    parser.add_argument("--memory-requests", type=int, default=100_000)
    parser.add_argument("--memory-seconds", type=float, default=120.0)
    parser.add_argument("--skip", default="", help="comma list of: close, slow, memory")
    parser.add_argument(
        "--worker-classes",
        default="",
        help=f"instead of the peers, gunicorn's worker classes ({', '.join(WORKER_CLASSES)})",
    )
    parser.add_argument(
        "--version", type=int, default=1, help="the embedded version every server serves"
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("wrk is not installed (apt-get install wrk)", file=sys.stderr)
        return 2
    levels = [int(level) for level in args.levels.split(",")]
    peers = [peer for peer in args.peers.split(",") if peer]
    skip = set(args.skip.split(","))
    not_installed = ensure_peers_venv(peers)
    peers = [peer for peer in peers if peer not in not_installed]
    loadavg_start = os.getloadavg()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        store = tmp / "store"
        shutil.copytree(REPO / "model_store", store)
        # The version every server serves: the plain network (mnist:1), whose /predict is
        # predict_proba and nothing more (mnist:2 adds the not-a-digit detector in convserve
        # only, which would measure more than the HTTP stacks).
        ModelStore(store).promote("mnist", args.version, "production", force=True)
        routes = build_routes(tmp)
        ours = convserve(store, {key: routes[key] for key in ("predict", "v2")})
        makers = {"kserve": (kserve, ("kserve_v1", "v2")), "fastapi": (fastapi, ("predict",))}
        servers = [ours] + [
            makers[peer][0](store, {key: routes[key] for key in makers[peer][1]}) for peer in peers
        ]
        if args.worker_classes:
            # The front against gunicorn's own worker classes, same config otherwise.
            servers = [ours] + [
                convserve(store, ours.routes, name=f"convserve-{name}", extra=WORKER_CLASSES[name])
                for name in args.worker_classes.split(",")
            ]
        for server in servers:
            server.port = free_port()
        print(f"throughput: {args.reps} reps x {len(servers)} servers, levels {levels}", flush=True)
        runs = throughput(servers, levels, args.reps, args.duration)
        rows = summarize(runs, levels)
        close, slow, mem = {}, {}, {}
        if "close" not in skip:
            sync = convserve(store, ours.routes, name="convserve-sync", extra=["-k", "sync"])
            sync.port = free_port()
            print("Connection: close clients, the front against sync workers", flush=True)
            close = closing_clients([ours, sync], 16, args.reps, args.duration)
        if "slow" not in skip:
            print("slow clients", flush=True)
            for server in servers:
                slow[server.name] = slow_clients(server, args.slow_seconds)
                print(f"  {server.name:15} {slow[server.name]}", flush=True)
        if "memory" not in skip:
            print("memory", flush=True)
            mem = memory(ours, args.memory_requests, args.memory_seconds)

    report = {
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "machine": f"{os.cpu_count()} cores, {platform.processor() or platform.machine()}",
        "loadavg_start": loadavg_start,
        "loadavg_end": os.getloadavg(),
        "duration_s": args.duration,
        "reps": args.reps,
        "not_installed": not_installed,
        "rows": rows,
        "close": {
            name: {"rps": median_of(results, "rps"), "p99_ms": median_of(results, "p99_ms")}
            for name, results in close.items()
        },
        "slow_clients": slow,
        "memory": mem,
        "targets": [
            {"what": what, "figure": figure, "target": target, "met": met}
            for what, figure, target, met in verdicts(rows, levels, close, slow, mem)
        ],
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(
        f"\nconvserve vs peers  {report['date']}  {report['machine']}  wrk {args.duration:g} s "
        f"x {args.reps} reps (medians)  loadavg {loadavg_start[0]:.2f} -> "
        f"{report['loadavg_end'][0]:.2f}"
    )
    for peer, why in not_installed.items():
        print(f"not measured: {peer} (install failed: {why})")
    print(
        f"{'server':10} {'route':10} {'conc':>4} {'req/s':>8} {'p50':>8} {'p99':>9} {'err':>4} "
        f"{'CPU/req':>8}  runs"
    )
    for entry in rows:
        print(
            f"{entry['server']:10} {entry['route']:10} {entry['concurrency']:>4} "
            f"{entry['rps']:>8.0f} {entry['p50_ms']:>6.2f}ms {entry['p99_ms']:>7.2f}ms "
            f"{entry['errors']:>4} {entry['server_cpu_us']:>6.0f}us  {entry['runs']}"
        )
    for name, figures in report["close"].items():
        print(
            f"Connection: close c=16  {name:15} {figures['rps']:8.0f} req/s  "
            f"p99 {figures['p99_ms']:.2f} ms"
        )
    for number, worker in enumerate(mem.get("workers", []), 1):
        print(
            f"worker {number}: RSS {worker['after_first_mb']:.1f} MB after the first "
            f"{mem['first_requests']} requests, {worker['after_all_mb']:.1f} MB after "
            f"{mem['requests']} ({worker['growth_mb']:+.1f} MB)"
        )
    for name, figures in slow.items():
        print(
            f"slow clients, {name:15} slowest normal answer {figures['slowest_s'] * 1000:.0f} ms, "
            f"{figures['failures']} failed of {figures['answered'] + figures['failures']}"
        )
    print("\ntargets:")
    for check in report["targets"]:
        verdict = "MET " if check["met"] else "NOT "
        print(f"  {verdict} {check['what']}: {check['figure']} ({check['target']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
