"""``convserve serve``: options become gunicorn's command line and environment. (Running it for
real, with Ctrl-C, is in tests/e2e/test_e2e_serve_cli.py.)"""

import sys

import pytest

from convserve.cli import build_parser
from service import serve_cli
from tests.support import REPO


def invocation(*argv, environ=None):
    args = build_parser().parse_args(["serve", *argv])
    return serve_cli.gunicorn_invocation(args, dict(environ or {}))


def test_defaults_bind_loopback_8000_and_use_the_packaged_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv, env = invocation()
    assert argv == [
        sys.executable,
        "-m",
        "gunicorn",
        "-c",
        str(REPO / "service" / "gunicorn.conf.py"),
        "service.app:create_app()",
    ]
    assert env["BIND"] == "127.0.0.1:8000"
    assert env["MODEL_STORE"] == str(tmp_path / "model_store")
    for unset in ("WORKERS", "MODEL_NAME", "MODEL_ALIAS", "RELOAD_INTERVAL_S"):
        assert unset not in env


def test_every_option_reaches_the_environment(tmp_path):
    argv, env = invocation(
        "--store",
        str(tmp_path / "s"),
        "--host",
        "0.0.0.0",
        "--port",
        "9001",
        "--workers",
        "3",
        "--model",
        "digits",
        "--alias",
        "staging",
        "--reload-interval",
        "0.5",
    )
    assert env["BIND"] == "0.0.0.0:9001"
    assert env["MODEL_STORE"] == str(tmp_path / "s")
    assert env["WORKERS"] == "3"
    assert env["MODEL_NAME"] == "digits"
    assert env["MODEL_ALIAS"] == "staging"
    assert float(env["RELOAD_INTERVAL_S"]) == 0.5


def test_the_environment_is_kept_and_model_store_is_a_fallback(tmp_path):
    _, env = invocation(
        environ={"MODEL_STORE": str(tmp_path), "ADMIN_TOKEN": "t", "MAX_BATCH": "9"}
    )
    assert env["MODEL_STORE"] == str(tmp_path)
    assert env["ADMIN_TOKEN"] == "t" and env["MAX_BATCH"] == "9"


def test_ipv6_hosts_are_bracketed():
    assert serve_cli.bind_address("::1", 8000) == "[::1]:8000"
    assert serve_cli.bind_address("localhost", 80) == "localhost:80"


@pytest.mark.parametrize(
    "argv",
    [
        ["--port", "70000"],
        ["--port", "http"],
        ["--workers", "0"],
        ["--reload-interval", "-1"],
        ["--reload-interval", "nan"],
    ],
)
def test_bad_options_are_usage_errors(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["serve", *argv])
    assert exit_info.value.code == 2
    assert "serve" in capsys.readouterr().err


def test_run_serve_execs_gunicorn(monkeypatch, tmp_path, capsys):
    calls = []
    monkeypatch.setattr(serve_cli.os, "execve", lambda *a: calls.append(a))
    args = build_parser().parse_args(["serve", "--store", str(tmp_path), "--port", "8123"])
    serve_cli.run_serve(args)
    ((path, argv, env),) = calls
    assert path == sys.executable and argv[1:3] == ["-m", "gunicorn"]
    assert env["BIND"] == "127.0.0.1:8123"
    err = capsys.readouterr().err
    assert "no model 'mnist'" in err  # an empty store is allowed, and said
