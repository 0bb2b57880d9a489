"""Downloading the four MNIST files: mirrors tried in turn, every file verified by sha256
before it is renamed into place, so no half-written or wrong file is ever left behind.

Every problem (unreachable mirror, wrong hash, disk full) raises ``DataError`` naming the file
and what each mirror said.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import re
import sys
import zlib
from pathlib import Path

from training.data import CHUNK_BYTES, sha256_file
from training.errors import DataError

# Known sha256 of the four MNIST files, two per file: the .gz as the team's MNIST copy stores
# it (re-compressed with `gzip -9 -n`; its SHA256SUMS lists these) and its uncompressed IDX content.
# Public mirrors serve the original gzip files, whose bytes differ from a re-compressed copy
# while the content is the same, so a download is accepted when either hash matches.
# File name: (sha256 of the .gz, sha256 of its uncompressed IDX content).
MNIST_SHA256 = {
    "train-images-idx3-ubyte.gz": (
        "0b367032e93c5d0cea0925647cfdb18614af8ee15f83e6f2fc2ad904a6835971",
        "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    ),
    "train-labels-idx1-ubyte.gz": (
        "1787548bbe0bff1ec2ecdc0ef292b02df999e2d1a6002d27500982c652b17203",
        "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    ),
    "t10k-images-idx3-ubyte.gz": (
        "1a1a05eab793c14bb050b398624a11b0ffd1a2953baed553b1b9bd079e2a20be",
        "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    ),
    "t10k-labels-idx1-ubyte.gz": (
        "b91679a0acfe4ba0e50a2437a903084cba1f5f92592b016a25a7dfd00455798b",
        "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    ),
}
DEFAULT_MIRRORS = [
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
]
# The largest MNIST .gz is under 10 MB; a mirror sending far more is not serving MNIST, and
# stopping early keeps a misbehaving server from filling the disk.
MAX_DOWNLOAD_BYTES = 64 * 1024 * 1024


def _content_sha256(path: Path) -> str | None:
    """sha256 of the gunzipped content of ``path``, or None if it is not valid gzip."""
    digest = hashlib.sha256()
    try:
        with gzip.open(path, "rb") as handle:
            while chunk := handle.read(CHUNK_BYTES):
                digest.update(chunk)
    except (OSError, EOFError, zlib.error):
        return None
    return digest.hexdigest()


def _verify(path: Path, accepted: set[str]) -> tuple[bool, str]:
    """Whether the bytes of ``path``, or their gunzipped content, hash to one of ``accepted``;
    and the sha256 of the bytes (for the error message)."""
    file_hash = sha256_file(path)
    if file_hash in accepted:
        return True, file_hash
    content_hash = _content_sha256(path)
    return content_hash in accepted, file_hash


def _fsync_directory(directory: Path) -> None:
    """Make a rename in ``directory`` durable (POSIX; a no-op where directories cannot be
    opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _mirror_url(mirror: str, name: str) -> str:
    return mirror.rstrip("/") + "/" + name


def _fetch(url: str, part: Path, *, timeout: float, progress: bool, name: str) -> None:
    """Stream ``url`` into ``part`` (created or truncated), fsynced. Raises ``requests``
    exceptions for network/HTTP problems and ``_MirrorProblem`` for a response that is too big."""
    import requests
    from tqdm import tqdm

    with requests.get(url, stream=True, timeout=timeout) as response:
        response.raise_for_status()
        # Content-Length is the size on the wire; with a Content-Encoding the decoded bytes
        # counted below differ, so the bar then runs without a total.
        size_header = response.headers.get("Content-Length", "")
        encoded = response.headers.get("Content-Encoding", "identity") != "identity"
        total = int(size_header) if size_header.isdigit() and not encoded else None
        received = 0
        with (
            open(part, "wb") as out,
            tqdm(
                total=total,
                desc=name,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                file=sys.stderr,
                disable=not progress,
                leave=True,
            ) as bar,
        ):
            for chunk in response.iter_content(chunk_size=64 * 1024):
                received += len(chunk)
                if received > MAX_DOWNLOAD_BYTES:
                    raise _MirrorProblem(
                        f"sent more than {MAX_DOWNLOAD_BYTES} bytes, not an MNIST file"
                    )
                out.write(chunk)
                bar.update(len(chunk))
            out.flush()
            os.fsync(out.fileno())


class _MirrorProblem(Exception):
    """A mirror answered but what it sent is not the file we want."""


def _describe_request_error(exc: Exception) -> str:
    import requests

    if isinstance(exc, requests.HTTPError) and exc.response is not None:
        return f"HTTP {exc.response.status_code} {exc.response.reason}".rstrip()
    if isinstance(exc, requests.exceptions.ChunkedEncodingError):
        # The server closed the connection before sending what it announced.
        counts = re.search(r"IncompleteRead\((\d+) bytes read, (\d+) more expected", str(exc))
        detail = f": {counts[1]} bytes received, {counts[2]} more expected" if counts else ""
        return f"connection broken during the download{detail}"
    if isinstance(exc, requests.Timeout):
        return "timed out"
    if isinstance(exc, requests.ConnectionError):
        # requests nests the OS reason deep inside a long repr; the reason is what helps.
        reason = re.search(r"\[Errno -?\d+\] ([^'\")]+)", str(exc))
        return f"cannot connect: {reason.group(1) if reason else type(exc).__name__}"
    return f"{type(exc).__name__}: {exc}"


def download_mnist(
    dest: str | os.PathLike,
    mirrors: list[str] | None = None,
    *,
    progress: bool = True,
    checksums: dict[str, str] | None = None,
    timeout: float = 30,
    force: bool = False,
) -> list[Path]:
    """Download the MNIST ``.gz`` files into ``dest`` and return their paths (in the order of
    ``checksums``).

    Each file is streamed into ``dest/<name>.part`` from the first mirror that works (a tqdm bar
    of bytes on stderr when ``progress``), fsynced, verified, then renamed into place; on an HTTP
    or network error or a wrong hash the ``.part`` is removed and the next mirror tried. A file
    already in ``dest`` that verifies is kept as it is unless ``force``. So no half-written file
    is ever left behind, and a good file is only ever replaced by a verified one.

    ``checksums``: ``{file name: sha256 hex}``, the files to fetch and their hash; a download is
    accepted when the hash of its bytes or of its gunzipped content matches. Default: the four
    MNIST files, accepting the known hash of the ``.gz`` or of the IDX content.
    ``timeout``: seconds for connecting and between bytes received (requests' semantics).
    Raises ``DataError`` listing what each mirror said when a file cannot be fetched from any.
    """
    dest = Path(dest)
    mirrors = _checked_mirrors(DEFAULT_MIRRORS if mirrors is None else mirrors)
    if checksums is None:
        accepted = {name: set(hashes) for name, hashes in MNIST_SHA256.items()}
    else:
        accepted = {name: {digest.lower()} for name, digest in checksums.items()}
    _make_directory(dest)

    paths = []
    for name, hashes in accepted.items():
        target = dest / name
        if not force and target.is_file() and _verify(target, hashes)[0]:
            if progress:
                print(f"{name}: already present, checksum verified", file=sys.stderr)
            paths.append(target)
            continue
        failures = []
        for mirror in mirrors:
            url = _mirror_url(mirror, name)
            if _download_one(url, dest, name, hashes, timeout, progress, failures):
                # Try the mirror that worked first for the remaining files.
                mirrors.remove(mirror)
                mirrors.insert(0, mirror)
                break
        else:
            said = "\n".join(f"  {url}: {problem}" for url, problem in failures)
            raise DataError(f"could not download {name} from any mirror:\n{said}")
        paths.append(target)
    return paths


def _checked_mirrors(mirrors: list[str]) -> list[str]:
    """A copy of ``mirrors`` (the order changes as mirrors work); DataError for an empty list
    or a mirror that is not an http(s) URL."""
    if not mirrors:
        raise DataError("no mirror to download from")
    for mirror in mirrors:
        if not mirror.startswith(("http://", "https://")):
            raise DataError(f"mirror {mirror!r} is not an http:// or https:// URL")
    return list(mirrors)


def _make_directory(dest: Path) -> None:
    if dest.exists() and not dest.is_dir():
        raise DataError(f"{dest} exists and is not a directory")
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot create {dest}: {exc.strerror or exc}") from None


def _download_one(
    url: str,
    dest: Path,
    name: str,
    hashes: set[str],
    timeout: float,
    progress: bool,
    failures: list[tuple[str, str]],
) -> bool:
    """One attempt: fetch ``url`` into ``dest/name.part``, verify, rename into place. True on
    success; otherwise appends (url, what went wrong) to ``failures``. The ``.part`` never
    survives: removed on any failure, including Ctrl-C and disk errors (which propagate)."""
    import requests

    part = dest / f"{name}.part"
    target = dest / name
    renamed = False
    try:
        _fetch(url, part, timeout=timeout, progress=progress, name=name)
        ok, file_hash = _verify(part, hashes)
        if not ok:
            expected = " or ".join(sorted(hashes))
            failures.append((url, f"sha256 mismatch: got {file_hash}, expected {expected}"))
            return False
        os.replace(part, target)
        renamed = True
        _fsync_directory(dest)
        return True
    except requests.RequestException as exc:
        failures.append((url, _describe_request_error(exc)))
        return False
    except _MirrorProblem as exc:
        failures.append((url, str(exc)))
        return False
    except OSError as exc:  # our side: disk full, permissions; no other mirror will help
        raise DataError(f"cannot write {part}: {exc.strerror or exc}") from None
    finally:
        if not renamed:
            part.unlink(missing_ok=True)
