"""Hot reload on a real server with 2 workers: a version published and promoted while a bounded
load runs is served by every worker within the poll interval, with zero failed requests; a
corrupt version is refused while the old one keeps serving."""

from __future__ import annotations

import json
import os
import threading
import time

import numpy as np
import pytest
import requests

from tests.support.bundles import make_bundle, make_store
from tests.support.http_io import metric_samples, metric_total
from tests.support.servers import GunicornServer

pytestmark = pytest.mark.slow

INTERVAL_S = 0.5
BODY = {"image": (np.eye(28, dtype=np.uint8) * 255).tolist()}


@pytest.fixture(scope="module")
def reload_setup(tmp_path_factory):
    directory = tmp_path_factory.mktemp("reload")
    store = make_store(directory, dict(seed=1, test_accuracy=0.5, alias="production"))
    server = GunicornServer(
        directory / "store", directory / "gunicorn.log", RELOAD_INTERVAL_S=str(INTERVAL_S)
    ).start()
    yield server, store, directory
    assert server.stop() == 0, server.log_text()[-3000:]


def served_versions(server) -> dict[int, int]:
    """pid -> served version, from the merged metrics of both workers."""
    text = requests.get(server.url + "/metrics", timeout=10).text
    return {
        int(labels["pid"]): int(value)
        for labels, value in metric_samples(text, "convserve_served_model_version")
    }


class BoundedLoad:
    """Threads posting /predict until stopped, or ``max_requests`` each, or ``max_seconds``."""

    def __init__(
        self, url: str, threads: int = 4, max_requests: int = 2000, max_seconds: float = 60
    ):
        self.url = url + "/predict"
        self.max_requests = max_requests
        self.deadline = time.monotonic() + max_seconds
        self.stop_event = threading.Event()
        self.lock = threading.Lock()
        self.results: list[tuple[float, int, int | None]] = []  # (time, status, version)
        self.threads = [threading.Thread(target=self._run) for _ in range(threads)]

    def _run(self) -> None:
        for _ in range(self.max_requests):
            if self.stop_event.is_set() or time.monotonic() > self.deadline:
                return
            try:
                response = requests.post(self.url, json=BODY, timeout=10)
                version = response.json()["model"]["version"] if response.ok else None
                status = response.status_code
            except requests.RequestException as exc:  # a dropped connection counts as failed
                status, version = -1, repr(exc)
            with self.lock:
                self.results.append((time.monotonic(), status, version))

    def __enter__(self) -> BoundedLoad:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop_event.set()
        for thread in self.threads:
            thread.join(timeout=30)


def test_promotion_under_load_swaps_every_worker_without_failures(reload_setup):
    server, store, directory = reload_setup
    assert set(served_versions(server).values()) == {1}
    new_bundle = make_bundle(directory / "v2.npz", seed=2, test_accuracy=0.6)
    with BoundedLoad(server.url) as load:
        time.sleep(1.0)  # the load is running on version 1
        version = store.publish(new_bundle, "mnist")
        store.promote("mnist", version, "production")
        promoted_at = time.monotonic()
        swapped_at = None
        for _ in range(400):  # bounded: up to ~20 s on a busy machine
            versions = served_versions(server)
            if len(versions) == 2 and set(versions.values()) == {version}:
                swapped_at = time.monotonic()
                break
            time.sleep(0.05)
        time.sleep(1.0)  # keep the load on the new version for a while
    assert swapped_at is not None, f"workers still serve {served_versions(server)}"
    # Within the interval, plus a generous allowance for a loaded 2-core machine.
    assert swapped_at - promoted_at < INTERVAL_S + 5.0

    failures = [(status, version) for _, status, version in load.results if status != 200]
    assert failures == []
    versions_in_order = [version for _, _, version in load.results]
    assert versions_in_order[0] == 1 and 2 in versions_in_order
    after_swap = [version for at, _, version in load.results if at > swapped_at + 0.1]
    assert after_swap and set(after_swap) == {2}


def test_a_corrupt_version_is_refused_and_the_old_keeps_serving(reload_setup):
    server, store, directory = reload_setup
    current = requests.get(server.url + "/readyz", timeout=10).json()["model"]["version"]
    bad = store.publish(make_bundle(directory / "bad.npz", seed=3, test_accuracy=0.9), "mnist")
    bundle_path = store.bundle_path("mnist", bad)
    data = bytearray(bundle_path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    bundle_path.write_bytes(bytes(data))
    # Point the alias at it by hand (the store's promote would refuse a corrupt version).
    aliases_path = bundle_path.parents[1] / "aliases.json"
    document = json.loads(aliases_path.read_text())
    document["aliases"]["production"] = bad
    tmp = aliases_path.with_name(".aliases.by-hand.tmp")
    tmp.write_text(json.dumps(document))
    os.replace(tmp, aliases_path)

    with BoundedLoad(server.url, threads=2, max_seconds=30) as load:
        refused = None
        for _ in range(400):  # until both workers have counted the refusal (bounded)
            text = requests.get(server.url + "/metrics", timeout=10).text
            refused = metric_total(text, "convserve_model_reloads_total", outcome="failure")
            if refused >= 2:
                break
            time.sleep(0.05)
    assert refused >= 2, server.log_text()[-2000:]
    assert [status for _, status, _ in load.results if status != 200] == []
    assert {version for _, _, version in load.results} == {current}

    assert requests.get(server.url + "/readyz", timeout=10).status_code == 200
    serving = requests.get(server.url + "/models", timeout=10).json()["serving"]
    assert serving["served_version"] == current
    assert serving["last_reload_error"]["version"] == bad
    assert "sha256" in serving["last_reload_error"]["message"]
    assert set(served_versions(server).values()) == {current}
