"""Scale-out on one machine: what nginx in front of the replicas costs, and how fast a
promotion reaches them all.

Starts 3 ``convserve serve`` replicas (1 sync worker each) on a copy of --store, and nginx in
front with the repository's configuration (benchmarks/fleet.py, deploy/nginx/). Then:

* throughput: wrk POSTing one JSON digit to /predict, through the proxy (one wrk, --concurrency
  connections) and straight to the replicas (one wrk per replica, a third of the connections
  each, at the same time), alternating which goes first, --reps times; requests/s, p99 (for
  the direct runs the worst replica's p99), and the CPU time per request of the replicas and
  of nginx (utime + stime from /proc): on 2 shared cores, the CPU nginx takes is CPU the
  replicas do not get, which is the proxy's real cost here;
* convergence: --promotions alias moves (promote v2, roll back to v1, ...) while polling
  /predict through the proxy; for each, the time until every replica has answered with the
  new version (each answer names its replica, X-Served-By, and its version).

    .venv/bin/python benchmarks/scale_out.py                       # ~2 minutes
    .venv/bin/python benchmarks/scale_out.py --duration 3 --reps 1 --promotions 3 --json

Every run is bounded (wrk --duration; each convergence wait RELOAD_INTERVAL_S + 10 s).
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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]

from fleet import Fleet, post_predict  # noqa: E402
from serve_load import (  # noqa: E402
    cpu_seconds,
    publish_untrained,
    run_wrk,
    sample_digit,
    wrk_post_script,
)


def process_tree(pid: int) -> list[int]:
    """``pid`` and its direct children (gunicorn's master and worker, nginx's master and
    workers)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [pid, *map(int, children)]


def measured(fleet: Fleet, run) -> dict:
    """``run()`` -> a wrk result, plus CPU ms per request of the replicas and of nginx."""
    replica_pids = [p for r in fleet.replicas for p in process_tree(r.process.pid)]
    nginx_pids = process_tree(fleet.proxy.process.pid)
    replicas_before, nginx_before = cpu_seconds(replica_pids), cpu_seconds(nginx_pids)
    result = run()
    requests_done = max(result["requests"], 1)
    result["replica_cpu_ms"] = (cpu_seconds(replica_pids) - replicas_before) / requests_done * 1e3
    result["nginx_cpu_ms"] = (cpu_seconds(nginx_pids) - nginx_before) / requests_done * 1e3
    return result


def direct_run(fleet: Fleet, concurrency: int, duration: float, script: Path) -> dict:
    """One wrk per replica at once, concurrency/N connections each; summed requests/s."""
    share = max(1, concurrency // len(fleet.replicas))
    with ThreadPoolExecutor(len(fleet.replicas)) as pool:
        results = list(
            pool.map(lambda r: run_wrk(r.url + "/predict", share, duration, script), fleet.replicas)
        )
    return {
        "rps": sum(r["rps"] for r in results),
        "requests": sum(r["requests"] for r in results),
        "non_2xx": sum(r["non_2xx"] for r in results),
        "socket_errors": sum(r["socket_errors"] for r in results),
        "p99_ms": max(r.get("p99_ms", float("nan")) for r in results),
    }


def throughput(fleet: Fleet, args, script: Path) -> dict[str, list[dict]]:
    runs: dict[str, list[dict]] = {"proxy": [], "direct": []}
    modes = {
        "proxy": lambda: run_wrk(
            fleet.proxy.url + "/predict", args.concurrency, args.duration, script
        ),
        "direct": lambda: direct_run(fleet, args.concurrency, args.duration, script),
    }
    for repetition in range(args.reps):
        order = ["proxy", "direct"] if repetition % 2 == 0 else ["direct", "proxy"]
        for mode in order:
            runs[mode].append(measured(fleet, modes[mode]))
    return runs


def convergence(fleet: Fleet, store, body: bytes, promotions: int, interval: float) -> list[dict]:
    """Per alias move: seconds until each replica answered the new version (through nginx)."""
    addresses = {r.address for r in fleet.replicas}
    moves = []
    with requests.Session() as session:
        for number in range(promotions):
            target = 2 if number % 2 == 0 else 1
            first_new: dict[str, float] = {}
            moved_at = time.monotonic()
            store.promote("mnist", target, "production", force=True)
            deadline = moved_at + interval + 10
            while set(first_new) != addresses and time.monotonic() < deadline:
                answer = post_predict(session, fleet.proxy.url, body)
                if answer.status == 200 and answer.version == target:
                    first_new.setdefault(answer.served_by.split(",")[-1].strip(), answer.at)
            per_replica = sorted(at - moved_at for at in first_new.values())
            moves.append(
                {
                    "version": target,
                    "all_replicas_s": per_replica[-1] if len(first_new) == len(addresses) else None,
                    "per_replica_s": per_replica,
                }
            )
            time.sleep(0.5)
    return moves


def summary(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def report(runs: dict[str, list[dict]], moves: list[dict]) -> dict:
    result = {}
    for mode, results in runs.items():
        result[mode] = {
            key: summary([r[key] for r in results])
            for key in ("rps", "p99_ms", "replica_cpu_ms", "nginx_cpu_ms")
        }
        result[mode]["failed"] = sum(r["non_2xx"] + r["socket_errors"] for r in results)
    result["proxy_over_direct_rps"] = result["proxy"]["rps"]["median"] / max(
        result["direct"]["rps"]["median"], 1e-9
    )
    converged = [m["all_replicas_s"] for m in moves if m["all_replicas_s"] is not None]
    result["convergence_s"] = summary(converged) if converged else None
    result["convergence_moves"] = moves
    return result


def prepare_store(source: Path, directory: Path):
    """A copy of ``source`` with mnist@production and a second version to move the alias to."""
    from training.store import ModelStore

    store_dir = directory / "store"
    shutil.copytree(source, store_dir)
    store = ModelStore(store_dir)
    if "mnist" not in store.models():
        publish_untrained(store_dir, directory)
    version = store.aliases("mnist")["production"]
    bundle = store_dir / "mnist" / str(version) / "model.npz"
    copy = directory / "same-weights.npz"
    shutil.copyfile(bundle, copy)
    second = store.publish(copy, "mnist", note="scale-out benchmark: same weights", force=True)
    if version != 1 or second != 2:
        raise SystemExit(f"expected versions 1 and 2 in the copy, got {version} and {second}")
    return store


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", default=str(REPO / "model_store"))
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=12)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per wrk run")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--promotions", type=int, default=6)
    parser.add_argument("--reload-interval", type=float, default=1.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("wrk is not installed (apt-get install wrk)", file=sys.stderr)
        return 2
    pixels, _ = sample_digit()
    body = json.dumps({"image": pixels}, separators=(",", ":"))
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        store = prepare_store(Path(args.store), tmp)
        settings = dict(WORKERS="1", DRAIN_SECONDS="0", LOG_LEVEL="warning")
        settings["RELOAD_INTERVAL_S"] = str(args.reload_interval)
        with Fleet(store.root, tmp / "fleet", replicas=args.replicas, **settings) as fleet:
            runs = throughput(fleet, args, wrk_post_script(tmp, body))
            moves = convergence(fleet, store, body.encode(), args.promotions, args.reload_interval)
    result = report(runs, moves)
    result["settings"] = vars(args)
    result["loadavg"] = {"before": load_before, "after": os.getloadavg()}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_table(result)
    return 0


def cell(statistics_of: dict) -> str:
    """``{"median", "min", "max"}`` -> ``median (min-max)``."""
    s = statistics_of
    return f"{s['median']:.2f} ({s['min']:.2f}-{s['max']:.2f})"


def print_table(result: dict) -> None:
    print(f"load average before {result['loadavg']['before']}, after {result['loadavg']['after']}")
    columns = ("rps", "p99_ms", "replica_cpu_ms", "nginx_cpu_ms")
    print("path     " + " ".join(f"{name:>20}" for name in columns))
    for mode in ("proxy", "direct"):
        row = result[mode]
        cells = " ".join(f"{cell(row[name]):>20}" for name in columns)
        print(f"{mode:8} {cells}   failed {row['failed']}")
    print(f"proxy/direct req/s (medians): {result['proxy_over_direct_rps']:.3f}")
    if result["convergence_s"]:
        print(
            f"promotion -> every replica serving it: {cell(result['convergence_s'])} s, "
            f"RELOAD_INTERVAL_S={result['settings']['reload_interval']}"
        )


if __name__ == "__main__":
    sys.exit(main())
