"""A separate process that publishes to a store, for the atomicity and concurrency tests.

    python store_worker.py STORE BUNDLE NAME [--alias A] [--go FILE] [--ready FILE]
                           [--hang-before-rename FILE]

``--ready``: create FILE once imported, ready to publish.
``--go``: then wait (bounded) until FILE exists, so many workers publish at the same moment.
``--hang-before-rename``: when publish is about to rename its staging directory into place,
create FILE and sleep, so the test can ``kill -9`` a publisher with a complete staging dir.
Prints ``VERSION SHA256`` of what it published.

The tests start it with ``start_worker`` and wait on it with ``wait_for_file``.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

from training.store import ModelStore

REPO = Path(__file__).resolve().parents[2]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("store")
    parser.add_argument("bundle")
    parser.add_argument("name")
    parser.add_argument("--alias")
    parser.add_argument("--go")
    parser.add_argument("--ready")
    parser.add_argument("--hang-before-rename")
    args = parser.parse_args()

    if args.ready:
        Path(args.ready).touch()
    if args.go:
        deadline = time.monotonic() + 60
        while not os.path.exists(args.go) and time.monotonic() < deadline:
            time.sleep(0.005)
    if args.hang_before_rename:
        real_rename = os.rename

        def hanging_rename(source, target):
            if Path(source).name.startswith(".staging-"):
                Path(args.hang_before_rename).write_text(str(source))
                time.sleep(120)  # the test kills us long before this ends
            return real_rename(source, target)

        os.rename = hanging_rename
    version = ModelStore(args.store).publish(args.bundle, args.name, alias=args.alias, force=True)
    digest = hashlib.sha256(Path(args.bundle).read_bytes()).hexdigest()
    print(version, digest, flush=True)


def start_worker(*args: str) -> subprocess.Popen:
    """Run this file in a fresh interpreter (a real separate process) with ``args``."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, __file__, *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_file(path: Path, process: subprocess.Popen, timeout: float = 60.0) -> None:
    """Poll (bounded) until ``path`` exists; fail early if ``process`` died first."""
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / 0.01) + 1):
        if path.exists():
            return
        if process.poll() is not None:
            _, err = process.communicate()
            raise AssertionError(f"worker exited {process.returncode} before {path.name}: {err}")
        if time.monotonic() > deadline:
            break
        time.sleep(0.01)
    process.kill()
    raise AssertionError(f"{path} did not appear within {timeout} s")


if __name__ == "__main__":
    main()
