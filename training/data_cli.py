"""``convserve data``: fetch MNIST and describe what is on disk.

    convserve data download [--dir DIR] [--mirror URL ...] [--force] [--quiet]
    convserve data info [--data-dir DIR] [--json]

Both default to ``resolve_data_dir(None)``: $MNIST_DIR, else ./data/mnist.
"""

from __future__ import annotations

import argparse
import json

from training.data import load_mnist, pixel_statistics
from training.download import DEFAULT_MIRRORS, download_mnist


def register(subparsers) -> None:
    """Add ``data`` with its ``download`` and ``info`` subcommands to the ``convserve`` parser."""
    data_parser = subparsers.add_parser(
        "data",
        help="download MNIST or describe a data directory",
        description="Download the MNIST files or describe the ones in a directory.",
    )
    data_commands = data_parser.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    download = data_commands.add_parser(
        "download",
        help="fetch the four MNIST .gz files, checksum-verified",
        description=(
            "Fetch the four MNIST .gz files from the first mirror that works, verify each "
            "against its known sha256 and move it into place only then. Files already present "
            "with the right checksum are kept."
        ),
    )
    download.add_argument(
        "--dir",
        "--data-dir",
        dest="data_dir",
        metavar="DIR",
        help="where to put the files (default: $MNIST_DIR, else ./data/mnist)",
    )
    download.add_argument(
        "--mirror",
        dest="mirrors",
        metavar="URL",
        action="extend",
        nargs="+",
        help=f"base URL(s) to try in order (default: {' '.join(DEFAULT_MIRRORS)})",
    )
    download.add_argument(
        "--force", action="store_true", help="download again even if a verified file is present"
    )
    download.add_argument("--quiet", action="store_true", help="no progress bars")
    download.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="network timeout for connecting and between received bytes (default: 30)",
    )
    download.set_defaults(func=run_download)

    info = data_commands.add_parser(
        "info",
        help="counts per split and class, pixel statistics, file fingerprints",
        description="Load the MNIST files in a directory and describe them.",
    )
    info.add_argument(
        "--data-dir",
        "--dir",
        dest="data_dir",
        metavar="DIR",
        help="the MNIST directory (default: $MNIST_DIR, else ./data/mnist)",
    )
    info.add_argument("--json", action="store_true", help="print one JSON object")
    info.set_defaults(func=run_info)


def run_download(args: argparse.Namespace) -> int:
    from training.data import resolve_data_dir

    directory = resolve_data_dir(args.data_dir)
    paths = download_mnist(
        directory,
        args.mirrors,
        progress=not args.quiet,
        timeout=args.timeout,
        force=args.force,
    )
    for path in paths:
        print(path)
    return 0


def describe(data_dir) -> dict:
    """What ``data info --json`` prints: directory, per-split counts (total and per digit),
    the training split's pixel mean/std (of pixels / 255) and the file fingerprint."""
    mnist = load_mnist(data_dir)
    mean, std = pixel_statistics(mnist.train.images)
    return {
        "data_dir": str(mnist.data_dir),
        "splits": {
            name: {
                "count": len(split),
                "per_class": {str(digit): n for digit, n in split.class_counts().items()},
            }
            for name, split in (("train", mnist.train), ("test", mnist.test))
        },
        "train_pixel_mean": mean,
        "train_pixel_std": std,
        "fingerprint": mnist.fingerprint,
    }


def run_info(args: argparse.Namespace) -> int:
    summary = describe(args.data_dir)
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"MNIST in {summary['data_dir']}")
    digits = sorted({int(d) for split in summary["splits"].values() for d in split["per_class"]})
    print(f"{'split':<6} {'count':>6} " + " ".join(f"{d:>5}" for d in digits))
    for name, split in summary["splits"].items():
        per_class = " ".join(f"{split['per_class'].get(str(d), 0):>5}" for d in digits)
        print(f"{name:<6} {split['count']:>6} {per_class}")
    print(
        f"train pixels / 255: mean {summary['train_pixel_mean']:.4f}, "
        f"std {summary['train_pixel_std']:.4f}"
    )
    for file_name, entry in summary["fingerprint"].items():
        print(f"{entry['sha256']}  {entry['size']:>9}  {file_name}")
    return 0
