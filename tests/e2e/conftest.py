"""Fixtures for the end-to-end tests: one shared real gunicorn server (2 workers) on a
temporary store holding mnist:1 (production) and mnist:2."""

from __future__ import annotations

import pytest

from tests.support.bundles import make_store
from tests.support.servers import GunicornServer


@pytest.fixture(scope="session")
def e2e_store(tmp_path_factory):
    directory = tmp_path_factory.mktemp("e2e")
    store = make_store(
        directory,
        dict(seed=1, test_accuracy=0.5, alias="production"),
        dict(seed=2, test_accuracy=0.6),
    )
    return store.root


@pytest.fixture(scope="session")
def server(e2e_store, tmp_path_factory):
    """A real server shared by the read-only end-to-end tests (they never change the store)."""
    log_path = tmp_path_factory.mktemp("e2e-logs") / "gunicorn.log"
    running = GunicornServer(e2e_store, log_path, MAX_BATCH="16", RELOAD_INTERVAL_S="1").start()
    yield running
    assert running.stop() == 0, running.log_text()[-3000:]
