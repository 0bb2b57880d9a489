"""Serving throughput, tail latency and memory: /predict against /healthz under one server.

Starts real gunicorn with the service's own config (2 sync workers by default) on a free
127.0.0.1 port, then drives it with wrk (Debian's package) at several concurrencies, alternating
/healthz and single-image JSON /predict runs so both see the same machine state. The figure that
matters is the ratio predict/healthz at each concurrency (target: >= 0.75 at c=16), the p99 of
/predict at c=16 (<= 10 ms) and the growth of each worker's RSS between the first 1k and 100k
requests (<= 5 MB).

    .venv/bin/python benchmarks/serve_load.py                # full run, ~3-4 minutes
    .venv/bin/python benchmarks/serve_load.py --duration 3 --reps 1 --json
    .venv/bin/python benchmarks/serve_load.py --untrained    # store without mnist yet

It serves a copy of --store (default model_store), so the benchmark never touches the real
one. While the store has no `mnist` yet, --untrained serves an untrained SimpleConvNet bundle
published into the temporary copy instead: the same architecture, so the same forward cost.

Besides requests/s and latency, each run records the workers' CPU time per request (utime +
stime from /proc, both workers): less sensitive than requests/s to what else the machine runs,
and the direct measure of what /predict costs beyond /healthz. The ratio column is the ratio of
the medians; the JSON also has the median of the per-repetition ratios (each repetition runs
/healthz and /predict back to back). The load average is printed before and after, and the
"others" column is the most CPU (in cores) the rest of the machine used during any run of that
level: all CPUs' busy time minus the workers' and wrk's. On 2 shared cores, figures taken while
others use more than ~0.1-0.2 cores are not comparable.

Every run is bounded: wrk runs for --duration seconds; the memory top-up stops at
--memory-requests or --memory-seconds, whichever comes first.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import requests

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]  # the packages, and common.py


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def sample_digit() -> tuple[list[list[int]], int]:
    """One MNIST test digit (or a synthetic one when MNIST is absent) and its label."""
    from common import mnist_test_digits

    images, labels, _ = mnist_test_digits(1)
    return images[0].tolist(), int(labels[0])


class Server:
    """gunicorn with service/gunicorn.conf.py on a free port; stopped with SIGTERM. ``app`` is
    the WSGI app spec (benchmarks/probe_app.py adds probe routes to the same service)."""

    def __init__(self, store: Path, workers: int, app: str = "service.app:create_app()"):
        self.workers = workers
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # Ours, so the benchmarks can weigh the workers' metrics files.
        self.metrics_dir = tempfile.mkdtemp(prefix="convserve-bench-metrics-")
        env = dict(os.environ)
        env.update(
            BIND=f"127.0.0.1:{self.port}",
            WORKERS=str(workers),
            MODEL_STORE=str(store),
            LOG_LEVEL="warning",
            PROMETHEUS_MULTIPROC_DIR=self.metrics_dir,
            DRAIN_SECONDS="0",  # no load balancer to wait for when a benchmark stops
        )
        gunicorn = Path(sys.executable).with_name("gunicorn")
        self.process = subprocess.Popen(
            [str(gunicorn), "-c", "service/gunicorn.conf.py", app],
            cwd=REPO,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"gunicorn exited with {self.process.returncode}")
            try:
                ready = requests.get(self.url + "/readyz", timeout=1).status_code == 200
                # ...and every worker forked: their CPU time is what the runs are charged.
                if ready and len(self.worker_pids()) == self.workers:
                    return
            except (requests.ConnectionError, requests.Timeout):
                pass  # not listening yet, or still loading
            time.sleep(0.2)
        raise RuntimeError("server not ready in time")

    def worker_pids(self) -> list[int]:
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        return [int(pid) for pid in children.read_text().split()]

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
        shutil.rmtree(self.metrics_dir, ignore_errors=True)


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of these processes so far, in seconds."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return total / ticks


def machine_busy_seconds() -> float:
    """CPU time all processors spent busy so far (every process, the kernel), in seconds."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")  # guest time is in user already


def children_cpu_seconds() -> float:
    """CPU time of the finished child processes waited for (the wrk runs)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def publish_untrained(store: Path, directory: Path) -> None:
    """Publish an untrained SimpleConvNet as mnist@production into ``store`` (a temporary copy)."""
    from training.bundle import build_metadata, input_contract, save_bundle
    from training.network import Network, preset
    from training.store import ModelStore

    network = Network(preset("simpleconvnet"), rng=np.random.default_rng(0))
    metadata = build_metadata(
        network, contract=input_contract(0.1307, 0.3081), class_labels=list(range(10))
    )
    bundle = save_bundle(directory / "untrained.npz", network, metadata)
    ModelStore(store).publish(bundle, "mnist", alias="production", force=True, note="untrained")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


LATENCY_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def parse_wrk(output: str) -> dict:
    """Requests/sec, total requests, errors and latency percentiles (ms) from `wrk --latency`."""
    result = {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))}
    result["requests"] = int(re.search(r"(\d+) requests in", output).group(1))
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    result["non_2xx"] = int(non_2xx.group(1)) if non_2xx else 0
    errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    result["socket_errors"] = sum(map(int, errors.groups())) if errors else 0
    for pct, value, unit in re.findall(r"^\s+(50|90|99)%\s+([\d.]+)(us|ms|s)\s*$", output, re.M):
        result[f"p{pct}_ms"] = float(value) * LATENCY_UNITS[unit]
    return result


def run_wrk(
    url: str, concurrency: int, duration: float, script: Path | None, headers: tuple = ()
) -> dict:
    """wrk's figures for one run (``parse_wrk``); ``headers`` are extra request headers, e.g.
    ``("Connection: close",)`` for clients that open a connection per request."""
    threads = min(concurrency, 2)
    command = [
        "wrk",
        "-t",
        str(threads),
        "-c",
        str(concurrency),
        "-d",
        f"{max(1, round(duration))}s",
        "--latency",
        "--timeout",
        "5s",
    ]
    for header in headers:
        command += ["-H", header]
    if script is not None:
        command += ["-s", str(script)]
    output = subprocess.run(
        command + [url], capture_output=True, text=True, check=True, timeout=duration + 30
    ).stdout
    return parse_wrk(output)


def measured_wrk_run(
    url: str, concurrency: int, duration: float, script: Path | None, workers: list[int]
) -> dict:
    """``run_wrk`` plus what it cost: ``worker_cpu_us``, the workers' CPU time per request, and
    ``other_cores``, what the rest of the machine used meanwhile in cores (the busy time of all
    CPUs minus the workers' and wrk's own)."""
    cpu_before = cpu_seconds(workers)
    busy_before, wrk_before = machine_busy_seconds(), children_cpu_seconds()
    started = time.monotonic()
    result = run_wrk(url, concurrency, duration, script)
    elapsed = time.monotonic() - started
    cpu_used = cpu_seconds(workers) - cpu_before
    result["worker_cpu_us"] = cpu_used / max(result["requests"], 1) * 1e6
    foreign = machine_busy_seconds() - busy_before
    foreign -= cpu_used + children_cpu_seconds() - wrk_before
    result["other_cores"] = foreign / elapsed
    return result


def wrk_post_script(directory: Path, body: str) -> Path:
    script = directory / "predict.lua"
    script.write_text(
        'wrk.method = "POST"\n'
        'wrk.headers["Content-Type"] = "application/json"\n'
        f"wrk.body = {json.dumps(body)}\n"
    )
    return script


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", default=str(REPO / "model_store"))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", default="1,16,64")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per wrk run")
    parser.add_argument("--reps", type=int, default=3, help="alternating repetitions per level")
    parser.add_argument("--memory-requests", type=int, default=100_000)
    parser.add_argument("--memory-seconds", type=float, default=120.0)
    parser.add_argument(
        "--untrained",
        action="store_true",
        help="serve an untrained SimpleConvNet if the store has no mnist model",
    )
    parser.add_argument("--json", action="store_true")
    return parser.parse_args()


def warm_up(server: Server, body: str) -> tuple[int, dict]:
    """1,001 requests (the first checked): -> (the predicted label, the model that served)."""
    headers = {"Content-Type": "application/json"}
    answer = requests.post(server.url + "/predict", data=body, headers=headers, timeout=5)
    answer.raise_for_status()
    with requests.Session() as session:
        for _ in range(1000):
            session.post(server.url + "/predict", data=body, headers=headers, timeout=5)
    return answer.json()["predictions"][0]["label"], answer.json()["model"]


def load_levels(server: Server, args, levels: list[int], script: Path, workers: list[int]):
    """wrk at every level, /healthz and /predict alternating -> (runs, /predict requests)."""
    runs: dict[str, dict[int, list[dict]]] = {"healthz": {}, "predict": {}}
    sent = 0
    for concurrency in levels:
        for _ in range(args.reps):
            for route, lua in (("healthz", None), ("predict", script)):
                result = measured_wrk_run(
                    server.url + "/" + route, concurrency, args.duration, lua, workers
                )
                runs[route].setdefault(concurrency, []).append(result)
                if route == "predict":
                    sent += result["requests"]
    return runs, sent


def serve_and_measure(args, levels: list[int], body: str) -> dict:
    """One server on a copy of the store: warm-up, the levels, the memory top-up."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        store = tmp / "store"
        shutil.copytree(args.store, store)
        untrained = args.untrained and not (store / "mnist").is_dir()
        if untrained:
            publish_untrained(store, tmp)
        script = wrk_post_script(tmp, body)
        server = Server(store, args.workers)
        try:
            server.wait_ready()
            predicted, served = warm_up(server, body)
            workers = server.worker_pids()
            rss_first = {pid: rss_mb(pid) for pid in workers}
            runs, sent = load_levels(server, args, levels, script, workers)
            sent += 1001
            # Top the predict count up to --memory-requests, bounded in time.
            deadline = time.monotonic() + args.memory_seconds
            while sent < args.memory_requests and time.monotonic() < deadline:
                sent += run_wrk(server.url + "/predict", 16, 5, script)["requests"]
            rss_last = {pid: rss_mb(pid) for pid in server.worker_pids()}
        finally:
            server.stop()
    return {
        "runs": runs,
        "sent": sent,
        "served": served,
        "predicted": predicted,
        "untrained": untrained,
        "memory": [
            {
                "pid": pid,
                "rss_after_1k_mb": rss_first[pid],
                "rss_after_all_mb": rss_last.get(pid),
                "growth_mb": (rss_last[pid] - rss_first[pid]) if pid in rss_last else None,
            }
            for pid in rss_first
        ],
    }


def summarise(runs: dict, levels: list[int]) -> list[dict]:
    """Per level: medians of req/s, p99 and worker CPU per request; errors; the ratio."""
    summary = []
    for concurrency in levels:
        row = {"concurrency": concurrency}
        for route in ("healthz", "predict"):
            results = runs[route][concurrency]
            row[f"{route}_rps"] = statistics.median(r["rps"] for r in results)
            row[f"{route}_p99_ms"] = statistics.median(r.get("p99_ms", np.nan) for r in results)
            row[f"{route}_errors"] = sum(r["non_2xx"] + r["socket_errors"] for r in results)
            row[f"{route}_worker_cpu_us"] = statistics.median(r["worker_cpu_us"] for r in results)
            row[f"{route}_other_cores_max"] = max(r["other_cores"] for r in results)
        row["ratio"] = row["predict_rps"] / row["healthz_rps"]
        row["ratio_paired_median"] = statistics.median(
            p["rps"] / h["rps"]
            for h, p in zip(runs["healthz"][concurrency], runs["predict"][concurrency], strict=True)
        )
        summary.append(row)
    return summary


def print_report(report: dict, args) -> None:
    print(
        f"convserve serve_load  {report['date']}  {report['machine']}  "
        f"workers={args.workers}  model={report['served_model']}"
        f"{' (untrained)' if report['untrained_model'] else ''}  "
        f"wrk {args.duration:g}s x {args.reps} reps (medians)"
    )
    print(f"loadavg at start: {tuple(round(x, 2) for x in report['loadavg_start'])}")
    print(
        f"{'conc':>5} {'healthz rps':>12} {'predict rps':>12} {'ratio':>6} "
        f"{'healthz p99':>12} {'predict p99':>12} {'errors':>7} {'worker CPU us/req h/p':>22} "
        f"{'others':>6}"
    )
    for row in report["levels"]:
        print(
            f"{row['concurrency']:>5} {row['healthz_rps']:>12.0f} {row['predict_rps']:>12.0f} "
            f"{row['ratio']:>6.2f} {row['healthz_p99_ms']:>10.2f}ms "
            f"{row['predict_p99_ms']:>10.2f}ms "
            f"{row['healthz_errors'] + row['predict_errors']:>7} "
            f"{row['healthz_worker_cpu_us']:>14.0f} / {row['predict_worker_cpu_us']:<5.0f} "
            f"{max(row['healthz_other_cores_max'], row['predict_other_cores_max']):>6.2f}"
        )
    print(
        f"predict requests sent: {report['predict_requests_total']}; digit label "
        f"{report['digit_label']}, predicted {report['predicted_label']}"
    )
    for entry in report["memory"]:
        print(
            f"worker {entry['pid']}: RSS after 1k {entry['rss_after_1k_mb']:.1f} MB, "
            f"after all {entry['rss_after_all_mb']:.1f} MB, growth {entry['growth_mb']:+.1f} MB"
        )
    print(f"loadavg at end: {tuple(round(x, 2) for x in report['loadavg_end'])}")


def main() -> int:
    args = parse_args()
    if shutil.which("wrk") is None:
        print("wrk is not installed (apt-get install wrk)", file=sys.stderr)
        return 2
    levels = [int(c) for c in args.concurrency.split(",")]
    pixels, label = sample_digit()
    body = json.dumps({"image": pixels}, separators=(",", ":"))
    loadavg_start = os.getloadavg()
    measured = serve_and_measure(args, levels, body)
    report = {
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "machine": f"{os.cpu_count()} cores, {platform.processor() or platform.machine()}",
        "loadavg_start": loadavg_start,
        "loadavg_end": os.getloadavg(),
        "workers": args.workers,
        "duration_s": args.duration,
        "reps": args.reps,
        "served_model": measured["served"],
        "untrained_model": measured["untrained"],
        "digit_label": label,
        "predicted_label": measured["predicted"],
        "levels": summarise(measured["runs"], levels),
        "predict_requests_total": measured["sent"],
        "memory": measured["memory"],
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
