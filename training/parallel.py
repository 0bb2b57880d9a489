"""One training step (forward, loss, backward, optimizer update), with each batch split over
threads.

Why: on a multi-core machine a multithreaded BLAS spreads only the matrix products; the rest of
a SimpleConvNet step (the patch copy, the pooling's running max and masks, the gradient routing,
bias and ReLU, the optimizer: about 40 % of it) and the conv weight gradient (two long operands,
tiny outputs, which OpenBLAS does not speed up with a second thread) ran on one core. NumPy
releases the GIL in its ufuncs and in BLAS, so ``threads`` Python threads, each running the whole
forward and backward on its share of the batch with BLAS held to one thread, keep every core
busy with all of it (batch 100 on 2 cores: the plain step 9.3 ms, split 6.5 ms).

How, exactly:

- Share i of the batch (n_i of the N images) runs through its own replica of the network
  (``Network.replica``: the same parameter arrays, layers of its own for the caches and
  gradients); share 0 runs through the network itself, on the calling thread.
- The loss is the mean over all N images: each share's backward divides by N, not n_i
  (``Network.backward(batch_size=N)``), so the shares' parameter gradients add up to the whole
  batch's; the sum lands in the network's own gradient arrays (``network.grads()``). Only the
  order of the additions differs from the unsplit step (float32 rounding, ~1e-7 relative).
- Then one optimizer step: its blocks (``Optimizer.begin_step``) are shared out among the
  threads, each summing and updating its own blocks.
- Only networks whose every image's loss depends on that image alone are split (conv, pooling,
  dense, ReLU, sigmoid, flatten; no batch norm, whose statistics are the batch's, no dropout,
  whose masks come from one generator); smaller batches than ``MIN_SHARE`` images per thread,
  and ``threads=1``, run the plain step.

The worker threads are persistent daemon threads, started once per ``TrainStep`` and stopped by
``close()`` (or leaving its ``with`` block).
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable

import numpy as np

from training.layers import Affine, Conv2D, Dropout, Flatten, MaxPool2D, ReLU, Sigmoid
from training.network import Network

THREADS_ENV = "CONVSERVE_TRAIN_THREADS"
MIN_SHARE = 16  # images per thread; a batch too small to give each thread this many is not split
SPLITTABLE_LAYERS = (Affine, Conv2D, Flatten, MaxPool2D, ReLU, Sigmoid)

_controller = None


def _blas_controller():
    """threadpoolctl's view of the BLAS libraries loaded in this process (built once)."""
    global _controller
    if _controller is None:
        from threadpoolctl import ThreadpoolController

        _controller = ThreadpoolController()
    return _controller


def default_threads() -> int:
    """Threads a training step uses by default: ``$CONVSERVE_TRAIN_THREADS`` when set (1 turns
    the split off), else BLAS's own thread count (which follows ``OPENBLAS_NUM_THREADS`` /
    ``OMP_NUM_THREADS`` and the machine), at most the CPUs this process may run on."""
    value = os.environ.get(THREADS_ENV, "").strip()
    if value:
        if not value.isdigit() or int(value) < 1:
            raise ValueError(f"{THREADS_ENV} must be a positive integer, got {value!r}")
        return int(value)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    blas = [info["num_threads"] for info in _blas_controller().info() if info["user_api"] == "blas"]
    return max(1, min(max(blas, default=1), cpus or 1))


def splittable(network: Network) -> bool:
    """Whether each image's loss depends on that image alone (then a batch may be split)."""
    return all(
        isinstance(layer, SPLITTABLE_LAYERS) or (isinstance(layer, Dropout) and layer.rate == 0)
        for _, layer in network.layers
    )


class _Worker:
    """A persistent daemon thread that runs the functions it is given, one at a time."""

    def __init__(self, name: str):
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._results: queue.SimpleQueue = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while (job := self._jobs.get()) is not None:
            try:
                self._results.put((True, job()))
            except BaseException as exc:  # handed to the caller, which raises it
                self._results.put((False, exc))

    def submit(self, job: Callable[[], object]) -> None:
        self._jobs.put(job)

    def result(self) -> tuple[bool, object]:
        """(True, value) or (False, exception) of the oldest job not yet collected."""
        return self._results.get()

    def close(self, timeout: float = 10.0) -> None:
        self._jobs.put(None)
        self.thread.join(timeout)


class TrainStep:
    """Forward, loss, backward and optimizer update of one batch, split over ``threads``.

    network: updated in place, with ``optimizer`` at its current ``lr``. threads: None for
    ``default_threads()``; the step uses 1 when the network cannot be split. Call ``close()``
    (or use ``with``) to stop the worker threads.
    """

    def __init__(self, network: Network, optimizer, threads: int | None = None):
        requested = default_threads() if threads is None else int(threads)
        if requested < 1:
            raise ValueError(f"threads must be a positive integer, got {threads!r}")
        self.network, self.optimizer = network, optimizer
        self.threads = requested if splittable(network) else 1
        self._flat_grads: list[dict[str, np.ndarray]] = []
        self._replicas = [network] + [network.replica() for _ in range(self.threads - 1)]
        self._workers = [_Worker(f"train-step-{i}") for i in range(1, self.threads)]

    def __enter__(self) -> TrainStep:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        """Stop the worker threads (each finishes the job it is running first)."""
        workers, self._workers = self._workers, []
        for worker in workers:
            worker.close()

    def shares(self, count: int) -> list[slice]:
        """The parts of a batch of ``count`` images, one per thread (one part: not split)."""
        parts = min(self.threads, count // MIN_SHARE) if self._workers else 1
        contiguous = all(p.flags.c_contiguous for p in self.network.params().values())
        if parts <= 1 or not contiguous:  # _deal cuts flat blocks
            return [slice(0, count)]
        bounds = [count * i // parts for i in range(parts + 1)]
        return [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]

    def __call__(
        self, x: np.ndarray, targets: np.ndarray, check: Callable[[float], None] | None = None
    ) -> tuple[float, np.ndarray]:
        """x (N, C, H, W) normalised, targets (N,) class indices -> (mean loss, logits (N, K)).
        ``check(loss)`` runs before the update; what it raises stops the step un-applied."""
        parts = self.shares(len(targets))
        if len(parts) == 1:
            logits = self.network.forward(x, train=True)
            loss = self.network.loss_layer.forward(logits, targets)
            if check is not None:
                check(loss)
            self.optimizer.step(self.network.params(), self.network.backward())
            return loss, logits
        with _blas_controller().limit(limits=1, user_api="blas"):
            loss, logits = self._backward(x, targets, parts)
            if check is not None:
                check(loss)
            params, grads = self.network.params(), self.network.grads()
            shares = _deal(self.optimizer.begin_step(params, grads), len(parts))
            self._run([lambda mine=mine: self._sum_and_update(mine, params) for mine in shares])
        return loss, logits

    def gradients(self, x: np.ndarray, targets: np.ndarray) -> tuple[float, np.ndarray]:
        """Forward and backward only, split as ``__call__`` splits: (mean loss, logits); the
        whole batch's gradient is then in ``network.grads()``. For checks."""
        parts = self.shares(len(targets))
        if len(parts) == 1:
            logits = self.network.forward(x, train=True)
            loss = self.network.loss_layer.forward(logits, targets)
            self.network.backward()
            return loss, logits
        with _blas_controller().limit(limits=1, user_api="blas"):
            loss, logits = self._backward(x, targets, parts)
            grads = self.network.grads()
            blocks = [(name, 0, grad.size) for name, grad in grads.items()]
            shares = _deal(blocks, len(parts))
            self._run([lambda mine=mine: self._sum(mine) for mine in shares])
        return loss, logits

    def _backward(self, x: np.ndarray, targets: np.ndarray, parts: list[slice]):
        """Forward and backward of each share on its own thread -> (mean loss, logits (N, K));
        keeps each share's gradients, flat, for ``_sum``."""
        count = len(targets)
        replicas = self._replicas[: len(parts)]
        for replica in replicas[1:]:
            replica.share_parameters(self.network)  # load_state may have replaced the arrays
        results = self._run(
            [
                lambda r=replica, part=part: _share_backward(r, x[part], targets[part], count)
                for replica, part in zip(replicas, parts, strict=True)
            ]
        )
        self._own_gradients()
        self._flat_grads = [
            {name: grad.reshape(-1) for name, grad in replica.grads().items()}
            for replica in replicas
        ]
        sizes = [part.stop - part.start for part in parts]
        loss = sum(value * size for (value, _), size in zip(results, sizes, strict=True))
        return loss / count, np.concatenate([logits for _, logits in results])

    def _own_gradients(self) -> None:
        """Make the network's gradients C-contiguous writable arrays: the shares' sums are
        written into them, block by block, through flat views."""
        for _, layer in self.network.layers:
            for key in layer.param_names:
                grad = getattr(layer, "d" + key)
                if not (grad.flags.c_contiguous and grad.flags.writeable):
                    setattr(layer, "d" + key, np.array(grad, order="C"))

    def _sum(self, blocks: list[tuple[str, int, int]]) -> None:
        """Add the other shares' gradients into the network's over ``blocks``."""
        mine, others = self._flat_grads[0], self._flat_grads[1:]
        for name, start, stop in blocks:
            target = mine[name][start:stop]
            for flat in others:
                target += flat[name][start:stop]

    def _sum_and_update(self, blocks: list[tuple[str, int, int]], params: dict) -> None:
        self._sum(blocks)
        self.optimizer.update(params, self.network.grads(), blocks)

    def _run(self, jobs: list[Callable[[], object]]) -> list[object]:
        """Run jobs[0] here and jobs[i] on worker i - 1, all at once, each with this thread's
        numpy error settings -> their results in order. Raises the first job's exception after
        all have finished. If waiting is interrupted (Ctrl-C), the workers are stopped and later
        steps run unsplit."""
        workers = self._workers[: len(jobs) - 1]
        errors = np.geterr()  # numpy's error settings are per thread: the workers take ours
        for worker, job in zip(workers, jobs[1:], strict=True):
            worker.submit(lambda job=job: _with_errstate(errors, job))
        try:
            outcomes = [(True, jobs[0]())]
        except BaseException as exc:
            outcomes = [(False, exc)]
        try:
            outcomes += [worker.result() for worker in workers]
        except BaseException:
            self.close()
            raise
        for ok, value in outcomes:
            if not ok:
                raise value
        return [value for _, value in outcomes]


def _with_errstate(errors: dict, job: Callable[[], object]) -> object:
    with np.errstate(**errors):
        return job()


def _share_backward(network: Network, x: np.ndarray, targets: np.ndarray, count: int):
    """One share's forward, loss and backward, its loss the mean over ``count`` images (the
    whole batch's) -> (the share's own mean loss, its logits)."""
    logits = network.forward(x, train=True)
    loss = network.loss_layer.forward(logits, targets)
    network.backward(batch_size=count)
    return loss, logits


def _deal(blocks: list[tuple[str, int, int]], parts: int) -> list[list[tuple[str, int, int]]]:
    """Cut the optimizer's blocks (name, start, stop) into ``parts`` lists of (nearly) equally
    many elements, cutting a block where a part's share ends, and join the adjacent blocks of
    one parameter within a part: with two threads at once, fewer and longer array operations
    ran faster than L2-sized blocks (each operation's end waits for the GIL, which the other
    thread holds between its own; Adam on 2 threads: 64k blocks ~1.2 ms, joined 0.8-1.1 ms)."""
    total = sum(stop - start for _, start, stop in blocks)
    bounds = [total * i // parts for i in range(parts + 1)]
    out: list[list[tuple[str, int, int]]] = [[] for _ in range(parts)]
    offset = 0
    for name, start, stop in blocks:
        for i in range(parts):
            low, high = max(bounds[i], offset), min(bounds[i + 1], offset + stop - start)
            if low >= high:
                continue
            piece = (name, start + low - offset, start + high - offset)
            share = out[i]
            if share and share[-1][0] == name and share[-1][2] == piece[1]:
                piece = (name, share.pop()[1], piece[2])
            share.append(piece)
        offset += stop - start
    return out
