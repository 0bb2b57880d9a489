"""Dynamic batching in the HTTP front: the forward passes of the requests a worker answers in
the same turn of its event loop run as one batch.

Under load a front worker (service/front.py) wakes every connection whose request has arrived,
in arrival order, and each runs the app up to its forward pass (``DataPlane.infer``). There a
request leaves its pixels here and yields; once every request woken in that turn has come
this far (the flush is a callback of the event loop, queued behind their wake-ups), each
model's pixels go through ``Bundle.predict`` together and every request takes its rows back
and finishes on its own: its checks, errors, metrics and answer are its own, as before.

Why: one image's forward pass reads every weight of the network (SimpleConvNet's first dense
layer alone is 1.7 MB) to compute one row; BLAS's matrix-matrix product computes 8 rows in
450 us instead of 8 x 100 (docs/BENCHMARKS.md, "The third round", item 5). Under
``MIN_BATCH`` images it costs more than separate passes (2 images: 300 us: the product
repacks the weights every time), so smaller groups run request by request, as without
batching. Nothing waits for requests still to come: a request that is alone in its turn
(one client, c=1) runs at once, and a request of ``MAX_REQUEST_IMAGES`` images or more is a
batch already and never waits. ``DYNAMIC_BATCHING=0`` in the environment turns it off
(service/front.py).

A row's probabilities can differ from its single-image pass in the last float32 digit (BLAS
adds the products in another order).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from gevent.hub import Waiter

from training.bundle import Prediction

# The WSGI environ key under which the front offers ``Batcher.predict`` to the app.
BATCH = "convserve.batch"

MIN_BATCH = 4  # images: a group with fewer runs request by request
MAX_REQUEST_IMAGES = 8  # a request with this many images runs alone, at once
MAX_BATCH_IMAGES = 64  # images in one merged forward pass


class Batcher:
    """Gathers the forward passes of one event-loop turn (module docstring); one per front
    worker. ``others_ready()``: whether other requests were woken in this turn and have not
    run yet (the front's turn queue knows). ``passes`` and ``images`` count the forward passes
    run and the images they took."""

    def __init__(self, hub, others_ready: Callable[[], bool]):
        self.hub = hub
        self.others_ready = others_ready
        self.pending: dict[int, tuple] = {}  # id(model) -> (model, [(pixels, waiter)])
        self.flush_queued = False
        self.passes = self.images = 0

    def predict(self, model, pixels: np.ndarray) -> Prediction:
        """``model.predict(pixels)`` (pixels (N, H, W)), in one pass with the other requests of
        this turn when there are any."""
        if len(pixels) >= MAX_REQUEST_IMAGES or not (self.pending or self.others_ready()):
            return self.forward(model, pixels)
        waiter = Waiter(self.hub)
        self.pending.setdefault(id(model), (model, []))[1].append((pixels, waiter))
        if not self.flush_queued:
            self.flush_queued = True
            self.hub.loop.run_callback(self.flush)
        return waiter.get()

    def forward(self, model, pixels: np.ndarray) -> Prediction:
        self.passes += 1
        self.images += len(pixels)
        return model.predict(pixels)

    def flush(self) -> None:
        """In the event loop: every pending pass, each request given its rows (or the error)."""
        self.flush_queued = False
        pending, self.pending = self.pending, {}
        for model, requests in pending.values():
            for group in groups(requests):
                try:
                    results = self.run_group(model, group)
                except Exception as exc:  # each request of the group answers it (a 500)
                    results = [exc] * len(group)
                for (_, waiter), result in zip(group, results, strict=True):
                    _resume(waiter, result)

    def run_group(self, model, group: list) -> list[Prediction]:
        if len(group) == 1:
            return [self.forward(model, group[0][0])]
        whole = self.forward(model, np.concatenate([pixels for pixels, _ in group]))
        return split(whole, [len(pixels) for pixels, _ in group])


def _resume(waiter: Waiter, result) -> None:
    """Hand ``result`` (or raise it, an exception) to the request waiting on ``waiter``; one
    whose greenlet was killed meanwhile (a worker stopping) is skipped."""
    if waiter.greenlet is not None and waiter.greenlet.dead:
        return
    if isinstance(result, BaseException):
        waiter.throw(result)
    else:
        waiter.switch(result)


def groups(requests: list) -> list[list]:
    """Requests ``[(pixels, waiter)]`` in arrival order -> groups of at most MAX_BATCH_IMAGES
    images; a group under MIN_BATCH images becomes one group per request."""
    grouped, current, images = [], [], 0
    for request in requests:
        size = len(request[0])
        if current and images + size > MAX_BATCH_IMAGES:
            grouped.append(current)
            current, images = [], 0
        current.append(request)
        images += size
    if current:
        grouped.append(current)
    result = []
    for group in grouped:
        if sum(len(pixels) for pixels, _ in group) >= MIN_BATCH:
            result.append(group)
        else:
            result.extend([request] for request in group)
    return result


def split(whole: Prediction, sizes: list[int]) -> list[Prediction]:
    """One ``Prediction`` for N images -> one per request, ``sizes`` images each, in order."""
    results, start = [], 0
    for size in sizes:
        rows = slice(start, start + size)
        results.append(
            Prediction(
                probabilities=whole.probabilities[rows],
                ood_score=whole.ood_score[rows],
                not_a_digit=whole.not_a_digit[rows],
                ood_available=whole.ood_available,
                calibrated=whole.calibrated,
            )
        )
        start += size
    return results
