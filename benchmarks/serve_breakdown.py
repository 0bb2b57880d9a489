"""Where /predict's cost goes under load: /healthz, then a POST that only moves /predict's bytes,
then all of /predict but its forward pass, then /predict, on one server.

serve_load.py measures /predict against /healthz (target: >= 0.75x at concurrency 16). This
script prices the steps between the two, with the same gunicorn config (2 sync workers) and
wrk, so the ratio can be read as a budget: how much of /healthz's cost is left for the forward
pass once HTTP, parsing and answering are paid.

    .venv/bin/python benchmarks/serve_breakdown.py            # ~2.5 minutes
    .venv/bin/python benchmarks/serve_breakdown.py --reps 3 --json

Routes, each run with wrk for --duration seconds at --concurrency, the order rotated every
repetition so each sees the same machine state on average (medians of --reps):

* ``GET /healthz``: the service's liveness route (gunicorn + Flask, a constant body);
* ``POST /_probe/http``: reads the single-image JSON body and answers /predict's answer for it,
  cached (benchmarks/probe_app.py);
* ``POST /_probe/no-forward``: /predict's own steps with the forward pass replaced by cached
  probabilities;
* ``POST /_probe/first-layer``: the same plus the network's first step (SimpleConvNet: the
  fused conv -> ReLU -> max-pool, the training package's own code) on the request's pixels;
* ``POST /predict``: the real route.

Per request it reports the workers' CPU time (utime + stime from /proc) and the machine's CPU
(cores / requests per second: wrk, the kernel and the workers together; exact when the cores
are saturated, as they are from concurrency 16 on). The *step* column is what each route costs
beyond the one above it. The last lines turn the ratio target into a budget: the machine CPU per
request /predict may cost for predict/healthz >= 0.75, minus what the no-forward route costs, is
what the forward pass may cost.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import requests
from serve_load import REPO, Server, measured_wrk_run, run_wrk, sample_digit, wrk_post_script

ROUTES = ("healthz", "_probe/http", "_probe/no-forward", "_probe/first-layer", "predict")
TARGET_RATIO = 0.75


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", default=str(REPO / "model_store"))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per wrk run")
    parser.add_argument("--reps", type=int, default=5, help="rotations of the routes")
    parser.add_argument("--json", action="store_true")
    return parser.parse_args()


def check_probes_answer_alike(server: Server, body: str) -> None:
    headers = {"Content-Type": "application/json"}
    answers = {
        route: requests.post(f"{server.url}/{route}", data=body, headers=headers, timeout=5).json()
        for route in ROUTES[1:]
    }
    if len({json.dumps(answer, sort_keys=True) for answer in answers.values()}) != 1:
        raise RuntimeError(f"the probe routes answer differently from /predict: {answers}")


def measure_routes(args, body: str) -> dict[str, list[dict]]:
    """Every route under the same wrk load, rotating the order each repetition."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        store = tmp / "store"
        shutil.copytree(args.store, store)
        script = wrk_post_script(tmp, body)
        server = Server(store, args.workers, app="benchmarks.probe_app:create_app()")
        try:
            server.wait_ready()
            check_probes_answer_alike(server, body)
            workers = server.worker_pids()
            lua = {route: None if route == "healthz" else script for route in ROUTES}
            for route in ROUTES:  # warm-up: imports, caches, first-call paths
                run_wrk(f"{server.url}/{route}", args.concurrency, 1, lua[route])
            runs: dict[str, list[dict]] = {route: [] for route in ROUTES}
            for rep in range(args.reps):
                order = ROUTES[rep % len(ROUTES) :] + ROUTES[: rep % len(ROUTES)]
                for route in order:
                    url = f"{server.url}/{route}"
                    runs[route].append(
                        measured_wrk_run(url, args.concurrency, args.duration, lua[route], workers)
                    )
            return runs
        finally:
            server.stop()


def route_rows(runs: dict[str, list[dict]], cores: int) -> list[dict]:
    """Per route: medians, and each step's CPU cost over the route before it."""
    rows = []
    for route in ROUTES:
        results = runs[route]
        rps = statistics.median(r["rps"] for r in results)
        rows.append(
            {
                "route": route,
                "rps": rps,
                "p99_ms": statistics.median(r.get("p99_ms", float("nan")) for r in results),
                "errors": sum(r["non_2xx"] + r["socket_errors"] for r in results),
                "worker_cpu_us": statistics.median(r["worker_cpu_us"] for r in results),
                "machine_cpu_us": cores / rps * 1e6,
                "other_cores_max": max(r["other_cores"] for r in results),
            }
        )
    healthz = rows[0]
    for previous, row in zip([None, *rows], rows, strict=False):
        row["ratio_to_healthz"] = row["rps"] / healthz["rps"]
        for key in ("machine_cpu_us", "worker_cpu_us"):
            row[f"step_{key}"] = row[key] - previous[key] if previous else None
    return rows


def forward_budget(rows: list[dict]) -> dict:
    """What the forward pass may cost for TARGET_RATIO, and what it costs."""
    by_route = {row["route"]: row for row in rows}
    healthz, no_forward, first_layer, predict = (
        by_route[route]
        for route in ("healthz", "_probe/no-forward", "_probe/first-layer", "predict")
    )
    allowed = healthz["machine_cpu_us"] / TARGET_RATIO
    return {
        "target_ratio": TARGET_RATIO,
        "predict_machine_cpu_us_allowed": allowed,
        "forward_machine_cpu_us_allowed": allowed - no_forward["machine_cpu_us"],
        "forward_machine_cpu_us_measured": predict["machine_cpu_us"] - no_forward["machine_cpu_us"],
        "first_layer_machine_cpu_us_measured": first_layer["machine_cpu_us"]
        - no_forward["machine_cpu_us"],
        "ratio_with_a_free_forward_pass": no_forward["ratio_to_healthz"],
    }


def print_report(report: dict) -> None:
    budget = report["budget"]
    print(
        f"convserve serve_breakdown  {report['date']}  {report['cores']} cores  "
        f"workers={report['workers']}  c={report['concurrency']}  "
        f"wrk {report['duration_s']:g}s x {report['reps']} reps (medians)"
    )
    print(f"loadavg at start: {tuple(round(x, 2) for x in report['loadavg_start'])}")
    print(
        f"{'route':>18} {'req/s':>7} {'x healthz':>9} {'p99':>8} {'errors':>6} "
        f"{'worker CPU/req':>15} {'machine CPU/req':>16} {'step':>8} {'others':>6}"
    )
    for row in report["routes"]:
        step = row["step_machine_cpu_us"]
        print(
            f"{row['route']:>18} {row['rps']:>7.0f} {row['ratio_to_healthz']:>9.2f} "
            f"{row['p99_ms']:>6.2f}ms {row['errors']:>6} {row['worker_cpu_us']:>12.0f} us "
            f"{row['machine_cpu_us']:>13.0f} us {'' if step is None else f'{step:+.0f} us':>8} "
            f"{row['other_cores_max']:>6.2f}"
        )
    print(
        f"with a forward pass that cost nothing, /predict would reach "
        f"{budget['ratio_with_a_free_forward_pass']:.2f}x /healthz"
    )
    print(
        f"for {TARGET_RATIO}x the forward pass may cost "
        f"{budget['forward_machine_cpu_us_allowed']:.0f} us of machine CPU per request; it costs "
        f"{budget['forward_machine_cpu_us_measured']:.0f} us, its first layer alone "
        f"{budget['first_layer_machine_cpu_us_measured']:.0f} us"
    )
    print(f"loadavg at end: {tuple(round(x, 2) for x in report['loadavg_end'])}")


def main() -> int:
    args = parse_args()
    if shutil.which("wrk") is None:
        print("wrk is not installed (apt-get install wrk)", file=sys.stderr)
        return 2
    pixels, _ = sample_digit()
    body = json.dumps({"image": pixels}, separators=(",", ":"))
    cores = os.cpu_count() or 1
    loadavg_start = os.getloadavg()
    rows = route_rows(measure_routes(args, body), cores)
    report = {
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "cores": cores,
        "workers": args.workers,
        "concurrency": args.concurrency,
        "duration_s": args.duration,
        "reps": args.reps,
        "loadavg_start": loadavg_start,
        "loadavg_end": os.getloadavg(),
        "routes": rows,
        "budget": forward_budget(rows),
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
