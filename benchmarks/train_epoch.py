"""Whole-epoch training time: ``convserve train`` against a plain PyTorch loop, each alone.

Both train SimpleConvNet on all 60,000 MNIST training images (``--val-size 0``), batch 100,
the default recipe minus augmentation (``--shift 0``): heavy-ball momentum 0.9, peak learning
rate 0.1 on the one-cycle schedule, weight decay 5e-3 on weights and kernels. Each run is its
own process (the real CLI for ours; ``torch-loop`` below for PyTorch), the two alternate, and the
table gives medians over the runs of

- *epoch s*: seconds per training epoch (ours: the trainer's own per-epoch figure from the
  curves file; PyTorch: the same span timed in its loop), and
- *process s*: the whole process, start-up, data loading and the final test evaluation included.

    .venv/bin/python benchmarks/train_epoch.py                 # 3 runs each, 2 epochs a run
    .venv/bin/python benchmarks/train_epoch.py --runs 5 --threads 1 --json

The PyTorch loop is what one would write: uint8 images normalised per batch with the same
mean and std, a fresh permutation per epoch, ``torch.optim.SGD`` with momentum and weight decay
on the weights, the learning rate set every step from the same schedule, the correct
predictions counted as it goes, then one pass over the test split.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import (  # noqa: E402
    REPO,
    environment,
    find_mnist_dir,
    run_json_child,
    spread,
    thread_env,
)

BATCH = 100
MOMENTUM, PEAK_LR, WEIGHT_DECAY = 0.9, 0.1, 5e-3


def torch_twin():
    """(SimpleConvNet in PyTorch, momentum SGD with decay on the weights only): the CLI's
    network and optimizer."""
    import torch

    from benchmarks.train_step_worker import torch_architecture

    model = torch_architecture()
    weights = [p for p in model.parameters() if p.ndim >= 2]
    biases = [p for p in model.parameters() if p.ndim < 2]
    optimizer = torch.optim.SGD(
        [{"params": weights, "weight_decay": WEIGHT_DECAY}, {"params": biases}],
        lr=PEAK_LR,
        momentum=MOMENTUM,
    )
    return model, optimizer


def torch_loop(data_dir: str, epochs: int, threads: int | None) -> dict:
    """Train the PyTorch twin of SimpleConvNet like the CLI does (no augmentation) and return
    per-epoch seconds, the test accuracy and the thread count."""
    import numpy as np
    import torch

    from training.data import load_mnist, pixel_statistics
    from training.optimizers import OneCycleSchedule

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    data = load_mnist(data_dir)
    images, labels = data.train.images, torch.from_numpy(data.train.labels.astype(np.int64))
    mean, std = pixel_statistics(images)
    model, optimizer = torch_twin()
    steps_per_epoch = -(-len(images) // BATCH)
    schedule = OneCycleSchedule(PEAK_LR, epochs * steps_per_epoch)

    def normalised(pixels):
        return (torch.from_numpy(pixels).float().div_(255.0).sub_(mean).div_(std)).unsqueeze(1)

    rng, step, epoch_seconds = np.random.default_rng(0), 0, []
    for _ in range(epochs):
        start, correct = time.perf_counter(), 0
        order = rng.permutation(len(images))
        for first in range(0, len(images), BATCH):
            batch = order[first : first + BATCH]
            for group in optimizer.param_groups:
                group["lr"] = schedule(step)
            logits = model(normalised(images[batch]))
            loss = torch.nn.functional.cross_entropy(logits, labels[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            correct += int((logits.argmax(1) == labels[batch]).sum())
            step += 1
        epoch_seconds.append(time.perf_counter() - start)
    with torch.inference_mode():
        test_logits = torch.cat(
            [model(normalised(data.test.images[i : i + 1000])) for i in range(0, 10000, 1000)]
        )
    accuracy = float((test_logits.argmax(1).numpy() == data.test.labels).mean())
    return {
        "epoch_seconds": epoch_seconds,
        "test_accuracy": accuracy,
        "train_accuracy_last_epoch": correct / len(images),
        "torch_threads": torch.get_num_threads(),
    }


def run_ours(data_dir: str, epochs: int, threads: int | None, workdir: Path) -> dict:
    """``convserve train`` in its own process: per-epoch seconds (from the curves file), the
    whole process's seconds, the test accuracy."""
    out = workdir / "bench.npz"
    command = [
        str(Path(sys.executable).with_name("convserve")),
        "train",
        "--data-dir",
        data_dir,
        "--epochs",
        str(epochs),
        "--shift",
        "0",
        "--val-size",
        "0",
        "--quiet",
        "--out",
        str(out),
    ]
    start = time.perf_counter()
    done = subprocess.run(
        command, capture_output=True, text=True, env=thread_env(threads), cwd=REPO
    )
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"convserve train failed ({done.returncode}):\n{done.stderr[-2000:]}")
    curves = json.loads(out.with_name("bench.curves.json").read_text())
    return {
        "epoch_seconds": [row["seconds"] for row in curves["history"]],
        "process_seconds": seconds,
        "test_accuracy": curves.get("test_accuracy"),
    }


def run_torch(data_dir: str, epochs: int, threads: int | None) -> dict:
    args = [__file__, "torch-loop", "--data-dir", data_dir, "--epochs", str(epochs)]
    if threads:
        args += ["--threads", str(threads)]
    start = time.perf_counter()
    result = run_json_child(args, threads)
    result["process_seconds"] = time.perf_counter() - start
    return result


def measure(data_dir: str, runs: int, epochs: int, threads: int | None) -> dict:
    """Alternate the two (ours first on even runs) and collect every run's figures."""
    results: dict[str, list[dict]] = {"ours": [], "torch": []}
    with tempfile.TemporaryDirectory(prefix="train-epoch-") as tmp:
        for run in range(runs):
            order = ("ours", "torch") if run % 2 == 0 else ("torch", "ours")
            for name in order:
                if name == "ours":
                    results[name].append(run_ours(data_dir, epochs, threads, Path(tmp)))
                else:
                    results[name].append(run_torch(data_dir, epochs, threads))
                # Progress on stderr: a run takes from seconds to minutes with the load.
                seconds = ", ".join(f"{s:.1f}" for s in results[name][-1]["epoch_seconds"])
                print(f"run {run + 1}/{runs} {name}: epochs {seconds} s", file=sys.stderr)
    return results


def summary(results: dict[str, list[dict]]) -> dict:
    """Per library: spread of per-epoch seconds (all epochs of all runs) and of process
    seconds; the ratios ours/torch of their medians."""
    out = {}
    for name, runs in results.items():
        out[name] = {
            "epoch_seconds": spread([s for run in runs for s in run["epoch_seconds"]]),
            "process_seconds": spread([run["process_seconds"] for run in runs]),
            "test_accuracy": [run["test_accuracy"] for run in runs],
        }
    for key in ("epoch_seconds", "process_seconds"):
        out[f"{key}_ratio"] = out["ours"][key]["median"] / out["torch"][key]["median"]
        out[f"{key}_ratio_of_best"] = out["ours"][key]["min"] / out["torch"][key]["min"]
    return out


def print_summary(report: dict) -> None:
    env, figures = report["environment"], report["summary"]
    print(
        f"Whole epoch, SimpleConvNet, 60,000 MNIST images, batch {BATCH}, no augmentation | "
        f"{env['date']} | {env['cpu']}, {env['nproc']} CPUs | threads: {report['threads']}"
    )
    print(
        f"{report['runs']} runs each of {report['epochs']} epochs, alternating, each in its own "
        f"process | load average before {env['loadavg']}, after {report['loadavg_after']}"
    )
    print()
    print("| library | epoch s (median, min-max) | process s (median, min-max) | test acc |")
    print("|---|---|---|---|")
    for name, label in (("ours", "convserve train"), ("torch", "plain PyTorch loop")):
        f = figures[name]
        e, p = f["epoch_seconds"], f["process_seconds"]
        accuracy = statistics.median(f["test_accuracy"])
        print(
            f"| {label} | {e['median']:.2f} ({e['min']:.2f}-{e['max']:.2f}) "
            f"| {p['median']:.1f} ({p['min']:.1f}-{p['max']:.1f}) | {100 * accuracy:.2f} % |"
        )
    print()
    print(
        f"ours/torch, medians: epoch {figures['epoch_seconds_ratio']:.2f}x, "
        f"process {figures['process_seconds_ratio']:.2f}x; fastest against fastest: epoch "
        f"{figures['epoch_seconds_ratio_of_best']:.2f}x, process "
        f"{figures['process_seconds_ratio_of_best']:.2f}x (< 1: ours faster; target epoch <= 0.8x)"
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", nargs="?", default="compare", choices=("compare", "torch-loop"))
    parser.add_argument("--data-dir", help="MNIST directory (default: the shared copy)")
    parser.add_argument("--runs", type=int, default=3, help="runs per library (default 3)")
    parser.add_argument("--epochs", type=int, default=2, help="epochs per run (default 2)")
    parser.add_argument("--threads", type=int, help="BLAS/torch threads (default: theirs)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    data_dir = args.data_dir or (str(find_mnist_dir() or ""))
    if not data_dir:
        parser.error("MNIST not found: pass --data-dir or set MNIST_DIR")
    if args.mode == "torch-loop":
        print(json.dumps(torch_loop(data_dir, args.epochs, args.threads)))
        return 0
    if args.runs < 1 or args.epochs < 1:
        parser.error("--runs and --epochs must be at least 1")
    env = environment(with_torch=False)
    results = measure(data_dir, args.runs, args.epochs, args.threads)
    report = {
        "environment": env,
        "threads": args.threads or "default",
        "runs": args.runs,
        "epochs": args.epochs,
        "results": results,
        "summary": summary(results),
        "loadavg_after": [round(v, 2) for v in os.getloadavg()],
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_summary(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
