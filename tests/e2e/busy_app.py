"""The service with two test-only routes, for tests/e2e/test_front.py:

    gunicorn -c service/gunicorn.conf.py 'tests.e2e.busy_app:create_app()'

* ``GET /_test/pid``: the pid of the worker that answered, and how many requests to this route
  that worker had answered before (``seq``): the order in which it served them.
* ``POST /_test/busy?seconds=S``: holds its worker process for S seconds (``time.sleep``, which
  blocks the whole process as a long forward pass would) after writing its pid to the file
  named by ``$BUSY_MARKER``, so a test knows which worker is busy, and from when.
* ``GET /_test/batching``: the answering worker's dynamic batching so far (service/batching.py):
  its forward passes and the images they took, or null when it is off.
* ``GET /_test/held-teardown``: answers at once, then its teardown holds the worker (as the
  service's bookkeeping would, for longer) until the file ``release`` beside ``$BUSY_MARKER``
  exists, 20 s at most: the answer must have left before.
* ``GET /_test/failing-teardown``: answers, then its teardown raises.
* ``GET /_test/gc``: how many objects the answering worker's garbage collector still walks
  (``tracked``) and how many it was told to leave alone (``frozen``, gc.freeze()).
"""

from __future__ import annotations

import gc
import itertools
import os
import time
from pathlib import Path

from flask import g, request

from service.app import create_app as create_service_app
from service.batching import BATCH


def create_app():
    app = create_service_app()
    served = itertools.count()

    @app.get("/_test/pid")
    def worker_pid():
        return {"pid": os.getpid(), "seq": next(served)}

    @app.post("/_test/busy")
    def busy():
        seconds = min(float(request.args.get("seconds", "1")), 10.0)
        Path(os.environ["BUSY_MARKER"]).write_text(str(os.getpid()))
        time.sleep(seconds)
        return {"pid": os.getpid()}

    @app.get("/_test/batching")
    def batching():
        predict = request.environ.get(BATCH)
        if predict is None:
            return {"pid": os.getpid(), "batching": None}
        batcher = predict.__self__
        counts = {"passes": batcher.passes, "images": batcher.images}
        return {"pid": os.getpid(), "batching": counts}

    @app.get("/_test/held-teardown")
    def held_teardown():
        g.held_until = Path(os.environ["BUSY_MARKER"]).with_name("release")
        return {"pid": os.getpid()}

    @app.get("/_test/failing-teardown")
    def failing_teardown():
        g.teardown_fails = True
        return {"pid": os.getpid()}

    @app.teardown_request
    def hold_or_fail(_exc):
        if g.pop("teardown_fails", False):
            raise RuntimeError("a teardown function failed (tests/e2e/busy_app.py)")
        release = g.pop("held_until", None)
        deadline = time.monotonic() + 20
        while release is not None and not release.exists() and time.monotonic() < deadline:
            time.sleep(0.01)

    @app.get("/_test/gc")
    def collector():
        return {"tracked": len(gc.get_objects()), "frozen": gc.get_freeze_count()}

    return app
