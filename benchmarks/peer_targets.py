"""benchmarks/peers.py's figures: the medians of the runs, and the verdict on each of issue
12's targets (paired ratios against KServe: each repetition's runs are seconds apart)."""

from __future__ import annotations

import statistics

TARGETS = {
    "predict_vs_kserve_v1": {1: 1.0, 16: 1.1, 64: 1.1},
    "v2_vs_kserve_v2": 1.2,
    "p99_ms": {16: 12.0, 64: 40.0},
    "slow_client_answer_s": 1.0,
    "rss_growth_mb": 5.0,
}


def errors(result: dict) -> int:
    return result["non_2xx"] + result["socket_errors"]


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


# --------------------------------------------------------------------------------- targets
def versus_kserve(
    rows: list[dict],
    level: int,
    what: str,
    route: str,
    kserve_route: str,
    target: float,
    server: str = "convserve",
) -> tuple | None:
    """``server``'s req/s on ``route`` over KServe's on ``kserve_route`` at ``level``
    connections against ``target`` (a ratio), or None if either was not measured."""
    ours, theirs = row(rows, server, route, level), row(rows, "kserve", kserve_route, level)
    if not (ours and theirs):
        return None
    paired, figure = paired_ratio(ours["runs"], theirs["runs"])
    return (f"{what}, c={level}", figure, f">= {target}x", paired >= target)


def paired_ratio(ours: list[float], theirs: list[float]) -> tuple[float, str]:
    """Two servers' req/s, run by run (the runs of a repetition seconds apart) -> the median
    of the runs' own ratios, and that figure as printed: with each ratio and the ratio of
    the medians."""
    ratios = [a / b for a, b in zip(ours, theirs, strict=True)]
    paired = statistics.median(ratios)
    medians = statistics.median(ours) / statistics.median(theirs)
    runs = " ".join(f"{ratio:.2f}" for ratio in ratios)
    return paired, f"{paired:.2f}x (runs {runs}; medians' ratio {medians:.2f}x)"


def level_checks(rows: list[dict], level: int) -> list[tuple]:
    """The keep-alive targets at ``level`` connections: /predict and V2 infer against KServe's
    V1 and V2 routes, and /predict's p99 (ms); only the levels the issue sets a target for."""
    checks = []
    v1_targets = TARGETS["predict_vs_kserve_v1"]
    if level in v1_targets:
        what = "/predict vs KServe V1"
        checks.append(versus_kserve(rows, level, what, "predict", "kserve_v1", v1_targets[level]))
    what, target = "V2 infer vs KServe V2", TARGETS["v2_vs_kserve_v2"]
    checks.append(versus_kserve(rows, level, what, "v2", "v2", target))
    ours = row(rows, "convserve", "predict", level)
    if ours and level in TARGETS["p99_ms"]:
        p99, target = ours["p99_ms"], TARGETS["p99_ms"][level]
        what = f"/predict p99, c={level}"
        checks.append((what, f"{p99:.1f} ms", f"<= {target:g} ms", p99 <= target))
    return [check for check in checks if check]


def references(rows: list[dict], levels: list[int]) -> list[str]:
    """Not targets: convserve without dynamic batching against KServe V1, at each level."""
    lines = []
    for level in levels:
        check = versus_kserve(
            rows,
            level,
            "/predict unbatched vs KServe V1",
            "predict",
            "kserve_v1",
            1.0,
            server="convserve-unbatched",
        )
        if check:
            lines.append(f"{check[0]}: {check[1]}")
    return lines


def errors_check(rows: list[dict]) -> tuple:
    """convserve's failed requests over every keep-alive run: there must be none."""
    count = sum(entry["errors"] for entry in rows if entry["server"] == "convserve")
    return ("convserve errors (all keep-alive runs)", str(count), "0", count == 0)


def close_check(close: dict) -> tuple:
    """Today's front against gunicorn's sync workers with ``Connection: close`` clients: the
    median of the repetitions' own ratios must be no worse (no slack: a ratio under 1.0 is
    reported as not met, even when it is within the run-to-run noise)."""
    front, sync = ([r["rps"] for r in close[name]] for name in ("convserve", "convserve-sync"))
    paired, figure = paired_ratio(front, sync)
    return ("Connection: close, front vs sync workers", figure, ">= 1.0x (no worse)", paired >= 1)


def slow_check(slow: dict) -> tuple:
    """The slowest answer (s) a normal client got from convserve among slow clients, and its
    failed requests."""
    figure = f"{slow['slowest_s'] * 1000:.0f} ms, {slow['failures']} failed"
    met = slow["slowest_s"] < TARGETS["slow_client_answer_s"] and not slow["failures"]
    return ("slowest normal answer among slow clients", figure, "< 1 s, 0 failed", met)


def memory_check(mem: dict) -> tuple:
    """The largest growth of a worker's RSS (MB) between the first requests and the last."""
    growth = max(worker["growth_mb"] for worker in mem["workers"])
    what = f"worker RSS growth, {mem['first_requests']} -> {mem['requests']} requests"
    limit = TARGETS["rss_growth_mb"]
    return (what, f"{growth:+.1f} MB", f"<= {limit:g} MB", growth <= limit)


def verdicts(rows: list[dict], levels: list[int], close: dict, slow: dict, mem: dict) -> list:
    """(what, figure, target, met) for each of the issue's targets that was measured."""
    checks = [check for level in levels for check in level_checks(rows, level)]
    checks.append(errors_check(rows))
    if close:
        checks.append(close_check(close))
    if slow.get("convserve"):
        checks.append(slow_check(slow["convserve"]))
    if mem:
        checks.append(memory_check(mem))
    return checks
