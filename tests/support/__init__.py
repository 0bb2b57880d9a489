"""What the test suite shares: plain functions and constants, imported as
``from tests.support.bundles import make_bundle``. Fixtures live in each folder's conftest.py.

- ``bundles``: tiny bundles and stores, and the hand damage (corrupt bytes, hand-moved aliases)
  that only a test would do.
- ``mnist``: the MNIST files on this machine, IDX writing, the one synthetic-digit generator.
- ``apps``: the service app on test settings, and what a version's own network answers.
- ``http_io``: request bodies (PNG, .npy) and reading answers (error shape, Prometheus samples).
- ``servers``: real gunicorn / ``convserve serve`` processes on free ports, waited for.
- ``dockerspec``: the Dockerfile and .dockerignore read as the deploy tests need them.
"""

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
