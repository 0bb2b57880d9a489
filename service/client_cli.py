"""``convserve predict FILE...``: classify image or ``.npy`` files with a running service.

    convserve predict seven.png photo.jpg batch.npy
    convserve predict digit.png --url http://models.internal:8000 --alias staging --json

Prints ``FILE  label 7 (0.9800)`` per image (``FILE[i]`` for the images of a ``.npy`` batch),
or ``FILE  not a digit (ood 3.20) - best guess 7 (0.4100)`` when the service's detector
flagged it; with ``--json`` the service's answer, every field kept (``not_a_digit``,
``ood_score``: null when the version has no detector). The service URL is ``--url``, else
``$CONVSERVE_URL``, else http://127.0.0.1:8000. An unreadable file or an error answer ends
with ``convserve: error: ...`` and exit code 2 (``ClientError`` is a ``ConvserveError``).
"""

from __future__ import annotations

import argparse
import json
import os

from service.client import DEFAULT_URL, Client, describe_prediction

URL_VARIABLE = "CONVSERVE_URL"


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "predict",
        help="classify image or .npy files with a running convserve service",
        description=(
            "Send image files (PNG, JPEG, BMP, GIF, WebP, TIFF, photos of a digit) or .npy "
            "arrays ((28, 28) or (N, 28, 28), 0-255) to POST /predict and print the answers."
        ),
    )
    parser.add_argument("files", nargs="+", metavar="FILE", help="image or .npy files")
    parser.add_argument(
        "--url",
        default=None,
        help=f"the service (default: ${URL_VARIABLE}, else {DEFAULT_URL})",
    )
    pin = parser.add_mutually_exclusive_group()
    pin.add_argument(
        "--version", type=_positive_int, metavar="N", help="ask for this model version"
    )
    pin.add_argument("--alias", metavar="NAME", help="ask for the version this alias points to")
    parser.add_argument("--json", action="store_true", help="print the service's JSON answer")
    parser.add_argument(
        "--timeout", type=float, default=30.0, metavar="SECONDS", help="per request (default 30)"
    )
    parser.set_defaults(func=run_predict)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a version number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"versions start at 1, got {value}")
    return value


def service_url(given: str | None) -> str:
    """--url, else $CONVSERVE_URL, else the default; read when the command runs."""
    return given or os.environ.get(URL_VARIABLE, "").strip() or DEFAULT_URL


def run_predict(args: argparse.Namespace) -> int:
    with Client(service_url(args.url), timeout=args.timeout) as client:
        answer = client.predict_files(args.files, version=args.version, alias=args.alias)
    if args.json:
        print(json.dumps(answer, indent=2))
        return 0
    rows = []
    for prediction in answer["predictions"]:
        name = prediction["file"]
        if "index" in prediction:
            name = f"{name}[{prediction['index']}]"
        rows.append((name, describe_prediction(prediction)))
    name_width = max(len(name) for name, _ in rows)
    for name, verdict in rows:
        print(f"{name:<{name_width}}  {verdict}")
    return 0
