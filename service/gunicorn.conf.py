"""gunicorn settings for convserve, used as
``gunicorn -c service/gunicorn.conf.py 'service.app:create_app()'`` (from the repository root).

Environment: BIND (default 0.0.0.0:8000), WORKERS (default: one per CPU core available),
LOG_LEVEL (gunicorn's own log level too), PROMETHEUS_MULTIPROC_DIR (default: a fresh temporary
directory, removed at exit; a given one is created if missing and emptied at master start),
DRAIN_SECONDS (default 5: how long readiness fails after SIGTERM before the server stops
accepting; see service/draining.py), GRACEFUL_TIMEOUT (default 20: seconds the workers get to
finish the requests in hand and queued once the listener is closed), KEEPALIVE (default 5:
seconds an idle kept-alive connection stays open), HEADER_TIMEOUT (default 10) and BODY_TIMEOUT
(default 30): seconds a request's headers, then its body, may take to arrive before the answer
is 408, and DYNAMIC_BATCHING (default 1; 0 turns off service/batching.py) (read by
service/front.py).
The app reads its own settings (MODEL_STORE, ...) from the same environment; see
docs/SERVING.md.

Why these choices:

* one worker process per core, each service/front.py's FrontWorker: a gevent event loop that
  keeps HTTP/1.1 connections alive, gives every connection its turn, spreads connections
  evenly over the workers, reads slow requests without holding the process, and answers the
  queued connections before it exits; the app runs one request at a time per process, as
  before. Measured against sync, gthread and gevent workers in docs/BENCHMARKS.md ("The HTTP
  front"): sync workers pay a connection per request and stop on 4 slow clients; gthread
  collapses when one worker holds the connections; gunicorn's gevent worker serves a few
  connections over and over.
* one BLAS thread per worker: the workers are the parallelism; BLAS threads on top only fight
  over the same cores. Set here, in the master, before the app (and numpy) is imported.
* the app is preloaded: the master imports it and loads + verifies the model once, then
  forks. Measured (2 workers): ready in 0.5 s instead of 1.5 s, 68 MB total PSS instead of
  109 MB, and the port only opens once the app can answer. It is fork-safe by construction:
  building the app starts no thread and sets no gauge; each worker catches up with the store,
  publishes its served version and starts its poller in post_worker_init (and lazily at its
  first request). Code changes need a restart, not a HUP.
* the preloaded objects are frozen out of the garbage collector before each fork
  (``gc.freeze()``, as the gc module's documentation advises for pre-fork servers): a full
  collection in a worker then walks only what the worker made itself, instead of the ~70,000
  objects of numpy, scipy, Flask and the app, which took 50-75 ms on the benchmark machine: a
  pause every request in hand waited through (p99 at c=16 34-48 ms instead of 8-12 ms); and
  the collector no longer writes to those objects' pages, so the workers keep sharing them.
"""

import gc
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

# Before numpy is imported anywhere (workers inherit the master's environment). Only if unset,
# so an operator can still choose otherwise.
for _variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")

# prometheus-client decides multiprocess mode when it is first imported, from this variable:
# it must be set before any worker imports it. The directory we create is remembered in the
# environment too, because gunicorn re-reads this file on SIGHUP.
_OWNED_DIR_VARIABLE = "CONVSERVE_OWNED_METRICS_DIR"
_CLEANED_BY_VARIABLE = "CONVSERVE_METRICS_CLEANED_BY"
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="convserve-metrics-")
    os.environ[_OWNED_DIR_VARIABLE] = os.environ["PROMETHEUS_MULTIPROC_DIR"]
elif os.environ.get(_CLEANED_BY_VARIABLE) != str(os.getpid()):
    # A directory given by the operator: drop the files a previous run left, so counters start
    # at zero and dead workers' gauges do not linger. Here, before the preloaded app writes
    # its first values, and once per master (not again when SIGHUP re-reads this file).
    # A given directory may not exist yet (the container's /tmp is an empty tmpfs).
    _directory = Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])
    _directory.mkdir(parents=True, exist_ok=True)
    for _stale in _directory.glob("*.db"):
        _stale.unlink(missing_ok=True)
os.environ[_CLEANED_BY_VARIABLE] = str(os.getpid())

# Fail fast, before anything says "serving": one line and exit 2 for a setting that cannot work
# or a store that is not there (service/config.py: check_startup).
try:
    from service.config import check_startup

    _settings = check_startup(os.environ)
except ValueError as _problem:
    print(f"convserve: error: {_problem}", file=sys.stderr, flush=True)
    sys.exit(2)

# The drain file (service/draining.py): created by the master on SIGTERM, seen by every worker.
_DRAIN_FILE_VARIABLE = "CONVSERVE_DRAIN_FILE"
if not os.environ.get(_DRAIN_FILE_VARIABLE):
    os.environ[_DRAIN_FILE_VARIABLE] = str(
        Path(tempfile.mkdtemp(prefix="convserve-drain-")) / "draining"
    )
drain_seconds = float(os.environ.get("DRAIN_SECONDS") or 5)

# Where /admin/reload reaches every worker (service/control.py).
_CONTROL_DIR_VARIABLE = "CONVSERVE_CONTROL_DIR"
if not os.environ.get(_CONTROL_DIR_VARIABLE):
    os.environ[_CONTROL_DIR_VARIABLE] = tempfile.mkdtemp(prefix="convserve-control-")


def _default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


bind = os.environ.get("BIND", "0.0.0.0:8000")
workers = int(os.environ.get("WORKERS") or _default_workers())
worker_class = "service.front.FrontWorker"
# Connections one worker holds at most (idle kept-alive and slow ones included).
worker_connections = 1000
keepalive = int(os.environ.get("KEEPALIVE") or 5)
timeout = 30
graceful_timeout = int(os.environ.get("GRACEFUL_TIMEOUT") or 20)
preload_app = True
# No gunicornc control socket: several servers on one machine would fight over its one path.
control_socket_disable = True
# The app writes one JSON access line per request itself (with the request id and model
# version); gunicorn's own access log would only duplicate it.
accesslog = None
errorlog = "-"
loglevel = _settings["LOG_LEVEL"]
if _settings["LOG_FORMAT"] == "json":
    # gunicorn's own lines (start-up, workers, signals) as JSON too, like the app's.
    logconfig_dict = {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": "service.logs.JsonLogFormatter"}},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "json",
                "stream": "ext://sys.stderr",
            }
        },
        "loggers": {
            "gunicorn.error": {
                "level": loglevel.upper(),
                "handlers": ["stderr"],
                "propagate": False,
            },
            "gunicorn.access": {"level": "WARNING", "handlers": ["stderr"], "propagate": False},
        },
        # No handler on the root logger: the app's loggers have their own (service/logs.py),
        # and records propagating to a second one would print every line twice.
        "root": {"level": "WARNING", "handlers": []},
    }


def when_ready(server):
    """SIGTERM drains before it stops: readiness fails at once, the server keeps answering for
    DRAIN_SECONDS, then gunicorn's graceful stop runs (service/draining.py)."""
    stop = server.handle_term

    def drain_then_stop():
        Path(os.environ[_DRAIN_FILE_VARIABLE]).touch()
        if drain_seconds > 0:
            server.log.info(
                "SIGTERM: not ready from now on; still answering for %g s (DRAIN_SECONDS)",
                drain_seconds,
            )
            time.sleep(drain_seconds)
        stop()

    server.handle_term = drain_then_stop


def pre_fork(server, worker):
    """Everything the master built (the app, the model, the libraries) outlives every worker:
    keep it out of the workers' garbage collections (module docstring)."""
    gc.freeze()


def post_worker_init(worker):
    """In the worker, after the app is built: start the store poller now rather than at the
    first request, so a new version is picked up even by a worker that is idle.

    Also: Ctrl-C reaches every process of the terminal's group, and gunicorn's quick shutdown
    (SIGINT, then SIGQUIT from the master) makes a worker ``sys.exit`` in the middle of a
    response, logging a traceback for a request that was being answered. Treat both like
    SIGTERM instead: finish the request in hand, then leave (the master still kills a worker
    that takes longer than graceful_timeout)."""
    for quick in (signal.SIGINT, signal.SIGQUIT):
        signal.signal(quick, worker.handle_exit)
        signal.siginterrupt(quick, False)
    state = getattr(worker.wsgi, "extensions", {}).get("convserve")
    if state is not None:
        state.models.ensure_started()


def child_exit(server, worker):
    """A worker is gone: its live gauges (served version) must no longer be reported."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server):
    """Remove the drain file's directory, and the metrics directory if this configuration
    created it."""
    shutil.rmtree(Path(os.environ[_DRAIN_FILE_VARIABLE]).parent, ignore_errors=True)
    shutil.rmtree(os.environ[_CONTROL_DIR_VARIABLE], ignore_errors=True)
    owned = os.environ.get(_OWNED_DIR_VARIABLE)
    if owned and owned == os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        shutil.rmtree(owned, ignore_errors=True)
