"""Runs a doc's shell examples as a reader would, and compares what they print with the doc.

All the blocks of one doc run in order in one bash process, in a scratch directory that looks
like the checkout (``.venv``, ``service``, ``training``, ``deploy``, ``scripts`` linked; a copy
of the embedded ``model_store``; ``data/mnist`` linked to the MNIST files), so files one example
writes (``one.json``) are there for the next and ``export``s carry over. The rewrites, the only
differences from running the doc verbatim:

* ``localhost:8000`` and ``127.0.0.1:8000`` -> the test's server (``CONVSERVE_URL`` too, for
  ``convserve predict``), ``/tmp/demo-store`` -> a scratch store, ``/path/to/mnist`` -> MNIST;
* ``DRAIN_SECONDS=0`` in the environment, so stopping a server takes no 5 s drain, and
  ``CONVSERVE_TRAIN_THREADS=2``, the thread count the docs' training figures were made with;
* a command that starts a server (``make serve``, ``convserve serve``, ``gunicorn``) is started
  on a free port in the background, in its own process group, and counts as done once
  ``/healthz`` answers; one that exits instead (a refused setting) is compared like any other
  command; the block's server is stopped (SIGTERM to its group) when the block ends.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.docs.markdown_examples import Command, ShellBlock, commands
from tests.support import REPO
from tests.support.servers import free_port

LINKED = (".venv", "service", "training", "deploy", "scripts", "convserve", "benchmarks")
SERVER_COMMAND = re.compile(
    r"^(?P<env>(?:[A-Z_]+=\S*\s+)*)"
    r"(?P<program>make serve|(?:\S*/)?convserve serve|(?:\S*/)?gunicorn)\b"
    r"(?P<args>.*?)\s*&?\s*$",
    re.DOTALL,
)
WAIT_FOR_SERVER = """
SERVER_GROUP=
stop_server() {
  if [ -n "$SERVER_GROUP" ]; then
    kill -TERM -- "-$SERVER_GROUP" 2>/dev/null
    for _ in $(seq 100); do kill -0 -- "-$SERVER_GROUP" 2>/dev/null || break; sleep 0.1; done
    kill -KILL -- "-$SERVER_GROUP" 2>/dev/null
    SERVER_GROUP=
  fi
}
trap stop_server EXIT
start_server() {  # $1: the command's number; $2: the command; up when /healthz answers
  stop_server
  setsid bash -c "$2" > "$OUT/$1.out" 2>&1 < /dev/null &
  local pid=$!
  for _ in $(seq 600); do
    if ! kill -0 "$pid" 2>/dev/null; then wait "$pid"; echo $? > "$OUT/$1.rc"; return; fi
    if curl -sf -o /dev/null "http://127.0.0.1:$PORT/healthz"; then
      SERVER_GROUP=$pid; echo 0 > "$OUT/$1.rc"; return
    fi
    sleep 0.1
  done
  SERVER_GROUP=$pid; echo "no answer on /healthz within 60 s" > "$OUT/$1.rc"
}
"""


@dataclass
class Outcome:
    """What one command did: its exit status (None: never run) and its output."""

    command: Command
    block: ShellBlock
    status: str | None
    output: str


def make_scratch(directory: Path, mnist_dir: Path) -> Path:
    """A directory that looks like the checkout to the examples (see the module docstring)."""
    directory.mkdir(parents=True, exist_ok=True)
    for name in LINKED:
        (directory / name).symlink_to(REPO / name)
    shutil.copytree(
        REPO / "model_store", directory / "model_store", ignore=shutil.ignore_patterns("*.md")
    )
    (directory / "data").mkdir()
    (directory / "data/mnist").symlink_to(mnist_dir)
    return directory


def rewrite(text: str, scratch: Path, mnist_dir: Path, port: int) -> str:
    for address in ("localhost:8000", "127.0.0.1:8000"):
        text = text.replace(address, f"127.0.0.1:{port}")
    text = text.replace("/tmp/demo-store", str(scratch / "demo-store"))
    return text.replace("/path/to/mnist", str(mnist_dir))


def server_command(text: str, scratch: Path, port: int) -> str | None:
    """The command that starts this server on ``port`` in the background, or None when
    ``text`` starts no server."""
    found = SERVER_COMMAND.match(text.strip())
    if not found:
        return None
    env, program, args = found.group("env"), found.group("program"), found.group("args")
    if program == "make serve":
        return f"{env}make -s -C {REPO} serve STORE={scratch / 'model_store'} PORT={port}{args}"
    if program.endswith("gunicorn"):
        return f"BIND=127.0.0.1:{port} {env}{program}{args}"
    if "--port" in args:
        args = re.sub(r"--port\s+\d+", f"--port {port}", args)
    else:
        args += f" --port {port}"
    return f"{env}{program}{args}"


def script(blocks: list[ShellBlock], scratch: Path, mnist_dir: Path, shared_port: int):
    """(the bash script running every block, [(block, command)] numbered as in $OUT)."""
    lines = ["set +e", f"cd {shlex.quote(str(scratch))}", WAIT_FOR_SERVER]
    numbered = []
    for block in blocks:
        block_commands = commands(block.text, block.line + 1)
        starts_server = any(SERVER_COMMAND.match(c.text.strip()) for c in block_commands)
        port = free_port() if starts_server else shared_port
        lines.append(f"PORT={port}; export CONVSERVE_URL=http://127.0.0.1:{port}")
        for command in block_commands:
            number = len(numbered)
            numbered.append((block, command))
            text = rewrite(command.text, scratch, mnist_dir, port)
            server = server_command(text, scratch, port)
            if server is not None:
                lines.append(f"start_server {number} {shlex.quote(server)}")
            else:
                lines.append(f'{{ {text}\n}} > "$OUT/{number}.out" 2>&1 < /dev/null')
                lines.append(f'echo $? > "$OUT/{number}.rc"')
        lines.append("stop_server")
    return "\n".join(lines) + "\n", numbered


def run_blocks(blocks, scratch: Path, mnist_dir: Path, shared_port: int, timeout: float):
    """Run the blocks (see ``script``); every command's Outcome, in order."""
    text, numbered = script(blocks, scratch, mnist_dir, shared_port)
    out = scratch / ".outputs"
    out.mkdir()
    env = {
        **os.environ,
        "OUT": str(out),
        "PATH": f"{scratch / '.venv/bin'}:{os.environ['PATH']}",
        "MNIST_DIR": str(mnist_dir),
        "DRAIN_SECONDS": "0",  # a server an example started stops at once
        # A training's last float32 bits depend on how many threads split each batch
        # (docs/TRAINING.md); the docs' figures were made with the 2 of this kind of machine.
        "CONVSERVE_TRAIN_THREADS": "2",
    }
    for name in ("MODEL_STORE", "PROMETHEUS_MULTIPROC_DIR", "ADMIN_TOKEN"):
        env.pop(name, None)
    process = subprocess.Popen(["bash", "-c", text], env=env, start_new_session=True)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
    outcomes = []
    for number, (block, command) in enumerate(numbered):
        status_file, output_file = out / f"{number}.rc", out / f"{number}.out"
        status = status_file.read_text().strip() if status_file.exists() else None
        output = output_file.read_text(errors="replace") if output_file.exists() else ""
        outcomes.append(Outcome(command, block, status, output))
    return outcomes


NUMBER = r"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?"


# A claimed figure also holds within this fraction of itself (tests/docs/markdown_examples.py:
# training figures differ in their last digit between CPUs).
FIGURE_RTOL = 1e-3


def claim_holds(claim: str, output: str, check_figures: bool = True) -> bool:
    """Whether ``output`` shows what ``claim`` says (rules: tests/docs/markdown_examples.py).
    Without ``check_figures`` every decimal number of the claim matches any number."""
    pattern, expected = [], []
    for piece in re.split(r"(\.\.\.\w*|-?\d+\.\d+%?)", re.sub(r"\s+", "", claim)):
        if piece.startswith("..."):
            pattern.append(".*?")
        elif re.fullmatch(r"-?\d+\.\d+%?", piece):
            pattern.append(f"({NUMBER})" + ("%" if piece.endswith("%") else ""))
            expected.append(piece.rstrip("%"))
        else:
            pattern.append(re.escape(piece))
    found = re.search("".join(pattern), re.sub(r"\s+", "", output), re.DOTALL)
    if found is None:
        return False
    if not check_figures:
        return True
    for claimed, actual in zip(expected, found.groups(), strict=True):
        decimals = len(claimed.split(".")[1])
        tolerance = max(0.5 * 10**-decimals, FIGURE_RTOL * abs(float(claimed)))
        if abs(float(actual) - float(claimed)) > tolerance + 1e-12:
            return False
    return True
