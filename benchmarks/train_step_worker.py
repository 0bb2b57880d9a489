"""One library's SimpleConvNet timings, alone in this process; prints one JSON object.

Run by ``benchmarks/train_speed.py``, once per library and repetition, so that our NumPy code and
PyTorch never share a process: in one process the two libraries' thread pools spin-wait on the
same cores after each call and slow each other down (PyTorch far more than us), which is what
made the old interleaved figures look twice as good as they were.

    .venv/bin/python benchmarks/train_step_worker.py ours
    .venv/bin/python benchmarks/train_step_worker.py torch --threads 1

``ours`` never imports torch. Both start from the same weights (our He initialisation, seed 0)
and step through the same batches of MNIST test digits with Adam (lr 1e-3): for us
``training.optimizers.Adam`` through ``training.parallel.TrainStep``, what the trainer runs
(with 2 BLAS threads each batch is split over 2 threads; with 1, not). The thread count comes
from the environment (``OPENBLAS_NUM_THREADS``/``OMP_NUM_THREADS``, set by the parent) and, for
torch, also from ``--threads``. Our step's phases (forward+loss, backward, optimizer) are timed
separately on the plain, unsplit step: the split step runs them on two threads at once.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import environment, mnist_test_digits  # noqa: E402
from training.bundle import input_contract, normalise  # noqa: E402
from training.network import Network, preset  # noqa: E402
from training.optimizers import Adam  # noqa: E402
from training.parallel import TrainStep  # noqa: E402

BATCH = 100
INFERENCE_BATCHES = (1, 100, 1000)
# Calls per timed block (a block takes tens of milliseconds) and blocks per process.
CALLS = {"train": 20, 1: 300, 100: 20, 1000: 3}
BLOCKS = 5
WARMUP_STEPS = 10


def inputs(count: int = 1000) -> tuple[np.ndarray, np.ndarray, str]:
    """Normalised (count, 1, 28, 28) float32 digits, their labels (count,) intp, the source."""
    images, labels, source = mnist_test_digits(count)
    x = normalise(images, input_contract(0.1307, 0.3081), np.float32)
    return x, labels.astype(np.intp), source


def batches(count: int) -> list[slice]:
    return [slice(i, i + BATCH) for i in range(0, count - BATCH + 1, BATCH)]


def block_seconds(function, calls: int, blocks: int = BLOCKS) -> list[float]:
    """Seconds per call, one figure per block of ``calls`` back-to-back calls."""
    out = []
    for _ in range(blocks):
        start = time.perf_counter()
        for _ in range(calls):
            function()
        out.append((time.perf_counter() - start) / calls)
    return out


def ours(x: np.ndarray, labels: np.ndarray) -> dict:
    """Train step (the trainer's ``TrainStep``), the plain step's phases and predict_proba
    timings of our network."""
    network = Network(preset("simpleconvnet"), rng=np.random.default_rng(0))
    slices = batches(len(x))
    position = iter(range(10**12))
    with TrainStep(network, Adam(lr=1e-3)) as train_step:

        def step():
            part = slices[next(position) % len(slices)]
            train_step(x[part], labels[part])

        block_seconds(step, WARMUP_STEPS, blocks=1)
        step_times = block_seconds(step, CALLS["train"])
        split_threads = train_step.threads
    inference = {}
    for batch in INFERENCE_BATCHES:
        network.predict_proba(x[:batch])  # warm the workspace
        inference[str(batch)] = block_seconds(
            lambda b=batch: network.predict_proba(x[:b]), CALLS[batch]
        )
    return {
        "train_step": step_times,
        "split_threads": split_threads,
        "phases": plain_step_phases(x, labels),
        "inference": inference,
    }


def plain_step_phases(x: np.ndarray, labels: np.ndarray) -> dict[str, list[float]]:
    """Seconds per step of forward+loss, backward and Adam, one figure per block, timed on the
    plain (unsplit) step of a fresh network."""
    network = Network(preset("simpleconvnet"), rng=np.random.default_rng(0))
    optimizer = Adam(lr=1e-3)
    params = network.params()
    slices = batches(len(x))
    phases = {"forward_loss": [], "backward": [], "optimizer": []}
    for block in range(-1, BLOCKS):  # block -1 warms up
        totals = dict.fromkeys(phases, 0.0)
        calls = WARMUP_STEPS if block < 0 else CALLS["train"]
        for i in range(calls):
            part = slices[i % len(slices)]
            t0 = time.perf_counter()
            network.loss(x[part], labels[part])
            t1 = time.perf_counter()
            grads = network.backward()
            t2 = time.perf_counter()
            optimizer.step(params, grads)
            t3 = time.perf_counter()
            totals["forward_loss"] += t1 - t0
            totals["backward"] += t2 - t1
            totals["optimizer"] += t3 - t2
        if block >= 0:
            for name, total in totals.items():
                phases[name].append(total / calls)
    return phases


def torch_architecture():
    """SimpleConvNet in PyTorch (conv 30@5x5 -> ReLU -> pool 2x2 -> 100 -> ReLU -> 10), with
    PyTorch's own initial weights."""
    import torch

    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 30, 5),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
        torch.nn.Flatten(),
        torch.nn.Linear(4320, 100),
        torch.nn.ReLU(),
        torch.nn.Linear(100, 10),
    )


def torch_model(network: Network):
    """The same architecture and weights as ``network`` (SimpleConvNet) in PyTorch."""
    import torch

    model = torch_architecture()
    params = network.params()
    with torch.no_grad():
        model[0].weight.copy_(torch.from_numpy(params["conv1.W"]))
        model[0].bias.copy_(torch.from_numpy(params["conv1.b"]))
        # Both flatten (C, H, W) in the same order; Linear keeps W transposed.
        model[4].weight.copy_(torch.from_numpy(params["fc1.W"].T))
        model[4].bias.copy_(torch.from_numpy(params["fc1.b"]))
        model[6].weight.copy_(torch.from_numpy(params["fc2.W"].T))
        model[6].bias.copy_(torch.from_numpy(params["fc2.b"]))
    return model


def pytorch(x: np.ndarray, labels: np.ndarray, threads: int | None) -> dict:
    """Train step and inference timings of the same network in PyTorch, and how far its
    probabilities are from ours on the same weights (computed after the timings)."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    network = Network(preset("simpleconvnet"), rng=np.random.default_rng(0))
    model = torch_model(network)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    tx, tlabels = torch.from_numpy(x), torch.from_numpy(labels.astype(np.int64))
    slices = batches(len(x))
    position = iter(range(10**12))

    def step():
        part = slices[next(position) % len(slices)]
        optimizer.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(tx[part]), tlabels[part])
        loss.backward()
        optimizer.step()

    block_seconds(step, WARMUP_STEPS, blocks=1)
    step_times = block_seconds(step, CALLS["train"])

    def predict(batch: int) -> np.ndarray:
        with torch.inference_mode():
            return torch.softmax(model(torch.from_numpy(x[:batch])), dim=1).numpy()

    inference = {}
    for batch in INFERENCE_BATCHES:
        predict(batch)
        inference[str(batch)] = block_seconds(lambda b=batch: predict(b), CALLS[batch])
    fresh = torch_model(network)  # the starting weights, before the Adam steps above
    with torch.inference_mode():
        theirs = torch.softmax(fresh(torch.from_numpy(x[:100])), dim=1).numpy()
    difference = float(np.abs(network.predict_proba(x[:100]) - theirs).max())
    return {
        "train_step": step_times,
        "inference": inference,
        "max_abs_probability_difference": difference,
        "torch_threads": torch.get_num_threads(),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("library", choices=("ours", "torch"))
    parser.add_argument("--threads", type=int, help="torch threads (BLAS: from the environment)")
    args = parser.parse_args(argv)
    x, labels, source = inputs()
    result = ours(x, labels) if args.library == "ours" else pytorch(x, labels, args.threads)
    result["library"] = args.library
    result["data"] = source
    result["environment"] = environment(with_torch=args.library == "torch")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
