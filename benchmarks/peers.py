"""convserve's HTTP front against the peers serving the same model: throughput, tail latency,
slow clients and memory (issue 12's figures).

    make bench-peers                                    # ~15 minutes
    .venv/bin/python benchmarks/peers.py --reps 1 --duration 3 --json

The peers, from PyPI in their own venv (``.venv-peers/``, created on first use, gitignored):
KServe's Python model server (V1 ``:predict`` and V2 ``infer``) and FastAPI + uvicorn
(benchmarks/peer_kserve.py, benchmarks/peer_apps.py). Each serves convserve's own
``Bundle.predict_proba`` on the embedded model (``--version``, default mnist:1, made the
production alias of a temporary copy of the store) with 2 worker processes and one BLAS thread
each; no server writes an access line per request. A peer that does not install is reported
and left out. convserve runs twice: as it ships (dynamic batching on, service/batching.py), and
as "convserve-unbatched" (``DYNAMIC_BATCHING=0``, /predict only), printed for reference: the
peers batch nothing.

Every server is started and warmed up; then, for each repetition and concurrency, every server
in turn (the order rotates) is driven by wrk with keep-alive clients on each of its routes while
the others sit idle, so the runs compared are seconds apart. The figures are medians over the
repetitions; a ratio against KServe is the median of the repetitions' own ratios (each taken
between runs seconds apart), with the ratio of the medians beside it. Then, for convserve
only:

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
import contextlib
import json
import os
import platform
import shutil
import socket
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]

from peer_servers import (  # noqa: E402
    WORKER_CLASSES,
    Server,
    build_servers,
    convserve,
    ensure_peers_venv,
    warm_up,
)
from peer_targets import errors, median_of, references, summarize, verdicts  # noqa: E402
from serve_load import free_port, rss_mb, run_wrk  # noqa: E402


# ------------------------------------------------------------------------------ measurements
def throughput(servers: list[Server], levels: list[int], reps: int, duration: float) -> dict:
    """{server: {route: {level: [wrk result per repetition]}}}.

    Every server is started and warmed up first; then, for each repetition and concurrency,
    every server in turn (the order rotates) takes the same load while the others sit idle.
    So the runs compared in one repetition are seconds apart, not minutes: on a shared
    machine whose speed drifts over minutes, the servers started alone one after the other
    (this benchmark's first design) measured the drift as much as the servers."""
    runs: dict = {server.name: {} for server in servers}
    with all_running(servers):
        for rep in range(reps):
            order = servers[rep % len(servers) :] + servers[: rep % len(servers)]
            for level in levels:
                for server in order:
                    measure_routes(server, level, duration, runs[server.name], rep)
    return runs


@contextlib.contextmanager
def all_running(servers: list[Server]):
    """Every server started and warmed up, for the runs that compare them; stopped after."""
    try:
        for server in servers:
            server.start()
            warm_up(server)
        yield
    finally:
        for server in servers:
            server.stop()


def measure_routes(server: Server, level: int, duration: float, into: dict, rep: int) -> None:
    """wrk on each of ``server``'s routes at ``level`` connections, with the server's CPU time
    per request; appended to ``into[route][level]``."""
    for key, route in server.routes.items():
        cpu = server.cpu_seconds()
        result = run_wrk(server.url + route.path, level, duration, route.script)
        cpu = server.cpu_seconds() - cpu
        result["server_cpu_us"] = cpu / max(result["requests"], 1) * 1e6
        into.setdefault(key, {}).setdefault(level, []).append(result)
        print(
            f"  rep {rep + 1} {server.name:9} {key:9} c={level:<3} "
            f"{result['rps']:8.0f} req/s  p99 {result.get('p99_ms', 0):7.2f} ms  "
            f"errors {errors(result)}  server CPU {result['server_cpu_us']:.0f} us/req",
            flush=True,
        )


def closing_clients(servers: list[Server], level: int, reps: int, duration: float) -> dict:
    """/predict with ``Connection: close`` (a connection per request): {server: [results]},
    paired as ``throughput`` is: both servers started and warmed up first, then each
    repetition runs them back to back (order alternating). Started and stopped for each run
    in turn, ~15 s apart, the same code measured 1.12x and 0.97x of the sync workers in two
    runs 20 minutes apart on this drifting machine."""
    runs: dict = {server.name: [] for server in servers}
    with all_running(servers):
        for rep in range(reps):
            for server in servers[rep % 2 :] + servers[: rep % 2]:
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
    return runs


class Dribbler(threading.Thread):
    """A slow client: sends ``head`` at once, then ``tail`` one byte every ``interval`` s."""

    def __init__(self, url_port: int, head: bytes, tail: bytes, interval: float, stop):
        super().__init__(daemon=True)
        self.port, self.head, self.tail = url_port, head, tail
        self.interval, self.stop = interval, stop

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
    """Each worker's RSS (MB) after its first ~1k /predict requests (1 s of load: ~3k
    requests over the 2 workers; in 0.5 s one worker had sometimes served only a few hundred
    and was still warming up) and after ``total``, all sent by wrk with 16 kept-alive
    connections (the same load throughout, so the two figures differ only by what the
    requests left behind); ``path_mb``: [requests sent, MB] after each 5 s of load, which
    tells a warm-up (a step early, then flat) from a leak (a steady climb)."""
    route = server.routes["predict"]
    server.start()
    try:
        sent = run_wrk(server.url + route.path, 16, 1.0, route.script)["requests"]
        workers = server.worker_pids()
        paths = {pid: [[sent, rss_mb(pid)]] for pid in workers}
        first_count, deadline = sent, time.monotonic() + seconds
        while sent < total and time.monotonic() < deadline:
            sent += run_wrk(server.url + route.path, 16, 5, route.script)["requests"]
            alive = set(server.worker_pids())
            for pid, path in paths.items():
                if pid in alive:
                    path.append([sent, rss_mb(pid)])
    finally:
        server.stop()
    return {
        "first_requests": first_count,
        "requests": sent,
        "workers": [
            {
                "after_first_mb": path[0][1],
                "after_all_mb": path[-1][1],
                "growth_mb": path[-1][1] - path[0][1],
                "path_mb": path,
            }
            for path in paths.values()
            if path[-1][0] == sent  # the worker lived to the end
        ],
    }


# ------------------------------------------------------------------------------------- main
@dataclass
class Measured:
    """What one run measured; each optional phase stays empty when skipped."""

    rows: list[dict]  # summarize()'s keep-alive rows
    close: dict = field(default_factory=dict)  # {server: [wrk results]}, Connection: close
    slow: dict = field(default_factory=dict)  # {server: slow_clients()}
    memory: dict = field(default_factory=dict)  # memory()'s figures for convserve


def parse_args() -> argparse.Namespace:
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
    return parser.parse_args()


def measure(
    store: Path, servers: list[Server], levels: list[int], skip: set[str], args: argparse.Namespace
) -> Measured:
    """Every phase not in ``skip``: keep-alive throughput for every server, then, for
    convserve (``servers[0]``), Connection: close against sync workers, slow clients (every
    server) and memory."""
    ours = servers[0]
    print(f"throughput: {args.reps} reps x {len(servers)} servers, levels {levels}", flush=True)
    runs = throughput(servers, levels, args.reps, args.duration)
    measured = Measured(rows=summarize(runs, levels))
    if "close" not in skip:
        sync = convserve(store, ours.routes, name="convserve-sync", extra=["-k", "sync"])
        sync.port = free_port()
        print("Connection: close clients, the front against sync workers", flush=True)
        measured.close = closing_clients([ours, sync], 16, args.reps, args.duration)
    if "slow" not in skip:
        print("slow clients", flush=True)
        for server in servers:
            measured.slow[server.name] = slow_clients(server, args.slow_seconds)
            print(f"  {server.name:15} {measured.slow[server.name]}", flush=True)
    if "memory" not in skip:
        print("memory", flush=True)
        measured.memory = memory(ours, args.memory_requests, args.memory_seconds)
    return measured


def build_report(
    args: argparse.Namespace,
    levels: list[int],
    not_installed: dict,
    loadavg_start: tuple,
    measured: Measured,
) -> dict:
    """The run's JSON document: the machine, the figures and the verdict on each target."""
    close = {
        name: {"rps": median_of(results, "rps"), "p99_ms": median_of(results, "p99_ms")}
        for name, results in measured.close.items()
    }
    checks = verdicts(measured.rows, levels, measured.close, measured.slow, measured.memory)
    return {
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "machine": f"{os.cpu_count()} cores, {platform.processor() or platform.machine()}",
        "loadavg_start": loadavg_start,
        "loadavg_end": os.getloadavg(),
        "duration_s": args.duration,
        "reps": args.reps,
        "not_installed": not_installed,
        "rows": measured.rows,
        "close": close,
        "slow_clients": measured.slow,
        "memory": measured.memory,
        "references": references(measured.rows, levels),
        "targets": [
            {"what": what, "figure": figure, "target": target, "met": met}
            for what, figure, target, met in checks
        ],
    }


def print_throughput(report: dict) -> None:
    """The heading and one line per server, route and concurrency (medians)."""
    print(
        f"\nconvserve vs peers  {report['date']}  {report['machine']}  "
        f"wrk {report['duration_s']:g} s x {report['reps']} reps (medians)  "
        f"loadavg {report['loadavg_start'][0]:.2f} -> {report['loadavg_end'][0]:.2f}"
    )
    for peer, why in report["not_installed"].items():
        print(f"not measured: {peer} (install failed: {why})")
    print(
        f"{'server':19} {'route':10} {'conc':>4} {'req/s':>8} {'p50':>8} {'p99':>9} {'err':>4} "
        f"{'CPU/req':>8}  runs"
    )
    for entry in report["rows"]:
        print(
            f"{entry['server']:19} {entry['route']:10} {entry['concurrency']:>4} "
            f"{entry['rps']:>8.0f} {entry['p50_ms']:>6.2f}ms {entry['p99_ms']:>7.2f}ms "
            f"{entry['errors']:>4} {entry['server_cpu_us']:>6.0f}us  {entry['runs']}"
        )


def print_report(report: dict) -> None:
    """The report as text: the throughput table, the convserve-only phases, the targets."""
    print_throughput(report)
    for name, figures in report["close"].items():
        print(
            f"Connection: close c=16  {name:15} {figures['rps']:8.0f} req/s  "
            f"p99 {figures['p99_ms']:.2f} ms"
        )
    mem = report["memory"]
    for number, worker in enumerate(mem.get("workers", []), 1):
        print(
            f"worker {number}: RSS {worker['after_first_mb']:.1f} MB after the first "
            f"{mem['first_requests']} requests, {worker['after_all_mb']:.1f} MB after "
            f"{mem['requests']} ({worker['growth_mb']:+.1f} MB); on the way: "
            + ", ".join(f"{mb:.1f} at {count:,}" for count, mb in worker.get("path_mb", []))
        )
    for name, figures in report["slow_clients"].items():
        print(
            f"slow clients, {name:15} slowest normal answer {figures['slowest_s'] * 1000:.0f} ms, "
            f"{figures['failures']} failed of {figures['answered'] + figures['failures']}"
        )
    for line in report["references"]:
        print(f"reference (not a target): {line}")
    print("\ntargets:")
    for check in report["targets"]:
        verdict = "MET " if check["met"] else "NOT "
        print(f"  {verdict} {check['what']}: {check['figure']} ({check['target']})")


def main() -> int:
    args = parse_args()
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
        store, servers = build_servers(Path(tmp), peers, args.version, args.worker_classes)
        measured = measure(store, servers, levels, skip, args)
    report = build_report(args, levels, not_installed, loadavg_start, measured)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
