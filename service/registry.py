"""Every model this process serves: one ``Predictor`` per model name, each following its own
alias, loaded, verified and hot-reloaded on its own.

``MODELS`` (service/config.py) names them (``mnist,letters@staging``); left empty, the server
serves every model in the store, and a model published under a new name is picked up on the
next poll or the first request that names it. A model that fails to load is reported (its
``not_ready_message``) and blocks nothing else; the server is ready when every model it serves
is. ``MODEL_NAME`` is the default model, the one ``/predict`` answers with.
"""

from __future__ import annotations

import logging
import os
import threading

from service.control import ReloadBroadcast, this_pid
from service.errors import NotFound
from service.predictor import Predictor, ReloadHooks
from training.errors import ConvserveError
from training.store import ModelStore

logger = logging.getLogger("convserve.registry")


class ReadinessLog:
    """Logs readiness once per change of state (per process), not once per probe: a pod that
    is not ready for an hour writes two lines, not 720."""

    def __init__(self):
        self._ready: bool | None = None

    def observe(self, problem: str | None) -> None:
        """``problem`` is None when ready, else why not (logged with the change)."""
        ready = problem is None
        if self._ready == ready:
            return
        self._ready = ready
        if problem is None:
            logger.info("ready")
        else:
            logger.warning("not ready: %s", problem)


class ModelRegistry:
    """The served models, by name. Thread-safe: requests read ``predictor(name)``; the
    discovery of new names (when serving the whole store) adds predictors under a lock."""

    def __init__(self, store: ModelStore, settings: dict, hooks: ReloadHooks | None = None):
        self.store = store
        self.default_name = settings["MODEL_NAME"]
        self.fixed = bool(settings["MODELS"])  # a configured list: no discovery
        self._alias = settings["MODEL_ALIAS"]
        self._options = {
            "reload_interval_s": settings["RELOAD_INTERVAL_S"],
            "cache_size": settings["MODEL_CACHE_SIZE"],
            "hooks": hooks,
        }
        self._predictors: dict[str, Predictor] = {}
        self._lock = threading.Lock()
        self.readiness = ReadinessLog()
        self.broadcast = ReloadBroadcast()  # /admin/reload's way to the other workers
        self._started_in_pid: int | None = None
        configured = settings["MODELS"] or [(self.default_name, self._alias)]
        for name, alias in configured:
            self._predictors[name] = Predictor(store, name, alias, **self._options)

    # ------------------------------------------------------------------ lookup
    @property
    def default(self) -> Predictor:
        """The predictor of MODEL_NAME, the model ``/predict`` answers with."""
        return self._predictors[self.default_name]

    def get(self, name: str) -> Predictor | None:
        """The predictor of ``name`` if this process serves it (no discovery), else None."""
        return self._predictors.get(name)

    def names(self) -> list[str]:
        """The names served, sorted (after picking up new ones when serving the whole store)."""
        self.discover()
        return sorted(self._predictors)

    def predictors(self) -> list[Predictor]:
        return [self._predictors[name] for name in self.names()]

    def predictor(self, name: str) -> Predictor:
        """The predictor of ``name``; NotFound when this server does not serve it."""
        found = self._predictors.get(name)
        if found is None and not self.fixed:
            self.discover()
            found = self._predictors.get(name)
        if found is None:
            served = ", ".join(repr(n) for n in sorted(self._predictors))
            raise NotFound(f"unknown model {name[:80]!r}; this server serves {served}")
        return found

    # ------------------------------------------------------------------ readiness
    @property
    def ready(self) -> bool:
        """True when every served model has a verified version loaded."""
        return all(predictor.ready for predictor in self._predictors.values())

    def not_ready_message(self) -> str:
        problems = [p.not_ready_message() for p in self._predictors.values() if not p.ready]
        return "; ".join(problems) or "ready"

    def versions_served(self) -> dict[str, int | None]:
        """name -> the version each model serves (None before its first load)."""
        return {
            name: (predictor.served.version if predictor.served else None)
            for name, predictor in sorted(self._predictors.items())
        }

    # ------------------------------------------------------------------ loading
    def load_all(self) -> None:
        """The first load of every model (and, serving the whole store, every name in it)."""
        self.discover()
        for predictor in list(self._predictors.values()):
            predictor.check_for_update(force=True)

    def check_all(self, *, force: bool = False) -> dict[str, dict]:
        """``Predictor.check_for_update`` on every model: name -> outcome."""
        return {p.name: p.check_for_update(force=force) for p in self.predictors()}

    def discover(self) -> list[str]:
        """Serving the whole store: add a predictor for each model name not served yet, load
        it, and (in a started process) start it. Returns the names added."""
        if self.fixed:
            return []
        try:
            names = self.store.models()
        except (ConvserveError, OSError):
            return []  # the store is unreadable: the catalog and readiness say so
        added = []
        with self._lock:
            for name in names:
                if name not in self._predictors:
                    self._predictors[name] = Predictor(
                        self.store, name, self._alias, **self._options
                    )
                    added.append(name)
        for name in added:
            logger.info("serving a new model: %s@%s", name, self._alias)
            predictor = self._predictors[name]
            predictor.check_for_update(force=True)
            if self._started_in_pid == os.getpid():
                predictor.ensure_started()
        return added

    # ------------------------------------------------------------------ per-process start-up
    def ensure_started(self) -> None:
        """Per process, once (a pid check after that): every predictor's catch-up and poller."""
        if self._started_in_pid == this_pid():
            return
        self._started_in_pid = this_pid()
        for predictor in list(self._predictors.values()):
            predictor.ensure_started()
        self.broadcast.start(lambda: self.check_all(force=True))

    def stop(self) -> None:
        """Stop every poller (tests; workers simply exit)."""
        for predictor in list(self._predictors.values()):
            predictor.stop()
