"""Fixtures for the scale-out tests: a store shared by the replicas, and a fleet of 3
``convserve serve`` replicas (1 worker each) behind nginx with deploy/nginx's configuration.

Skipped, with the reason, when Debian's nginx is not installed (``make test`` installs it
when run as root: scripts/ensure-nginx.sh)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.fleet import Fleet, find_nginx
from tests.support.bundles import make_store
from tests.support.mnist import synthetic_digit
from tests.support.servers import ADMIN_TOKEN

RELOAD_INTERVAL_S = 1.0


@pytest.fixture(scope="session")
def nginx_binary() -> str:
    binary = find_nginx()
    if binary is None:
        pytest.skip("nginx is not installed (apt-get install -y nginx; make test does it as root)")
    return binary


def store_of_two_versions(directory: Path):
    """mnist:1 (production, accuracy 0.5) and mnist:2 (accuracy 0.6, not yet promoted)."""
    return make_store(
        directory,
        dict(seed=1, test_accuracy=0.5, alias="production"),
        dict(seed=2, test_accuracy=0.6),
    )


def fleet_of_three(store: Path, directory: Path) -> Fleet:
    """3 replicas of ``store`` (1 sync worker each, DRAIN_SECONDS=1, polling the store every
    RELOAD_INTERVAL_S) behind one nginx, started."""
    return Fleet(
        store,
        directory,
        replicas=3,
        WORKERS="1",
        DRAIN_SECONDS="1",
        RELOAD_INTERVAL_S=str(RELOAD_INTERVAL_S),
        ADMIN_TOKEN=ADMIN_TOKEN,
    ).start()


@pytest.fixture
def shared_store(tmp_path):
    return store_of_two_versions(tmp_path)


@pytest.fixture
def fleet(nginx_binary, shared_store, tmp_path):
    """A fleet of its own for a test that kills, restarts or promotes; stopped afterwards."""
    running = fleet_of_three(shared_store.root, tmp_path / "fleet")
    yield running
    running.stop()


@pytest.fixture(scope="module")
def quiet_fleet(nginx_binary, tmp_path_factory):
    """A fleet shared by a module's tests that only send requests (no kill, no promote)."""
    directory = tmp_path_factory.mktemp("quiet-fleet")
    running = fleet_of_three(store_of_two_versions(directory).root, directory / "fleet")
    yield running
    running.stop()


@pytest.fixture(scope="session")
def predict_body() -> bytes:
    """One digit as /predict's JSON body."""
    pixels = synthetic_digit(seed=3).tolist()
    return json.dumps({"image": pixels}, separators=(",", ":")).encode()
