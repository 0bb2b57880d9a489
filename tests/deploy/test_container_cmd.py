"""Run the image's CMD here, the way the container runs it, and hold it to what the image says.

No Docker engine is needed: the final stage of the Dockerfile is parsed, its WORKDIR is laid out
in a temporary directory with exactly the files the Dockerfile copies there, and its CMD runs
with the Dockerfile's ENV, except for what a container gets from its mounts and network:

* MODEL_STORE -> a copy of the repository's model_store/ (the image's embedded /models);
* anything under /tmp (TMPDIR, PROMETHEUS_MULTIPROC_DIR) -> a private directory (the tmpfs);
* BIND -> 127.0.0.1 on a free port;
* executables (gunicorn, python) from this virtualenv.

The HEALTHCHECK reads its port from BIND, so it runs unchanged with that environment.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.bundles import make_bundle
from tests.support.dockerspec import REPO, option_value, parse_dockerfile
from tests.support.mnist import find_mnist_dir
from training.store import ModelStore

pytestmark = pytest.mark.slow

FINAL = parse_dockerfile()[-1]
GRACEFUL_TIMEOUT = float(option_value(FINAL.cmd, "--graceful-timeout"))
MODEL_NAME, MODEL_ALIAS = FINAL.env["MODEL_NAME"], FINAL.env["MODEL_ALIAS"]
READY_DEADLINE_S = 90.0
VENV_BIN = Path(sys.executable).parent


def embedded_model_version() -> int | None:
    """The version the repository's store serves by default, or None if it ships none yet."""
    store = ModelStore(REPO / "model_store")
    if MODEL_NAME not in store.models() or not store.versions(MODEL_NAME):
        return None
    return store.aliases(MODEL_NAME).get(MODEL_ALIAS)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def lay_out_workdir(root: Path) -> Path:
    """WORKDIR with the files the final stage copies into it, from the build context."""
    workdir = root / FINAL.workdir.lstrip("/")
    workdir.mkdir(parents=True)
    for copy in FINAL.copies:
        if copy.from_stage is None and copy.destination.startswith(FINAL.workdir + "/"):
            (source,) = copy.sources
            target = workdir / copy.destination[len(FINAL.workdir) + 1 :]
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / source, target)
    return workdir


def copy_store(destination: Path) -> Path:
    """The image's /models: the repository's store, or a tiny published bundle if it is empty."""
    shutil.copytree(REPO / "model_store", destination)
    if embedded_model_version() is None:
        bundle = make_bundle(destination.parent / "tiny.npz", test_accuracy=0.5)
        store = ModelStore(destination)
        store.publish(bundle, MODEL_NAME, alias=MODEL_ALIAS)
    return destination


def container_environment(root: Path, store: Path, port: int) -> dict[str, str]:
    env = dict(os.environ)  # OPENBLAS_CORETYPE and friends stay exactly as they are
    tmp = root / "tmp"
    tmp.mkdir()
    for key, value in FINAL.env.items():
        if value == "/tmp" or value.startswith("/tmp/"):
            value = str(tmp) + value[len("/tmp") :]
        env[key] = value
    env["MODEL_STORE"] = str(store)
    env["BIND"] = f"127.0.0.1:{port}"
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


def resolve_executable(command: list[str], env: dict[str, str]) -> list[str]:
    found = shutil.which(command[0], path=env["PATH"])
    assert found is not None and Path(found).parent == VENV_BIN, f"{command[0]}: {found}"
    return [found, *command[1:]]


def snapshot(directory: Path) -> dict[str, tuple[int, int]]:
    return {
        str(path.relative_to(directory)): (path.stat().st_size, path.stat().st_mtime_ns)
        for path in sorted(directory.rglob("*"))
    }


@dataclass
class Container:
    process: subprocess.Popen
    url: str
    env: dict[str, str]
    workdir: Path
    store: Path
    log: Path

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        """SIGTERM, then SIGKILL to the process group this test started (gunicorn + workers)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=GRACEFUL_TIMEOUT + 10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)


def start_container(root: Path) -> Container:
    store = copy_store(root / "models")
    workdir = lay_out_workdir(root)
    port = free_port()
    env = container_environment(root, store, port)
    log = root / "container.log"
    with log.open("wb") as log_file:
        process = subprocess.Popen(
            resolve_executable(FINAL.cmd, env),
            cwd=workdir,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    container = Container(process, f"http://127.0.0.1:{port}", env, workdir, store, log)
    try:
        wait_until_ready(container)
    except BaseException:
        container.stop()
        raise
    return container


def get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def wait_until_ready(container: Container) -> None:
    deadline = time.monotonic() + READY_DEADLINE_S
    for _ in range(int(READY_DEADLINE_S / 0.2)):
        if container.process.poll() is not None:
            pytest.fail(
                f"the CMD exited with {container.process.returncode}:\n{container.log_tail()}"
            )
        try:
            status, _ = get(container.url + "/readyz", timeout=2.0)
            if status == 200:
                return
        except OSError:
            pass  # not listening yet
        if time.monotonic() > deadline:
            break
        time.sleep(0.2)
    pytest.fail(f"/readyz not 200 within {READY_DEADLINE_S:.0f} s:\n{container.log_tail()}")


def post_json(url: str, document: dict) -> tuple[int, dict]:
    request = urllib.request.Request(
        url,
        data=json.dumps(document).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def run_healthcheck(env: dict[str, str]) -> subprocess.CompletedProcess:
    command = resolve_executable(FINAL.healthcheck["cmd"], env)
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=30)


@pytest.fixture(scope="module")
def container(tmp_path_factory):
    started = start_container(tmp_path_factory.mktemp("container"))
    yield started
    started.stop()


def test_cmd_serves_predictions(container, mnist_images):
    images, _ = mnist_images
    status, body = post_json(container.url + "/predict", {"images": images[:4].tolist()})
    assert status == 200, body
    assert body["model"]["name"] == MODEL_NAME
    expected_version = ModelStore(container.store).aliases(MODEL_NAME)[MODEL_ALIAS]
    assert body["model"]["version"] == expected_version
    assert len(body["predictions"]) == 4
    for prediction in body["predictions"]:
        assert len(prediction["probabilities"]) == 10
        assert 0.0 <= prediction["confidence"] <= 1.0


def test_embedded_model_reads_mnist_digits(container, mnist_images):
    if embedded_model_version() is None:
        pytest.skip("model_store/mnist ships no model yet: served a tiny untrained bundle instead")
    if find_mnist_dir() is None:
        pytest.skip("no MNIST test set here (MNIST_DIR): synthetic digits say nothing of accuracy")
    images, labels = mnist_images
    status, body = post_json(container.url + "/predict", {"images": images[:8].tolist()})
    assert status == 200, body
    assert [p["label"] for p in body["predictions"]] == labels[:8].tolist()


def test_healthcheck_command_passes_and_fails_when_it_should(container):
    result = run_healthcheck(container.env)
    assert result.returncode == 0, result.stderr
    nothing_there = {**container.env, "BIND": f"127.0.0.1:{free_port()}"}
    assert run_healthcheck(nothing_there).returncode != 0


def test_metrics_are_written_under_tmp_and_nothing_else_is_written(container, mnist_images):
    """A read-only root filesystem and a read-only /models: all writes must go to /tmp."""
    before = {"workdir": snapshot(container.workdir), "store": snapshot(container.store)}
    images, _ = mnist_images
    for _ in range(3):
        status, _ = post_json(container.url + "/predict", {"image": images[0].tolist()})
        assert status == 200
    status, text = get(container.url + "/metrics")
    assert status == 200 and b"# TYPE" in text
    assert any(Path(container.env["PROMETHEUS_MULTIPROC_DIR"]).glob("*.db"))
    after = {"workdir": snapshot(container.workdir), "store": snapshot(container.store)}
    assert after == before


def test_sigterm_drains_and_exits_cleanly(tmp_path):
    started = start_container(tmp_path)
    try:
        status, _ = get(started.url + "/healthz")
        assert status == 200
        started.process.send_signal(signal.SIGTERM)
        try:
            returncode = started.process.wait(timeout=GRACEFUL_TIMEOUT + 10)
        except subprocess.TimeoutExpired:
            pytest.fail(f"still running {GRACEFUL_TIMEOUT + 10:.0f} s after SIGTERM")
        assert returncode == 0, started.log_tail()
        assert "Shutting down: Master" in started.log_tail()
    finally:
        started.stop()
