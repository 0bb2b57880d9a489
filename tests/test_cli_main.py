"""The `convserve` entry point (convserve/cli.py): every command is there, a missing command
module is an error, and errors, Ctrl-C and a closed pipe never end in a traceback."""

import re
import subprocess
import sys

import pytest

from convserve.cli import main

COMMANDS = ("train", "evaluate", "data", "models", "serve", "predict")


def run_convserve(*args: str, prelude: str = "") -> subprocess.CompletedProcess:
    """``python -m convserve ARGS`` in a fresh interpreter; ``prelude`` runs first."""
    code = f"{prelude}\nimport runpy\nrunpy.run_module('convserve', run_name='__main__')"
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60
    )


def test_python_dash_m_convserve_lists_every_command():
    result = subprocess.run(
        [sys.executable, "-m", "convserve", "--help"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    listed = re.findall(r"^    (\S+)", result.stdout, flags=re.MULTILINE)  # "    train  train a..."
    assert tuple(listed) == COMMANDS


@pytest.mark.parametrize("module", ["service.client_cli", "training.store_cli"])
def test_a_missing_command_module_is_an_import_error_not_an_absent_command(module):
    # None in sys.modules makes `import module` fail as if the file were gone.
    result = run_convserve("--help", prelude=f"import sys; sys.modules[{module!r}] = None")
    assert result.returncode == 1
    assert "ModuleNotFoundError" in result.stderr and module in result.stderr
    assert "usage:" not in result.stdout


def test_convserve_error_is_one_line_and_exit_2(tmp_path, capsys):
    assert main(["evaluate", str(tmp_path / "missing.npz"), "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("convserve: error: ") and "Traceback" not in err
    assert err.count("\n") == 1


def test_ctrl_c_exits_130_with_one_line(tiny_mnist_dir, monkeypatch, capsys):
    import training.data_cli

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(training.data_cli, "load_mnist", interrupted)
    assert main(["data", "info", "--data-dir", str(tiny_mnist_dir)]) == 130
    assert capsys.readouterr().err == "convserve: interrupted\n"


def test_reader_closing_the_pipe_is_not_a_traceback(tiny_mnist_dir):
    process = subprocess.Popen(
        [sys.executable, "-m", "convserve", "data", "info", "--data-dir", str(tiny_mnist_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    process.stdout.close()  # like `| head`, before the command has printed anything
    stderr = process.stderr.read().decode()
    process.stderr.close()
    assert process.wait(timeout=60) == 141
    assert "Traceback" not in stderr
