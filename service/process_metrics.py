"""process_* metrics for every gunicorn process, read from /proc by whichever worker answers
the scrape.

prometheus-client's own ProcessCollector reports the process it runs in; in multiprocess mode
that would be a different worker at every scrape. This collector reports each live worker (the
pids that own files in PROMETHEUS_MULTIPROC_DIR) and the master (the scraping worker's parent),
labelled by ``pid`` and ``role``, with the same metric names: a dashboard can sum them or watch
one worker's memory grow.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

_PID_IN_FILE = re.compile(r"_(\d+)\.db$")
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def _boot_time() -> float:
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("btime "):
            return float(line.split()[1])
    return 0.0


def _worker_pids() -> set[int]:
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not directory:
        return set()
    pids = set()
    for path in Path(directory).glob("*.db"):
        match = _PID_IN_FILE.search(path.name)
        if match:
            pids.add(int(match.group(1)))
    return pids


def _read(pid: int) -> dict | None:
    """CPU seconds, resident bytes, start time and open descriptors of ``pid``; None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2 :].split()
        descriptors = len(os.listdir(f"/proc/{pid}/fd"))
    except (FileNotFoundError, ProcessLookupError, PermissionError, ValueError):
        return None
    # Fields after the command name, from field 3 (state): utime 14, stime 15, starttime 22,
    # rss 24 in proc(5)'s numbering.
    return {
        "cpu": (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS,
        "rss": int(fields[21]) * _PAGE_SIZE,
        "start": int(fields[19]) / _CLOCK_TICKS,
        "fds": descriptors,
    }


class WorkerProcessCollector:
    """A prometheus-client collector of process_* metrics for every gunicorn process."""

    def collect(self) -> Iterator:
        labels = ["pid", "role"]
        cpu = CounterMetricFamily(
            "process_cpu_seconds_total", "User and system CPU time, seconds.", labels=labels
        )
        rss = GaugeMetricFamily(
            "process_resident_memory_bytes", "Resident memory size, bytes.", labels=labels
        )
        start = GaugeMetricFamily(
            "process_start_time_seconds", "Start time since the epoch, seconds.", labels=labels
        )
        fds = GaugeMetricFamily("process_open_fds", "Open file descriptors.", labels=labels)
        boot = _boot_time()
        master = os.getppid()  # the preloaded master writes metrics files too
        processes = [(pid, "worker") for pid in sorted(_worker_pids() - {master})]
        processes.append((master, "master"))
        for pid, role in processes:
            figures = _read(pid)
            if figures is None:
                continue  # a worker that has exited: its counters stay, its process does not
            values = [str(pid), role]
            cpu.add_metric(values, figures["cpu"])
            rss.add_metric(values, figures["rss"])
            start.add_metric(values, boot + figures["start"])
            fds.add_metric(values, figures["fds"])
        yield from (cpu, rss, start, fds)
