"""The ``convserve`` command: one entry point, subcommands registered by the modules that own them.

Each command module exposes ``register(subparsers)`` and sets ``func`` on its parser. A
``ConvserveError`` (bad data file, invalid bundle, store problem, bad input) becomes a one-line
message on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from training import __version__
from training.errors import ConvserveError

# Modules that add subcommands; imported lazily so `convserve --help` stays fast.
COMMAND_MODULES = (
    "training.train_cli",  # train, evaluate
    "training.data_cli",  # data download
    "training.store_cli",  # models list/show/publish/promote/rollback/delete/verify
    "service.serve_cli",  # serve
    "service.client_cli",  # predict
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="convserve",
        description="Train, store and serve 28x28 image classifiers built on NumPy.",
    )
    parser.add_argument("--version", action="version", version=f"convserve {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module_name in COMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            continue  # a command module not written yet
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
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
