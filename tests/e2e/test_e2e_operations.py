"""Running it like TF Serving or Triton: /admin/reload reaches every worker, bad settings stop
start-up with one line, every log line is JSON, a store that disappears is reported, readiness
is logged once per change of state. Real gunicorn, 2 workers, 127.0.0.1."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import requests

from tests.support import REPO
from tests.support.bundles import make_store
from tests.support.servers import ADMIN_TOKEN, GunicornServer

IMAGE = {"image": [[0] * 28] * 28}


@pytest.fixture
def store(tmp_path):
    return make_store(tmp_path, {"alias": "production"}, {"test_accuracy": 0.9})


def test_admin_reload_reaches_every_worker(store, tmp_path):
    # No polling: only the broadcast can move the other worker.
    server = GunicornServer(store.root, tmp_path / "log", RELOAD_INTERVAL_S="0").start()
    try:
        assert (
            requests.post(server.url + "/predict", json=IMAGE, timeout=30).json()["model"][
                "version"
            ]
            == 1
        )
        store.promote("mnist", 2, "production")
        headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        answer = requests.post(server.url + "/admin/reload", headers=headers, timeout=30)
        assert answer.status_code == 200, answer.text
        assert answer.json()["workers"] == {"confirmed": 2, "total": 2}
        versions = {
            requests.post(server.url + "/predict", json=IMAGE, timeout=30).json()["model"][
                "version"
            ]
            for _ in range(30)
        }
        assert versions == {2}
    finally:
        server.stop()


def start_gunicorn(tmp_path, store, **settings) -> subprocess.CompletedProcess:
    env = {**GunicornServer(store, tmp_path / "unused").env, **settings}
    return subprocess.run(
        [sys.executable, "-m", "gunicorn", "-c", "service/gunicorn.conf.py"]
        + ["service.app:create_app()"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"WORKERS": "two"}, "WORKERS='two'"),
        ({"MAX_BATCH": "abc"}, "MAX_BATCH='abc'"),
        ({"DRAIN_SECONDS": "-1"}, "DRAIN_SECONDS"),
        ({"LOG_FORMAT": "xml"}, "LOG_FORMAT"),
        ({"MODEL_STORE": "/nonexistent/store"}, "/nonexistent/store"),
    ],
)
def test_a_bad_setting_stops_gunicorn_with_one_line(tmp_path, store, settings, named):
    completed = start_gunicorn(tmp_path, store.root, **settings)
    assert completed.returncode == 2
    lines = completed.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("convserve: error: ") and named in lines[0]


def test_convserve_serve_refuses_a_missing_store_before_serving(tmp_path):
    convserve = [sys.executable, "-m", "convserve"]
    completed = subprocess.run(
        [*convserve, "serve", "--store", str(tmp_path / "nowhere"), "--port", "1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert completed.returncode == 2
    lines = completed.stderr.strip().splitlines()
    assert len(lines) == 1 and "does not exist" in lines[0]
    assert "serving on" not in completed.stderr


def test_every_log_line_is_json_and_readiness_is_logged_once(tmp_path):
    empty = tmp_path / "empty-store"
    empty.mkdir()
    server = GunicornServer(empty, tmp_path / "log", LOG_LEVEL="info").start_unready()
    try:
        for _ in range(6):
            assert requests.get(server.url + "/readyz", timeout=30).status_code == 503
    finally:
        server.stop()
    lines = server.log_text().strip().splitlines()
    records = [json.loads(line) for line in lines]  # every line, gunicorn's included
    assert any(record["logger"].startswith("gunicorn") for record in records)
    not_ready = [r for r in records if r["logger"] == "convserve.registry"]
    assert 1 <= len(not_ready) <= 2  # once per worker that answered, not once per probe
    assert not [r for r in records if r["level"] == "error"]


def test_a_store_that_disappears_is_reported(store, tmp_path):
    server = GunicornServer(store.root, tmp_path / "log").start()
    try:
        shutil.rmtree(store.root)
        models = requests.get(server.url + "/models", timeout=30)
        assert models.status_code == 503
        assert models.json()["error"]["code"] == "store_unavailable"
        # What was loaded keeps serving.
        assert requests.post(server.url + "/predict", json=IMAGE, timeout=30).status_code == 200
    finally:
        server.stop()
