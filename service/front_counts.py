"""How many connections each worker of the HTTP front holds (service/front.py), in memory the
master and its workers share: a worker accepting a new connection leaves it to a less loaded
one for a moment, and takes its fair share of the queue when all are busy."""

from __future__ import annotations

import mmap

from service.control import process_alive


class ConnectionCounts:
    """How many connections each live worker holds, in memory shared by the master and the
    workers it forks: one (pid, connections) pair of int64 per slot. The master gives each
    new worker a slot that no live worker holds; the worker writes its pid and count there."""

    SLOTS = 64
    HIGH_WATER = 2 * (SLOTS - 1)  # the last pair's first int64: how many slots were ever used

    def __init__(self):
        self._memory = mmap.mmap(-1, self.SLOTS * 16)  # anonymous, MAP_SHARED: survives fork
        self._values = memoryview(self._memory).cast("q")

    def claim_slot(self) -> int:
        """In the master, for a worker about to be forked: a slot no live worker holds."""
        for slot in range(self.SLOTS - 1):
            pid = self._values[2 * slot]
            if pid == 0 or (pid > 0 and not process_alive(pid)):
                self._values[2 * slot] = -1  # reserved until the worker writes its pid
                self._values[2 * slot + 1] = 0
                high = self.HIGH_WATER
                self._values[high] = max(self._values[high], slot + 1)
                return slot
        raise RuntimeError("no free connection-count slot")

    def used_slots(self) -> range:
        """The slots any worker ever held (readers look no further)."""
        return range(self._values[self.HIGH_WATER])

    def start(self, slot: int, pid: int) -> None:
        self._values[2 * slot + 1] = 0
        self._values[2 * slot] = pid

    def release(self, slot: int) -> None:
        self._values[2 * slot + 1] = 0
        self._values[2 * slot] = 0

    def set(self, slot: int, connections: int) -> None:
        self._values[2 * slot + 1] = connections

    def fair_share(self, slot: int, queued: int) -> int:
        """How many of ``queued`` new connections the worker in ``slot`` should take so that it
        holds as many as the average live worker once they are all taken."""
        values = self._values
        live = [
            other
            for other in self.used_slots()
            if values[2 * other] > 0 and (other == slot or process_alive(values[2 * other]))
        ]
        total = queued + sum(values[2 * other + 1] for other in live)
        return -(-total // max(len(live), 1)) - values[2 * slot + 1]

    def least_loaded(self, slot: int) -> bool:
        """True if the worker in ``slot`` holds no more connections than any other live
        worker."""
        values = self._values
        mine = values[2 * slot + 1]
        for other in self.used_slots():
            pid = values[2 * other]
            if other != slot and pid > 0 and values[2 * other + 1] < mine and process_alive(pid):
                return False
        return True


# Created when gunicorn's master imports this module (it loads the worker class before it
# forks), so every worker shares it.
CONNECTION_COUNTS = ConnectionCounts()
