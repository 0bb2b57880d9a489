"""The `convserve` entry point itself: errors and a closed pipe never end in a traceback."""

import subprocess
import sys

from training.cli import main


def test_convserve_error_is_one_line_and_exit_2(tmp_path, capsys):
    assert main(["evaluate", str(tmp_path / "missing.npz"), "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("convserve: error: ") and "Traceback" not in err


def test_reader_closing_the_pipe_is_not_a_traceback(tiny_mnist_dir):
    process = subprocess.Popen(
        [sys.executable, "-m", "training.cli", "data", "info", "--data-dir", str(tiny_mnist_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    process.stdout.close()  # like `| head`, before the command has printed anything
    stderr = process.stderr.read().decode()
    process.stderr.close()
    assert process.wait(timeout=60) == 141
    assert "Traceback" not in stderr
