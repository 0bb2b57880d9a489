"""Helpers for benchmarks on a small shared machine: what ran where, and fair timings.

Timings on 2 cores shared with other work are noisy, so a benchmark here
- times the things it compares *interleaved* (A, B, A, B, ... with the order flipped every
  repetition), so both see the same machine state;
- reports medians of several repetitions and the ratio of the medians;
- prints the load average before and after, and the BLAS, its kernel and thread counts.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (or what platform knows)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def blas_info() -> list[dict]:
    """Thread pools of the loaded BLAS/OpenMP libraries (threadpoolctl when installed), else
    numpy's build configuration."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        config = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        return [{"user_api": "blas", "name": config.get("name"), "version": config.get("version")}]
    keep = ("user_api", "internal_api", "prefix", "version", "num_threads", "architecture")
    pools = []
    for pool in threadpool_info():
        info = {k: pool[k] for k in keep if k in pool}
        # Which package shipped it: numpy.libs, scipy.libs, torch/lib, ...
        parent = Path(pool["filepath"]).parent
        info["package"] = parent.parent.name if parent.name == "lib" else parent.name
        pools.append(info)
    return pools


def environment() -> dict:
    """Versions, CPU, thread counts, BLAS kernel settings and the load average now."""
    try:
        import torch  # first, so its thread pools are loaded when they are listed
    except ImportError:
        torch = None
    info = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "cpu": cpu_model(),
        "nproc": os.cpu_count(),
        "loadavg": [round(v, 2) for v in os.getloadavg()],
        "blas": blas_info(),
        # Set on these machines and deliberately left alone; recorded so figures can be compared.
        "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE"),
        "OPENBLAS_L2_SIZE": os.environ.get("OPENBLAS_L2_SIZE"),
    }
    info["torch"] = torch.__version__ if torch else None
    if torch:
        info["torch_threads"] = torch.get_num_threads()
    return info


def set_threads(count: int) -> None:
    """Use ``count`` threads in numpy's BLAS (needs threadpoolctl) and in PyTorch."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError as exc:
        raise SystemExit("--threads needs threadpoolctl: pip install threadpoolctl") from exc
    threadpool_limits(count, user_api="blas")
    try:
        import torch
    except ImportError:
        return
    torch.set_num_threads(count)


def time_per_call(function: Callable[[], object], calls: int) -> float:
    """Mean seconds per call over ``calls`` back-to-back calls."""
    start = time.perf_counter()
    for _ in range(calls):
        function()
    return (time.perf_counter() - start) / calls


def interleaved(
    candidates: dict[str, Callable[[], object]], calls: int, repetitions: int, warmup: int = 3
) -> dict[str, list[float]]:
    """Seconds per call of each candidate, one figure per repetition.

    Each repetition times every candidate for ``calls`` calls, in an order that alternates
    between repetitions (forward, then reversed), so slow spells hit all candidates alike.
    """
    for function in candidates.values():
        for _ in range(warmup):
            function()
    names = list(candidates)
    results: dict[str, list[float]] = {name: [] for name in names}
    for repetition in range(repetitions):
        order = names if repetition % 2 == 0 else names[::-1]
        for name in order:
            results[name].append(time_per_call(candidates[name], calls))
    return results


def median(values: list[float]) -> float:
    return statistics.median(values)
