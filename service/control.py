"""``POST /admin/reload`` reaches every worker, not just the one that answered.

The worker that takes the request reloads at once and writes a new *generation* number to a
request file in a directory all workers share (CONVSERVE_CONTROL_DIR, made by the gunicorn
master: service/gunicorn.conf.py). Every worker runs a small control thread that looks at that
file a few times a second; on a new generation it forces a check of every model it serves and
writes an acknowledgement (``ack-<pid>``) holding the generation. The route waits, a bounded
time, for an acknowledgement from every live worker (``worker-<pid>`` files, written when a
worker starts) and says how many confirmed.

Without the directory (the Flask test client, a script) only this process exists, and the
route's own reload is the whole story.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from training.fileio import write_atomically

logger = logging.getLogger("convserve.control")

CONTROL_DIR_VARIABLE = "CONVSERVE_CONTROL_DIR"
POLL_SECONDS = 0.2
REQUEST_FILE = "reload-request"


_this_pid = [os.getpid()]
os.register_at_fork(after_in_child=lambda: _this_pid.__setitem__(0, os.getpid()))


def this_pid() -> int:
    """``os.getpid()`` without its system call: kept current across forks. For per-request
    checks ("has this process started its poller yet?")."""
    return _this_pid[0]


def process_alive(pid: int) -> bool:
    """True while a process ``pid`` exists (one we may not signal counts as existing)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class ReloadBroadcast:
    """Reload requests and acknowledgements between the workers of one server."""

    def __init__(self, directory: str | os.PathLike | None = None):
        directory = directory or os.environ.get(CONTROL_DIR_VARIABLE)
        self.directory = Path(directory) if directory else None
        self._seen = 0
        self._thread: threading.Thread | None = None

    @property
    def shared(self) -> bool:
        """True under gunicorn: other workers can be reached."""
        return self.directory is not None and self.directory.is_dir()

    def _generation(self) -> int:
        try:
            return int((self.directory / REQUEST_FILE).read_text() or 0)
        except (FileNotFoundError, ValueError):
            return 0

    # ------------------------------------------------------------------ every worker
    def start(self, reload_all: Callable[[], dict]) -> None:
        """In a worker: register it and start the control thread that runs ``reload_all``
        for every new generation."""
        if not self.shared:
            return
        (self.directory / f"worker-{os.getpid()}").touch()
        self._seen = self._generation()
        self._thread = threading.Thread(
            target=self._watch, args=(reload_all,), name="convserve-control", daemon=True
        )
        self._thread.start()

    def _watch(self, reload_all: Callable[[], dict]) -> None:
        while True:
            time.sleep(POLL_SECONDS)
            try:
                generation = self._generation()
                if generation > self._seen:
                    self._seen = generation
                    reload_all()
                    self.acknowledge(generation)
            except Exception:  # the control thread must outlive any one failure
                logger.exception("reload request not handled")

    def acknowledge(self, generation: int) -> None:
        write_atomically(
            self.directory / f"ack-{os.getpid()}", json.dumps({"generation": generation}).encode()
        )

    # ------------------------------------------------------------------ the answering worker
    def broadcast(self, timeout_s: float = 10.0) -> dict:
        """Ask every other worker to reload (this one already has) and wait, at most
        ``timeout_s``, for their acknowledgements. -> {"confirmed", "total"} workers."""
        if not self.shared:
            return {"confirmed": 1, "total": 1}
        generation = self._generation() + 1
        write_atomically(self.directory / REQUEST_FILE, str(generation).encode())
        self._seen = generation  # this worker reloaded already: its thread need not
        self.acknowledge(generation)
        deadline = time.monotonic() + timeout_s
        while True:
            workers = self._live_workers()
            confirmed = [pid for pid in workers if self._acknowledged(pid) >= generation]
            if len(confirmed) == len(workers) or time.monotonic() > deadline:
                return {"confirmed": len(confirmed), "total": len(workers)}
            time.sleep(POLL_SECONDS / 4)

    def _live_workers(self) -> list[int]:
        pids = []
        for path in self.directory.glob("worker-*"):
            pid = int(path.name.removeprefix("worker-"))
            if process_alive(pid):
                pids.append(pid)
            else:
                path.unlink(missing_ok=True)
        return pids

    def _acknowledged(self, pid: int) -> int:
        try:
            return json.loads((self.directory / f"ack-{pid}").read_text())["generation"]
        except (FileNotFoundError, ValueError, KeyError):
            return 0
