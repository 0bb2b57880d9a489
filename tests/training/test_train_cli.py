"""`convserve train` and `convserve evaluate` end to end on tiny synthetic MNIST files."""

import contextlib
import io
import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from convserve.cli import main
from training.bundle import load_bundle

REPO = Path(__file__).resolve().parents[2]

# A couple of seconds at most: the mlp, a few hundred images, few epochs.
FAST = ["--arch", "mlp", "--val-size", "100", "--epochs", "3", "--shift", "0", "--quiet"]


@pytest.fixture(scope="module")
def trained(tiny_mnist_dir, tmp_path_factory):
    """One tiny SimpleConvNet run with the default recipe settings: (bundle path, stdout)."""
    out = tmp_path_factory.mktemp("run") / "model.npz"
    stdout = io.StringIO()
    args = ["--val-size", "100", "--epochs", "2", "--seed", "3", "--out", str(out), "--quiet"]
    with contextlib.redirect_stdout(stdout):
        code = main(["train", "--data-dir", str(tiny_mnist_dir), *args])
    assert code == 0
    return out, stdout.getvalue()


def train_cli(tiny_mnist_dir, out, *extra):
    return main(["train", "--data-dir", str(tiny_mnist_dir), "--out", str(out), *FAST, *extra])


def test_train_writes_a_complete_bundle(trained):
    out, _ = trained
    bundle = load_bundle(out)
    metadata = bundle.metadata
    assert bundle.class_labels == list(range(10))
    assert metadata["architecture"]["name"] == "simpleconvnet"
    metrics = metadata["metrics"]
    for key in ("test_accuracy", "test_loss", "val_accuracy", "per_class_accuracy"):
        assert key in metrics
    assert metrics["test_images"] == 200  # every test image counted
    assert np.array(metrics["confusion_matrix"]).sum() == 200
    assert len(metadata["history"]) == 2
    training = metadata["training"]
    assert training["seed"] == 3
    assert training["train_images"] == 400 and training["val_size"] == 100
    assert training["seconds"] >= 0
    assert training["optimizer"] == "momentum" and training["lr"] == 0.1
    assert training["augmentation"]["shift"] == 2
    assert set(metadata["data_fingerprint"]) == {
        "train-images-idx3-ubyte.gz",
        "train-labels-idx1-ubyte.gz",
        "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
    }
    # The contract is the training split's statistics, as the service will use it.
    assert 0 < metadata["input"]["mean"] < 1 and metadata["input"]["std"] > 0


def test_train_prints_accuracy_and_confusion_matrix(trained):
    out, stdout = trained
    metrics = load_bundle(out).metadata["metrics"]
    assert f"test accuracy {100 * metrics['test_accuracy']:.2f}%" in stdout
    assert "true\\pred" in stdout
    assert "per-class accuracy: 0:" in stdout


def test_curves_json_sits_next_to_the_bundle(trained):
    out, _ = trained
    curves = json.loads(out.with_name("model.curves.json").read_text())
    assert [row["epoch"] for row in curves["history"]] == [1, 2]
    assert set(curves["history"][0]) >= {"train_loss", "val_accuracy", "lr", "seconds"}
    assert curves["history"] == load_bundle(out).metadata["history"]


def test_same_seed_same_bundle_weights(tiny_mnist_dir, tmp_path):
    assert train_cli(tiny_mnist_dir, tmp_path / "a.npz", "--seed", "7") == 0
    assert train_cli(tiny_mnist_dir, tmp_path / "b.npz", "--seed", "7") == 0
    a, b = load_bundle(tmp_path / "a.npz"), load_bundle(tmp_path / "b.npz")
    for name, value in a.network.state().items():
        np.testing.assert_array_equal(value, b.network.state()[name], err_msg=name)


def test_two_class_mlp_uses_softmax_with_the_digits_as_labels(tiny_mnist_dir, tmp_path, capsys):
    out = tmp_path / "zero-nine.npz"
    assert train_cli(tiny_mnist_dir, out, "--classes", "9,0", "--val-size", "20") == 0
    bundle = load_bundle(out)
    assert bundle.class_labels == [0, 9]
    assert bundle.network.spec["loss"] == "softmax_cross_entropy"
    assert bundle.network.output_shape == (2,)
    assert np.array(bundle.metadata["metrics"]["confusion_matrix"]).shape == (2, 2)
    assert "true\\pred   0   9" in capsys.readouterr().out


def test_evaluate_matches_the_bundle_metrics(trained, tiny_mnist_dir, capsys):
    out, _ = trained
    capsys.readouterr()
    assert main(["evaluate", str(out), "--data-dir", str(tiny_mnist_dir), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    metrics = load_bundle(out).metadata["metrics"]
    assert result["accuracy"] == pytest.approx(metrics["test_accuracy"])
    assert result["confusion_matrix"] == metrics["confusion_matrix"]
    assert main(["evaluate", str(out), "--data-dir", str(tiny_mnist_dir)]) == 0
    text = capsys.readouterr().out
    assert "test accuracy" in text and "true\\pred" in text


def test_evaluate_restricts_the_test_split_to_the_bundle_classes(tiny_mnist_dir, tmp_path, capsys):
    out = tmp_path / "m.npz"
    assert train_cli(tiny_mnist_dir, out, "--classes", "3,8", "--val-size", "10") == 0
    capsys.readouterr()
    assert main(["evaluate", str(out), "--data-dir", str(tiny_mnist_dir), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["class_labels"] == [3, 8]
    assert result["count"] == load_bundle(out).metadata["metrics"]["test_images"]


@pytest.mark.parametrize(
    "spec_text,message",
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "must be a JSON object"),
        ('{"input_shape": [1, 28, 28], "layers": []}', "layers must be a non-empty list"),
        (
            '{"input_shape": [1, 28, 28], "layers": [{"type": "conv2d", "filters": 2, '
            '"kernel": 40}, {"type": "affine", "units": "classes"}]}',
            "does not fit",
        ),
        (
            '{"input_shape": [1, 28, 28], "num_classes": 3, '
            '"layers": [{"type": "affine", "units": "classes"}]}',
            "num_classes 3 but 10 classes",
        ),
    ],
)
def test_bad_arch_file_is_a_clear_error(spec_text, message, tiny_mnist_dir, tmp_path, capsys):
    spec = tmp_path / "spec.json"
    spec.write_text(spec_text)
    out = tmp_path / "model.npz"
    out.write_bytes(b"an earlier bundle")
    code = main(
        ["train", "--data-dir", str(tiny_mnist_dir), "--arch", str(spec), "--out", str(out)]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("convserve: error: ") and message in err
    assert "Traceback" not in err
    assert out.read_bytes() == b"an earlier bundle"  # nothing already stored is lost


def test_arch_spec_file_trains(tiny_mnist_dir, tmp_path):
    spec = tmp_path / "linear.json"
    spec.write_text(
        json.dumps(
            {
                "name": "linear",
                "input_shape": [1, 28, 28],
                "layers": [{"type": "flatten"}, {"type": "affine", "units": "classes"}],
            }
        )
    )
    out = tmp_path / "linear.npz"
    assert (
        main(
            ["train", "--data-dir", str(tiny_mnist_dir), "--out", str(out), *FAST[2:]]
            + [
                "--arch",
                str(spec),
            ]
        )
        == 0
    )
    assert load_bundle(out).network.spec["name"] == "linear"


@pytest.mark.parametrize(
    "args,message",
    [
        (["--classes", "1,x"], "'x' is not a digit"),
        (["--classes", "4"], "at least two classes"),
        (["--arch", "resnet"], "neither a preset"),
        (["--hidden", "10", "--arch", "simpleconvnet"], "--hidden applies to the mlp"),
        (["--publish"], "--publish needs --name"),
        (["--name", "mnist"], "--name only applies with --publish"),
        (["--publish", "--name", "../evil"], "invalid model name"),
        (["--val-size", "100000"], "leaves no training example"),
    ],
)
def test_bad_settings_exit_2_with_a_message(args, message, tiny_mnist_dir, tmp_path, capsys):
    out = tmp_path / "model.npz"
    assert main(["train", "--data-dir", str(tiny_mnist_dir), "--out", str(out), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith("convserve: error: ")
    assert not out.exists()


def test_missing_data_dir(tmp_path, capsys):
    code = main(
        ["train", "--data-dir", str(tmp_path / "nowhere"), "--out", str(tmp_path / "m.npz")]
    )
    assert code == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("args", [["--epochs", "0"], ["--lr", "-1"], ["--optimizer", "lbfgs"]])
def test_argument_errors_exit_2(args, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", *args])
    assert exit_info.value.code == 2
    assert "convserve train: error:" in capsys.readouterr().err


def test_divergence_exits_2_and_writes_nothing(tiny_mnist_dir, tmp_path, capsys):
    out = tmp_path / "model.npz"
    code = train_cli(tiny_mnist_dir, out, "--optimizer", "sgd", "--lr", "1e9")
    err = capsys.readouterr().err
    assert code == 2
    assert "diverged" in err and "smaller --lr" in err
    assert list(tmp_path.iterdir()) == []


def test_publish_into_a_store(tiny_mnist_dir, tmp_path, capsys):
    from training.store import ModelStore

    store = tmp_path / "store"
    out = tmp_path / "model.npz"
    args = ["--publish", "--name", "digits", "--note", "tiny", "--store", str(store)]
    assert train_cli(tiny_mnist_dir, out, *args) == 0
    assert "published digits:1" in capsys.readouterr().out
    assert ModelStore(store).versions("digits") == [1]
    assert ModelStore(store).load("digits", 1).metadata["metrics"]["test_images"] == 200


def test_evaluate_bad_bundle(tmp_path, tiny_mnist_dir, capsys):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    assert main(["evaluate", str(bad), "--data-dir", str(tiny_mnist_dir)]) == 2
    assert "convserve: error:" in capsys.readouterr().err


def test_no_png_without_matplotlib(tmp_path, monkeypatch):
    from training.train_cli import plot_curves

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    history = [{"epoch": 1, "train_loss": 1.0, "train_accuracy": 0.5}]
    assert plot_curves(history, tmp_path / "c.png") is False
    assert not (tmp_path / "c.png").exists()


def test_without_validation_split(tiny_mnist_dir, tmp_path):
    out = tmp_path / "m.npz"
    assert train_cli(tiny_mnist_dir, out, "--val-size", "0", "--epochs", "2") == 0
    metadata = load_bundle(out).metadata
    assert metadata["metrics"]["val_accuracy"] is None
    assert metadata["training"]["best_epoch"] == 2
    assert metadata["training"]["train_images"] == 500


def test_a_run_too_short_to_learn_warns_even_when_quiet(tiny_mnist_dir, tmp_path, capsys):
    assert train_cli(tiny_mnist_dir, tmp_path / "short.npz", "--limit", "200", "--epochs", "1") == 0
    err = capsys.readouterr().err
    assert "warning: this run makes only 2 optimizer steps (200 images in batches of 100" in err
    assert "add --epochs or images" in err


def test_a_run_long_enough_does_not_warn(tiny_mnist_dir, tmp_path, capsys):
    args = ("--limit", "200", "--epochs", "3", "--batch-size", "4")  # 150 steps
    assert train_cli(tiny_mnist_dir, tmp_path / "long.npz", *args) == 0
    assert "warning" not in capsys.readouterr().err


def test_threads_option_is_recorded_and_checked(tiny_mnist_dir, tmp_path, capsys):
    out = tmp_path / "split.npz"
    assert train_cli(tiny_mnist_dir, out, "--arch", "simpleconvnet", "--threads", "2") == 0
    assert load_bundle(out).metadata["training"]["threads"] == 2
    assert train_cli(tiny_mnist_dir, tmp_path / "plain.npz", "--threads", "1") == 0
    assert load_bundle(tmp_path / "plain.npz").metadata["training"]["threads"] == 1
    with pytest.raises(SystemExit) as exc:
        train_cli(tiny_mnist_dir, tmp_path / "bad.npz", "--threads", "0")
    assert exc.value.code == 2


def test_ctrl_c_during_a_split_run_exits_130_and_writes_nothing(tiny_mnist_dir, tmp_path):
    """SIGINT once the epochs are under way: the worker threads must not keep the process."""
    out = tmp_path / "never.npz"
    command = [sys.executable, "-m", "convserve", "train", "--data-dir", str(tiny_mnist_dir)]
    command += ["--out", str(out), "--epochs", "500", "--val-size", "100", "--threads", "2"]
    with subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=REPO
    ) as process:
        try:
            seen = ""
            while "train loss" not in seen:  # an epoch line: training is running
                line = process.stderr.readline()
                assert line, f"convserve train ended before its first epoch: {seen[-500:]}"
                seen += line
            process.send_signal(signal.SIGINT)
            _, rest = process.communicate(timeout=60)
        finally:
            if process.poll() is None:
                process.kill()
    assert process.returncode == 130, rest[-500:]
    assert "convserve: interrupted" in rest
    assert not out.exists()
