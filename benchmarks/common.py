"""Helpers for benchmarks on a small shared machine: what ran where, and fair timings.

Timings on 2 cores shared with other work are noisy, so a benchmark here
- times the things it compares *interleaved* (A, B, A, B, ... with the order flipped every
  repetition), so both see the same machine state;
- reports medians of several repetitions and the ratio of the medians;
- prints the load average before and after, and the BLAS, its kernel and thread counts.

It also holds the data helpers benchmarks need (MNIST test digits, or digit-like stand-ins when
MNIST is not on this machine), so no benchmark imports test code.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
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


def environment(with_torch: bool = True) -> dict:
    """Versions, CPU, thread counts, BLAS kernel settings and the load average now.

    ``with_torch=False`` leaves torch unimported (a process timing only our NumPy code must not
    load PyTorch's thread pools); ``torch`` is then None.
    """
    torch = None
    if with_torch:
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


def spread(values: list[float]) -> dict:
    """Median, min, max and interquartile range of ``values`` (same units)."""
    ordered = sorted(values)
    quartiles = statistics.quantiles(ordered, n=4) if len(ordered) > 1 else ordered * 3
    return {
        "median": statistics.median(ordered),
        "min": ordered[0],
        "max": ordered[-1],
        "iqr": [quartiles[0], quartiles[2]],
        "count": len(ordered),
    }


def thread_env(threads: int | None) -> dict[str, str]:
    """This process's environment for a child with ``threads`` BLAS/OpenMP threads (None: the
    libraries' own default, the environment unchanged)."""
    env = dict(os.environ)
    if threads:
        for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            env[name] = str(threads)
    return env


def run_json_child(args: list[str], threads: int | None, timeout: float = 900) -> dict:
    """Run ``python <args>`` in its own process with ``threads`` threads and parse the JSON
    object it prints last on stdout. Raises SystemExit with the child's stderr on failure."""
    done = subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        env=thread_env(threads),
        cwd=REPO,
        timeout=timeout,
    )
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- data


def find_mnist_dir() -> Path | None:
    """$MNIST_DIR, then ../shared/data/mnist beside the repository (None when neither holds
    the MNIST test split)."""
    for candidate in (os.environ.get("MNIST_DIR"), REPO.parent / "shared" / "data" / "mnist"):
        if candidate and (Path(candidate) / "t10k-images-idx3-ubyte.gz").is_file():
            return Path(candidate)
    return None


def mnist_test_digits(count: int) -> tuple[np.ndarray, np.ndarray, str]:
    """The first ``count`` MNIST test images (count, 28, 28) uint8 and labels (count,), and
    where they came from; synthetic digits when MNIST is not on this machine."""
    from training.data import read_idx, synthetic_digits

    directory = find_mnist_dir()
    if directory is None:
        images, labels = synthetic_digits(count)
        return images, labels, "synthetic digits (MNIST not found)"
    images = read_idx(directory / "t10k-images-idx3-ubyte.gz")[:count]
    labels = read_idx(directory / "t10k-labels-idx1-ubyte.gz")[:count]
    return images, labels, f"MNIST test split ({directory})"
