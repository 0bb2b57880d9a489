"""Helpers shared by the store tests (plain functions; the fixtures live in each test file)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from conftest import make_bundle

from training.store import ModelStore

REPO = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("store_worker.py")


def publish_versions(
    store: ModelStore, bundle_dir: Path, accuracies: list[float | None], name: str = "mnist"
) -> list[int]:
    """Publish one small bundle per accuracy (distinct weights: seed = index); the versions."""
    versions = []
    for index, accuracy in enumerate(accuracies):
        path = make_bundle(bundle_dir / f"{name}-{index}.npz", seed=index, test_accuracy=accuracy)
        versions.append(store.publish(path, name))
    return versions


def start_worker(*args: str) -> subprocess.Popen:
    """Run tests/store/store_worker.py in a fresh interpreter (a real separate process)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")])}
    return subprocess.Popen(
        [sys.executable, str(WORKER), *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_file(path: Path, process: subprocess.Popen, timeout: float = 60.0) -> None:
    """Poll (bounded) until ``path`` exists; fail early if ``process`` died first."""
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / 0.01) + 1):
        if path.exists():
            return
        if process.poll() is not None:
            _, err = process.communicate()
            raise AssertionError(f"worker exited {process.returncode} before {path.name}: {err}")
        if time.monotonic() > deadline:
            break
        time.sleep(0.01)
    process.kill()
    raise AssertionError(f"{path} did not appear within {timeout} s")


def assert_every_listed_version_loads(store: ModelStore) -> None:
    """The reader's view: whatever is listed is complete and verified."""
    for name in store.models():
        for version in store.versions(name):
            bundle = store.load(name, version)
            assert bundle.network is not None
