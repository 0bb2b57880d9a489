"""Hot reload in one process: the predictor notices alias moves and new versions, swaps only
verified and warmed-up models, refuses broken ones (the old keeps serving), and POST
/admin/reload forces the check. The real multi-worker version is in tests/e2e."""

import json
import threading
import time

import pytest

from tests.support.apps import ADMIN_TOKEN, build_app
from tests.support.bundles import corrupt_bundle, point_alias_by_hand
from tests.support.http_io import error_of
from tests.support.mnist import synthetic_digit
from training.store import ModelStore

BODY = json.dumps({"image": synthetic_digit().tolist()})


def served_version(client) -> int:
    response = client.post("/predict", data=BODY, content_type="application/json")
    assert response.status_code == 200, response.data
    return response.get_json()["model"]["version"]


def metric(client, name: str, **labels) -> float:
    for line in client.get("/metrics").data.decode().splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


# ------------------------------------------------------------------------------ the check


def test_promotion_is_picked_up_by_the_next_check(app, client, store_root):
    predictor = app.extensions["convserve"].predictor
    assert served_version(client) == 1
    ModelStore(store_root).promote("mnist", 2, "production")
    outcome = predictor.check_for_update()
    assert outcome == {
        "changed": True,
        "served_version": 2,
        "target_version": 2,
        "error": None,
    }
    assert served_version(client) == 2
    assert metric(client, "convserve_model_reloads_total", outcome="success") == 2
    assert metric(client, "convserve_served_model_version", model="mnist") == 2


def test_an_unchanged_store_is_not_reread(app, store_root, monkeypatch):
    predictor = app.extensions["convserve"].predictor
    calls = []
    monkeypatch.setattr(predictor.store, "resolve", lambda *a, **k: calls.append(a) or 1)
    assert predictor.check_for_update()["changed"] is False
    assert calls == []  # only the change token was read


def test_publishing_a_new_version_reloads_when_following_latest(store_root, bundle_files):
    app = build_app(store_root, MODEL_ALIAS="latest")
    client = app.test_client()
    assert served_version(client) == 2
    ModelStore(store_root).publish(bundle_files["v3"], "mnist")
    app.extensions["convserve"].predictor.check_for_update()
    assert served_version(client) == 3


def test_a_rollback_is_a_reload_too(app, client, store_root):
    store = ModelStore(store_root)
    store.promote("mnist", 2, "production")
    app.extensions["convserve"].predictor.check_for_update()
    store.rollback("mnist", "production")
    app.extensions["convserve"].predictor.check_for_update()
    assert served_version(client) == 1


def test_the_old_model_serves_pinned_requests_after_a_swap(app, client, store_root):
    ModelStore(store_root).promote("mnist", 2, "production")
    predictor = app.extensions["convserve"].predictor
    old = predictor.served
    predictor.check_for_update()
    assert predictor.model_for(version=1) is old  # kept in the LRU, not reloaded


# ------------------------------------------------------------------------------ refusals


def test_a_corrupt_new_version_is_refused_and_the_old_keeps_serving(app, client, store_root):
    corrupt_bundle(store_root, 2)
    point_alias_by_hand(store_root, "production", 2)
    outcome = app.extensions["convserve"].predictor.check_for_update()
    assert outcome["changed"] is False and outcome["served_version"] == 1
    assert "mnist:2" in outcome["error"] and "sha256" in outcome["error"]

    assert served_version(client) == 1
    assert client.get("/readyz").status_code == 200
    serving = client.get("/models").get_json()["serving"]
    assert serving["served_version"] == 1
    assert serving["last_reload_error"]["version"] == 2
    assert "sha256" in serving["last_reload_error"]["message"]
    assert client.get("/models/mnist").get_json()["serving"]["last_reload_error"]["version"] == 2
    assert "sha256" in client.get("/models/mnist/versions/2").get_json()["reload_error"]["message"]
    assert client.get("/models/mnist/versions/1").get_json()["reload_error"] is None
    assert metric(client, "convserve_model_reloads_total", outcome="failure") == 1
    assert metric(client, "convserve_served_model_version", model="mnist") == 1


def test_a_refused_version_is_not_retried_until_the_store_changes(app, store_root, bundle_files):
    predictor = app.extensions["convserve"].predictor
    corrupt_bundle(store_root, 2)
    point_alias_by_hand(store_root, "production", 2)
    assert predictor.check_for_update()["error"]
    failures = []
    predictor.hooks.reload_finished = lambda name, succeeded: failures.append(succeeded)
    for _ in range(3):
        predictor.check_for_update()
    assert failures == []  # same store state: no reload attempts, no log spam
    # The store moves on (a good version 3 promoted): the error clears with the swap.
    store = ModelStore(store_root)
    version = store.publish(bundle_files["v3"], "mnist")
    store.promote("mnist", version, "production", force=True)
    assert predictor.check_for_update()["changed"] is True
    assert predictor.last_error is None


def test_moving_the_alias_back_to_the_served_version_clears_the_error(app, store_root):
    predictor = app.extensions["convserve"].predictor
    corrupt_bundle(store_root, 2)
    point_alias_by_hand(store_root, "production", 2)
    predictor.check_for_update()
    point_alias_by_hand(store_root, "production", 1)
    assert predictor.check_for_update()["error"] is None
    assert predictor.last_error is None


def test_a_version_whose_warm_up_fails_is_refused(app, client, store_root, monkeypatch):
    from service import predictor as predictor_module

    ModelStore(store_root).promote("mnist", 2, "production")
    # A model answering NaN: verified bytes, but it cannot serve.
    real_load = predictor_module.ModelStore.load

    def load_nan_model(self, name, version):
        bundle = real_load(self, name, version)
        bundle.predict_proba = lambda pixels: pixels.reshape(len(pixels), -1)[:, :10] * float("nan")
        return bundle

    monkeypatch.setattr(predictor_module.ModelStore, "load", load_nan_model)
    outcome = app.extensions["convserve"].predictor.check_for_update()
    assert "warm-up" in outcome["error"]
    assert served_version(client) == 1


def test_a_store_appearing_later_makes_the_app_ready(tmp_path, bundle_files):
    root = tmp_path / "later"
    app = build_app(root)
    client = app.test_client()
    assert client.get("/readyz").status_code == 503
    ModelStore(root).publish(bundle_files["v1"], "mnist", alias="production")
    app.extensions["convserve"].predictor.check_for_update()
    assert client.get("/readyz").status_code == 200


# ------------------------------------------------------------------------------ /admin/reload


def test_admin_reload_is_hidden_without_a_token(store_root):
    client = build_app(store_root, ADMIN_TOKEN=None).test_client()
    response = client.post("/admin/reload", headers={"Authorization": "Bearer anything"})
    assert response.status_code == 404
    assert error_of(response)["code"] == "not_found"


@pytest.mark.parametrize(
    ("headers", "status", "code"),
    [
        ({}, 401, "unauthorized"),
        ({"Authorization": "Basic dXNlcjpwYXNz"}, 401, "unauthorized"),
        ({"Authorization": "Bearer"}, 401, "unauthorized"),
        ({"Authorization": "Bearer wrong-token"}, 403, "forbidden"),
    ],
)
def test_admin_reload_needs_the_right_bearer_token(client, headers, status, code):
    response = client.post("/admin/reload", headers=headers)
    assert response.status_code == status
    assert error_of(response)["code"] == code
    if status == 401:
        assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_admin_reload_swaps_now(client, store_root):
    assert served_version(client) == 1  # (the first request also starts this process's poller)
    ModelStore(store_root).promote("mnist", 2, "production")
    response = client.post("/admin/reload", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert response.status_code == 200
    assert response.get_json()["changed"] is True
    assert served_version(client) == 2


def test_admin_reload_reports_a_refusal_as_409(client, store_root):
    corrupt_bundle(store_root, 2)
    point_alias_by_hand(store_root, "production", 2)
    response = client.post("/admin/reload", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert response.status_code == 409
    error = error_of(response)
    assert error["code"] == "reload_failed" and "still serving version 1" in error["message"]


def test_admin_reload_get_is_405(client):
    assert client.get("/admin/reload").status_code == 405


# ------------------------------------------------------------------------------ the poller


def test_the_poller_swaps_within_the_interval_while_requests_keep_succeeding(
    store_root,
):
    """Threads hammer /predict (bounded in count and time) while version 2 is promoted; every
    request succeeds and version 2 is served within a few poll intervals."""
    interval = 0.1
    app = build_app(store_root, RELOAD_INTERVAL_S=interval, LOG_LEVEL="warning")
    predictor = app.extensions["convserve"].predictor
    predictor.ensure_started()
    failures, versions_seen = [], []
    stop = threading.Event()
    deadline = time.monotonic() + 20

    def load():
        client = app.test_client()
        for _ in range(2000):
            if stop.is_set() or time.monotonic() > deadline:
                return
            response = client.post("/predict", data=BODY, content_type="application/json")
            if response.status_code != 200:
                failures.append(response.status_code)
            else:
                versions_seen.append(response.get_json()["model"]["version"])

    threads = [threading.Thread(target=load) for _ in range(3)]
    try:
        for thread in threads:
            thread.start()
        time.sleep(0.2)
        ModelStore(store_root).promote("mnist", 2, "production")
        promoted_at = time.monotonic()
        while predictor.served.version != 2 and time.monotonic() < promoted_at + 10:
            time.sleep(0.01)
        swapped_after = time.monotonic() - promoted_at
        time.sleep(0.2)  # some requests on the new version
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
        predictor.stop()
    assert predictor.served.version == 2
    assert swapped_after < 10 * interval + 2  # generous: the machine is shared
    assert failures == []
    assert 1 in versions_seen and versions_seen[-1] == 2


def pollers_started_since(before: set[threading.Thread]) -> list[threading.Thread]:
    """The poller threads (named convserve-poller-<model>) alive now and not in ``before``."""
    return [
        thread
        for thread in threading.enumerate()
        if thread not in before and thread.name.startswith("convserve-poller-")
    ]


def test_ensure_started_runs_once_per_process(app):
    predictor = app.extensions["convserve"].predictor
    predictor.reload_interval_s = 60.0
    before = set(threading.enumerate())
    predictor.ensure_started()
    (first,) = pollers_started_since(before)
    assert first.name == "convserve-poller-mnist"
    predictor.ensure_started()
    assert pollers_started_since(before) == [first] and first.is_alive()
    predictor.stop()
    assert not first.is_alive()
    # A forked child sees another pid (and none of the parent's threads): it starts its own.
    predictor._started_in_pid = -1  # private: a child's pid without forking a threaded pytest
    predictor.ensure_started()
    (second,) = pollers_started_since(before)
    assert second is not first and second.is_alive()
    predictor.stop()
    assert not second.is_alive()


def test_building_the_app_starts_no_thread_and_sets_no_gauge(store_root):
    """What a preloading gunicorn master does: it must leave no thread to fork half-alive and
    no served-version gauge that would be reported as a live worker."""
    before = threading.active_count()
    app = build_app(store_root, RELOAD_INTERVAL_S=0.05)
    assert threading.active_count() == before
    text = app.extensions["convserve"].metrics.render()[0].decode()
    assert "convserve_served_model_version{" not in text
    assert 'convserve_model_reloads_total{model="mnist",outcome="success"} 1.0' in text
