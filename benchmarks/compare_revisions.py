"""Serving figures of this tree against another git revision, measured in the same run.

Each round runs ``benchmarks/serve_load.py --json`` once from this tree and once from an export
of REVISION (``git archive``, in a temporary directory), alternating which goes first, so both
see the same machine; each tree's gunicorn imports that tree's own ``service`` package (it runs
from the tree's directory). Printed per concurrency: the medians over rounds of /predict
requests/s, of the /predict-to-/healthz ratio and of the workers' CPU per /predict, for both
trees, and new/old ratios. Extra arguments after ``--`` go to serve_load.py.

    .venv/bin/python benchmarks/compare_revisions.py 96770e0 --rounds 3 -- --concurrency 1,16
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tarfile
import tempfile
from io import BytesIO
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def export_revision(revision: str, directory: Path) -> Path:
    """The files of ``revision`` written under ``directory``; returns the tree's root."""
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", "--format=tar", revision],
        check=True,
        capture_output=True,
    ).stdout
    directory.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(directory, filter="data")
    return directory


def serve_load(tree: Path, extra: list[str]) -> dict:
    """One serve_load.py run from ``tree``; its JSON report."""
    command = [sys.executable, str(tree / "benchmarks" / "serve_load.py"), "--json", *extra]
    completed = subprocess.run(command, cwd=tree, capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        raise SystemExit(f"serve_load.py in {tree} failed:\n{completed.stderr[-2000:]}")
    return json.loads(completed.stdout)


def summarise(runs: list[dict]) -> dict[int, dict[str, float]]:
    """concurrency -> medians of predict_rps, ratio and predict_worker_cpu_us over runs."""
    by_level: dict[int, dict[str, list[float]]] = {}
    for run in runs:
        for level in run["levels"]:
            figures = by_level.setdefault(level["concurrency"], {})
            for key in ("predict_rps", "ratio", "predict_worker_cpu_us", "predict_p99_ms"):
                figures.setdefault(key, []).append(level[key])
    return {
        concurrency: {key: statistics.median(values) for key, values in figures.items()}
        for concurrency, figures in by_level.items()
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    own = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("revision", help="the git revision to compare against, e.g. HEAD~3")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--new",
        help="a revision to compare instead of the working tree (e.g. HEAD), exported "
        "like the old one so edits made during the run cannot leak in",
    )
    args = parser.parse_args(own)
    runs: dict[str, list[dict]] = {"new": [], "old": []}
    with tempfile.TemporaryDirectory(prefix="convserve-rev-") as directory:
        old = export_revision(args.revision, Path(directory) / "old")
        new = REPO if args.new is None else export_revision(args.new, Path(directory) / "new")
        trees = {"new": new, "old": old}
        for round_index in range(args.rounds):
            order = ("new", "old") if round_index % 2 == 0 else ("old", "new")
            for name in order:
                runs[name].append(serve_load(trees[name], extra))
                print(f"round {round_index + 1}: {name} done", file=sys.stderr)
    new, old = summarise(runs["new"]), summarise(runs["old"])
    print(f"{args.new or 'this tree'} vs {args.revision}, medians of {args.rounds} rounds")
    print("  c | predict req/s new / old = x | predict/healthz new / old | cpu us/req new / old")
    for concurrency in sorted(new):
        n, o = new[concurrency], old[concurrency]
        print(
            f"{concurrency:>3} | {n['predict_rps']:>7.0f} / {o['predict_rps']:<7.0f} = "
            f"{n['predict_rps'] / o['predict_rps']:.3f} | {n['ratio']:.3f} / {o['ratio']:.3f} | "
            f"{n['predict_worker_cpu_us']:.0f} / {o['predict_worker_cpu_us']:.0f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
