"""``python -m convserve``: the same as the ``convserve`` script."""

import sys

from convserve.cli import main

sys.exit(main())
