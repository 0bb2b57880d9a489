"""What the worst legal requests cost a worker, and how fast the illegal ones are refused.

For each kind of request at the limits, a fresh `gunicorn` (the service's config, one worker,
so its peak RSS is the request's) is warmed up with one small request of every kind, then sent
the request three times: printed are the growth of the worker's VmHWM (peak RSS, /proc) over
its warmed-up value and the median time to the answer. Then the refusals (413 before any work)
and the growth of /metrics and of the multiprocess metrics files under 5,000 invented HTTP
methods.

    .venv/bin/python benchmarks/faults.py            # ~1 minute
    .venv/bin/python benchmarks/faults.py --json
"""

from __future__ import annotations

import argparse
import io
import json
import random
import statistics
import string
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import requests
from PIL import Image

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]

from serve_load import Server, publish_untrained  # noqa: E402

SIDES = (4096, 2048)  # 8.4 MP: MAX_IMAGE_PIXELS


def encoded(image: Image.Image, fmt: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def drawing(mode: str, size: tuple[int, int]) -> Image.Image:
    """Light paper (or a transparent canvas) with one dark bar, in ``mode``."""
    width, height = size
    bar = (slice(height // 3, 2 * height // 3), slice(width // 2 - 60, width // 2 + 60))
    if mode == "RGBA":
        pixels = np.zeros((height, width, 4), np.uint8)
        pixels[bar] = (0, 0, 0, 255)
        return Image.fromarray(pixels, "RGBA")
    if mode == "I;16":
        pixels = np.full((height, width), 60000, "<u2")
        pixels[bar] = 1000
        return Image.frombytes("I;16", size, pixels.tobytes())
    pixels = np.full((height, width), 230, np.uint8)
    pixels[bar] = 20
    return Image.fromarray(pixels).convert(mode)


def request_kinds() -> dict[str, dict]:
    """name -> keyword arguments of requests.post for /predict, each at a limit."""
    png = {"Content-Type": "image/png"}
    grey16 = encoded(drawing("I;16", SIDES))
    floats = {"images": (np.random.default_rng(0).random((256, 784)) * 255).round(3).tolist()}
    npy = io.BytesIO()
    np.save(npy, np.zeros((256, 28, 28)), allow_pickle=False)
    return {
        "RGBA PNG 4096x2048": {"data": encoded(drawing("RGBA", SIDES)), "headers": png},
        "16-bit PNG 4096x2048": {"data": grey16, "headers": png},
        "RGB PNG 4096x2048": {"data": encoded(drawing("RGB", SIDES)), "headers": png},
        "JPEG 8000x6000": {
            "data": encoded(drawing("RGB", (8000, 6000)), "JPEG", quality=90),
            "headers": {"Content-Type": "image/jpeg"},
        },
        "7 x 16-bit PNG 4096x2048 (MAX_REQUEST_PIXELS)": {
            "files": [("file", (f"{i}.png", grey16, "image/png")) for i in range(7)]
        },
        "JSON 256 images of floats": {"json": floats},
        ".npy 256 images float64": {
            "data": npy.getvalue(),
            "headers": {"Content-Type": "application/x-npy"},
        },
    }


def vm_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} for {pid}")


def warm_up(url: str) -> None:
    small = encoded(drawing("I;16", (64, 64)))
    requests.post(url + "/predict", data=small, headers={"Content-Type": "image/png"}, timeout=30)
    requests.post(url + "/predict", json={"images": [[0] * 784] * 2}, timeout=30)
    files = [("file", ("a.png", small, "image/png"))] * 2
    requests.post(url + "/predict", files=files, timeout=30)


def measure_kind(store: Path, request: dict, repetitions: int) -> dict:
    server = Server(store, workers=1)
    try:
        server.wait_ready()
        warm_up(server.url)
        (pid,) = server.worker_pids()
        before = vm_kib(pid, "VmHWM")
        seconds, statuses = [], set()
        for _ in range(repetitions):
            started = time.perf_counter()
            statuses.add(requests.post(server.url + "/predict", timeout=120, **request).status_code)
            seconds.append(time.perf_counter() - started)
        return {
            "status": sorted(statuses),
            "peak_rss_growth_mib": round((vm_kib(pid, "VmHWM") - before) / 1024, 1),
            "seconds_median": round(statistics.median(seconds), 3),
            "same_worker": server.worker_pids() == [pid],
        }
    finally:
        server.stop()


def refusals(store: Path) -> dict:
    """Seconds to the 413 of requests over the limits, and the metrics' growth."""
    big_json = b'{"images": [' + b",".join([b"[" + b"0," * 783 + b"0]"] * 3300) + b"]}"
    over = encoded(drawing("I;16", SIDES))
    cases = {
        "JSON 3,300 images (10 MiB)": {
            "data": big_json,
            "headers": {"Content-Type": "application/json"},
        },
        "9 x 8.4 MP (over MAX_REQUEST_PIXELS)": {
            "files": [("file", (f"{i}.png", over, "image/png")) for i in range(9)]
        },
    }
    server = Server(store, workers=2)
    try:
        server.wait_ready()
        figures = {}
        for name, request in cases.items():
            started = time.perf_counter()
            status = requests.post(server.url + "/predict", timeout=120, **request).status_code
            figures[name] = {"status": status, "seconds": round(time.perf_counter() - started, 3)}
        figures["metrics"] = metrics_growth(server)
        return figures
    finally:
        server.stop()


def metrics_growth(server: Server) -> dict:
    directory = Path(server.metrics_dir)
    before_files = sum(path.stat().st_size for path in directory.glob("*.db"))
    before = len(requests.get(server.url + "/metrics", timeout=10).content)
    rng = random.Random(0)
    with requests.Session() as session:
        for _ in range(5_000):
            method = "".join(rng.choices(string.ascii_uppercase, k=rng.randint(3, 12)))
            session.request(method, server.url + "/predict", timeout=10)
    after = len(requests.get(server.url + "/metrics", timeout=10).content)
    after_files = sum(path.stat().st_size for path in directory.glob("*.db"))
    return {
        "metrics_bytes_before": before,
        "metrics_growth_bytes": after - before,
        "multiprocess_files_growth_bytes": after_files - before_files,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", default=str(Path(__file__).resolve().parents[1] / "model_store"))
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="convserve-faults-") as directory:
        store = Path(directory) / "store"
        if (Path(args.store) / "mnist").is_dir():
            import shutil

            shutil.copytree(args.store, store)
        else:
            publish_untrained(store, Path(directory))
        report = {
            "kinds": {
                name: measure_kind(store, request, args.repetitions)
                for name, request in request_kinds().items()
            },
            "refusals": refusals(store),
        }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print("request at the limits | status | peak RSS growth MiB | median s")
    for name, row in report["kinds"].items():
        print(f"{name} | {row['status']} | {row['peak_rss_growth_mib']} | {row['seconds_median']}")
    print(json.dumps(report["refusals"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
