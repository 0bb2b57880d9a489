"""Graceful shutdown without losing a request: readiness first, then the listener, then the queue.

On SIGTERM (``docker stop``, Kubernetes, ``kill``) the gunicorn master (service/gunicorn.conf.py):

1. creates the drain file: from then on ``/readyz`` and ``/v2/health/ready`` answer 503
   "draining" in every worker, while every other route keeps answering as before, for
   DRAIN_SECONDS (default 5) - the time a load balancer or Kubernetes' endpoints controller
   needs to stop sending new connections;
2. then stops as gunicorn does: closes its copy of the listening socket and sends SIGTERM to
   the workers, waiting up to ``graceful_timeout`` for them;
3. each worker (``DrainingSyncWorker``) finishes the request in hand and then answers every
   connection already queued on the listening socket (the kernel's accept backlog) before it
   exits. The socket closes when the last worker has emptied the queue; only connections
   arriving after that are refused.

gunicorn's own sync worker would exit with connections still queued, and the kernel resets
them: clients whose connection had been accepted by the kernel before SIGTERM got
"connection reset" instead of an answer.
"""

from __future__ import annotations

import os

from gunicorn import util
from gunicorn.workers.sync import SyncWorker

DRAIN_FILE_VARIABLE = "CONVSERVE_DRAIN_FILE"


def is_draining() -> bool:
    """True once the master has started a graceful shutdown (the drain file exists)."""
    path = os.environ.get(DRAIN_FILE_VARIABLE)
    return bool(path) and os.path.exists(path)


class DrainingSyncWorker(SyncWorker):
    """gunicorn's sync worker that answers the queued connections before it exits."""

    def run(self) -> None:
        super().run()
        self.answer_queued_connections()

    def answer_queued_connections(self) -> None:
        """Accept and answer, one at a time, every connection waiting on the listening
        sockets, until none is left (each worker does this; the queue is shared)."""
        for listener in self.sockets:
            listener.setblocking(False)
            while True:
                try:
                    client, address = listener.accept()
                except (BlockingIOError, InterruptedError):
                    break  # the queue is empty
                except OSError:
                    break  # the socket is gone
                client.setblocking(True)
                util.close_on_exec(client)
                self.notify()
                self.handle(listener, client, address)
