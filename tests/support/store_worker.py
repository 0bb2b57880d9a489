"""A separate process that publishes to a store, for the atomicity and concurrency tests.

    python store_worker.py STORE BUNDLE NAME [--alias A] [--go FILE] [--ready FILE]
                           [--hang-before-rename FILE]

``--ready``: create FILE once imported, ready to publish.
``--go``: then wait (bounded) until FILE exists, so many workers publish at the same moment.
``--hang-before-rename``: when publish is about to rename its staging directory into place,
create FILE and sleep, so the test can ``kill -9`` a publisher with a complete staging dir.
Prints ``VERSION SHA256`` of what it published.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import time
from pathlib import Path

from training.store import ModelStore


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


if __name__ == "__main__":
    main()
