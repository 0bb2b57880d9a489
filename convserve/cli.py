"""The ``convserve`` command: one entry point, subcommands registered by the modules that own them.

Each command module exposes ``register(subparsers)`` and sets ``func`` on its parser. They are
imported explicitly: a missing or broken module is an ImportError at start-up, never a silently
absent command. A ``ConvserveError`` (bad data file, invalid bundle, store problem, bad input)
becomes a one-line message on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys

from service import client_cli, serve_cli
from training import __version__, data_cli, store_cli, train_cli
from training.errors import ConvserveError

# In the order `convserve --help` lists their commands.
COMMAND_MODULES = (
    train_cli,  # train, evaluate
    data_cli,  # data download, data info
    store_cli,  # models list/show/publish/promote/rollback/delete/verify
    serve_cli,  # serve
    client_cli,  # predict
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="convserve",
        description="Train, store and serve 28x28 image classifiers built on NumPy.",
    )
    parser.add_argument("--version", action="version", version=f"convserve {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in COMMAND_MODULES:
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one ``convserve`` command; returns the exit code (0, 2 for a ConvserveError, 130
    on Ctrl-C, 141 when the reader of stdout went away). Argument errors exit 2 via argparse."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ConvserveError as exc:
        print(f"convserve: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("convserve: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`convserve models list | head`): stop quietly, as cat does.
        # Point stdout at devnull so the interpreter's final flush does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
