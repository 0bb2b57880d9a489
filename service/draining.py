"""Graceful shutdown without losing a request: readiness first, then the listener, then the queue.

On SIGTERM (``docker stop``, Kubernetes, ``kill``) the gunicorn master (service/gunicorn.conf.py):

1. creates the drain file: from then on ``/readyz`` and ``/v2/health/ready`` answer 503
   "draining" in every worker, while every other route keeps answering as before, for
   DRAIN_SECONDS (default 5) - the time a load balancer or Kubernetes' endpoints controller
   needs to stop sending new connections;
2. then stops as gunicorn does: closes its copy of the listening socket and sends SIGTERM to
   the workers, waiting up to ``graceful_timeout`` for them;
3. each worker (service/front.py's ``FrontWorker``) stops taking connections, answers every
   connection already queued on the listening socket (the kernel's accept backlog) and every
   request in hand, with ``Connection: close``, closes its kept-alive connections once idle
   (a request already on its way is still answered), and exits. The socket closes when the
   last worker has emptied the queue; only connections arriving after that are refused.

gunicorn's own workers exit with connections still queued, and the kernel resets them: clients
whose connection had been accepted by the kernel before SIGTERM got "connection reset" instead
of an answer.
"""

from __future__ import annotations

import os

DRAIN_FILE_VARIABLE = "CONVSERVE_DRAIN_FILE"


def is_draining() -> bool:
    """True once the master has started a graceful shutdown (the drain file exists)."""
    path = os.environ.get(DRAIN_FILE_VARIABLE)
    return bool(path) and os.path.exists(path)
