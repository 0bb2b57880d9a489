"""The model lifecycle behind the routes: load verified bundles from the store, warm them up,
serve one, swap it atomically when the store changes, and keep a few pinned versions at hand.

Requests reach it through the data plane (service/dataplane.py), which asks for a
``ServedModel`` (the one being served, or a pinned ``?version=``/``?alias=``) and runs its
forward pass, the training package's own ``Bundle.predict_proba``. What the store holds
beyond the loaded models (every version, manifests, aliases) is the catalog's
(service/catalog.py).

Threads: the request thread only *reads* ``Predictor.served`` (one attribute load, so a request
sees either the old model or the new one, never a mix). The poller thread (one per process,
started lazily after gunicorn forks) and ``POST /admin/reload`` are the only writers, and they
serialise on a lock. Loading happens fully before the swap, so no request waits on a reload
and none fails because of one.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

from service.errors import NotReady
from training.bundle import IMAGE_SHAPE, Bundle, Prediction
from training.errors import BundleInvalid, ConvserveError
from training.store import LATEST, ModelStore, format_ref

logger = logging.getLogger("convserve.predictor")


def _utc_now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class ServedModel:
    """One loaded, verified and warmed-up version of a model."""

    name: str
    version: int
    bundle: Bundle
    manifest: dict
    # The class labels as a tuple, indexed by the argmax of the probabilities.
    labels: tuple
    loaded_at: str = field(default_factory=_utc_now)

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    @property
    def has_detector(self) -> bool:
        """True when the bundle carries a not-a-digit detector (an OOD score per image)."""
        return self.bundle.detector is not None

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The image shape (H, W) the bundle's input contract takes, in pixels."""
        return tuple(self.bundle.input.get("shape", IMAGE_SHAPE))

    def predict(self, pixels: np.ndarray) -> Prediction:
        """pixels (N, H, W) float32 in 0-255 -> ``training.bundle.Prediction``: calibrated
        probabilities (N, num_classes), the OOD score and the not-a-digit flag (N,)."""
        return self.bundle.predict(pixels)


class ReloadHooks:
    """What the predictor reports to the outside (the metrics); the default does nothing, so
    the predictor works without prometheus in scripts and tests."""

    def reload_finished(self, name: str, *, succeeded: bool) -> None:
        """A load of a new version to serve finished (swapped in, or refused)."""

    def served_version_changed(self, name: str, version: int) -> None:
        """The version this process serves is now ``version``."""

    def version_loaded(self, name: str, version: int, seconds: float) -> None:
        """A version was loaded, verified and warmed up in ``seconds``."""

    def loaded_versions_changed(self, name: str, count: int, *, serving: bool) -> None:
        """This process now holds ``count`` versions of the model (served and pinned);
        ``serving``: one of them answers unpinned requests (the model is ready)."""


class Predictor:
    """Owns the served model of one name (at one alias), a small LRU of pinned versions, and
    the polling that notices new versions.

    ``alias`` is the store alias to follow (``"latest"`` or empty means the highest version).
    ``reload_interval_s`` is how often the poller checks the store; 0 disables polling.
    """

    def __init__(
        self,
        store: ModelStore,
        name: str,
        alias: str | None = "production",
        *,
        reload_interval_s: float = 2.0,
        cache_size: int = 4,
        hooks: ReloadHooks | None = None,
    ):
        self.store = store
        self.name = name
        self.alias = alias or LATEST
        self.reload_interval_s = float(reload_interval_s)
        self.cache_size = max(0, int(cache_size))
        self.hooks = hooks or ReloadHooks()
        # The one reference requests read; replaced whole, never mutated.
        self._served: ServedModel | None = None
        self._last_error: dict | None = None
        self._last_check: str | None = None
        # The store fingerprint seen at the last check: polling skips work while it holds.
        self._seen_token: tuple | None = None
        self._reload_lock = threading.Lock()
        self._cache: OrderedDict[int, ServedModel] = OrderedDict()
        self._cache_lock = threading.Lock()
        self._load_lock = threading.Lock()
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None
        # The process the per-process start-up (poller, served-version gauge) last ran in.
        self._started_in_pid: int | None = None

    # ------------------------------------------------------------------ state
    @property
    def served(self) -> ServedModel | None:
        """The model answering requests that pin no version, or None before the first
        successful load."""
        return self._served

    @property
    def ready(self) -> bool:
        """True once a verified, warmed-up model is being served."""
        return self._served is not None

    @property
    def last_error(self) -> dict | None:
        """The last refused load of a version to serve: ``{"version", "message", "at"}``."""
        return self._last_error

    def status(self) -> dict:
        """What /models shows about serving: the served version, the alias followed, the
        last check and the last refused reload."""
        served = self._served
        return {
            "alias": self.alias,
            "served_version": served.version if served else None,
            "loaded_at": served.loaded_at if served else None,
            "last_check": self._last_check,
            "last_reload_error": self._last_error,
            "reload_interval_s": self.reload_interval_s,
            "pinned_versions": sorted(self._cache),
        }

    # ------------------------------------------------------------------ loading
    def _load_verified(self, version: int) -> ServedModel:
        """Load ``version`` through the store (sha256-verified) and warm it up. Raises
        BundleInvalid (naming name:version) if the weights cannot serve."""
        started = time.perf_counter()
        bundle = self.store.load(self.name, version)
        manifest = self.store.manifest(self.name, version)
        labels = tuple(bundle.class_labels)
        label = format_ref(self.name, version)
        try:
            # One blank image: exercises every layer once so the first real request does not
            # pay for lazy allocations, and proves the weights give finite probabilities.
            blank = np.zeros((1, *bundle.input.get("shape", IMAGE_SHAPE)), dtype=np.float32)
            probabilities = bundle.predict_proba(blank)
        except (ValueError, FloatingPointError) as exc:
            raise BundleInvalid(f"{label}: warm-up prediction failed ({exc})") from None
        if probabilities.shape != (1, len(labels)) or not np.all(np.isfinite(probabilities)):
            raise BundleInvalid(
                f"{label}: warm-up prediction gave shape {probabilities.shape} or non-finite "
                f"values, expected finite (1, {len(labels)})"
            )
        # A histogram: counted once wherever it happens, the pre-fork master included.
        self.hooks.version_loaded(self.name, version, time.perf_counter() - started)
        return ServedModel(self.name, version, bundle, manifest, labels)

    def check_for_update(self, *, force: bool = False) -> dict:
        """Check the store and swap in the version the alias points at, if it is new.

        Without ``force``, nothing is read beyond the store's change token while it is
        unchanged (so a refused version is not retried every interval until the store moves).
        A version that fails to load or warm up is refused: the old model keeps serving and
        the failure is kept for /models and counted in the metrics.

        Returns ``{"changed", "served_version", "target_version", "error"}``.
        """
        with self._reload_lock:
            self._last_check = _utc_now()
            try:
                token = self.store.change_token(self.name)
            except ConvserveError as exc:
                return self._refuse(None, exc)
            if not force and token == self._seen_token:
                return self._outcome(changed=False, target=None)
            # Remember the token read *before* resolving: a change during the load triggers
            # another check on the next tick.
            self._seen_token = token
            target = None
            try:
                target = self.store.resolve(self.name, alias=self.alias)
                current = self._served
                if current is not None and current.version == target:
                    self._last_error = None  # the store no longer points at a broken version
                    return self._outcome(changed=False, target=target)
                candidate = self._cached(target) or self._load_verified(target)
            except ConvserveError as exc:
                return self._refuse(target, exc)
            previous = self._served
            self._served = candidate  # the swap: one reference assignment
            self._last_error = None
            if previous is not None:
                self._remember(previous)  # requests pinning the old version stay cheap
            with self._cache_lock:
                self._cache.pop(candidate.version, None)
            logger.info(
                "serving %s (was %s)",
                format_ref(self.name, candidate.version),
                previous.version if previous else "nothing",
            )
            self.hooks.reload_finished(self.name, succeeded=True)
            if self._started_in_pid == os.getpid():
                # Not before ensure_started: a pre-fork master serves nothing, and a gauge
                # set there would be reported as a live "worker" for as long as it runs.
                self.hooks.served_version_changed(self.name, candidate.version)
            self._report_loaded_versions()
            return self._outcome(changed=True, target=target)

    def _refuse(self, target: int | None, exc: Exception) -> dict:
        self._last_error = {"version": target, "message": str(exc), "at": _utc_now()}
        logger.warning("reload refused, still serving %s: %s", self._served_label(), exc)
        self.hooks.reload_finished(self.name, succeeded=False)
        return self._outcome(changed=False, target=target, error=str(exc))

    def _served_label(self) -> str:
        served = self._served
        return format_ref(self.name, served.version) if served else "nothing"

    def _outcome(self, *, changed: bool, target: int | None, error: str | None = None) -> dict:
        served = self._served
        return {
            "changed": changed,
            "served_version": served.version if served else None,
            "target_version": target,
            "error": error,
        }

    # ------------------------------------------------------------------ pinned versions
    def _cached(self, version: int) -> ServedModel | None:
        with self._cache_lock:
            model = self._cache.get(version)
            if model is not None:
                self._cache.move_to_end(version)
            return model

    def _remember(self, model: ServedModel) -> None:
        if self.cache_size == 0:
            return
        with self._cache_lock:
            self._cache[model.version] = model
            self._cache.move_to_end(model.version)
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        self._report_loaded_versions()

    def _report_loaded_versions(self) -> None:
        if self._started_in_pid == os.getpid():
            serving = self._served is not None
            count = len(self._cache) + serving
            self.hooks.loaded_versions_changed(self.name, count, serving=serving)

    def model_for(self, version: int | None = None, alias: str | None = None) -> ServedModel:
        """The model to answer a request: the served one when nothing is pinned, else the
        pinned version (by number or store alias), loaded and verified on demand into a small
        LRU. Raises ModelNotFound/VersionNotFound/AliasNotFound, InvalidName, BundleInvalid,
        or NotReady (nothing pinned and nothing served yet)."""
        served = self._served
        if version is None and alias is None:
            if served is None:
                raise NotReady(self.not_ready_message())
            return served
        if alias is not None:
            version = self.store.resolve(self.name, alias=alias)
        # Loaded versions answer without touching the store (the hot path of pinned requests).
        if served is not None and served.version == version:
            return served
        model = self._cached(version)
        if model is not None:
            return model
        version = self.store.resolve(self.name, version=version)
        # One load at a time: concurrent requests for the same version load it once.
        with self._load_lock:
            model = self._cached(version)
            if model is None:
                model = self._load_verified(version)
                self._remember(model)
        return model

    def not_ready_message(self) -> str:
        error = self._last_error
        reason = f": {error['message']}" if error else ""
        return f"no verified model loaded yet for {self.name}@{self.alias}{reason}"

    # ------------------------------------------------------------------ per-process start-up
    def ensure_started(self) -> None:
        """Per process, once: catch up with the store, publish the served version and start
        the poller thread.

        Called from the gunicorn worker after the fork and again (cheaply) before each
        request, never from the master, so no thread is ever forked half-alive. A worker
        forked from a preloaded master inherits the master's model: the catch-up check swaps
        in whatever the store moved to since, before the worker answers anything.
        """
        pid = os.getpid()
        if self._started_in_pid == pid:
            return
        with self._reload_lock:
            if self._started_in_pid == pid:
                return
            self._started_in_pid = pid
            self._stop = threading.Event()
        self.check_for_update()
        served = self._served
        if served is not None:
            self.hooks.served_version_changed(self.name, served.version)
        self._report_loaded_versions()
        if self.reload_interval_s > 0:
            self._poller = threading.Thread(
                target=self._poll_forever,
                args=(self._stop,),
                name=f"convserve-poller-{self.name}",
                daemon=True,
            )
            self._poller.start()

    def _poll_forever(self, stop: threading.Event) -> None:
        while not stop.wait(self.reload_interval_s):
            try:
                self.check_for_update()
            except Exception:  # a poller that dies silently would freeze the served version
                logger.exception("unexpected error while polling the store")
                time.sleep(self.reload_interval_s)

    def stop(self) -> None:
        """Stop the poller (tests; workers simply exit)."""
        self._stop.set()
        poller = self._poller
        if poller is not None and poller is not threading.current_thread():
            poller.join(timeout=5)
