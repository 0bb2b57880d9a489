"""nginx with deploy/nginx's configuration in front of the replicas: what it lets through,
what it answers itself, and the request id across both logs."""

from __future__ import annotations

import json
import re
import time

import requests

from benchmarks.fleet import Proxy, free_port, load_renderer
from service.config import SETTINGS
from tests.support.servers import ADMIN_TOKEN

MAX_CONTENT_LENGTH = SETTINGS["MAX_CONTENT_LENGTH"][0]


def test_the_rendered_configuration_passes_nginx_t(quiet_fleet):
    result = quiet_fleet.proxy.check_config()
    assert result.returncode == 0, result.stderr


def test_the_template_body_limit_is_the_services(nginx_binary):
    template = load_renderer().TEMPLATE.read_text()
    (limit,) = re.findall(r"^\s*client_max_body_size\s+(\d+)m;", template, re.M)
    assert int(limit) * 2**20 == MAX_CONTENT_LENGTH


def test_inference_and_health_go_through_round_robin(quiet_fleet, predict_body):
    served = []
    with requests.Session() as session:
        for _ in range(6):
            answer = session.post(
                quiet_fleet.proxy.url + "/predict",
                data=predict_body,
                headers={"Content-Type": "application/json"},
                timeout=10,
            )
            assert answer.status_code == 200, answer.text
            assert answer.json()["model"] == {"name": "mnist", "version": 1}
            served.append(answer.headers["X-Served-By"])
        assert session.get(quiet_fleet.proxy.url + "/readyz", timeout=10).status_code == 200
        assert (
            session.get(quiet_fleet.proxy.url + "/v2/health/ready", timeout=10).status_code == 200
        )
    assert set(served) == {replica.address for replica in quiet_fleet.replicas}


def test_metrics_and_admin_are_not_reachable_through_the_proxy(quiet_fleet):
    replica = quiet_fleet.replicas[0]
    token = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    # Straight to a replica (the private side) both exist...
    assert requests.get(replica.url + "/metrics", timeout=10).status_code == 200
    assert requests.post(replica.url + "/admin/reload", headers=token, timeout=30).ok
    # ...through the proxy, under any spelling nginx normalises, they do not.
    for path in ("/metrics", "/metrics/", "//metrics", "/%6Detrics", "/./metrics", "/x/../metrics"):
        answer = requests.get(quiet_fleet.proxy.url + path, timeout=10)
        assert answer.status_code == 404, path
        assert answer.json()["error"]["code"] == "not_found", path
    for path in ("/admin/reload", "//admin/reload", "/%61dmin/reload", "/admin"):
        answer = requests.post(quiet_fleet.proxy.url + path, headers=token, timeout=10)
        assert answer.status_code == 404, path
        assert "X-Served-By" not in answer.headers or not answer.headers["X-Served-By"], path


def test_body_limit_is_max_content_length_and_answered_by_nginx(quiet_fleet):
    headers = {"Content-Type": "application/json"}
    over = requests.post(
        quiet_fleet.proxy.url + "/predict", data=b" " * (MAX_CONTENT_LENGTH + 1), headers=headers
    )
    assert over.status_code == 413
    assert over.json()["error"]["code"] == "payload_too_large"
    assert not over.headers.get("X-Served-By")  # no replica saw it
    # Exactly the limit reaches a replica, which parses it (blank JSON: a 400, not a 413).
    at_limit = requests.post(
        quiet_fleet.proxy.url + "/predict", data=b" " * MAX_CONTENT_LENGTH, headers=headers
    )
    assert at_limit.status_code == 400, at_limit.text
    assert at_limit.headers["X-Served-By"]


def replica_access_lines(fleet) -> list[dict]:
    lines = []
    for replica in fleet.replicas:
        for line in replica.log_path.read_text(errors="replace").splitlines():
            if line.startswith("{") and '"access"' in line:
                lines.append(json.loads(line))
    return lines


def proxy_access_lines(fleet) -> list[dict]:
    return [
        json.loads(line)
        for line in fleet.proxy.log_text().splitlines()
        if line.startswith('{"event":"proxy_access"')
    ]


def test_request_id_passed_through_generated_when_absent_and_logged_on_both_sides(quiet_fleet):
    given = requests.get(
        quiet_fleet.proxy.url + "/healthz", headers={"X-Request-ID": "client-id-42"}, timeout=10
    )
    assert given.headers["X-Request-ID"] == "client-id-42"
    made = requests.get(quiet_fleet.proxy.url + "/healthz", timeout=10).headers["X-Request-ID"]
    assert re.fullmatch(r"[0-9a-f]{32}", made)
    refused = requests.get(
        quiet_fleet.proxy.url + "/healthz",
        headers={"X-Request-ID": "bad id with spaces"},
        timeout=10,
    ).headers["X-Request-ID"]
    assert re.fullmatch(r"[0-9a-f]{32}", refused)
    # One header: the replica's echo is replaced by nginx's, not added to it.
    assert "," not in given.headers["X-Request-ID"]
    for request_id in ("client-id-42", made, refused):
        # Both access lines (the replica's, nginx's) are written just after the answer has
        # left, so the client may see the answer first: wait for them, bounded.
        for _ in range(50):
            replica = {line["request_id"] for line in replica_access_lines(quiet_fleet)}
            proxy = {line["request_id"] for line in proxy_access_lines(quiet_fleet)}
            if request_id in replica and request_id in proxy:
                break
            time.sleep(0.1)
        assert request_id in replica
        assert request_id in proxy


def retryable_locations(template: str) -> list[re.Pattern]:
    """The locations whose block allows ``non_idempotent`` retries, as regular expressions."""
    patterns = []
    for match in re.finditer(r"location (=|~) (\S+) \{([^}]*)\}", template):
        kind, path, body = match.groups()
        if "non_idempotent" in body:
            patterns.append(re.compile(re.escape(path) + "$" if kind == "=" else path))
    return patterns


def example_path(rule: str) -> str:
    """A concrete path for a Flask rule: ``/v2/models/<name>/infer`` -> ``/v2/models/x/infer``."""
    return re.sub(r"<[^>]+>", "x", rule)


def test_every_post_route_is_retryable_or_not_public(tmp_path):
    """A POST route must be an inference route nginx may retry (in the template's list) or an
    admin route it does not expose: a new POST route makes this fail until it is classified."""
    from tests.scale.conftest import store_of_two_versions
    from tests.support.apps import build_app

    template = load_renderer().TEMPLATE.read_text()
    retryable = retryable_locations(template)
    assert len(retryable) >= 4
    app = build_app(store_of_two_versions(tmp_path).root)
    posts = [r.rule for r in app.url_map.iter_rules() if "POST" in (r.methods or ())]
    assert "/predict" in posts
    for rule in posts:
        path = example_path(rule)
        if path.startswith("/admin"):
            continue
        assert any(p.fullmatch(path) for p in retryable), f"POST {rule}: classify it in nginx"


def test_no_replica_answering_is_a_json_502_from_nginx(nginx_binary, tmp_path):
    """Every replica down (here: none listening): the proxy's own answer, in the service's
    error shape, after trying each replica once."""
    dead = [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]
    proxy = Proxy(tmp_path / "nginx", dead).start(expect_replicas=False)
    try:
        answer = requests.post(proxy.url + "/predict", data=b"{}", timeout=30)
        health = requests.get(proxy.url + "/healthz", timeout=30)
    finally:
        proxy.stop()
    assert answer.status_code == 502 and health.status_code == 502
    assert answer.json()["error"]["code"] == "no_replica"
    assert set(answer.headers["X-Served-By"].replace(" ", "").split(",")) <= set(dead) | {
        "convserve_replicas"
    }
