"""Training and inference speed of SimpleConvNet: our NumPy network against PyTorch CPU.

Issue 2's figures, all float32, same shapes and the same starting weights in both:

- one training step (forward, backward, Adam update) at batch 100; target ours <= 1.0x PyTorch;
- ``predict_proba`` at batch 1, 100 and 1000 (PyTorch under ``torch.inference_mode`` with a
  softmax, NumPy arrays in and out); target ours >= PyTorch's images/s at every batch size.

Ours and PyTorch's are timed interleaved (order flipped every repetition) in one process, and
the table shows medians of the repetitions and the median of the per-repetition ratios
ours/torch (below 1 means we are faster). The load average is printed before and after: on a
shared 2-core machine the ratio is the figure to trust, not the milliseconds.

    .venv/bin/python benchmarks/train_speed.py              # about a minute
    .venv/bin/python benchmarks/train_speed.py --json       # the same figures as JSON
    .venv/bin/python benchmarks/train_speed.py --reps 9 --threads 1

The optimizer is ``training.optimizers.Adam`` (the trainer's own), so the step is what training
runs. For reference the script also times a lean in-place Adam with the same arithmetic.
Without torch installed, only our figures are printed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import REPO, environment, interleaved, median, set_threads  # noqa: E402
from training.bundle import input_contract, normalise  # noqa: E402
from training.network import Network, preset  # noqa: E402
from training.optimizers import Adam  # noqa: E402

BATCH = 100
INFERENCE_BATCHES = (1, 100, 1000)
# Calls per repetition: enough that one repetition takes tens of milliseconds.
CALLS = {"train": 10, 1: 300, 100: 20, 1000: 3}


def mnist_inputs(count: int) -> tuple[np.ndarray, np.ndarray]:
    """``count`` normalised MNIST test images (N, 1, 28, 28) float32 and labels (random
    digit-like data when MNIST is not on this machine)."""
    sys.path.insert(0, str(REPO / "tests"))
    from conftest import find_mnist_dir, read_idx, synthetic_digits

    directory = find_mnist_dir()
    if directory is None:
        images, labels = synthetic_digits(count)
    else:
        images = read_idx(directory / "t10k-images-idx3-ubyte.gz")[:count]
        labels = read_idx(directory / "t10k-labels-idx1-ubyte.gz")[:count]
    x = normalise(images, input_contract(0.1307, 0.3081), np.float32)
    return x, labels.astype(np.intp)


class LeanAdam:
    """Reference only: Adam with the same arithmetic as ``training.optimizers.Adam`` (no
    weight decay), in place with one reused scratch array per parameter, to show what the
    optimizer's share of a step could be."""

    def __init__(self, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8):
        self.lr, self.beta1, self.beta2, self.eps = lr, beta1, beta2, eps
        self.state: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self.steps = 0

    def step(self, params: dict, grads: dict) -> None:
        self.steps += 1
        correction2 = math.sqrt(1.0 - self.beta2**self.steps)
        step_size = self.lr * correction2 / (1.0 - self.beta1**self.steps)
        for name, param in params.items():
            grad = grads[name]
            if name not in self.state:
                self.state[name] = tuple(np.zeros_like(param) for _ in range(3))
            m, v, scratch = self.state[name]
            m *= self.beta1
            np.multiply(grad, 1.0 - self.beta1, out=scratch)
            m += scratch
            v *= self.beta2
            np.multiply(grad, grad, out=scratch)
            scratch *= 1.0 - self.beta2
            v += scratch
            np.sqrt(v, out=scratch)
            scratch += self.eps * correction2
            np.divide(m, scratch, out=scratch)
            scratch *= step_size
            param -= scratch


def torch_twin(network: Network):
    """The same architecture and weights in PyTorch, or None without torch."""
    try:
        import torch
    except ImportError:
        return None
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 30, 5),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
        torch.nn.Flatten(),
        torch.nn.Linear(4320, 100),
        torch.nn.ReLU(),
        torch.nn.Linear(100, 10),
    )
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


def training_candidates(x, labels, with_torch: bool):
    """name -> one training step, cycling over the batches of x."""
    batches = [slice(i, i + BATCH) for i in range(0, len(x) - BATCH + 1, BATCH)]
    candidates = {}
    for name, optimizer_class in (("ours", Adam), ("ours_lean_adam", LeanAdam)):
        network = Network(preset("simpleconvnet"), rng=np.random.default_rng(0))
        optimizer = optimizer_class(lr=1e-3)
        position = iter(range(10**12))

        def step(network=network, optimizer=optimizer, position=position):
            batch = batches[next(position) % len(batches)]
            network.loss(x[batch], labels[batch])
            optimizer.step(network.params(), network.backward())

        candidates[name] = step
    if with_torch:
        import torch

        model = torch_twin(Network(preset("simpleconvnet"), rng=np.random.default_rng(0)))
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        tx, tlabels = torch.from_numpy(x), torch.from_numpy(labels.astype(np.int64))
        position = iter(range(10**12))

        def torch_step():
            batch = batches[next(position) % len(batches)]
            optimizer.zero_grad(set_to_none=True)
            loss = torch.nn.functional.cross_entropy(model(tx[batch]), tlabels[batch])
            loss.backward()
            optimizer.step()

        candidates["torch"] = torch_step
    return candidates


def step_phases(x, labels, calls: int, repetitions: int) -> dict[str, float]:
    """Median seconds of our forward+loss, backward and Adam update within a step."""
    network = Network(preset("simpleconvnet"), rng=np.random.default_rng(0))
    optimizer = Adam(lr=1e-3)
    batches = [slice(i, i + BATCH) for i in range(0, len(x) - BATCH + 1, BATCH)]
    phases = {"forward_loss": [], "backward": [], "adam": []}
    for _ in range(repetitions):
        totals = dict.fromkeys(phases, 0.0)
        for i in range(calls):
            batch = batches[i % len(batches)]
            t0 = time.perf_counter()
            network.loss(x[batch], labels[batch])
            t1 = time.perf_counter()
            grads = network.backward()
            t2 = time.perf_counter()
            optimizer.step(network.params(), grads)
            t3 = time.perf_counter()
            totals["forward_loss"] += t1 - t0
            totals["backward"] += t2 - t1
            totals["adam"] += t3 - t2
        for name, total in totals.items():
            phases[name].append(total / calls)
    return {name: median(values) for name, values in phases.items()}


def inference_candidates(network: Network, model, x, batch: int):
    candidates = {"ours": lambda: network.predict_proba(x[:batch])}
    if model is not None:
        import torch

        def torch_predict():
            with torch.inference_mode():
                return torch.softmax(model(torch.from_numpy(x[:batch])), dim=1).numpy()

        candidates["torch"] = torch_predict
    return candidates


def run(repetitions: int) -> dict:
    x, labels = mnist_inputs(1000)
    report = {"environment_before": environment(), "repetitions": repetitions, "rows": []}
    network = Network(preset("simpleconvnet"), rng=np.random.default_rng(0))
    model = torch_twin(network)
    if model is not None:
        import torch

        with torch.inference_mode():
            expected = torch.softmax(model(torch.from_numpy(x[:100])), dim=1).numpy()
        # Same weights, same inputs: if these differ, the two are not the same network.
        report["max_abs_probability_difference"] = float(
            np.abs(network.predict_proba(x[:100]) - expected).max()
        )

    train = interleaved(
        training_candidates(x, labels, model is not None), CALLS["train"], repetitions
    )
    report["rows"].append(row("train step, batch 100", train, images=BATCH))
    report["lean_adam_step_ms"] = 1e3 * median(train["ours_lean_adam"])
    report["phases_ms"] = {
        k: 1e3 * v for k, v in step_phases(x, labels, CALLS["train"], repetitions).items()
    }
    for batch in INFERENCE_BATCHES:
        times = interleaved(
            inference_candidates(network, model, x, batch), CALLS[batch], repetitions
        )
        report["rows"].append(row(f"predict_proba, batch {batch}", times, images=batch))
    report["environment_after"] = environment()
    return report


def row(name: str, times: dict[str, list[float]], images: int) -> dict:
    ours = median(times["ours"])
    out = {
        "name": name,
        "ours_ms": 1e3 * ours,
        "ours_images_per_s": images / ours,
        "ours_spread": max(times["ours"]) / min(times["ours"]),
    }
    if "torch" in times:
        torch_time = median(times["torch"])
        # Each repetition timed ours and torch's back to back: the median of those paired
        # ratios shrugs off a slow spell that hit one repetition.
        paired = [o / t for o, t in zip(times["ours"], times["torch"], strict=True)]
        out.update(
            torch_ms=1e3 * torch_time,
            torch_images_per_s=images / torch_time,
            ratio=median(paired),
            ratio_of_medians=ours / torch_time,
        )
    return out


def describe_blas(environment_info: dict) -> str:
    """One line per thread pool: which library, its kernels and threads."""
    parts = []
    for pool in environment_info["blas"]:
        text = f"{pool.get('prefix', pool.get('name', '?'))} {pool.get('version') or ''}".strip()
        if pool.get("architecture"):
            text += f", {pool['architecture']} kernels"
        if "num_threads" in pool:
            text += f", {pool['num_threads']} threads"
        parts.append(f"{pool.get('package', pool.get('user_api'))}: {text}")
    return "; ".join(parts)


def print_report(report: dict) -> None:
    before, after = report["environment_before"], report["environment_after"]
    print(f"SimpleConvNet, float32 | {before['date']} | {before['cpu']}, {before['nproc']} CPUs")
    torch_text = f"torch {before['torch']} ({before.get('torch_threads')} threads)"
    print(f"numpy {before['numpy']} | {torch_text if before['torch'] else 'torch: not installed'}")
    print(f"BLAS: {describe_blas(before)}")
    print(
        f"OPENBLAS_CORETYPE={before['OPENBLAS_CORETYPE']} "
        f"OPENBLAS_L2_SIZE={before['OPENBLAS_L2_SIZE']} (set on this machine, left alone)"
    )
    print(f"load average before {before['loadavg']}, after {after['loadavg']}")
    print(
        f"medians of {report['repetitions']} interleaved repetitions; ratio = median of the "
        "per-repetition ours/torch time ratios (< 1: ours faster)"
    )
    print()
    print(
        f"| {'measurement':<26} | {'ours ms':>9} | {'torch ms':>9} | {'ratio':>6} "
        f"| {'ours img/s':>10} | {'torch img/s':>11} |"
    )
    print(f"|{'-' * 28}|{'-' * 11}|{'-' * 11}|{'-' * 8}|{'-' * 12}|{'-' * 13}|")
    for r in report["rows"]:
        torch_ms = f"{r['torch_ms']:9.3f}" if "torch_ms" in r else f"{'-':>9}"
        ratio = f"{r['ratio']:6.2f}" if "ratio" in r else f"{'-':>6}"
        torch_rate = f"{r['torch_images_per_s']:11,.0f}" if "torch_ms" in r else f"{'-':>11}"
        print(
            f"| {r['name']:<26} | {r['ours_ms']:9.3f} | {torch_ms} | {ratio} "
            f"| {r['ours_images_per_s']:10,.0f} | {torch_rate} |"
        )
    phases = report["phases_ms"]
    print()
    print(
        "our step: forward+loss {forward_loss:.2f} ms, backward {backward:.2f} ms, "
        "Adam (training.optimizers) {adam:.2f} ms".format(**phases)
    )
    print(f"our step with a lean in-place Adam (reference): {report['lean_adam_step_ms']:.2f} ms")
    if "max_abs_probability_difference" in report:
        print(
            "same weights, ours vs torch probabilities: max |difference| "
            f"{report['max_abs_probability_difference']:.1e}"
        )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=9, help="repetitions (median; >= 5)")
    parser.add_argument("--threads", type=int, help="BLAS and torch threads (default: theirs)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    if args.reps < 5:
        parser.error("--reps must be at least 5")
    if args.threads:
        set_threads(args.threads)
    report = run(args.reps)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
