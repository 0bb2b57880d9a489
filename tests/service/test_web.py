"""service/web.py's ServiceFlask: the URL adapter it makes from a remembered host is the one
Flask's own ``create_url_adapter`` makes, for every request shape, and hosts Flask refuses
are refused the same way and never remembered; under a server that offers it
(``TEARDOWN_AFTER_SEND``), the request's teardown waits until the answer is closed, and
hands the teardown functions what Flask's own would."""

from __future__ import annotations

import pytest
from flask import Flask, has_request_context
from werkzeug.exceptions import SecurityError
from werkzeug.test import EnvironBuilder

from service.front_io import TEARDOWN_AFTER_SEND
from service.web import ServiceFlask, ServiceRequest

ADAPTER_FIELDS = (
    "server_name",
    "script_name",
    "subdomain",
    "url_scheme",
    "path_info",
    "default_method",
    "query_args",
    "websocket",
)

REQUESTS = {
    "plain": {"path": "/predict", "method": "POST"},
    "query": {"path": "/predict", "query_string": "version=3&alias="},
    "port": {"path": "/healthz", "base_url": "http://127.0.0.1:18080"},
    "default port": {"path": "/healthz", "base_url": "http://localhost:80"},
    "https": {"path": "/v2/models", "base_url": "https://Example.COM:443"},
    "https other port": {"path": "/v2/models", "base_url": "https://example.com:8443"},
    "script name": {"path": "/predict", "base_url": "http://example.com/prefix/"},
    "unicode path": {"path": "/models/z\u00fcrich/predict"},
    "international host": {"path": "/", "base_url": "http://b\u00fccher.example:8000"},
    "ipv6": {"path": "/", "base_url": "http://[::1]:8000"},
    "no Host field": {"path": "/", "headers": {"Host": None}},
}


def both_apps(**config):
    made = []
    for cls in (Flask, ServiceFlask):
        app = cls(__name__)
        app.request_class = ServiceRequest
        app.config.update(config)

        @app.get("/<path:anything>")
        def anything(anything):
            return ""

        made.append(app)
    return made


def environ_of(case: dict) -> dict:
    case = dict(case)
    headers = case.pop("headers", {})
    environ = EnvironBuilder(**case).get_environ()
    for name, value in headers.items():
        if value is None:
            environ.pop(f"HTTP_{name.upper()}", None)
    return environ


def adapter_of(app, environ: dict):
    request = app.request_class(dict(environ))
    adapter = app.create_url_adapter(request)
    return {field: getattr(adapter, field) for field in ADAPTER_FIELDS}, request.host


@pytest.mark.parametrize("case", sorted(REQUESTS))
def test_a_remembered_host_gives_flasks_own_adapter(case):
    flask_app, service_app = both_apps()
    environ = environ_of(REQUESTS[case])
    expected = adapter_of(flask_app, environ)
    assert adapter_of(service_app, environ) == expected  # the first: Flask's own path
    assert len(service_app._hosts) == 1
    assert adapter_of(service_app, environ) == expected  # then: from what was remembered
    # Another path and method from the same host: the remembered host, the new request's rest.
    other = dict(environ, PATH_INFO="/other", REQUEST_METHOD="GET", QUERY_STRING="")
    assert adapter_of(service_app, other) == adapter_of(flask_app, other)


@pytest.mark.parametrize("host", ["exa mple.com", "bad\u00e9host\x00", "a/b"])
def test_a_host_flask_refuses_is_refused_and_not_remembered(host):
    flask_app, service_app = both_apps()
    environ = environ_of({"path": "/"})
    environ["HTTP_HOST"] = host
    try:
        expected = adapter_of(flask_app, environ)
    except SecurityError:
        with pytest.raises(SecurityError):
            adapter_of(service_app, environ)
        with pytest.raises(SecurityError):
            adapter_of(service_app, environ)
    else:  # werkzeug keeps such a host as "" (3.1.8): so must this, both times
        assert adapter_of(service_app, environ) == expected
        assert adapter_of(service_app, environ) == expected


def test_settings_that_route_by_host_take_flasks_own_path():
    for config in ({"SERVER_NAME": "example.com"}, {"TRUSTED_HOSTS": ["example.com"]}):
        flask_app, service_app = both_apps(**config)
        environ = environ_of({"path": "/", "base_url": "http://example.com"})
        for _ in range(2):
            assert adapter_of(service_app, environ) == adapter_of(flask_app, environ)
        assert service_app._hosts == {}, config


def test_an_upgrade_request_takes_flasks_own_path():
    flask_app, service_app = both_apps()
    environ = environ_of({"path": "/", "headers": {}})
    environ.update(HTTP_CONNECTION="Upgrade", HTTP_UPGRADE="websocket")
    for _ in range(2):
        assert adapter_of(service_app, environ) == adapter_of(flask_app, environ)
    assert adapter_of(service_app, environ)[0]["websocket"]
    assert service_app._hosts == {}


def test_remembered_hosts_are_bounded():
    _, service_app = both_apps()
    for number in range(ServiceFlask.MAX_HOSTS * 2 + 5):
        environ = environ_of({"path": "/", "base_url": f"http://host{number}.example"})
        adapter_of(service_app, environ)
        assert len(service_app._hosts) <= ServiceFlask.MAX_HOSTS


def app_recording_teardowns() -> tuple[ServiceFlask, list]:
    """An app whose routes answer, fail (500 from the error handler) or are interrupted, and
    whose teardown records the error it is handed."""
    app = ServiceFlask(__name__)
    torn_down = []

    @app.get("/ok")
    def ok():
        return "fine"

    @app.get("/fails")
    def fails():
        raise RuntimeError("the view failed")

    @app.get("/interrupted")
    def interrupted():
        raise KeyboardInterrupt

    @app.teardown_request
    def record(exc):
        torn_down.append(exc)

    return app, torn_down


def call_app(app, path: str, after_send: bool):
    environ = EnvironBuilder(path=path).get_environ()
    if after_send:
        environ[TEARDOWN_AFTER_SEND] = True
    statuses = []
    body = app(environ, lambda status, headers, exc_info=None: statuses.append(status))
    return statuses[0], body


@pytest.mark.parametrize("path", ["/ok", "/fails"])
def test_the_teardown_waits_for_the_answer_to_be_closed_when_the_server_says_so(path):
    app, torn_down = app_recording_teardowns()
    status, body = call_app(app, path, after_send=True)
    assert b"".join(body) and torn_down == []  # answered, not yet torn down
    body.close()
    assert len(torn_down) == 1
    assert status.startswith("200") if path == "/ok" else status.startswith("500")
    error = torn_down[0]
    assert error is None if path == "/ok" else isinstance(error, RuntimeError)
    assert not has_request_context()  # nothing of the request's context is left pushed


@pytest.mark.parametrize("path", ["/ok", "/fails"])
def test_elsewhere_the_teardown_runs_before_the_answer_as_in_flask(path):
    app, torn_down = app_recording_teardowns()
    _, body = call_app(app, path, after_send=False)
    assert len(torn_down) == 1  # before the body was even read
    body.close()
    assert len(torn_down) == 1


def test_an_interrupted_request_is_torn_down_at_once_with_its_interruption():
    app, torn_down = app_recording_teardowns()
    with pytest.raises(KeyboardInterrupt):
        call_app(app, "/interrupted", after_send=True)
    assert len(torn_down) == 1 and isinstance(torn_down[0], KeyboardInterrupt)
