"""``convserve serve``: run the service under gunicorn with service/gunicorn.conf.py.

The command turns its options into the environment the app and the gunicorn config read
(BIND, WORKERS, MODEL_STORE, MODEL_NAME, MODEL_ALIAS, RELOAD_INTERVAL_S, LOG_LEVEL) and then
*replaces itself* with gunicorn (``os.execve``): there is one process to signal, Ctrl-C reaches
the gunicorn master directly, and it stops its workers cleanly.

Imports stay light (no numpy, no Flask) so the gunicorn master starts from a clean slate.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from service.config import check_startup
from training.errors import ConvserveError

CONFIG_PATH = Path(__file__).resolve().with_name("gunicorn.conf.py")
APP_SPEC = "service.app:create_app()"


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port must be 0-65535, got {port}")
    return port


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value >= 0:  # also refuses NaN
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text!r}")
    return value


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="serve a model from the store over HTTP (gunicorn)",
        description=(
            "Serve MODEL@ALIAS from the store with gunicorn (one worker process per core by "
            "default, connections kept alive). New versions and alias moves are picked up "
            "while running. Other settings (ADMIN_TOKEN, MAX_BATCH, MAX_CONTENT_LENGTH, "
            "MAX_IMAGE_PIXELS, LOG_LEVEL, KEEPALIVE, ...) come from the environment; see "
            "docs/SERVING.md."
        ),
    )
    parser.add_argument(
        "--store", help="model store directory (default: $MODEL_STORE or ./model_store)"
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    parser.add_argument("--port", type=_port, default=8000, help="port to bind (default: 8000)")
    parser.add_argument(
        "--workers", type=_positive_int, help="worker processes (default: $WORKERS or one per core)"
    )
    parser.add_argument("--model", help="model name to serve (default: $MODEL_NAME or mnist)")
    parser.add_argument(
        "--alias", help="store alias to follow; 'latest' = highest version (default: production)"
    )
    parser.add_argument(
        "--reload-interval",
        type=_seconds,
        metavar="S",
        help="seconds between checks of the store for new versions; 0 disables (default: 2)",
    )
    parser.set_defaults(func=run_serve)


def bind_address(host: str, port: int) -> str:
    """gunicorn's bind string; IPv6 literals need brackets."""
    if ":" in host and not host.startswith("["):
        return f"[{host}]:{port}"
    return f"{host}:{port}"


def gunicorn_invocation(args: argparse.Namespace, environ: dict) -> tuple[list[str], dict]:
    """(argv, environment) for gunicorn from the parsed options and the current environment."""
    env = dict(environ)
    env["BIND"] = bind_address(args.host, args.port)
    store = args.store or env.get("MODEL_STORE") or "model_store"
    # Absolute, so it means the same directory whatever the workers' working directory.
    env["MODEL_STORE"] = str(Path(store).resolve())
    if args.workers is not None:
        env["WORKERS"] = str(args.workers)
    if args.model is not None:
        env["MODEL_NAME"] = args.model
    if args.alias is not None:
        env["MODEL_ALIAS"] = args.alias
    if args.reload_interval is not None:
        env["RELOAD_INTERVAL_S"] = repr(args.reload_interval)
    argv = [sys.executable, "-m", "gunicorn", "-c", str(CONFIG_PATH), APP_SPEC]
    return argv, env


def _warn_if_nothing_to_serve(env: dict) -> None:
    """Starting on an empty store is allowed (readiness stays 503 until a publish); say so."""
    from training.store import ModelStore, StoreError

    name = env.get("MODEL_NAME") or "mnist"
    try:
        models = ModelStore(env["MODEL_STORE"]).models()
    except (OSError, StoreError):
        models = []
    if name not in models:
        print(
            f"convserve: warning: no model {name!r} in {env['MODEL_STORE']}; the server starts "
            "but /readyz answers 503 until one is published",
            file=sys.stderr,
        )


def run_serve(args: argparse.Namespace) -> int:
    if not CONFIG_PATH.is_file():
        raise ConvserveError(f"gunicorn configuration not found at {CONFIG_PATH}")
    argv, env = gunicorn_invocation(args, dict(os.environ))
    try:
        check_startup(env)
    except ValueError as exc:  # before anything says "serving": one line, exit 2
        raise ConvserveError(str(exc)) from None
    _warn_if_nothing_to_serve(env)
    print(f"convserve: serving on http://{env['BIND']} from {env['MODEL_STORE']}", file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(argv[0], argv, env)
    return 0  # not reached: execve replaces this process
