"""What the test suite shares: plain functions and constants, imported as
``from tests.support.bundles import make_bundle``. Fixtures live in each folder's conftest.py.

- ``bundles``: tiny bundles and stores, what a reader sees of a store (``store_snapshot``),
  and the hand damage (corrupt bytes, hand-moved aliases) that only a test would do.
- ``mnist``: the MNIST files on this machine, IDX writing, the one synthetic-digit generator.
- ``apps``: the service app on test settings, and what a version's own network answers.
- ``http_io``: request bodies (PNG, .npy) and reading answers (error shape, Prometheus samples).
- ``servers``: free ports, a real gunicorn on one, waiting (bounded) until a server is ready.
- ``dockerspec``: the Dockerfile and .dockerignore read as the deploy tests need them.
- ``store_worker``: a separate process publishing to a store (run as a script), and how to
  start it and wait on it.
"""

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
