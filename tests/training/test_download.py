"""``download_mnist`` and ``convserve data download`` against mirrors served by http.server on
127.0.0.1 (never the internet): verified downloads, failing mirrors, and no file half-written."""

import gzip
import hashlib
import http.server
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from tests.support import REPO
from tests.support.mnist import find_mnist_dir
from training import download
from training.data import load_mnist, read_idx
from training.download import MNIST_SHA256, download_mnist
from training.errors import DataError

NAMES = tuple(MNIST_SHA256)  # the four .gz file names


class MirrorServer:
    """A ThreadingHTTPServer on 127.0.0.1:<free port> answering GET ``/<mirror>/<file>`` from
    ``routes``: bytes -> 200 with that body; int -> that error status; ("cut", bytes) -> a
    Content-Length larger than the body, then the connection closes mid-download."""

    def __init__(self):
        self.routes: dict[str, object] = {}
        self.requested: list[str] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's naming
                server.requested.append(self.path)
                answer = server.routes.get(self.path, 404)
                if isinstance(answer, int):
                    self.send_error(answer)
                    return
                cut = isinstance(answer, tuple)
                body = answer[1] if cut else answer
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(body) + (1000 if cut else 0)))
                self.end_headers()
                self.wfile.write(body)
                if cut:
                    self.close_connection = True

            def log_message(self, *args):  # keep test output quiet
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    def mirror(self, name: str, files: dict[str, object]) -> str:
        """Serve ``files`` ({file name: answer}) under ``/<name>/``; returns the mirror URL."""
        for file_name, answer in files.items():
            self.routes[f"/{name}/{file_name}"] = answer
        return f"{self.url}/{name}/"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def server():
    mirror_server = MirrorServer()
    yield mirror_server
    mirror_server.close()


@pytest.fixture(scope="module")
def tiny_files(tiny_mnist_dir) -> dict[str, bytes]:
    """{file name: bytes} of the four tiny .gz files."""
    return {name: (tiny_mnist_dir / name).read_bytes() for name in NAMES}


@pytest.fixture(scope="module")
def tiny_checksums(tiny_files) -> dict[str, str]:
    return {name: hashlib.sha256(body).hexdigest() for name, body in tiny_files.items()}


def closed_port_url() -> str:
    """A loopback URL nothing listens on (a port just released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


def test_download_fetches_verifies_and_places_the_files(
    server, tmp_path, tiny_files, tiny_checksums
):
    mirror = server.mirror("good", tiny_files)
    dest = tmp_path / "new" / "mnist"  # created, parents too
    paths = download_mnist(dest, [mirror], progress=False, checksums=tiny_checksums, timeout=5)
    assert paths == [dest / name for name in NAMES]
    for path in paths:
        assert path.read_bytes() == tiny_files[path.name]
    assert sorted(p.name for p in dest.iterdir()) == sorted(NAMES)  # no .part left
    assert len(load_mnist(dest).train) == len(read_idx(paths[0]))


def test_download_shows_a_byte_progress_bar_on_stderr(
    server, tmp_path, tiny_files, tiny_checksums, capsys
):
    mirror = server.mirror("good", tiny_files)
    download_mnist(tmp_path, [mirror], progress=True, checksums=tiny_checksums, timeout=5)
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "t10k-labels-idx1-ubyte.gz" in captured.err and "100%" in captured.err


def test_bad_hash_mirror_then_good_mirror(server, tmp_path, tiny_files, tiny_checksums):
    tampered = {name: body[:-1] + bytes([body[-1] ^ 1]) for name, body in tiny_files.items()}
    bad = server.mirror("bad", tampered)
    good = server.mirror("good", tiny_files)
    paths = download_mnist(tmp_path, [bad, good], progress=False, checksums=tiny_checksums)
    for path in paths:
        assert path.read_bytes() == tiny_files[path.name]
    first = NAMES[0]
    assert server.requested[:2] == [f"/bad/{first}", f"/good/{first}"]
    # The mirror that worked is tried first for the other files.
    assert server.requested[2:] == [f"/good/{name}" for name in NAMES[1:]]
    assert not list(tmp_path.glob("*.part"))


def test_all_mirrors_failing_leaves_nothing_and_says_what_each_said(
    server, tmp_path, tiny_files, tiny_checksums
):
    missing = server.mirror("missing", {})
    wrong = server.mirror("wrong", {name: b"not mnist" for name in NAMES})
    cut = server.mirror("cut", {name: ("cut", body[:50]) for name, body in tiny_files.items()})
    refused = closed_port_url()
    dest = tmp_path / "mnist"
    with pytest.raises(DataError) as caught:
        download_mnist(
            dest,
            [missing, wrong, cut, refused],
            progress=False,
            checksums=tiny_checksums,
            timeout=5,
        )
    message = str(caught.value)
    first = NAMES[0]
    assert message.startswith(f"could not download {first} from any mirror:")
    assert f"{missing}{first}: HTTP 404" in message
    assert f"{wrong}{first}: sha256 mismatch: got {hashlib.sha256(b'not mnist').hexdigest()}" in (
        message
    )
    assert f"{cut}{first}: connection broken during the download: 50 bytes received" in message
    assert f"{refused}{first}: cannot connect" in message
    assert list(dest.iterdir()) == []  # no .part, no half file


def test_a_response_cut_short_is_retried_elsewhere(server, tmp_path, tiny_files, tiny_checksums):
    cut = server.mirror("cut", {name: ("cut", body) for name, body in tiny_files.items()})
    good = server.mirror("good", tiny_files)
    paths = download_mnist(tmp_path, [cut, good], progress=False, checksums=tiny_checksums)
    assert [p.read_bytes() for p in paths] == [tiny_files[name] for name in NAMES]


def test_a_mirror_sending_too_much_is_abandoned(
    server, tmp_path, tiny_files, tiny_checksums, monkeypatch
):
    monkeypatch.setattr(download, "MAX_DOWNLOAD_BYTES", 64)
    flood = server.mirror("flood", {name: bytes(500) for name in NAMES})
    with pytest.raises(DataError, match="sent more than 64 bytes"):
        download_mnist(tmp_path, [flood], progress=False, checksums=tiny_checksums)
    assert list(tmp_path.iterdir()) == []


def test_verified_files_already_present_are_skipped_unless_forced(
    server, tmp_path, tiny_files, tiny_checksums
):
    mirror = server.mirror("good", tiny_files)
    download_mnist(tmp_path, [mirror], progress=False, checksums=tiny_checksums)
    server.requested.clear()
    download_mnist(tmp_path, [mirror], progress=False, checksums=tiny_checksums)
    assert server.requested == []
    download_mnist(tmp_path, [mirror], progress=False, checksums=tiny_checksums, force=True)
    assert server.requested == [f"/good/{name}" for name in NAMES]


def test_a_corrupt_local_file_is_replaced_but_kept_if_no_mirror_helps(
    server, tmp_path, tiny_files, tiny_checksums
):
    name = NAMES[3]
    local = tmp_path / name
    local.write_bytes(b"corrupt")
    with pytest.raises(DataError):
        download_mnist(tmp_path, [server.mirror("missing", {})], checksums=tiny_checksums)
    assert local.read_bytes() == b"corrupt"  # nothing replaced by an unverified download
    download_mnist(tmp_path, [server.mirror("good", tiny_files)], checksums=tiny_checksums)
    assert local.read_bytes() == tiny_files[name]


def test_a_checksum_of_the_uncompressed_content_is_accepted(server, tmp_path, tiny_files):
    # Mirrors may hold a differently compressed .gz of the same IDX content.
    content_checksums = {
        name: hashlib.sha256(gzip.decompress(body)).hexdigest() for name, body in tiny_files.items()
    }
    mirror = server.mirror("good", tiny_files)
    paths = download_mnist(tmp_path, [mirror], progress=False, checksums=content_checksums)
    assert [p.read_bytes() for p in paths] == [tiny_files[name] for name in NAMES]


def test_a_disk_error_removes_the_part_file_and_is_reported(
    server, tmp_path, tiny_files, tiny_checksums, monkeypatch
):
    def failing_fsync(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    mirror = server.mirror("good", tiny_files)
    with pytest.raises(DataError, match=r"cannot write .*\.part: No space left on device"):
        download_mnist(tmp_path, [mirror], progress=False, checksums=tiny_checksums)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("mirrors", "message"),
    [([], "no mirror"), (["ftp://example.org/mnist/"], "not an http:// or https:// URL")],
)
def test_bad_mirror_lists_are_rejected(tmp_path, mirrors, message):
    with pytest.raises(DataError, match=message):
        download_mnist(tmp_path, mirrors, progress=False)


def test_destination_that_is_a_file_is_an_error(tmp_path):
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    with pytest.raises(DataError, match="exists and is not a directory"):
        download_mnist(not_a_dir, ["http://127.0.0.1:9/"], progress=False)


@pytest.mark.skipif(find_mnist_dir() is None, reason="real MNIST not on this machine")
def test_builtin_checksums_match_the_real_files():
    real = find_mnist_dir()
    for name, (gz_hash, content_hash) in MNIST_SHA256.items():
        body = (real / name).read_bytes()
        assert hashlib.sha256(body).hexdigest() == gz_hash
        assert hashlib.sha256(gzip.decompress(body)).hexdigest() == content_hash


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "convserve", "data", "download", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_download_all_mirrors_failing_exits_2_without_traceback(server, tmp_path):
    missing = server.mirror("missing", {})
    result = run_cli("--dir", str(tmp_path / "mnist"), "--mirror", missing, "--timeout", "5")
    assert result.returncode == 2
    assert result.stderr.startswith("convserve: error: could not download")
    assert f"{missing}{NAMES[0]}: HTTP 404" in result.stderr
    assert "Traceback" not in result.stderr
    assert list((tmp_path / "mnist").iterdir()) == []


def test_cli_download_bad_mirror_url_exits_2(tmp_path):
    result = run_cli("--dir", str(tmp_path), "--mirror", "file:///etc/")
    assert result.returncode == 2
    assert "not an http:// or https:// URL" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.skipif(find_mnist_dir() is None, reason="real MNIST not on this machine")
def test_cli_download_with_builtin_checksums_from_a_local_mirror(server, tmp_path):
    real = find_mnist_dir()
    # The default checksums also accept a .gz compressed differently from the known one.
    relabelled = gzip.compress(gzip.decompress((real / NAMES[3]).read_bytes()), mtime=0)
    files = {name: (real / name).read_bytes() for name in NAMES[:3]} | {NAMES[3]: relabelled}
    mirror = server.mirror("mnist", files)
    dest = tmp_path / "mnist"
    result = run_cli("--dir", str(dest), "--mirror", mirror, "--quiet")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [str(dest / name) for name in NAMES]
    mnist = load_mnist(dest)
    assert (len(mnist.train), len(mnist.test)) == (60000, 10000)
    np.testing.assert_array_equal(mnist.test.labels, load_mnist(real).test.labels)
    second = run_cli("--dir", str(dest), "--mirror", mirror)  # all present: nothing fetched
    assert second.returncode == 0 and second.stderr.count("already present") == 4


def test_cli_download_default_dir_comes_from_mnist_dir_env(server, tmp_path, tiny_files):
    # With default checksums, the tiny files do not verify: the error proves which directory
    # and mirror were used, and that nothing was written there.
    env_dir = tmp_path / "env-mnist"
    mirror = server.mirror("tiny", tiny_files)
    result = subprocess.run(
        [sys.executable, "-m", "convserve", "data", "download", "--mirror", mirror],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "MNIST_DIR": str(env_dir)},
    )
    assert result.returncode == 2
    assert "sha256 mismatch" in result.stderr and "Traceback" not in result.stderr
    assert Path(env_dir).is_dir() and list(env_dir.iterdir()) == []
