"""Training and inference speed of SimpleConvNet: our NumPy network against PyTorch CPU, each
library timed alone in its own process.

Figures, all float32, same shapes and the same starting weights in both:

- one training step (forward, backward, Adam update) at batch 100, ours through
  ``training.parallel.TrainStep`` as the trainer runs it (split over the BLAS threads: 2 by
  default here, 1 with ``--threads 1``); issue 16's target: ours <= 0.7x PyTorch's time with the
  default threads and with one thread (stretch 0.5x);
- ``predict_proba`` at batch 1, 100 and 1000 (PyTorch under ``torch.inference_mode`` with a
  softmax, NumPy arrays in and out).

Why separate processes: in one process the two libraries' thread pools spin-wait on the same
cores after each call and slow each other (PyTorch far more than us), which made the old
interleaved figure 0.5x when timed alone it was about 0.93x. Here every repetition starts one
fresh process per library (``benchmarks/train_step_worker.py``), the order alternating between
repetitions, both with the same thread count; each process times 5 blocks of steps after a
warm-up and reports their median. The table gives the median over repetitions with min-max, and
*ratio* = median ours / median torch (below 1: ours faster); *best/best* = fastest repetition
against fastest repetition, the figure to read when other jobs load the machine (they only
ever slow a run down, PyTorch's more than ours).

    .venv/bin/python benchmarks/train_speed.py                  # default threads, then 1 thread
    .venv/bin/python benchmarks/train_speed.py --threads 1 --reps 7
    .venv/bin/python benchmarks/train_speed.py --json

The whole-epoch comparison (the real ``convserve train`` against a plain PyTorch loop) is
``benchmarks/train_epoch.py``. Without torch installed, only our figures are printed.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import environment, run_json_child, spread  # noqa: E402

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "train_step_worker.py")
INFERENCE_BATCHES = ("1", "100", "1000")


def median_of_blocks(values: list[float]) -> float:
    return spread(values)["median"]


def measure(threads: int | None, repetitions: int, libraries: list[str]) -> dict:
    """Every repetition runs one worker process per library, in alternating order. Returns
    {library: [worker result, ...]}."""
    results: dict[str, list[dict]] = {name: [] for name in libraries}
    for repetition in range(repetitions):
        order = libraries if repetition % 2 == 0 else libraries[::-1]
        for name in order:
            args = [WORKER, name] + (["--threads", str(threads)] if threads else [])
            results[name].append(run_json_child(args, threads))
    return results


def rows(results: dict[str, list[dict]]) -> list[dict]:
    """Table rows: per measurement, the spread over repetitions of each library's per-process
    median (seconds per call) and the ratio of the medians."""
    measurements = [("train step, batch 100", lambda r: r["train_step"], 100)]
    for batch in INFERENCE_BATCHES:
        measurements.append(
            (f"predict_proba, batch {batch}", lambda r, b=batch: r["inference"][b], int(batch))
        )
    out = []
    for name, pick, images in measurements:
        row = {"name": name, "images": images}
        for library, runs in results.items():
            row[library] = spread([median_of_blocks(pick(run)) for run in runs])
        if "torch" in row:
            row["ratio"] = row["ours"]["median"] / row["torch"]["median"]
            # Best against best: what a quiet machine gives both (others' jobs only slow).
            row["ratio_of_best"] = row["ours"]["min"] / row["torch"]["min"]
        out.append(row)
    return out


def phases_ms(ours_runs: list[dict]) -> dict[str, float]:
    """Median over repetitions of our step's phases, in ms."""
    names = ours_runs[0]["phases"]
    return {
        name: 1e3 * spread([median_of_blocks(run["phases"][name]) for run in ours_runs])["median"]
        for name in names
    }


def run(threads_settings: list[int | None], repetitions: int) -> dict:
    libraries = ["ours"]
    if importlib.util.find_spec("torch") is not None:
        libraries.append("torch")
    report = {"environment_before": environment(with_torch=False), "settings": []}
    report["repetitions"] = repetitions
    for threads in threads_settings:
        results = measure(threads, repetitions, libraries)
        setting = {
            "threads": threads or "default",
            "rows": rows(results),
            "phases_ms": phases_ms(results["ours"]),
            "split_threads": results["ours"][0]["split_threads"],
            "data": results["ours"][0]["data"],
            "blas": results["ours"][0]["environment"]["blas"],
        }
        if "torch" in results:
            first = results["torch"][0]
            setting["torch"] = first["environment"]["torch"]
            setting["torch_threads"] = first["torch_threads"]
            setting["max_abs_probability_difference"] = max(
                r["max_abs_probability_difference"] for r in results["torch"]
            )
        report["settings"].append(setting)
    report["loadavg_after"] = [round(v, 2) for v in os.getloadavg()]
    return report


def ms_cell(row: dict, library: str) -> str:
    """'median (min-max)' in ms of one library's figure in a table row, or '-'."""
    if library not in row:
        return f"{'-':>22}"
    s = row[library]
    return f"{1e3 * s['median']:8.3f} ({1e3 * s['min']:.3f}-{1e3 * s['max']:.3f})".rjust(22)


def print_setting(setting: dict) -> None:
    print(
        f"threads: {setting['threads']} (numpy BLAS and torch"
        + (f"; torch reports {setting['torch_threads']}" if "torch_threads" in setting else "")
        + ")"
    )
    print()
    print(
        f"| {'measurement':<26} | {'ours ms (min-max)':>22} | {'torch ms (min-max)':>22} "
        "| ratio | best/best |"
    )
    print(f"|{'-' * 28}|{'-' * 24}|{'-' * 24}|-------|-----------|")
    for row in setting["rows"]:
        ratio = f"{row['ratio']:5.2f}" if "ratio" in row else "    -"
        best = f"{row['ratio_of_best']:9.2f}" if "ratio" in row else "        -"
        print(
            f"| {row['name']:<26} | {ms_cell(row, 'ours')} | {ms_cell(row, 'torch')} "
            f"| {ratio} | {best} |"
        )
    print(
        f"our step: each batch split over {setting['split_threads']} thread(s) "
        "(training.parallel.TrainStep)"
    )
    phases = setting["phases_ms"]
    print(
        "the plain (unsplit) step's phases: forward+loss {forward_loss:.2f} ms, backward "
        "{backward:.2f} ms, optimizer (Adam) {optimizer:.2f} ms".format(**phases)
    )
    if "max_abs_probability_difference" in setting:
        print(
            "same weights, ours vs torch probabilities: max |difference| "
            f"{setting['max_abs_probability_difference']:.1e}"
        )
    print()


def print_report(report: dict) -> None:
    env = report["environment_before"]
    first = report["settings"][0]
    print(f"SimpleConvNet, float32 | {env['date']} | {env['cpu']}, {env['nproc']} CPUs")
    torch_text = f"torch {first['torch']}" if "torch" in first else "torch: not installed"
    print(f"numpy {env['numpy']} | {torch_text} | data: {first['data']}")
    print(
        f"OPENBLAS_CORETYPE={env['OPENBLAS_CORETYPE']} "
        f"OPENBLAS_L2_SIZE={env['OPENBLAS_L2_SIZE']} (left alone)"
    )
    print(f"load average before {env['loadavg']}, after {report['loadavg_after']}")
    print(
        f"each library alone in its own process; {report['repetitions']} repetitions, order "
        "alternating; ratio = median ours / median torch (< 1: ours faster); best/best = "
        "fastest repetition of each"
    )
    print()
    for setting in report["settings"]:
        print_setting(setting)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=5, help="repetitions (median; >= 3)")
    parser.add_argument(
        "--threads",
        type=int,
        help="threads for both libraries (default: the libraries' default, then 1)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    if args.reps < 3:
        parser.error("--reps must be at least 3")
    if args.threads is not None and args.threads < 1:
        parser.error("--threads must be at least 1")
    settings = [args.threads] if args.threads else [None, 1]
    report = run(settings, args.reps)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
